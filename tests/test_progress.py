"""ferrotune.progress: the built-in text bar (used when tqdm is absent) and the tqdm path."""

import io
import sys

import pytest

from ferrotune import progress as progress_mod
from ferrotune.progress import ProgressBar, format_interval


def _last_line(text):
    return text.split("\r")[-1].rstrip("\n").rstrip()


@pytest.fixture
def no_tqdm(monkeypatch):
    """Pretend tqdm is not installed."""
    monkeypatch.setattr(progress_mod, "_tqdm_class", lambda: None)


def test_format_interval():
    assert format_interval(0) == "00:00"
    assert format_interval(75.4) == "01:15"
    assert format_interval(3725) == "1:02:05"
    assert format_interval(float("nan")) == "?"


def test_text_bar_counts_and_draws(no_tqdm):
    buf = io.StringIO()
    bar = ProgressBar(total=10, desc="train", file=buf, mininterval=0)
    assert bar.backend == "text"
    for _ in range(4):
        bar.update()
    assert bar.n == 4
    line = _last_line(buf.getvalue())
    assert line.startswith("train:  40%|")
    assert "| 4/10 [" in line
    assert "step/s" in line or "s/step" in line
    bar.update(6, postfix={"loss": 1.234567, "lr": 5e-05, "epoch": 1})
    bar.close()
    out = buf.getvalue()
    assert out.endswith("\n")
    line = _last_line(out)
    assert line.startswith("train: 100%|" + "\u2588" * 20 + "| 10/10")
    assert "loss=1.235, lr=5e-05, epoch=1" in line
    assert "<00:00" in line  # ETA is zero at the end
    bar.close()  # idempotent
    assert out == buf.getvalue()


def test_text_bar_eta_and_rate(no_tqdm, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    buf = io.StringIO()
    bar = ProgressBar(total=100, file=buf, mininterval=0, unit="it")
    clock[0] += 10.0
    bar.update(25)  # 2.5 it/s -> 75 left -> 30 s
    assert bar.rate == pytest.approx(2.5)
    assert bar.eta == pytest.approx(30.0)
    line = _last_line(buf.getvalue())
    assert line == " 25%|" + "\u2588" * 5 + " " * 15 + "| 25/100 [00:10<00:30, 2.5 it/s]"
    clock[0] += 90.0
    bar.update(1)  # slow: seconds per unit
    assert "s/it" in _last_line(buf.getvalue())


def test_text_bar_unknown_total(no_tqdm):
    buf = io.StringIO()
    with ProgressBar(desc="eval", file=buf, mininterval=0, unit="batch") as bar:
        bar.update(3)
    line = _last_line(buf.getvalue())
    assert line.startswith("eval: 3 batch [00:00, ")
    assert "%" not in line


def test_text_bar_rate_limited(no_tqdm):
    buf = io.StringIO()
    bar = ProgressBar(total=1000, file=buf, mininterval=3600)
    for _ in range(999):
        bar.update()
    assert buf.getvalue().count("\r") == 1  # only the first draw
    bar.update()  # reaching total always draws
    assert buf.getvalue().count("\r") == 2
    bar.close()


def test_write_prints_above_the_bar(no_tqdm):
    buf = io.StringIO()
    bar = ProgressBar(total=4, file=buf, mininterval=0)
    bar.update(2)
    bar.write("{'loss': 1.5, 'step': 2}")
    bar.update(2)
    bar.close()
    lines = buf.getvalue().split("\n")
    # the message stands on its own line, after the bar was cleared
    assert any(l.rstrip().endswith("{'loss': 1.5, 'step': 2}") and "%" not in l.split("\r")[-1] for l in lines)
    assert "4/4" in _last_line(buf.getvalue())


def test_set_postfix_and_description(no_tqdm):
    buf = io.StringIO()
    bar = ProgressBar(total=2, file=buf, mininterval=0)
    bar.set_postfix({"loss": 0.5}, tok_s=1234.5)
    assert bar.postfix == {"loss": 0.5, "tok_s": 1234.5}
    bar.set_description("epoch 1")
    line = _last_line(buf.getvalue())
    assert line.startswith("epoch 1:   0%")
    assert "loss=0.5, tok_s=1234" in line  # 4 significant digits
    bar.reset(total=5)
    assert bar.n == 0 and bar.total == 5
    bar.close()


def test_disable_draws_nothing_but_counts(no_tqdm):
    buf = io.StringIO()
    bar = ProgressBar(total=3, file=buf, disable=True)
    bar.update(2, postfix={"loss": 1.0})
    bar.write("hidden")
    bar.close()
    assert bar.n == 2
    assert buf.getvalue() == ""


def test_ascii_fallback_for_non_unicode_streams(no_tqdm):
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    bar = ProgressBar(total=2, file=stream, mininterval=0)
    bar.update(2)
    bar.close()
    stream.flush()
    assert "|####################| 2/2" in raw.getvalue().decode("ascii")


def test_default_stream_is_stderr(no_tqdm, capsys):
    bar = ProgressBar(total=1, mininterval=0)
    bar.update()
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "1/1" in captured.err


def test_use_tqdm_true_without_tqdm_raises(no_tqdm):
    with pytest.raises(ImportError, match="tqdm"):
        ProgressBar(total=1, use_tqdm=True)


def test_tqdm_backend():
    pytest.importorskip("tqdm", reason="tqdm is not installed")
    buf = io.StringIO()
    bar = ProgressBar(total=5, desc="train", file=buf)
    assert bar.backend == "tqdm"
    bar.update(2, postfix={"loss": 2.0})
    bar.update(3)
    assert bar.n == 5
    bar.close()
    text = buf.getvalue()
    assert "5/5" in text and "loss=2" in text
    # disabled tqdm still counts
    off = ProgressBar(total=5, file=buf, disable=True)
    off.update(4)
    assert off.n == 4
    off.close()


def test_use_tqdm_false_forces_text(monkeypatch):
    buf = io.StringIO()
    bar = ProgressBar(total=1, file=buf, use_tqdm=False, mininterval=0)
    assert bar.backend == "text"
    bar.update()
    bar.close()
    assert "1/1" in buf.getvalue()
    assert sys.modules.get("ferrotune.progress") is progress_mod


class _FakeShell:
    config = {"IPKernelApp": {}}


def test_jupyter_without_ipywidgets_uses_flat_text_bars(monkeypatch):
    """In a notebook without ipywidgets: tqdm's text bar (no IProgress warning), and nested
    bars (training + evaluation) stay on one line instead of using cursor-up codes."""
    tqdm_std = pytest.importorskip("tqdm.std", reason="tqdm is not installed")
    fake_ipython = type(sys)("IPython")
    fake_ipython.get_ipython = lambda: _FakeShell()
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails
    assert progress_mod._in_notebook()
    assert progress_mod._tqdm_class() is tqdm_std.tqdm
    buf = io.StringIO()
    outer = ProgressBar(total=3, desc="Training", file=buf)
    inner = ProgressBar(total=2, desc="Evaluating", file=buf)
    inner.update(2)
    inner.close()
    outer.update(3)
    outer.close()
    assert "\x1b[A" not in buf.getvalue()


def test_terminal_is_not_a_notebook(monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", None)
    assert not progress_mod._in_notebook()
