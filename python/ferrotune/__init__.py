"""ferrotune: fine-tune Hugging Face language models on CPU, with a Rust core and no PyTorch."""

from . import datasets, distributed, hub, io, metrics
from ._core import (
    BusyError,
    CheckpointError,
    ConfigError,
    DataError,
    FerrotuneError,
    InputError,
    NonFiniteError,
    ShapeError,
    TokenizerError,
    __version__,
    cpu_isa,
)
from .callbacks import (
    DefaultFlowCallback,
    EarlyStoppingCallback,
    JSONLLoggerCallback,
    PrinterCallback,
    ProgressCallback,
    TensorBoardCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)
from .data import DataCollatorForLanguageModeling, DataCollatorWithPadding, load_jsonl
from .evaluation import EvalResult, evaluate
from .hub import ModelNotFoundError
from .integrations import IntegrationNotInstalledError, MLflowCallback, WandbCallback
from .generation import GenerationConfig, TextIteratorStreamer, TextStreamer
from .metrics import EvalPrediction
from .modeling import CausalLMOutput, Model, ModelConfig
from .notebook import NotebookProgressCallback
from .optimization import get_scheduler
from .optimizer import AdamW
from .peft import LoraConfig, PeftModel, get_peft_model
from .pipelines import TextGenerationPipeline, pipeline
from .plotting import plot_history
from .precision import get_float32_matmul_precision, set_float32_matmul_precision
from .tokenizer import BatchEncoding, Tokenizer
from .trainer import PredictionOutput, Trainer, TrainOutput, get_last_checkpoint
from .training_args import TrainingArguments

# under mpiexec/srun: join the MPI world and set the threads per rank before the Rust
# thread pool starts (importing the modules above runs no Rust work); one process: nothing
distributed.init()


def show_config() -> None:
    """Prints what a bug report needs: version, build, CPU tier, threads, package versions
    (the same as `python -m ferrotune.info`)."""
    from .info import show_config as show  # imported here: `python -m ferrotune.info` runs it as __main__

    show()


__all__ = [
    "cpu_isa",
    "show_config",
    "get_float32_matmul_precision",
    "set_float32_matmul_precision",
    "AdamW",
    "BatchEncoding",
    "CausalLMOutput",
    "CheckpointError",
    "ConfigError",
    "DataCollatorForLanguageModeling",
    "DataCollatorWithPadding",
    "DataError",
    "DefaultFlowCallback",
    "EarlyStoppingCallback",
    "BusyError",
    "EvalPrediction",
    "EvalResult",
    "FerrotuneError",
    "GenerationConfig",
    "InputError",
    "IntegrationNotInstalledError",
    "LoraConfig",
    "ModelNotFoundError",
    "JSONLLoggerCallback",
    "MLflowCallback",
    "NotebookProgressCallback",
    "Model",
    "ModelConfig",
    "NonFiniteError",
    "PeftModel",
    "PredictionOutput",
    "PrinterCallback",
    "ProgressCallback",
    "ShapeError",
    "TensorBoardCallback",
    "TextGenerationPipeline",
    "TextIteratorStreamer",
    "TextStreamer",
    "Tokenizer",
    "TokenizerError",
    "TrainOutput",
    "Trainer",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
    "TrainingArguments",
    "WandbCallback",
    "__version__",
    "evaluate",
    "get_last_checkpoint",
    "get_peft_model",
    "get_scheduler",
    "datasets",
    "distributed",
    "hub",
    "io",
    "metrics",
    "load_jsonl",
    "pipeline",
    "plot_history",
]
