"""ferrotune.plot_history draws the logged curves (matplotlib, Agg backend)."""

import builtins
import json
import types

import pytest

matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is not installed")
matplotlib.use("Agg")

from ferrotune.plotting import history_records, plot_history  # noqa: E402

# What HF's Trainer logs: training records every logging_steps, evaluation records,
# and a final summary (train_loss, not loss).
LOG_HISTORY = [
    {"loss": 3.0, "grad_norm": 2.0, "learning_rate": 1e-3, "epoch": 0.25, "step": 5},
    {"loss": 2.5, "grad_norm": 1.5, "learning_rate": 9e-4, "epoch": 0.5, "step": 10},
    {"eval_loss": 2.7, "eval_perplexity": 14.9, "epoch": 0.5, "step": 10},
    {"loss": 2.0, "grad_norm": 1.0, "learning_rate": 8e-4, "epoch": 0.75, "step": 15},
    {"loss": 1.75, "grad_norm": 0.5, "learning_rate": 7e-4, "epoch": 1.0, "step": 20},
    {"eval_loss": 2.2, "eval_perplexity": 9.0, "epoch": 1.0, "step": 20},
    {"train_runtime": 12.0, "train_loss": 2.3, "epoch": 1.0, "step": 20},
]


def _lines(fig):
    (ax,) = fig.axes
    return {line.get_label(): line for line in ax.get_lines()}


def test_draws_training_and_eval_points():
    fig = plot_history(LOG_HISTORY)
    lines = _lines(fig)
    assert set(lines) == {"loss", "eval_loss"}
    assert list(lines["loss"].get_xdata()) == [5, 10, 15, 20]
    assert list(lines["loss"].get_ydata()) == [3.0, 2.5, 2.0, 1.75]
    assert list(lines["eval_loss"].get_xdata()) == [10, 20]
    assert list(lines["eval_loss"].get_ydata()) == [2.7, 2.2]
    assert fig.axes[0].get_xlabel() == "step"
    matplotlib.pyplot.close(fig)


def test_accepts_trainer_state_and_trainer_like_objects():
    state = types.SimpleNamespace(log_history=LOG_HISTORY)
    trainer = types.SimpleNamespace(state=state)
    for h in (state, trainer, {"log_history": LOG_HISTORY}, tuple(LOG_HISTORY)):
        fig = plot_history(h, metrics="loss")
        assert len(_lines(fig)["loss"].get_xdata()) == 4
        matplotlib.pyplot.close(fig)


def test_reads_trainer_state_json_and_jsonl(tmp_path):
    ckpt = tmp_path / "out" / "checkpoint-20"
    ckpt.mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-10").mkdir()
    (tmp_path / "out" / "checkpoint-10" / "trainer_state.json").write_text(
        json.dumps({"global_step": 10, "log_history": LOG_HISTORY[:2]})
    )
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 20, "log_history": LOG_HISTORY}))
    assert history_records(ckpt / "trainer_state.json") == LOG_HISTORY
    assert history_records(ckpt) == LOG_HISTORY
    assert history_records(tmp_path / "out") == LOG_HISTORY  # newest checkpoint, by number
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in LOG_HISTORY))
    fig = plot_history(str(log), metrics=("eval_loss",))
    assert len(_lines(fig)["eval_loss"].get_xdata()) == 2
    matplotlib.pyplot.close(fig)
    with pytest.raises(FileNotFoundError):
        history_records(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError):
        history_records(tmp_path)


def test_draws_on_a_given_axes_against_epoch():
    plt = matplotlib.pyplot
    fig, (a1, a2) = plt.subplots(1, 2)
    out = plot_history(LOG_HISTORY, metrics=("learning_rate",), ax=a2, x="epoch", logy=True, title="lr")
    assert out is fig
    (line,) = a2.get_lines()
    assert list(line.get_xdata()) == [0.25, 0.5, 0.75, 1.0]
    assert a2.get_yscale() == "log" and a2.get_title() == "lr"
    assert a1.get_lines() == []
    plt.close(fig)


def test_skips_missing_and_non_finite_values():
    hist = [{"loss": 1.0, "step": 1}, {"loss": float("nan"), "step": 2}, {"loss": 0.5, "step": 3}]
    fig = plot_history(hist)  # eval_loss never logged: skipped
    lines = _lines(fig)
    assert list(lines) == ["loss"]
    assert list(lines["loss"].get_xdata()) == [1, 3]
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="logged keys"):
        plot_history(hist, metrics=("eval_accuracy",))
    with pytest.raises(TypeError):
        plot_history(42)


def test_clear_error_without_matplotlib(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_history(LOG_HISTORY)
