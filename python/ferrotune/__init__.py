"""ferrotune: fine-tune Hugging Face language models on CPU, with a Rust core and no PyTorch."""

from . import io
from ._core import (
    CheckpointError,
    ConfigError,
    DataError,
    FerrotuneError,
    InputError,
    NonFiniteError,
    ShapeError,
    TokenizerError,
    __version__,
)
from .modeling import CausalLMOutput, Model, ModelConfig
from .optimizer import AdamW
from .tokenizer import BatchEncoding, Tokenizer

__all__ = [
    "AdamW",
    "BatchEncoding",
    "CausalLMOutput",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FerrotuneError",
    "InputError",
    "Model",
    "ModelConfig",
    "NonFiniteError",
    "ShapeError",
    "Tokenizer",
    "TokenizerError",
    "__version__",
    "io",
]
