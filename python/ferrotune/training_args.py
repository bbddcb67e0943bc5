"""``TrainingArguments``: the knobs of :class:`ferrotune.Trainer`, with transformers' names.

Every field that ``transformers.TrainingArguments`` also has keeps its name, its
meaning and its default, so ``TrainingArguments(output_dir=..., num_train_epochs=3,
per_device_train_batch_size=2, save_steps=..., save_total_limit=2)`` ports from a
transformers notebook unchanged (``bf16=True`` too: bf16 products with f32 sums, on CPUs
with AVX512_BF16).  Options that make no sense here (fp16, DeepSpeed, FSDP,
torch.compile, TPU/CUDA settings, the Hub, ...) are accepted as names so that such code
fails loudly: setting one to anything but its default raises
:class:`ferrotune.ConfigError` instead of being ignored.

A few fields are ferrotune's own (``max_length``, ``packing``,
``dataset_text_field``, ``add_eos_token``, ``save_on_interrupt``); they are
documented below and marked "(ferrotune)".
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Optional, Union

from . import distributed
from ._core import ConfigError
from .integrations import SUPPORTED_REPORT_TO, available_integrations, require_integration
from .optimization import SCHEDULER_TYPES, UNSUPPORTED_SCHEDULER_TYPES, scheduler_name
from .precision import require_bf16

__all__ = ["TrainingArguments", "IntervalStrategy", "SaveStrategy", "SUPPORTED_REPORT_TO"]


class IntervalStrategy:
    """Values of ``eval_strategy`` and ``logging_strategy`` (plain strings, as transformers' enum values)."""

    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class SaveStrategy(IntervalStrategy):
    """Values of ``save_strategy``: ``"no"``, ``"steps"``, ``"epoch"`` or ``"best"``."""

    BEST = "best"


_SUPPORTED_OPTIM = ("adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw")

# name -> (allowed value(s), why).  A field set to something else raises ConfigError.
_UNSUPPORTED: Dict[str, tuple] = {
    "fp16": ((False,), "fp16 mixed precision is not supported on CPU; ferrotune trains in float32"),
    "fp16_full_eval": ((False,), "fp16 evaluation is not supported; ferrotune evaluates in float32"),
    "bf16_full_eval": ((False,), "bf16 evaluation is not supported; use bf16=True (mixed precision) instead"),
    "half_precision_backend": (("auto",), "half precision is not supported"),
    "tf32": ((None, False), "tf32 is a CUDA setting; ferrotune runs on CPU"),
    "deepspeed": ((None, ""), "DeepSpeed is not supported (ferrotune trains on one machine, without torch)"),
    "fsdp": ((None, "", []), "FSDP is not supported (ferrotune trains on one machine, without torch)"),
    "fsdp_config": ((None,), "FSDP is not supported"),
    "torch_compile": ((False,), "torch.compile does not apply: ferrotune has no PyTorch"),
    "torch_compile_backend": ((None,), "torch.compile does not apply: ferrotune has no PyTorch"),
    "torch_compile_mode": ((None,), "torch.compile does not apply: ferrotune has no PyTorch"),
    "use_liger_kernel": ((False,), "Liger kernels are CUDA/torch kernels"),
    "neftune_noise_alpha": ((None,), "NEFTune noise is not implemented"),
    "label_smoothing_factor": ((0, 0.0), "label smoothing is not implemented"),
    "auto_find_batch_size": ((False,), "auto_find_batch_size relies on CUDA out-of-memory errors"),
    "push_to_hub": ((False,), "pushing to the Hugging Face Hub is not implemented; upload output_dir yourself"),
    "hub_model_id": ((None,), "pushing to the Hugging Face Hub is not implemented"),
    "hub_token": ((None,), "pushing to the Hugging Face Hub is not implemented"),
    "local_rank": ((-1,), "the rank comes from the MPI launcher (mpiexec/srun; see ferrotune.distributed), not from torchrun"),
    "ddp_backend": ((None, "mpi"), "ferrotune's data-parallel training runs over MPI only (ferrotune.distributed)"),
    "ddp_find_unused_parameters": ((None,), "every trainable parameter gets a gradient in each step; there is nothing to find"),
    "tpu_num_cores": ((None,), "TPUs are not supported"),
    "dataloader_num_workers": ((0,), "worker processes are not used: batches are built in the main process"),
    "torch_empty_cache_steps": ((None,), "there is no CUDA cache to empty"),
    "use_ipex": ((False,), "Intel extension for PyTorch does not apply"),
    "jit_mode_eval": ((False,), "TorchScript does not apply"),
    "optim_target_modules": ((None,), "GaLore/APOLLO optimizers are not implemented"),
    "eval_do_concat_batches": ((True,), "per-batch prediction lists are not implemented"),
    "batch_eval_metrics": ((False,), "batched metric computation is not implemented"),
}


def _default_logdir() -> str:
    """transformers' default: ``runs/<Mon DD_HH-MM-SS>_<hostname>`` (the PyTorch SummaryWriter layout)."""
    current_time = datetime.now().strftime("%b%d_%H-%M-%S")
    return os.path.join("runs", current_time + "_" + socket.gethostname())


def _strategy(value: Any, allowed: tuple, name: str) -> str:
    value = getattr(value, "value", value)
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value.lower()


@dataclass
class TrainingArguments:
    """Arguments of :class:`ferrotune.Trainer`; the names, meanings and defaults are transformers'.

    Output and checkpoints:
        output_dir: where checkpoints and the final model go (default ``"trainer_output"``, as transformers 5).
        overwrite_output_dir: kept for compatibility; like in transformers the Trainer itself does not use it.
        save_strategy: ``"no"``, ``"steps"`` (every ``save_steps``), ``"epoch"`` or ``"best"``
            (whenever ``metric_for_best_model`` improves).
        save_steps: int, or a float in (0, 1) meaning a fraction of the total steps.
        save_total_limit: keep the ``save_total_limit`` most recent checkpoints; the best one
            (``load_best_model_at_end``/``metric_for_best_model``) is kept *in addition* when it is older.
            (transformers counts the best one inside the limit; ferrotune keeps it on top.)
        save_only_model: save only the weights (the checkpoint then cannot be resumed from).
        save_on_interrupt (ferrotune): on Ctrl-C / KeyboardInterrupt, write a checkpoint of the last complete
            step before re-raising, so ``train(resume_from_checkpoint=True)`` continues exactly.
        resume_from_checkpoint: a checkpoint path (or True for the latest in ``output_dir``) that
            ``Trainer.train()`` resumes from when it is called without its own ``resume_from_checkpoint``.
        load_best_model_at_end, metric_for_best_model, greater_is_better: as transformers
            (``metric_for_best_model`` defaults to ``"loss"``; ``greater_is_better`` defaults to False for
            metrics whose name ends in ``loss`` or ``perplexity``, True otherwise).

    Optimisation:
        learning_rate (5e-5), weight_decay (0.0, never applied to biases and norm weights),
        adam_beta1 (0.9), adam_beta2 (0.999), adam_epsilon (1e-8), max_grad_norm (1.0; 0 disables clipping),
        optim (``"adamw_torch"``; the only optimizer is AdamW),
        lr_scheduler_type (``"linear"``; see :data:`ferrotune.optimization.SCHEDULER_TYPES`),
        lr_scheduler_kwargs, warmup_steps (int >= 1: steps; float in (0, 1): fraction of the total steps),
        warmup_ratio (used when ``warmup_steps`` is 0), gradient_accumulation_steps (1),
        num_train_epochs (3.0), max_steps (-1; when > 0 it overrides ``num_train_epochs``),
        per_device_train_batch_size (8), per_device_eval_batch_size (8).
        gradient_checkpointing (False): ``Trainer.train()`` calls the model's
        ``gradient_checkpointing_enable(gradient_checkpointing_kwargs)``: the backward recomputes
        each block's activations instead of keeping them all (same gradients, less memory, the
        blocks' forward run twice per step). ``gradient_checkpointing_kwargs`` (None or a dict such as
        ``{"use_reentrant": False}``) is accepted and changes nothing.
        optimizer_in_backward (False; a ferrotune option, as torchtune's ``optimizer_in_bwd``): each
        step is :meth:`ferrotune.AdamW.backward_step`, the AdamW update fused into the backward, so
        the model never holds a whole gradient (GPT-2 124M: 0.34 GB less at peak). Same updates
        bit for bit; ``grad_norm`` is still logged. It cannot clip or accumulate: it needs
        ``max_grad_norm=0`` and ``gradient_accumulation_steps=1``.

    Data:
        seed (42), data_seed (None: use ``seed``) seed the shuffling of the training set,
        group_by_length, dataloader_drop_last, label_names (default ``["labels"]``),
        max_length (ferrotune; None: the model's context length) truncates tokenized examples,
        packing (ferrotune; False) concatenates short examples into blocks of ``max_length``,
        dataset_text_field (ferrotune; ``"text"``), add_eos_token (ferrotune; True: append the
        tokenizer's EOS to ``text`` examples and completions so a fine-tuned model learns to stop).

    Data-parallel (read-only, from the MPI launcher; :mod:`ferrotune.distributed`): world_size,
        process_index, local_process_index, should_log and should_save (rank 0 alone). A step
        takes ``per_device_train_batch_size * world_size * gradient_accumulation_steps``
        examples. ``ddp_backend`` may be None or ``"mpi"``.

    Logging and evaluation:
        logging_strategy (``"steps"``), logging_steps (500), logging_first_step, logging_dir
        (default ``output_dir/runs/<date>_<host>`` as transformers 4), report_to (``"none"``,
        ``"all"``, or a list of ``"tensorboard"``/``"jsonl"``/``"wandb"``/``"mlflow"``; ``"all"`` takes
        wandb/mlflow only when installed, naming one that is not raises
        :class:`ferrotune.integrations.IntegrationNotInstalledError`), disable_tqdm, eval_strategy (``"no"``),
        eval_steps (default ``logging_steps``), eval_delay, eval_on_start, prediction_loss_only.
        logging_nan_inf_filter is accepted for compatibility, but ferrotune never filters a
        non-finite loss: training stops with :class:`ferrotune.NonFiniteError` naming the step.
    """

    output_dir: str = None  # type: ignore[assignment]  # None -> "trainer_output", as transformers 5
    overwrite_output_dir: bool = False
    do_train: bool = False
    do_eval: bool = False
    do_predict: bool = False

    # training length and batches
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    eval_accumulation_steps: Optional[int] = None
    gradient_checkpointing: bool = False
    gradient_checkpointing_kwargs: Optional[Union[Dict[str, Any], str]] = None
    optimizer_in_backward: bool = False

    # optimizer and schedule
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    optim_args: Optional[str] = None
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: Optional[Union[Dict[str, Any], str]] = None
    warmup_ratio: float = 0.0
    warmup_steps: Union[int, float] = 0

    # logging
    logging_dir: Optional[str] = None
    logging_strategy: str = "steps"
    logging_first_step: bool = False
    logging_steps: Union[int, float] = 500
    logging_nan_inf_filter: bool = True
    log_level: str = "passive"
    disable_tqdm: Optional[bool] = None
    report_to: Union[None, str, List[str]] = "none"
    run_name: Optional[str] = None
    include_num_input_tokens_seen: Union[bool, str] = False

    # evaluation
    eval_strategy: str = "no"
    eval_steps: Optional[Union[int, float]] = None
    eval_delay: float = 0
    eval_on_start: bool = False
    prediction_loss_only: bool = False

    # saving
    save_strategy: str = "steps"
    save_steps: Union[int, float] = 500
    save_total_limit: Optional[int] = None
    save_only_model: bool = False
    save_safetensors: bool = True
    save_on_interrupt: bool = True
    load_best_model_at_end: bool = False
    metric_for_best_model: Optional[str] = None
    greater_is_better: Optional[bool] = None
    resume_from_checkpoint: Optional[Union[str, bool]] = None
    restore_callback_states_from_checkpoint: bool = False
    ignore_data_skip: bool = False

    # data
    seed: int = 42
    data_seed: Optional[int] = None
    full_determinism: bool = False
    dataloader_drop_last: bool = False
    dataloader_pin_memory: bool = True
    remove_unused_columns: bool = True
    label_names: Optional[List[str]] = None
    group_by_length: bool = False
    length_column_name: str = "length"
    max_length: Optional[int] = None
    packing: bool = False
    dataset_text_field: str = "text"
    add_eos_token: bool = True

    # device (CPU only)
    use_cpu: bool = False
    no_cuda: bool = False

    # bf16 mixed precision: products with bf16 operands and f32 sums (ferrotune.precision)
    bf16: bool = False
    # accepted names that must stay at their defaults (see _UNSUPPORTED)
    fp16: bool = False
    fp16_full_eval: bool = False
    bf16_full_eval: bool = False
    half_precision_backend: str = "auto"
    tf32: Optional[bool] = None
    deepspeed: Optional[Union[str, Dict[str, Any]]] = None
    fsdp: Optional[Union[str, List[str]]] = None
    fsdp_config: Optional[Union[str, Dict[str, Any]]] = None
    torch_compile: bool = False
    torch_compile_backend: Optional[str] = None
    torch_compile_mode: Optional[str] = None
    use_liger_kernel: bool = False
    neftune_noise_alpha: Optional[float] = None
    label_smoothing_factor: float = 0.0
    auto_find_batch_size: bool = False
    push_to_hub: bool = False
    hub_model_id: Optional[str] = None
    hub_token: Optional[str] = None
    local_rank: int = -1
    ddp_backend: Optional[str] = None
    ddp_find_unused_parameters: Optional[bool] = None
    tpu_num_cores: Optional[int] = None
    dataloader_num_workers: int = 0
    torch_empty_cache_steps: Optional[int] = None
    use_ipex: bool = False
    jit_mode_eval: bool = False
    optim_target_modules: Optional[Union[str, List[str]]] = None
    eval_do_concat_batches: bool = True
    batch_eval_metrics: bool = False

    # transformers 4.x name of eval_strategy (deprecated there too)
    evaluation_strategy: Optional[str] = None

    def __post_init__(self) -> None:
        for name, (allowed, why) in _UNSUPPORTED.items():
            value = getattr(self, name)
            if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
                raise ConfigError(f"TrainingArguments({name}={value!r}) is not supported: {why}")
        if self.bf16:
            require_bf16("TrainingArguments(bf16=True)")

        if self.evaluation_strategy is not None:
            warnings.warn(
                "`evaluation_strategy` is deprecated (as in transformers); use `eval_strategy`", FutureWarning
            )
            self.eval_strategy = self.evaluation_strategy
            self.evaluation_strategy = None

        if self.output_dir is None:
            self.output_dir = "trainer_output"
        self.output_dir = os.path.expanduser(os.fspath(self.output_dir))
        if self.logging_dir is None:
            self.logging_dir = os.path.join(self.output_dir, _default_logdir())
        else:
            self.logging_dir = os.path.expanduser(os.fspath(self.logging_dir))
        if self.disable_tqdm is None:
            self.disable_tqdm = False

        self.eval_strategy = _strategy(self.eval_strategy, ("no", "steps", "epoch"), "eval_strategy")
        self.logging_strategy = _strategy(self.logging_strategy, ("no", "steps", "epoch"), "logging_strategy")
        self.save_strategy = _strategy(self.save_strategy, ("no", "steps", "epoch", "best"), "save_strategy")

        name = scheduler_name(self.lr_scheduler_type)
        if name in UNSUPPORTED_SCHEDULER_TYPES:
            raise ConfigError(f"lr_scheduler_type={name!r} is not supported: {UNSUPPORTED_SCHEDULER_TYPES[name]}")
        if name not in SCHEDULER_TYPES:
            raise ConfigError(f"unknown lr_scheduler_type {name!r}; supported: {', '.join(SCHEDULER_TYPES)}")
        self.lr_scheduler_type = name
        if isinstance(self.lr_scheduler_kwargs, str):
            try:
                self.lr_scheduler_kwargs = json.loads(self.lr_scheduler_kwargs) if self.lr_scheduler_kwargs else {}
            except json.JSONDecodeError as e:
                raise ConfigError(f"lr_scheduler_kwargs is not valid JSON: {e}") from None
        if self.lr_scheduler_kwargs is None:
            self.lr_scheduler_kwargs = {}
        if not isinstance(self.lr_scheduler_kwargs, dict):
            raise ConfigError(f"lr_scheduler_kwargs must be a dict, got {self.lr_scheduler_kwargs!r}")

        if not (self.gradient_checkpointing is None or isinstance(self.gradient_checkpointing, bool)):
            raise ConfigError(f"gradient_checkpointing must be a bool, got {self.gradient_checkpointing!r}")
        self.gradient_checkpointing = bool(self.gradient_checkpointing)
        if isinstance(self.gradient_checkpointing_kwargs, str):
            try:
                self.gradient_checkpointing_kwargs = json.loads(self.gradient_checkpointing_kwargs)
            except json.JSONDecodeError as e:
                raise ConfigError(f"gradient_checkpointing_kwargs is not valid JSON: {e}") from None
        if self.gradient_checkpointing_kwargs is not None and not isinstance(self.gradient_checkpointing_kwargs, dict):
            raise ConfigError(f"gradient_checkpointing_kwargs must be a dict or None, got {self.gradient_checkpointing_kwargs!r}")
        if not isinstance(self.optimizer_in_backward, bool):
            raise ConfigError(f"optimizer_in_backward must be a bool, got {self.optimizer_in_backward!r}")

        optim = str(getattr(self.optim, "value", self.optim)).lower()
        if optim not in _SUPPORTED_OPTIM:
            raise ConfigError(
                f"optim={self.optim!r} is not supported; ferrotune implements AdamW "
                f"(torch.optim.AdamW numerics): use one of {list(_SUPPORTED_OPTIM)}"
            )
        self.optim = optim
        if self.optim_args:
            raise ConfigError("optim_args is not supported; use adam_beta1/adam_beta2/adam_epsilon/weight_decay")

        self._validate_numbers()

        if isinstance(self.include_num_input_tokens_seen, bool):
            self.include_num_input_tokens_seen = "non_padding" if self.include_num_input_tokens_seen else "no"
        if self.include_num_input_tokens_seen not in ("no", "all", "non_padding"):
            raise ConfigError(
                "include_num_input_tokens_seen must be a bool or one of 'no', 'all', 'non_padding', "
                f"got {self.include_num_input_tokens_seen!r}"
            )

        if self.eval_strategy == "steps" and not self.eval_steps:
            if self.logging_steps and self.logging_steps > 0:
                self.eval_steps = self.logging_steps
            else:
                raise ConfigError(
                    "eval_strategy='steps' requires a non-zero eval_steps or logging_steps"
                )
        for kind in ("logging", "eval", "save"):
            strategy = getattr(self, f"{kind}_strategy")
            value = getattr(self, f"{kind}_steps")
            if strategy == "steps":
                if value is None or value <= 0:
                    raise ConfigError(f"{kind}_strategy='steps' requires {kind}_steps > 0, got {value!r}")
                if value > 1:
                    if value != int(value):
                        raise ConfigError(f"{kind}_steps must be an integer when bigger than 1, got {value}")
                    setattr(self, f"{kind}_steps", int(value))

        if self.save_strategy == "best" and self.eval_strategy == "no":
            raise ConfigError("save_strategy='best' needs evaluations: set eval_strategy to 'steps' or 'epoch'")
        if self.load_best_model_at_end and self.save_strategy != "best":
            if self.eval_strategy != self.save_strategy:
                raise ConfigError(
                    "load_best_model_at_end requires the save and eval strategy to match (or "
                    f"save_strategy='best'), but eval_strategy={self.eval_strategy!r} and "
                    f"save_strategy={self.save_strategy!r}"
                )
            if self.eval_strategy == "steps":
                assert self.eval_steps is not None
                if (self.eval_steps < 1) != (self.save_steps < 1):
                    raise ConfigError(
                        "load_best_model_at_end requires save_steps to be a multiple of eval_steps, which cannot "
                        f"be guaranteed when mixing ratios and step counts ({self.save_steps}, {self.eval_steps})"
                    )
                big = 1_000_000
                if round(self.save_steps * big) % round(self.eval_steps * big) != 0:
                    raise ConfigError(
                        "load_best_model_at_end requires save_steps to be a multiple of eval_steps, "
                        f"but save_steps={self.save_steps}, eval_steps={self.eval_steps}"
                    )

        if (self.load_best_model_at_end or self.save_strategy == "best") and self.metric_for_best_model is None:
            self.metric_for_best_model = "loss"
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            m = self.metric_for_best_model
            self.greater_is_better = not (m.endswith("loss") or m.endswith("perplexity"))

        self.report_to = self._normalise_report_to(self.report_to)
        if self.label_names is not None:
            self.label_names = list(self.label_names)
            if len(self.label_names) != 1:
                raise ConfigError(
                    f"label_names must name exactly one key for causal LM training, got {self.label_names}"
                )
        if isinstance(self.resume_from_checkpoint, os.PathLike):
            self.resume_from_checkpoint = os.fspath(self.resume_from_checkpoint)

    def _validate_numbers(self) -> None:
        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")

        positive_int("per_device_train_batch_size")
        positive_int("per_device_eval_batch_size")
        positive_int("gradient_accumulation_steps")
        if not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool):
            raise ConfigError(f"max_steps must be an integer, got {self.max_steps!r}")
        if self.max_steps <= 0 and not (self.num_train_epochs > 0):
            raise ConfigError(
                f"num_train_epochs must be > 0 when max_steps is not set, got {self.num_train_epochs!r}"
            )
        if not (self.learning_rate >= 0):
            raise ConfigError(f"learning_rate must be >= 0, got {self.learning_rate!r}")
        if not (self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ConfigError(f"adam betas must be in [0, 1), got ({self.adam_beta1}, {self.adam_beta2})")
        if not (self.adam_epsilon >= 0):
            raise ConfigError(f"adam_epsilon must be >= 0, got {self.adam_epsilon!r}")
        if not (self.max_grad_norm >= 0):
            raise ConfigError(f"max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm!r}")
        if self.optimizer_in_backward and self.max_grad_norm > 0:
            raise ConfigError(
                f"optimizer_in_backward=True cannot clip gradients (max_grad_norm={self.max_grad_norm}): each block "
                "is updated before the global norm is known; set max_grad_norm=0"
            )
        if self.optimizer_in_backward and self.gradient_accumulation_steps != 1:
            raise ConfigError(
                f"optimizer_in_backward=True cannot accumulate micro-batches (gradient_accumulation_steps="
                f"{self.gradient_accumulation_steps}): every backward is a whole step; set gradient_accumulation_steps=1"
            )
        if isinstance(self.warmup_steps, bool) or not (self.warmup_steps >= 0):
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.warmup_steps > 1 and self.warmup_steps != int(self.warmup_steps):
            raise ConfigError(
                f"warmup_steps must be an integer number of steps, or a float < 1 (a ratio), got {self.warmup_steps}"
            )
        if not (0.0 <= self.warmup_ratio <= 1.0):
            raise ConfigError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio!r}")
        if self.warmup_ratio > 0 and self.warmup_steps > 0:
            warnings.warn("both warmup_steps and warmup_ratio are set: warmup_steps wins (as in transformers)")
        if self.save_total_limit is not None and self.save_total_limit < 0:
            raise ConfigError(f"save_total_limit must be None or >= 0, got {self.save_total_limit!r}")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 2):
            raise ConfigError(f"max_length must be an integer >= 2, got {self.max_length!r}")

    @staticmethod
    def _normalise_report_to(value: Any) -> List[str]:
        if value is None or value == "none" or value == ["none"]:
            return []
        if value == "all" or value == ["all"]:
            return available_integrations()
        if isinstance(value, str):
            value = [value]
        out: List[str] = []
        for v in value:
            v = str(v).lower()
            if v == "none":
                continue
            if v not in SUPPORTED_REPORT_TO:
                raise ConfigError(
                    f"report_to={v!r} is not supported; ferrotune reports to {list(SUPPORTED_REPORT_TO)} "
                    "(or 'all' / 'none')"
                )
            require_integration(v)
            if v not in out:
                out.append(v)
        return out

    # ------------------------------------------------------------------ helpers (transformers' API)

    @property
    def train_batch_size(self) -> int:
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size

    # the data-parallel world (ferrotune.distributed: the MPI launcher's, else one process)

    @property
    def world_size(self) -> int:
        return distributed.world_size()

    @property
    def process_index(self) -> int:
        return distributed.rank()

    @property
    def local_process_index(self) -> int:
        return distributed.local_rank()

    @property
    def should_log(self) -> bool:
        """Whether this process logs and shows progress: rank 0 alone (as transformers)."""
        return distributed.rank() == 0

    @property
    def should_save(self) -> bool:
        """Whether this process writes checkpoints and models: rank 0 alone."""
        return distributed.rank() == 0

    @property
    def n_gpu(self) -> int:
        return 0

    @property
    def device(self) -> str:
        return "cpu"

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warm-up length in steps: ``warmup_steps`` if >= 1, ``ceil(n * warmup_steps)`` if it is a
        ratio in (0, 1), else ``ceil(n * warmup_ratio)``."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        if self.warmup_steps > 0:
            return math.ceil(num_training_steps * self.warmup_steps)
        return math.ceil(num_training_steps * self.warmup_ratio)

    def to_dict(self) -> Dict[str, Any]:
        """All fields as a JSON-compatible dict (``hub_token`` masked, as transformers does)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if d.get("hub_token") is not None:
            d["hub_token"] = "<HUB_TOKEN>"
        return json.loads(json.dumps(d, default=str))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: Union[str, os.PathLike]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_dict(cls, d: Dict[str, Any], **overrides: Any) -> "TrainingArguments":
        """Build from a dict such as :meth:`to_dict` produced; unknown keys raise ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = {**d, **overrides}
        unknown = sorted(k for k in d if k not in names)
        if unknown:
            raise ConfigError(f"unknown TrainingArguments fields: {unknown}")
        return cls(**d)

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike], **overrides: Any) -> "TrainingArguments":
        """Read ``training_args.json`` (as written into checkpoints)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(2, f"No such file or directory: {path}", path)
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(d, **overrides)

    def __str__(self) -> str:
        body = ",\n".join(f"{k}={v!r}" for k, v in sorted(self.to_dict().items()))
        return f"{self.__class__.__name__}(\n{body}\n)"
