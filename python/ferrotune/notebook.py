"""A live training display for Jupyter (transformers' ``NotebookProgressCallback``).

While training runs, one output area shows a progress bar, a table with one row per
evaluation (one per logged loss when there is no evaluation) — Step (or Epoch), Training
Loss, Validation Loss, then the evaluation metrics — and, when matplotlib is installed, a
loss plot. The area is an IPython display handle redrawn in place (``display(...,
display_id=True)`` then ``handle.update(...)``) at most every :attr:`update_every` seconds,
plus after each evaluation and at the end. Outside Jupyter the callback prints the table's
rows as text. The Trainer uses it instead of :class:`~ferrotune.ProgressCallback` inside a
notebook (see :func:`ferrotune.callbacks.default_progress_callback`).
"""

from __future__ import annotations

import base64
import html
import io
import time
from typing import Any, Dict, List, Optional, Tuple

from .callbacks import TrainerCallback
from tqdm.std import tqdm

from .progress import in_notebook

__all__ = ["NotebookProgressCallback"]

_SPEED_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second")


def _is_eval_loss(key: str) -> bool:
    return key.startswith("eval_") and key.endswith("_loss")


def _eval_cells(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """The table cells of one evaluation: ``eval_loss`` -> Validation Loss, ``eval_perplexity`` ->
    Perplexity; a dataset of a dict (``eval_<name>_loss``, ...) -> ``Validation Loss (<name>)``, ...
    Runtime and throughput are left out (as transformers)."""
    prefix = min((k[: -len("_loss")] for k in metrics if _is_eval_loss(k)), key=len, default="eval")
    suffix = f" ({prefix[len('eval_'):]})" if prefix != "eval" else ""
    cells = {}
    for k, v in metrics.items():
        if not k.startswith(prefix + "_") or k.endswith(_SPEED_SUFFIXES):
            continue
        name = k[len(prefix) + 1 :]
        title = "Validation Loss" if name == "loss" else " ".join(p.capitalize() for p in name.split("_"))
        cells[title + suffix] = v
    return cells


def _cell(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def _html_bar(value: int, total: int, label: str) -> str:
    return (
        f"<div><progress value='{value}' max='{max(total, 1)}' "
        f"style='width:300px; height:20px; vertical-align: middle;'></progress> {html.escape(label)}</div>"
    )


def _filled(columns: List[str], rows: List[Dict[str, Any]]) -> List[str]:
    """The columns to show: all before the first row, then those some row fills."""
    return [c for c in columns if not rows or any(c in r for r in rows)]


def _html_table(columns: List[str], rows: List[Dict[str, Any]]) -> str:
    columns = _filled(columns, rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c, '')))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return (
        f'<table border="1" class="dataframe"><thead><tr style="text-align: left;">{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _loss_plot_png(records: List[Dict[str, Any]]) -> Optional[bytes]:
    """The training and validation loss curves as PNG bytes; ``None`` without matplotlib or data."""
    try:
        from matplotlib.figure import Figure  # a figure outside pyplot: Jupyter does not show it by itself
    except ImportError:
        return None
    from .plotting import plot_history

    keys = ["loss"] + sorted({k for r in records for k in r if _is_eval_loss(k)})
    keys = [k for k in keys if any(k in r for r in records)]
    if not keys:
        return None
    fig = Figure(figsize=(6.0, 3.2), dpi=80)
    plot_history(records, metrics=keys, ax=fig.subplots())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _show(content: str, handle: Any) -> Any:
    """Show ``content`` (HTML) in a new output area, or redraw ``handle``'s in place; returns the handle."""
    from IPython.display import HTML, display

    if handle is None:
        return display(HTML(content), display_id=True)
    handle.update(HTML(content))
    return handle


class NotebookProgressCallback(TrainerCallback):
    """Progress bar, metrics table and loss plot of a training run, redrawn in place in Jupyter."""

    update_every = 0.2
    """Seconds between two redraws (evaluations and the end of training always redraw)."""
    plot_every = 2.0
    """Seconds between two renders of the loss plot (the last one is always drawn)."""

    def __init__(self) -> None:
        self.columns: List[str] = []
        self.rows: List[Dict[str, Any]] = []
        self._row_steps: List[int] = []
        self._live = False
        self._training = False
        self._handle: Any = None
        self._last_draw = float("-inf")
        self._step = self._max_steps = self._start_step = 0
        self._start = 0.0
        self._comment = ""
        self._eval: Optional[Tuple[int, int]] = None  # (batches done, batches) of a running evaluation
        self._history: List[Dict[str, Any]] = []  # the trainer's state.log_history (appended to in place)
        self._plot: Optional[bytes] = None
        self._plot_stale = False
        self._last_plot = float("-inf")
        self._printed = 0

    # ------------------------------------------------------------------ table

    def _add_row(self, step: int, values: Dict[str, Any]) -> None:
        """Add a row, or complete the row of the same step (one per eval dataset of a dict)."""
        for name in values:
            if name not in self.columns:
                self.columns.append(name)
        if self._row_steps and self._row_steps[-1] == step:
            self.rows[-1].update(values)
        else:
            self.rows.append(dict(values))
            self._row_steps.append(step)

    def _first(self, step: int, epoch: Optional[float]) -> Dict[str, Any]:
        if self.columns[0] == "Epoch":
            return {"Epoch": int(epoch or 0)}
        return {"Step": step}

    def _add_eval_row(self, step: int, epoch: Optional[float], metrics: Dict[str, Any], last_loss: Any) -> None:
        self._add_row(step, {**self._first(step, epoch), "Training Loss": last_loss, **_eval_cells(metrics)})

    # ------------------------------------------------------------------ drawing

    def _label(self) -> str:
        done = self._step - self._start_step
        elapsed = time.monotonic() - self._start
        label = f"[{self._step}/{self._max_steps} {tqdm.format_interval(elapsed)}"
        if done > 0 and elapsed > 0:
            remaining = elapsed / done * (self._max_steps - self._step)
            label += f" < {tqdm.format_interval(remaining)}, {done / elapsed:.2f} it/s"
        return label + (f", {self._comment}]" if self._comment else "]")

    def _html(self) -> str:
        parts = []
        if self._training:
            parts += [_html_bar(self._step, self._max_steps, self._label()), _html_table(self.columns, self.rows)]
        if self._eval is not None:
            done, total = self._eval
            parts.append(_html_bar(done, total, f"[{done}/{total}] Evaluating"))
        if self._training and self._plot is not None:
            parts.append(f'<img src="data:image/png;base64,{base64.b64encode(self._plot).decode()}"/>')
        return "\n".join(parts)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < self.update_every:
            return
        self._last_draw = now
        if not self._live:
            self._print_rows(final=False)
            return
        if self._plot_stale and (force or now - self._last_plot >= self.plot_every):
            self._plot = _loss_plot_png(self._history)
            self._plot_stale = False
            self._last_plot = now
        self._handle = _show(self._html(), self._handle)

    def _print_rows(self, final: bool) -> None:
        """Text fallback: print the rows that are complete (all of them at the end)."""
        upto = len(self.rows) if final else len(self.rows) - 1
        columns = _filled(self.columns, self.rows)
        widths = [max(len(c), 12) for c in columns]
        for i in range(self._printed, upto):
            if i == 0:
                print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
            print("  ".join(_cell(self.rows[i].get(c, "")).rjust(w) for c, w in zip(columns, widths)))
        self._printed = max(self._printed, upto)

    # ------------------------------------------------------------------ events

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._live = in_notebook()
        self._training = True
        self._handle = None
        self.columns = ["Epoch" if args.eval_strategy == "epoch" else "Step", "Training Loss"]
        if args.eval_strategy != "no":
            self.columns.append("Validation Loss")
        self.rows, self._row_steps, self._printed = [], [], 0
        self._step = self._start_step = state.global_step
        self._max_steps = state.max_steps
        self._start = time.monotonic()
        self._comment = ""
        self._history = state.log_history
        last_loss: Any = "No log"
        for rec in self._history:  # a resumed run: the rows of its earlier steps
            if "loss" in rec:
                last_loss = rec["loss"]
                if args.eval_strategy == "no":
                    first = self._first(rec["step"], rec.get("epoch"))
                    self._add_row(rec["step"], {**first, "Training Loss": rec["loss"]})
            elif any(_is_eval_loss(k) for k in rec):
                self._add_eval_row(rec["step"], rec.get("epoch"), rec, last_loss)
        self._plot, self._plot_stale, self._last_plot = None, bool(self._history), float("-inf")
        self._draw(force=True)

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if not self._training:
            return
        self._step = state.global_step
        epoch = state.epoch or 0
        shown = int(epoch) if int(epoch) == epoch else f"{epoch:.2f}"
        self._comment = f"Epoch {shown}/{state.num_train_epochs}"
        self._draw()

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if not self._training or not logs:
            return
        if "loss" in logs or any(_is_eval_loss(k) for k in logs):
            self._plot_stale = True
        if args.eval_strategy == "no" and "loss" in logs:
            first = self._first(state.global_step, state.epoch)
            self._add_row(state.global_step, {**first, "Training Loss": logs["loss"]})
            self._draw()

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):  # type: ignore[no-untyped-def]
        if not hasattr(eval_dataloader, "__len__"):
            return
        if not self._training:
            self._live = in_notebook()
        done = 1 if self._eval is None else self._eval[0] + 1
        self._eval = (done, len(eval_dataloader))
        if self._live:
            self._draw()

    def _end_evaluation(self) -> None:
        self._eval = None
        if not self._training and self._live and self._handle is not None:
            _show("", self._handle)  # a standalone evaluation bar goes away, as transformers'
            self._handle = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # type: ignore[no-untyped-def]
        if self._training:
            last_loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), "No log")
            self._add_eval_row(state.global_step, state.epoch, dict(metrics or {}), last_loss)
            self._eval = None
            self._draw(force=True)  # an evaluation takes a while: show its row now
        else:
            self._end_evaluation()

    def on_predict(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._end_evaluation()

    def _finish(self, state: Any) -> None:
        if not self._training:
            return
        self._step = state.global_step
        self._eval = None
        self._draw(force=True)
        self._training = False
        if not self._live:
            self._print_rows(final=True)
        self._handle = None

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._finish(state)

    def on_train_abort(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._finish(state)
