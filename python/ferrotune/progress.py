"""A progress bar that renders in Jupyter and in a terminal.

``ProgressBar`` uses tqdm when it is installed: a widget in Jupyter when ipywidgets is
there, text in a terminal or in a notebook without ipywidgets. Without tqdm it draws its
own text bar on stderr, with rate, elapsed time, ETA and a postfix (loss, learning
rate, ...)::

    train:  42%|████████▍           | 42/100 [00:13<00:18, 3.2 step/s, loss=2.31, lr=4.2e-04]
"""

from __future__ import annotations

import sys
import time
from typing import Any, Dict, Mapping, Optional, TextIO

__all__ = ["ProgressBar", "format_interval"]


def format_interval(seconds: float) -> str:
    """``75`` -> ``"01:15"``; ``3725`` -> ``"1:02:05"`` (tqdm's format)."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # nan / inf
        return "?"
    total = int(round(max(seconds, 0.0)))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _format_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) or hasattr(v, "dtype"):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return str(v)
        return f"{f:.4g}"
    return str(v)


def _format_postfix(postfix: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_format_value(v)}" for k, v in postfix.items())


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (the test tqdm.auto uses)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:
        return False


def _tqdm_class() -> Any:
    """tqdm's notebook widget inside Jupyter when ipywidgets is installed, else its text bar.

    This is ``tqdm.auto``'s choice, minus its warning when ipywidgets is missing (the
    text bar works in Jupyter too). ``None`` when tqdm is not installed.
    """
    try:
        from tqdm.std import tqdm as text_tqdm
    except ImportError:
        return None
    if _in_notebook():
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm as notebook_tqdm
        except ImportError:
            return text_tqdm
        return notebook_tqdm
    return text_tqdm


class ProgressBar:
    """Progress over ``total`` units (optimizer steps, batches, ...).

    Args:
        total: number of units, or ``None`` when unknown (no percentage or ETA).
        desc: label shown before the bar.
        disable: draw nothing (``n`` still counts).
        unit: name of a unit, shown in the rate.
        file: stream for the text bar (default ``sys.stderr``).
        use_tqdm: ``None`` uses tqdm when importable; ``False`` forces the built-in
            text bar; ``True`` requires tqdm.
        mininterval: the text bar redraws at most this often (seconds).
        leave: keep the finished bar on screen.
    """

    def __init__(
        self,
        total: Optional[int] = None,
        desc: str = "",
        disable: bool = False,
        unit: str = "step",
        *,
        file: Optional[TextIO] = None,
        use_tqdm: Optional[bool] = None,
        mininterval: float = 0.1,
        leave: bool = True,
        initial: int = 0,
    ) -> None:
        self.total = None if total is None else int(total)
        self.desc = desc
        self.disable = bool(disable)
        self.unit = unit
        self.leave = leave
        self.mininterval = mininterval
        self._file = file
        self._n = int(initial)
        self._initial = int(initial)
        self._postfix: Dict[str, Any] = {}
        self._closed = False
        self._start = time.monotonic()
        self._last_draw = float("-inf")
        self._last_len = 0
        self._tqdm: Any = None

        tqdm_cls = _tqdm_class() if use_tqdm is not False else None
        if use_tqdm and tqdm_cls is None:
            raise ImportError("use_tqdm=True but tqdm is not installed (pip install tqdm)")
        self.backend = "tqdm" if tqdm_cls is not None else "text"
        if self.disable:
            return
        if tqdm_cls is not None:
            extra: Dict[str, Any] = {}
            if _in_notebook() and getattr(tqdm_cls, "__module__", "") == "tqdm.std":
                # Jupyter's output area does not understand the cursor-up codes tqdm uses
                # to stack nested bars (training + evaluation): keep every bar on one line.
                extra["position"] = 0
            self._tqdm = tqdm_cls(
                total=self.total,
                desc=desc or None,
                unit=unit,
                file=file,
                leave=leave,
                initial=initial,
                dynamic_ncols=True,
                **extra,
            )
        else:
            self._draw(force=True)

    # ------------------------------------------------------------------ state

    @property
    def n(self) -> int:
        """Units completed so far."""
        return self._n

    @property
    def postfix(self) -> Dict[str, Any]:
        return dict(self._postfix)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    @property
    def rate(self) -> Optional[float]:
        """Units per second since the start (``None`` before any progress)."""
        done = self._n - self._initial
        dt = self.elapsed
        if done <= 0 or dt <= 0:
            return None
        return done / dt

    @property
    def eta(self) -> Optional[float]:
        """Estimated seconds left, ``None`` when unknown."""
        r = self.rate
        if r is None or self.total is None:
            return None
        return max(self.total - self._n, 0) / r

    # ------------------------------------------------------------------ updates

    def update(self, n: int = 1, postfix: Optional[Mapping[str, Any]] = None) -> None:
        """Advance by ``n`` units, optionally replacing the postfix."""
        if self._closed:
            return
        self._n += int(n)
        if postfix is not None:
            self._postfix = dict(postfix)
        if self.disable:
            return
        if self._tqdm is not None:
            if postfix is not None:
                self._tqdm.set_postfix(self._postfix_strs(), refresh=False)
            self._tqdm.update(int(n))
        else:
            self._draw(force=self.total is not None and self._n >= self.total)

    def set_postfix(self, postfix: Optional[Mapping[str, Any]] = None, refresh: bool = True, **kwargs: Any) -> None:
        """Replace the ``key=value`` items shown after the bar."""
        self._postfix = dict(postfix or {}, **kwargs)
        if self.disable or self._closed:
            return
        if self._tqdm is not None:
            self._tqdm.set_postfix(self._postfix_strs(), refresh=refresh)
        elif refresh:
            self._draw(force=True)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self.disable or self._closed:
            return
        if self._tqdm is not None:
            self._tqdm.set_description(desc or None)
        else:
            self._draw(force=True)

    def reset(self, total: Optional[int] = None) -> None:
        """Start over at 0 (for a new epoch or evaluation), optionally with a new total."""
        if total is not None:
            self.total = int(total)
        self._n = self._initial = 0
        self._start = time.monotonic()
        if self.disable or self._closed:
            return
        if self._tqdm is not None:
            self._tqdm.reset(total=self.total)
        else:
            self._draw(force=True)

    def write(self, s: str) -> None:
        """Print a message above the bar without breaking it."""
        if self.disable:
            return
        if self._tqdm is not None:
            self._tqdm.write(s, file=self._file)
            return
        out = self._stream()
        if not self._closed and self._last_len:
            out.write("\r" + " " * self._last_len + "\r")
        out.write(s + "\n")
        out.flush()
        if not self._closed:
            self._last_len = 0
            self._draw(force=True)

    def refresh(self) -> None:
        if self.disable or self._closed:
            return
        if self._tqdm is not None:
            self._tqdm.refresh()
        else:
            self._draw(force=True)

    def close(self) -> None:
        """Finish the bar (idempotent)."""
        if self._closed:
            return
        if not self.disable:
            if self._tqdm is not None:
                self._tqdm.close()
            else:
                self._draw(force=True)
                out = self._stream()
                if self.leave:
                    out.write("\n")
                else:
                    out.write("\r" + " " * self._last_len + "\r")
                out.flush()
        self._closed = True

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return self.format()

    # ------------------------------------------------------------------ text backend

    def _postfix_strs(self) -> Dict[str, str]:
        return {k: _format_value(v) for k, v in self._postfix.items()}

    def _stream(self) -> TextIO:
        return self._file if self._file is not None else sys.stderr

    def _unicode(self) -> bool:
        enc = getattr(self._stream(), "encoding", None) or "utf-8"
        try:
            (_BLOCK + _PARTIAL).encode(enc)
        except (UnicodeEncodeError, LookupError):
            return False
        return True

    def format(self, width: int = 20) -> str:
        """The text line of the built-in bar (also used for ``repr``)."""
        elapsed = self.elapsed
        rate = self.rate
        prefix = f"{self.desc}: " if self.desc else ""
        if rate is None:
            rate_s = f"? {self.unit}/s"
        elif rate >= 1 or rate == 0:
            rate_s = f"{rate:.3g} {self.unit}/s"
        else:
            rate_s = f"{1.0 / rate:.3g} s/{self.unit}"
        tail = [rate_s]
        if self._postfix:
            tail.append(_format_postfix(self._postfix))
        if self.total:
            frac = min(max(self._n / self.total, 0.0), 1.0)
            filled = frac * width
            full = int(filled)
            if self._unicode():
                bar = _BLOCK * full
                if full < width:
                    partial = int((filled - full) * 8)
                    bar += _PARTIAL[partial] + " " * (width - full - 1)
            else:
                bar = "#" * full + " " * (width - full)
            eta = self.eta
            times = f"{format_interval(elapsed)}<{format_interval(eta) if eta is not None else '?'}"
            return f"{prefix}{frac * 100:3.0f}%|{bar}| {self._n}/{self.total} [{times}, {', '.join(tail)}]"
        return f"{prefix}{self._n} {self.unit} [{format_interval(elapsed)}, {', '.join(tail)}]"

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < self.mininterval:
            return
        self._last_draw = now
        line = self.format()
        out = self._stream()
        pad = " " * max(self._last_len - len(line), 0)
        out.write("\r" + line + pad)
        out.flush()
        self._last_len = len(line)


_BLOCK = "\u2588"
_PARTIAL = " \u258f\u258e\u258d\u258c\u258b\u258a\u2589"
