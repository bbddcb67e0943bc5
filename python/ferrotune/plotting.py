"""Training curves with matplotlib (imported only when a plot is drawn)."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["plot_history", "history_records"]

_MATPLOTLIB_MISSING = (
    "plot_history needs matplotlib, which is not installed: "
    "pip install matplotlib  (or: pip install 'ferrotune[notebook]')"
)


def _import_pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(_MATPLOTLIB_MISSING) from e
    return plt


def _load_path(path: str) -> List[Dict[str, Any]]:
    if os.path.isdir(path):
        candidate = os.path.join(path, "trainer_state.json")
        if not os.path.exists(candidate):
            # an output_dir: take the newest checkpoint's state
            ckpts = [
                d for d in os.listdir(path)
                if d.startswith("checkpoint-") and d[len("checkpoint-"):].isdigit()
                and os.path.exists(os.path.join(path, d, "trainer_state.json"))
            ]
            if not ckpts:
                raise FileNotFoundError(f"no trainer_state.json in {path} or its checkpoint-* directories")
            newest = max(ckpts, key=lambda d: int(d[len("checkpoint-"):]))
            candidate = os.path.join(path, newest, "trainer_state.json")
        path = candidate
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        data = json.load(f)
    if isinstance(data, dict):
        if "log_history" not in data:
            raise ValueError(f"{path} has no 'log_history' (expected a trainer_state.json)")
        return list(data["log_history"])
    if isinstance(data, list):
        return data
    raise ValueError(f"{path} holds neither a trainer state nor a list of log records")


def history_records(history: Any) -> List[Dict[str, Any]]:
    """The list of log dicts behind ``history``.

    Accepts a ``Trainer`` (its ``state.log_history``), a ``TrainerState`` or anything with
    ``log_history``, a dict with a ``"log_history"`` key, a list of dicts, or a path to a
    ``trainer_state.json``, a JSONL log, a checkpoint directory or an ``output_dir``
    (newest checkpoint).
    """
    if isinstance(history, (str, os.PathLike)):
        return _load_path(os.fspath(history))
    state = getattr(history, "state", None)
    if state is not None and hasattr(state, "log_history"):
        return list(state.log_history)
    if hasattr(history, "log_history"):
        return list(history.log_history)
    if isinstance(history, dict):
        if "log_history" in history:
            return list(history["log_history"])
        raise TypeError("a dict history must have a 'log_history' key (a trainer_state.json)")
    if isinstance(history, (list, tuple)):
        if not all(isinstance(r, dict) for r in history):
            raise TypeError("a history list must hold dicts (log records)")
        return list(history)
    raise TypeError(
        "history must be a Trainer, a TrainerState, a list of log dicts or a path, "
        f"got {type(history).__name__}"
    )


def _series(records: Sequence[Dict[str, Any]], metric: str, x_key: str) -> Tuple[List[float], List[float]]:
    xs: List[float] = []
    ys: List[float] = []
    for i, rec in enumerate(records):
        if metric not in rec:
            continue
        try:
            y = float(rec[metric])
        except (TypeError, ValueError):
            continue
        if not math.isfinite(y):
            continue
        x = rec.get(x_key, i)
        try:
            xs.append(float(x))
        except (TypeError, ValueError):
            xs.append(float(i))
        ys.append(y)
    return xs, ys


def plot_history(
    history: Any,
    metrics: Union[str, Sequence[str]] = ("loss", "eval_loss"),
    ax: Any = None,
    show: bool = False,
    *,
    x: str = "step",
    title: Optional[str] = None,
    logy: bool = False,
) -> Any:
    """Draw training and evaluation curves against the optimizer step.

    Args:
        history: a ``Trainer`` (uses ``trainer.state.log_history``), a ``TrainerState``,
            a list of log dicts (``{"loss": ..., "step": ...}``) or a path to a
            ``trainer_state.json`` / JSONL log / checkpoint / output directory.
        metrics: keys to plot; each becomes one line of the points whose record has
            that key (``"loss"`` for training, ``"eval_loss"`` for evaluation). Keys
            absent from every record are skipped.
        ax: a matplotlib ``Axes`` to draw on; a new figure when ``None``.
        show: call ``matplotlib.pyplot.show()`` (for scripts; in Jupyter the figure
            shows itself).
        x: the record key for the horizontal axis (``"step"`` or ``"epoch"``).
        title: the axes title.
        logy: logarithmic vertical axis.

    Returns:
        The matplotlib ``Figure``. In a notebook write ``fig = plot_history(trainer)``
        (or end the line with ``;``) so that it is not displayed twice.
    """
    plt = _import_pyplot()
    records = history_records(history)
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise ValueError("metrics is empty: name at least one logged key, e.g. 'loss'")

    if ax is None:
        fig, ax = plt.subplots(figsize=(7.0, 4.0))
    else:
        fig = ax.figure

    drawn = 0
    for name in names:
        xs, ys = _series(records, name, x)
        if not xs:
            continue
        is_eval = name.startswith("eval_") or name.startswith("test_")
        ax.plot(
            xs,
            ys,
            label=name,
            marker="o" if (is_eval or len(xs) == 1) else None,
            markersize=4,
            linewidth=1.5,
        )
        drawn += 1
    if drawn == 0:
        keys = sorted({k for r in records for k in r})
        raise ValueError(
            f"none of {names} is in the log history; logged keys: {keys or 'none (empty history)'}"
        )

    ax.set_xlabel(x)
    if len(names) == 1:
        ax.set_ylabel(names[0])
    else:
        ax.set_ylabel("loss" if all(n.endswith("loss") for n in names) else "value")
    if logy:
        ax.set_yscale("log")
    if title is not None:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if show:
        plt.show()
    return fig
