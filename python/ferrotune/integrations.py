"""``report_to`` integrations: which names exist, which are installed, and their callbacks.

``jsonl`` is built in (ferrotune writes the file itself). ``tensorboard`` writes event files
through tensorboardX (what transformers uses without torch), ``wandb`` and ``mlflow`` log
through the library's own Python API, as transformers' ``WandbCallback`` and ``MLflowCallback``
do; each needs its package (``pip install tensorboardX`` / ``wandb`` / ``mlflow``).
``report_to="all"`` means ``jsonl`` plus those that are installed.

Environment variables read (transformers' names and defaults):

- ``WANDB_PROJECT``: the W&B project of a run the callback starts (default ``"huggingface"``);
  the run is named ``args.run_name``. A run started with ``wandb.init`` before training is used
  as it is, and left open. wandb reads its own settings (``WANDB_API_KEY``, ``WANDB_ENTITY``,
  ``WANDB_MODE``, ...) itself.
- ``MLFLOW_TRACKING_URI``: where runs are stored (else MLflow's own default).
- ``MLFLOW_EXPERIMENT_NAME``: the experiment, created when missing (else MLflow's default one).
- ``MLFLOW_RUN_ID``: log into this existing run (e.g. when resuming from a checkpoint).
- ``MLFLOW_NESTED_RUN``: ``true``/``1`` starts a run nested in the active one.
- ``MLFLOW_TAGS``: a JSON object of tags set on the run.

Not implemented: transformers' ``WANDB_LOG_MODEL`` and ``HF_MLFLOW_LOG_ARTIFACTS`` (uploading
checkpoints), ``WANDB_WATCH`` (PyTorch hooks), ``MLFLOW_FLATTEN_PARAMS``,
``MLFLOW_MAX_LOG_PARAMS``, and the ``WANDB_DISABLED``/``DISABLE_MLFLOW_INTEGRATION`` switches
(``report_to`` chooses the integrations).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Type

from ._core import ConfigError
from .callbacks import JSONLLoggerCallback, TensorBoardCallback, TrainerCallback, rewrite_logs

__all__ = [
    "IntegrationNotInstalledError",
    "WandbCallback",
    "MLflowCallback",
    "SUPPORTED_REPORT_TO",
    "available_integrations",
    "require_integration",
    "get_reporting_integration_callbacks",
]


class IntegrationNotInstalledError(ConfigError, ImportError):
    """``report_to`` names an integration whose Python package is not installed."""


# report_to name -> the package it needs (None: built in)
_PACKAGES: Dict[str, Optional[str]] = {"tensorboard": "tensorboardX", "jsonl": None, "wandb": "wandb", "mlflow": "mlflow"}

SUPPORTED_REPORT_TO = tuple(_PACKAGES)
"""Integrations accepted in ``report_to``."""

# logged once per run: W&B shows them in the run summary instead of as a curve (as transformers)
_SUMMARY_KEYS = (
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_tokens_per_second",
    "train_loss",
    "total_flos",
)


def _installed(module: str) -> bool:
    if module in sys.modules:  # already imported (or blocked with None)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def available_integrations() -> List[str]:
    """What ``report_to="all"`` means: the built-in integrations and the installed ones."""
    return [name for name, package in _PACKAGES.items() if package is None or _installed(package)]


def require_integration(name: str) -> None:
    """Raise :class:`IntegrationNotInstalledError` when ``name`` needs a package that is missing."""
    package = _PACKAGES[name]
    if package is not None and not _installed(package):
        raise IntegrationNotInstalledError(
            f"report_to={name!r} logs through the {package} package, which is not installed: pip install {package}"
        )


def get_reporting_integration_callbacks(report_to: Sequence[str]) -> List[Type[TrainerCallback]]:
    """The callback classes for the (normalised) ``TrainingArguments.report_to`` names, in order."""
    return [_CALLBACKS[name] for name in report_to]


def _run_config(args: Any, model: Any) -> Dict[str, Any]:
    """The model's config, then the training arguments over it (transformers' ``combined_dict``)."""
    combined: Dict[str, Any] = {}
    config = getattr(model, "config", None)
    if config is not None:
        combined.update(config.to_dict())
    combined.update(args.to_dict())
    peft_config = getattr(model, "peft_config", None)
    if peft_config is not None:
        combined["peft_config"] = peft_config.to_dict()
    return combined


def _number(v: Any) -> Optional[float]:
    """``v`` as a float when it is a real number (numpy scalars included), else ``None``."""
    if isinstance(v, bool) or isinstance(v, str):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


class WandbCallback(TrainerCallback):
    """Logs to Weights & Biases (``report_to=["wandb"]``): ``wandb.init`` (project ``WANDB_PROJECT``,
    name ``args.run_name``) with the model config and training arguments as the run config, then
    every log as ``wandb.log`` with transformers' keys (``train/loss``, ``eval/loss``, ...) and
    ``train/global_step`` as the x-axis; end-of-training figures (``train_runtime``,
    ``train_loss``, ...) go to the run summary. A run this callback started is finished at the end
    of training (a later ``trainer.evaluate()`` resumes it); a run you started is left open."""

    def __init__(self) -> None:
        require_integration("wandb")
        self._wandb: Any = importlib.import_module("wandb")
        self._initialized = False
        self._own_run = False
        self._run_id: Optional[str] = None

    def setup(self, args: Any, state: Any, model: Any) -> None:
        wandb = self._wandb
        if wandb.run is None:
            init_args: Dict[str, Any] = {"project": os.getenv("WANDB_PROJECT", "huggingface")}
            if args.run_name is not None:
                init_args["name"] = args.run_name
            if self._run_id is not None:  # evaluating after training: back into the same run
                init_args.update(id=self._run_id, resume="allow")
            self._run_id = wandb.init(**init_args).id
            self._own_run = True
        config = _run_config(args, model)
        if hasattr(model, "num_parameters"):
            config["model/num_parameters"] = model.num_parameters()
        wandb.config.update(config, allow_val_change=True)
        wandb.define_metric("train/global_step")
        wandb.define_metric("*", step_metric="train/global_step", step_sync=True)
        self._initialized = True

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
        if not self._initialized:
            self.setup(args, state, model)

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if not self._initialized:
            self.setup(args, state, model)
        logs = dict(logs or {})
        for k in _SUMMARY_KEYS:
            if k in logs:
                self._wandb.run.summary[k] = logs.pop(k)
        self._wandb.log({**rewrite_logs(logs), "train/global_step": state.global_step})

    def _finish(self, exit_code: int) -> None:
        if self._own_run:  # a later log (trainer.evaluate()) resumes it: see setup
            self._wandb.finish(exit_code=exit_code)
            self._own_run = self._initialized = False

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._finish(exit_code=0)

    def on_train_abort(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._finish(exit_code=1)


def _env_flag(name: str) -> bool:
    return os.getenv(name, "false").strip().lower() in ("1", "true", "yes", "on")


class MLflowCallback(TrainerCallback):
    """Logs to MLflow (``report_to=["mlflow"]``): ``mlflow.start_run`` (name ``args.run_name``; see
    the module docs for the environment variables), the model config and training arguments as
    params (batched, each value cut to MLflow's length limit), every numeric log value through
    ``mlflow.log_metrics`` at ``step=state.global_step``, and ``mlflow.end_run`` at the end of
    training (status ``KILLED``/``FAILED`` when training stops on Ctrl-C/an error) for a run it
    started; a run that was active before training is left open."""

    def __init__(self) -> None:
        require_integration("mlflow")
        self._mlflow: Any = importlib.import_module("mlflow")
        self._initialized = False
        self._own_run = False
        self._run_id: Optional[str] = None

    def setup(self, args: Any, state: Any, model: Any) -> None:
        mlflow = self._mlflow
        tracking_uri = os.getenv("MLFLOW_TRACKING_URI")
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        first_setup = self._run_id is None
        resume_id = self._run_id or os.getenv("MLFLOW_RUN_ID") or None
        nested = _env_flag("MLFLOW_NESTED_RUN")
        if mlflow.active_run() is None or nested or resume_id:
            experiment = os.getenv("MLFLOW_EXPERIMENT_NAME")
            if experiment and resume_id is None:
                mlflow.set_experiment(experiment)  # created when missing
            mlflow.start_run(run_id=resume_id, run_name=args.run_name, nested=nested)
            self._own_run = True
        self._run_id = mlflow.active_run().info.run_id
        if first_setup:
            self._log_params(_run_config(args, model))
            tags = os.getenv("MLFLOW_TAGS")
            if tags:
                mlflow.set_tags(json.loads(tags))
        self._initialized = True

    def _log_params(self, params: Dict[str, Any]) -> None:
        limits = self._mlflow.utils.validation
        max_len, per_batch = limits.MAX_PARAM_VAL_LENGTH, limits.MAX_PARAMS_TAGS_PER_BATCH
        items = [(k, str(v)[:max_len]) for k, v in params.items()]
        for i in range(0, len(items), per_batch):
            self._mlflow.log_params(dict(items[i : i + per_batch]))

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
        if not self._initialized:
            self.setup(args, state, model)

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if not self._initialized:
            self.setup(args, state, model)
        metrics = {k: x for k, x in ((k, _number(v)) for k, v in (logs or {}).items()) if x is not None}
        self._mlflow.log_metrics(metrics, step=state.global_step)

    def _end(self, status: str) -> None:
        if self._own_run:  # a later log (trainer.evaluate()) starts it again: see setup
            self._mlflow.end_run(status=status)
            self._own_run = self._initialized = False

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._end("FINISHED")

    def on_train_abort(self, args, state, control, error=None, **kwargs):  # type: ignore[no-untyped-def]
        self._end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")


_CALLBACKS: Dict[str, Type[TrainerCallback]] = {
    "tensorboard": TensorBoardCallback,
    "jsonl": JSONLLoggerCallback,
    "wandb": WandbCallback,
    "mlflow": MLflowCallback,
}
