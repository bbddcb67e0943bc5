"""ferrotune.progress: which tqdm bar a terminal and Jupyter get, and the Trainer's bar."""

import sys

import pytest
from tqdm.std import tqdm as text_tqdm

from ferrotune import progress as progress_mod
from ferrotune.progress import progress_bar


class _FakeShell:
    config = {"IPKernelApp": {}}


@pytest.fixture
def jupyter(monkeypatch):
    fake_ipython = type(sys)("IPython")
    fake_ipython.get_ipython = lambda: _FakeShell()
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)


def test_terminal_gets_the_text_bar(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "IPython", None)
    assert not progress_mod.in_notebook()
    with progress_bar(5, "train") as bar:
        assert type(bar) is text_tqdm
        bar.set_postfix({"loss": "2.0"}, refresh=False)
        bar.update(5)
    err = capsys.readouterr().err
    assert "train" in err and "5/5" in err and "loss=2.0" in err


def test_jupyter_without_ipywidgets_gets_flat_text_bars(jupyter, monkeypatch, capsys):
    """No IProgress warning, and nested bars (training + evaluation) stay on one line instead
    of tqdm's cursor-up codes, which Jupyter's output area prints as garbage."""
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails
    assert progress_mod.in_notebook()
    outer = progress_bar(3, "Training")
    inner = progress_bar(2, "Evaluating", leave=False)
    assert type(outer) is text_tqdm and outer.pos == 0 and inner.pos == 0
    inner.update(2)
    inner.close()
    outer.update(3)
    outer.close()
    assert "\x1b[A" not in capsys.readouterr().err


def test_jupyter_with_ipywidgets_gets_the_widget(jupyter, monkeypatch):
    pytest.importorskip("ipywidgets", reason="ipywidgets (the notebook extra) is not installed")
    from tqdm.notebook import tqdm as notebook_tqdm

    monkeypatch.setattr(notebook_tqdm, "status_printer", staticmethod(lambda *a, **k: None))  # no widget without a kernel
    bar = progress_bar(2, "Training", disable=False)
    assert isinstance(bar, notebook_tqdm)


def test_disabled_bar_draws_nothing_and_resumed_bar_starts_at_its_step(capsys):
    with progress_bar(4, "quiet", disable=True) as bar:
        bar.update(4)
    assert capsys.readouterr().err == ""
    with progress_bar(10, "resumed", initial=6) as bar:
        assert bar.n == 6
        bar.update(1)
    assert "7/10" in capsys.readouterr().err
