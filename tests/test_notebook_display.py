"""ferrotune.notebook: the live table / progress bar / loss plot of a training run in Jupyter,
drawn through a fake IPython display that records every call, and its text fallback."""

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import ferrotune
from ferrotune import PrinterCallback, ProgressCallback, Trainer, TrainingArguments
from ferrotune.callbacks import default_progress_callback
from ferrotune.notebook import NotebookProgressCallback

TINY = Path(__file__).parent / "fixtures" / "gpt2_tiny_a"


class FakeHTML:
    def __init__(self, data):
        self.data = data


class FakeHandle:
    def __init__(self, obj):
        self.contents = [obj.data]

    def update(self, obj):
        self.contents.append(obj.data)


class FakeShell:
    config = {"IPKernelApp": {}}


@pytest.fixture
def jupyter(monkeypatch):
    """A fake Jupyter kernel: IPython.get_ipython() is a kernel shell, and IPython.display's
    display(obj, display_id=True) returns a handle recording every update."""
    handles = []

    def display(obj, display_id=False):
        assert display_id is True
        handles.append(FakeHandle(obj))
        return handles[-1]

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: FakeShell()
    ipython.version_info = (9, 0, 0)  # matplotlib reads it when it makes a canvas
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.HTML = FakeHTML
    ipython_display.display = display
    ipython.display = ipython_display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)
    monkeypatch.setattr(NotebookProgressCallback, "update_every", 0.0)
    monkeypatch.setattr(NotebookProgressCallback, "plot_every", 0.0)
    return handles


def rows(n, seed):
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, 100, 10).tolist()} for _ in range(n)]


def train(tmp_path, callback, **kw):
    if not (TINY / "model.safetensors").exists():
        pytest.skip("fixture gpt2_tiny_a is absent (run tests/fixtures/make_fixtures.py)")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=1,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,  # the callback under test is added explicitly
        report_to="none",
        **kw,
    )
    model = ferrotune.Model.from_pretrained(str(TINY))
    trainer = Trainer(model, args, train_dataset=rows(8, 0), eval_dataset=rows(3, 1), callbacks=[callback])
    trainer.train()
    return trainer


def table_rows(html):
    table = html[html.index("<table") : html.index("</table>")]
    header = re.findall(r"<th>(.*?)</th>", table)
    body = [re.findall(r"<td>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])]
    return header, body


def test_live_table_and_plot_update_in_place(jupyter, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    trainer = train(tmp_path, NotebookProgressCallback(), eval_strategy="steps", eval_steps=2)
    assert len(jupyter) == 1, "one output area, redrawn in place"
    (handle,) = jupyter
    assert len(handle.contents) > 4  # drawn at the start, then at steps, evaluation batches and the end
    history = trainer.state.log_history
    losses = {h["step"]: h["loss"] for h in history if "loss" in h}
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 4]

    header, body = table_rows(handle.contents[-1])
    assert header == ["Step", "Training Loss", "Validation Loss", "Perplexity", "Accuracy"]
    assert body == [
        [str(e["step"]), f"{losses[e['step']]:.6f}", f"{e['eval_loss']:.6f}", f"{e['eval_perplexity']:.6f}",
         f"{e['eval_accuracy']:.6f}"]
        for e in evals
    ]
    final = handle.contents[-1]
    assert "<progress value='4' max='4'" in final
    assert "[4/4 " in final and "Epoch" in final
    assert 'src="data:image/png;base64,' in final  # the loss plot
    # the table grew while training ran: a draw after the first evaluation shows one row
    assert any(len(table_rows(c)[1]) == 1 for c in handle.contents)
    # the evaluation progress bar appeared under the table (3 eval batches) and is gone at the end
    assert any("[3/3] Evaluating" in c for c in handle.contents)
    assert "Evaluating" not in final


def test_one_row_per_log_without_evaluation(jupyter, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # matplotlib missing: table, no plot
    trainer = train(tmp_path, NotebookProgressCallback())
    (handle,) = jupyter
    header, body = table_rows(handle.contents[-1])
    assert header == ["Step", "Training Loss"]
    logged = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    assert body == [[str(s), f"{loss:.6f}"] for s, loss in logged]
    assert len(body) == 4
    assert "<img" not in handle.contents[-1]


def test_standalone_evaluation_bar_is_cleared(jupyter, tmp_path, capsys):
    trainer = train(tmp_path, NotebookProgressCallback())
    trainer.evaluate()
    assert len(jupyter) == 2  # the training area stays as it was; evaluation gets its own
    eval_handle = jupyter[1]
    assert "[1/3] Evaluating" in eval_handle.contents[0]
    assert eval_handle.contents[-1] == ""
    assert "<table" in jupyter[0].contents[-1]


def test_text_rows_outside_a_notebook(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", None)
    trainer = train(tmp_path, NotebookProgressCallback(), eval_strategy="steps", eval_steps=2)
    out = capsys.readouterr().out
    printed = [ln.split() for ln in out.splitlines() if ln.strip() and not ln.startswith("{")]  # not log dicts
    expected, last_loss = [], None
    for h in trainer.state.log_history:
        last_loss = h.get("loss", last_loss)
        if "eval_loss" in h:
            expected.append([str(h["step"]), f"{last_loss:.6f}", f"{h['eval_loss']:.6f}",
                             f"{h['eval_perplexity']:.6f}", f"{h['eval_accuracy']:.6f}"])
    assert printed == [["Step", "Training", "Loss", "Validation", "Loss", "Perplexity", "Accuracy"]] + expected


def test_resumed_run_shows_its_earlier_rows(jupyter, tmp_path, capsys):
    cb = NotebookProgressCallback()
    state = ferrotune.TrainerState(global_step=2, max_steps=4, log_history=[
        {"loss": 3.5, "step": 1, "epoch": 0.5},
        {"loss": 3.25, "step": 2, "epoch": 1.0},
        {"eval_loss": 3.0, "eval_runtime": 0.1, "step": 2, "epoch": 1.0},
    ])
    args = TrainingArguments(output_dir=str(tmp_path), eval_strategy="steps", report_to="none")
    cb.on_train_begin(args, state, ferrotune.TrainerControl())
    header, body = table_rows(jupyter[0].contents[0])
    assert header == ["Step", "Training Loss", "Validation Loss"]
    assert body == [["2", "3.250000", "3.000000"]]


def test_default_progress_callback(monkeypatch, jupyter, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert default_progress_callback(args) is NotebookProgressCallback
    args.disable_tqdm = True
    assert default_progress_callback(args) is PrinterCallback
    monkeypatch.setitem(sys.modules, "IPython", None)  # a terminal
    args.disable_tqdm = False
    assert default_progress_callback(args) is ProgressCallback


def test_eval_cells_of_a_dataset_dict_name_the_dataset():
    from ferrotune.notebook import _eval_cells

    metrics = {"eval_loss": 2.0, "eval_perplexity": 7.4, "eval_runtime": 0.5, "eval_samples_per_second": 9.0,
               "epoch": 1.0}
    assert _eval_cells(metrics) == {"Validation Loss": 2.0, "Perplexity": 7.4}
    named = {"eval_zh_loss": 2.5, "eval_zh_mean_token_accuracy": 0.25, "eval_zh_steps_per_second": 3.0}
    assert _eval_cells(named) == {"Validation Loss (zh)": 2.5, "Mean Token Accuracy (zh)": 0.25}
