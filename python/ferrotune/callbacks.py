"""Trainer state, control flags and callbacks, with transformers' names and events.

A callback subclasses :class:`TrainerCallback` and overrides the events it needs;
each event gets ``(args, state, control, **kwargs)`` with ``model``,
``processing_class``, ``optimizer``, ``lr_scheduler``, ``train_dataloader``,
``eval_dataloader`` in ``kwargs`` (plus ``logs`` for ``on_log`` and ``metrics`` for
``on_evaluate``/``on_predict``).  A callback steers training through the
:class:`TrainerControl` flags (``should_training_stop``, ``should_save``, ...).

ferrotune adds one event, ``on_train_abort(args, state, control, error=...)``, called
when ``train()`` stops on an exception (KeyboardInterrupt, a non-finite loss, ...)
after the model and state have been brought back to the last complete step; the
built-in callbacks use it to close progress bars and flush log files.

Built in: :class:`DefaultFlowCallback` (when to log/evaluate/save),
:class:`ProgressCallback` (progress bar: loss, learning rate, tokens/s; in Jupyter the
Trainer uses ``ferrotune.notebook.NotebookProgressCallback`` instead, see
:func:`default_progress_callback`),
:class:`PrinterCallback`, :class:`EarlyStoppingCallback`,
:class:`JSONLLoggerCallback` (``report_to="jsonl"``) and
:class:`TensorBoardCallback` (``report_to="tensorboard"``); ``report_to="wandb"``/``"mlflow"``
are in :mod:`ferrotune.integrations`.
"""

from __future__ import annotations

import abc

import dataclasses
import json
import math
import os
import time
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from ._core import ConfigError
from .io import read_checkpoint_json

__all__ = [
    "TrainerState",
    "TrainerControl",
    "ExportableState",
    "TrainerCallback",
    "CallbackHandler",
    "DefaultFlowCallback",
    "ProgressCallback",
    "PrinterCallback",
    "EarlyStoppingCallback",
    "JSONLLoggerCallback",
    "TensorBoardCallback",
    "default_progress_callback",
]


@dataclass
class TrainerState:
    """The trainer's state, saved as ``trainer_state.json`` in checkpoints (transformers' schema).

    One step is one optimizer update (``gradient_accumulation_steps`` micro-batches).
    ``epoch`` is fractional during training; ``log_history`` holds every log dict
    (each with ``step``); ``best_metric``/``best_global_step``/``best_model_checkpoint``
    track ``metric_for_best_model``.
    """

    epoch: Optional[float] = 0
    global_step: int = 0
    max_steps: int = 0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: Optional[int] = None
    num_train_epochs: int = 0
    num_input_tokens_seen: int = 0
    total_flos: float = 0
    log_history: List[Dict[str, Any]] = field(default_factory=list)
    best_metric: Optional[float] = None
    best_global_step: Optional[int] = None
    best_model_checkpoint: Optional[str] = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: Optional[str] = None
    trial_params: Optional[Dict[str, Any]] = None
    stateful_callbacks: Dict[str, Any] = field(default_factory=dict)

    def to_json_string(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def save_to_json(self, json_path: Union[str, os.PathLike]) -> None:
        """Write the state as JSON (transformers' ``trainer_state.json`` layout)."""
        with open(json_path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def load_from_json(cls, json_path: Union[str, os.PathLike]) -> "TrainerState":
        """Read ``trainer_state.json``; keys this version does not know are ignored. A file that
        is not valid JSON, or a known key of the wrong type, raises
        :class:`ferrotune.CheckpointError` naming the file (and the key)."""
        json_path = os.fspath(json_path)
        if not os.path.isfile(json_path):
            raise FileNotFoundError(2, f"No such file or directory: {json_path}", json_path)
        names = {f.name for f in dataclasses.fields(cls)}
        types = {k: v for k, v in typing.get_type_hints(cls).items() if k in names}
        types.update(log_history=Optional[list], stateful_callbacks=Optional[dict])  # null: empty
        d = read_checkpoint_json(json_path, types)
        state = cls(**{k: v for k, v in d.items() if k in names})
        if state.stateful_callbacks is None:
            state.stateful_callbacks = {}
        if state.log_history is None:
            state.log_history = []
        return state

    def compute_steps(self, args: Any, max_steps: int) -> None:
        """Resolve ``logging_steps``/``eval_steps``/``save_steps`` given as ratios (< 1) of ``max_steps``."""
        for kind in ("logging", "eval", "save"):
            num_steps = getattr(args, f"{kind}_steps")
            if num_steps is not None:
                if num_steps < 1:
                    num_steps = math.ceil(max_steps * num_steps)
                setattr(self, f"{kind}_steps", int(num_steps))


class ExportableState(abc.ABC):
    """Mixin for callbacks whose state is saved in ``trainer_state.json`` (``stateful_callbacks``)."""

    @abc.abstractmethod
    def state(self) -> Dict[str, Any]:
        """The callback's ``{"args": ..., "attributes": ...}`` to save (transformers' schema)."""

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> Any:
        instance = cls(**state["args"])
        for k, v in state["attributes"].items():
            setattr(instance, k, v)
        return instance


@dataclass
class TrainerControl(ExportableState):
    """Flags callbacks set to steer the loop (transformers' ``TrainerControl``)."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_training(self) -> None:
        self.should_training_stop = False

    def _new_epoch(self) -> None:
        self.should_epoch_stop = False

    def _new_step(self) -> None:
        self.should_save = False
        self.should_evaluate = False
        self.should_log = False

    def state(self) -> Dict[str, Any]:
        return {
            "args": {
                "should_training_stop": self.should_training_stop,
                "should_epoch_stop": self.should_epoch_stop,
                "should_save": self.should_save,
                "should_evaluate": self.should_evaluate,
                "should_log": self.should_log,
            },
            "attributes": {},
        }


class TrainerCallback:
    """Base class: override the events you need (each may return a modified ``control``)."""

    def on_init_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the end of ``Trainer.__init__``."""

    def on_train_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the beginning of training (after a checkpoint was restored, when resuming)."""

    def on_train_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the end of training."""

    def on_train_abort(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """(ferrotune) When training stops on an exception (``kwargs["error"]``), after cleanup."""

    def on_epoch_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the beginning of an epoch."""

    def on_epoch_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the end of an epoch."""

    def on_step_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the beginning of an optimizer step (before its micro-batches)."""

    def on_pre_optimizer_step(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After gradient clipping, before the optimizer step."""

    def on_optimizer_step(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After the optimizer step, before the gradients are zeroed."""

    def on_substep_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After a micro-batch that is not the last of its optimizer step."""

    def on_step_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the end of an optimizer step (``state.global_step`` already counts it)."""

    def on_evaluate(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After an evaluation (``kwargs["metrics"]``)."""

    def on_predict(self, args: Any, state: TrainerState, control: TrainerControl, metrics: Any, **kwargs: Any) -> Any:
        """After ``Trainer.predict``."""

    def on_save(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After a checkpoint was saved."""

    def on_log(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After logging (``kwargs["logs"]``)."""

    def on_prediction_step(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After each evaluation/prediction batch."""


class CallbackHandler(TrainerCallback):
    """Calls the callbacks in order (internal to the Trainer)."""

    def __init__(self, callbacks: List[Any], model: Any, processing_class: Any, optimizer: Any, lr_scheduler: Any):
        self.callbacks: List[TrainerCallback] = []
        for cb in callbacks:
            self.add_callback(cb)
        self.model = model
        self.processing_class = processing_class
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.train_dataloader: Any = None
        self.eval_dataloader: Any = None

    def add_callback(self, callback: Any) -> None:
        cb = callback() if isinstance(callback, type) else callback
        cb_class = callback if isinstance(callback, type) else callback.__class__
        if cb_class in [c.__class__ for c in self.callbacks]:
            warnings.warn(f"adding a second {cb_class.__name__} to the Trainer's callbacks")
        self.callbacks.append(cb)

    def pop_callback(self, callback: Any) -> Optional[TrainerCallback]:
        for cb in self.callbacks:
            if (isinstance(callback, type) and isinstance(cb, callback)) or cb == callback:
                self.callbacks.remove(cb)
                return cb
        return None

    def remove_callback(self, callback: Any) -> None:
        self.pop_callback(callback)

    @property
    def callback_list(self) -> str:
        return "\n".join(cb.__class__.__name__ for cb in self.callbacks)

    def on_init_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        return self.call_event("on_init_end", args, state, control, **kwargs)

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        control.should_training_stop = False
        return self.call_event("on_train_begin", args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        return self.call_event("on_train_end", args, state, control, **kwargs)

    def on_train_abort(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        return self.call_event("on_train_abort", args, state, control, **kwargs)

    def on_epoch_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        control.should_epoch_stop = False
        return self.call_event("on_epoch_begin", args, state, control, **kwargs)

    def on_epoch_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        return self.call_event("on_epoch_end", args, state, control, **kwargs)

    def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        control.should_log = False
        control.should_evaluate = False
        control.should_save = False
        return self.call_event("on_step_begin", args, state, control, **kwargs)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        return self.call_event("on_pre_optimizer_step", args, state, control, **kwargs)

    def on_optimizer_step(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        return self.call_event("on_optimizer_step", args, state, control, **kwargs)

    def on_substep_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        return self.call_event("on_substep_end", args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        return self.call_event("on_step_end", args, state, control, **kwargs)

    def on_evaluate(self, args, state, control, metrics, **kwargs):  # type: ignore[no-untyped-def]
        control.should_evaluate = False
        return self.call_event("on_evaluate", args, state, control, metrics=metrics, **kwargs)

    def on_predict(self, args, state, control, metrics, **kwargs):  # type: ignore[no-untyped-def]
        return self.call_event("on_predict", args, state, control, metrics=metrics, **kwargs)

    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        control.should_save = False
        return self.call_event("on_save", args, state, control, **kwargs)

    def on_log(self, args, state, control, logs, **kwargs):  # type: ignore[no-untyped-def]
        control.should_log = False
        return self.call_event("on_log", args, state, control, logs=logs, **kwargs)

    def on_prediction_step(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        return self.call_event("on_prediction_step", args, state, control, **kwargs)

    def call_event(self, event: str, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        for callback in self.callbacks:
            result = getattr(callback, event, None)
            if result is None:
                continue  # a duck-typed callback without this (e.g. ferrotune-only) event
            result = result(
                args,
                state,
                control,
                model=self.model,
                processing_class=self.processing_class,
                tokenizer=self.processing_class,
                optimizer=self.optimizer,
                lr_scheduler=self.lr_scheduler,
                train_dataloader=self.train_dataloader,
                eval_dataloader=self.eval_dataloader,
                **kwargs,
            )
            if result is not None:
                control = result
        return control


class DefaultFlowCallback(TrainerCallback):
    """Decides when to log, evaluate and save from the strategies in the arguments (as transformers)."""

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == 1 and args.logging_first_step:
            control.should_log = True
        if args.logging_strategy == "steps" and state.global_step % state.logging_steps == 0:
            control.should_log = True
        if (
            args.eval_strategy == "steps"
            and state.global_step % state.eval_steps == 0
            and args.eval_delay <= state.global_step
        ):
            control.should_evaluate = True
        if args.save_strategy == "steps" and state.save_steps > 0 and state.global_step % state.save_steps == 0:
            control.should_save = True
        if state.global_step >= state.max_steps:
            control.should_training_stop = True
            if (
                args.eval_strategy == "steps"
                and state.global_step % state.eval_steps != 0
                and args.eval_delay <= state.global_step
            ):
                control.should_evaluate = True
            if args.save_strategy == "steps":
                control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if args.logging_strategy == "epoch":
            control.should_log = True
        if args.eval_strategy == "epoch" and args.eval_delay <= state.epoch:
            control.should_evaluate = True
        if args.save_strategy == "epoch":
            control.should_save = True
        return control


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.4g}"
    return v


class ProgressCallback(TrainerCallback):
    """A progress bar (tqdm, ``ferrotune.progress.progress_bar``: a widget in Jupyter, a text bar in a
    terminal) over the optimizer steps, showing the last logged loss, the learning rate and the
    training throughput in tokens/s; evaluation gets its own bar; log lines are printed above it."""

    def __init__(self, max_str_len: int = 100) -> None:
        self.training_bar: Any = None
        self.prediction_bar: Any = None
        self.max_str_len = max_str_len
        self.current_step = 0
        self._last_time: Optional[float] = None
        self._last_tokens = 0
        self._tok_per_s: Optional[float] = None
        self._postfix: Dict[str, Any] = {}

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        from .progress import progress_bar

        self.training_bar = progress_bar(state.max_steps, "Training", disable=bool(args.disable_tqdm), initial=state.global_step)
        self.current_step = state.global_step
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen
        self._tok_per_s = None
        self._postfix = {}

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self.training_bar is None:
            return
        now = time.perf_counter()
        if self._last_time is not None and now > self._last_time:
            rate = (state.num_input_tokens_seen - self._last_tokens) / (now - self._last_time)
            # smooth over steps so the number is readable
            self._tok_per_s = rate if self._tok_per_s is None else 0.7 * self._tok_per_s + 0.3 * rate
        self._last_time = now
        self._last_tokens = state.num_input_tokens_seen
        opt = kwargs.get("optimizer")
        lr = getattr(opt, "last_lr", None)
        if lr is None:
            lr = getattr(opt, "lr", None)
        if lr is not None:
            self._postfix["lr"] = f"{float(lr):.3g}"
        if self._tok_per_s is not None:
            self._postfix["tok/s"] = f"{self._tok_per_s:,.0f}"
        self.training_bar.set_postfix(self._postfix, refresh=False)
        self.training_bar.update(state.global_step - self.current_step)
        self.current_step = state.global_step

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):  # type: ignore[no-untyped-def]
        if eval_dataloader is None or not hasattr(eval_dataloader, "__len__"):
            return
        if self.prediction_bar is None:
            from .progress import progress_bar

            self.prediction_bar = progress_bar(len(eval_dataloader), "Evaluating", unit="batch", disable=bool(args.disable_tqdm), leave=False)
        self.prediction_bar.update(1)

    def _close_prediction_bar(self) -> None:
        if self.prediction_bar is not None:
            self.prediction_bar.close()
        self.prediction_bar = None

    def on_evaluate(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._close_prediction_bar()

    def on_predict(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._close_prediction_bar()

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if self.training_bar is None or logs is None:
            return
        if "loss" in logs:
            self._postfix["loss"] = f"{logs['loss']:.4g}"
            self.training_bar.set_postfix(self._postfix)
        shallow = {}
        for k, v in logs.items():
            if k == "total_flos":
                continue
            if isinstance(v, str) and len(v) > self.max_str_len:
                v = f"[string of length {len(v)}]"
            shallow[k] = _fmt(v)
        self.training_bar.write(str(shallow))

    def _close(self) -> None:
        self._close_prediction_bar()
        if self.training_bar is not None:
            self.training_bar.close()
        self.training_bar = None

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._close()

    def on_train_abort(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._close()


class PrinterCallback(TrainerCallback):
    """Prints every log dict (used instead of the progress bar when ``disable_tqdm=True``)."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if logs is not None:
            print({k: _fmt(v) for k, v in logs.items() if k != "total_flos"})


def default_progress_callback(args: Any) -> type:
    """The progress callback the Trainer adds (transformers' choice): :class:`PrinterCallback`
    when ``args.disable_tqdm``, else ``ferrotune.notebook.NotebookProgressCallback`` inside
    Jupyter (live table and loss plot) and :class:`ProgressCallback` elsewhere."""
    if args.disable_tqdm:
        return PrinterCallback
    from .progress import in_notebook

    if in_notebook():
        from .notebook import NotebookProgressCallback  # imports this module

        return NotebookProgressCallback
    return ProgressCallback


class EarlyStoppingCallback(TrainerCallback, ExportableState):
    """Stop training when ``metric_for_best_model`` has not improved (by more than
    ``early_stopping_threshold``) for ``early_stopping_patience`` evaluations (as transformers)."""

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: Optional[float] = 0.0) -> None:
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold or 0.0
        self.early_stopping_patience_counter = 0

    def check_metric_value(self, args, state, control, metric_value):  # type: ignore[no-untyped-def]
        better = (lambda a, b: a > b) if args.greater_is_better else (lambda a, b: a < b)
        if state.best_metric is None or (
            better(metric_value, state.best_metric)
            and abs(metric_value - state.best_metric) > self.early_stopping_threshold
        ):
            self.early_stopping_patience_counter = 0
        else:
            self.early_stopping_patience_counter += 1

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if args.metric_for_best_model is None:
            raise ConfigError("EarlyStoppingCallback requires metric_for_best_model to be set")
        if args.eval_strategy == "no":
            raise ConfigError("EarlyStoppingCallback requires eval_strategy 'steps' or 'epoch'")
        if not args.load_best_model_at_end:
            warnings.warn(
                "Using EarlyStoppingCallback without load_best_model_at_end=True: the best model will not be "
                "loaded automatically at the end of training."
            )

    def on_evaluate(self, args, state, control, metrics, **kwargs):  # type: ignore[no-untyped-def]
        metric_to_check = args.metric_for_best_model
        if metric_to_check is None:
            return
        if not metric_to_check.startswith("eval_"):
            metric_to_check = f"eval_{metric_to_check}"
        metric_value = metrics.get(metric_to_check)
        if metric_value is None:
            warnings.warn(f"early stopping needs {metric_to_check}, which the evaluation did not report")
            return
        self.check_metric_value(args, state, control, metric_value)
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            control.should_training_stop = True

    def state(self) -> Dict[str, Any]:
        return {
            "args": {
                "early_stopping_patience": self.early_stopping_patience,
                "early_stopping_threshold": self.early_stopping_threshold,
            },
            "attributes": {"early_stopping_patience_counter": self.early_stopping_patience_counter},
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    if hasattr(v, "item") and callable(v.item):
        try:
            return _jsonable(v.item())
        except (TypeError, ValueError):
            pass
    return v


class JSONLLoggerCallback(TrainerCallback):
    """Appends every log entry (``state.log_history`` items: losses, learning rate, eval metrics,
    with ``step`` and ``epoch``) as one JSON line to ``path`` (default ``output_dir/log_history.jsonl``).

    At the start of training the file is rewritten from ``state.log_history``, so after a resume it
    holds exactly the history of the resumed run."""

    def __init__(self, path: Optional[Union[str, os.PathLike]] = None) -> None:
        self.path = None if path is None else os.fspath(path)

    def _path(self, args: Any) -> str:
        return self.path or os.path.join(args.output_dir, "log_history.jsonl")

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        path = self._path(args)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for entry in state.log_history:
                f.write(json.dumps({k: _jsonable(v) for k, v in entry.items()}) + "\n")

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        entry = state.log_history[-1] if state.log_history else dict(logs or {})
        path = self._path(args)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in entry.items()}) + "\n")


def rewrite_logs(d: Dict[str, Any]) -> Dict[str, Any]:
    """transformers' TensorBoard tag layout: ``eval_loss`` -> ``eval/loss``, ``loss`` -> ``train/loss``."""
    new_d = {}
    for k, v in d.items():
        for prefix in ("eval_", "test_"):
            if k.startswith(prefix):
                new_d[prefix[:-1] + "/" + k[len(prefix):]] = v
                break
        else:
            new_d["train/" + k] = v
    return new_d


class TensorBoardCallback(TrainerCallback):
    """Writes the logged scalars to TensorBoard event files in ``args.logging_dir``
    (``report_to=["tensorboard"]``), with transformers' tags (``train/loss``, ``train/learning_rate``,
    ``train/grad_norm``, ``eval/loss``, ...), through tensorboardX's ``SummaryWriter`` (what
    transformers falls back to without torch; ``pip install tensorboardX``)."""

    def __init__(self, log_dir: Optional[Union[str, os.PathLike]] = None) -> None:
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.tb_writer: Any = None

    def _init_writer(self, args: Any) -> None:
        if self.tb_writer is None:
            from tensorboardX import SummaryWriter

            self.tb_writer = SummaryWriter(self.log_dir or args.logging_dir)

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._init_writer(args)
        self.tb_writer.add_text("args", args.to_json_string(), state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        self._init_writer(args)
        for k, v in rewrite_logs(dict(logs or {})).items():
            if isinstance(v, bool):
                continue
            if isinstance(v, (int, float)) or (hasattr(v, "item") and callable(v.item)):
                try:
                    v = float(v)
                except (TypeError, ValueError):
                    continue
                self.tb_writer.add_scalar(k, v, state.global_step)
        self.tb_writer.flush()

    def _close(self) -> None:
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._close()

    def on_train_abort(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._close()
