"""report_to=["tensorboard"] writes through tensorboardX (the scalars of a run are checked in
tests/test_trainer.py): the run's arguments as text, and the error without tensorboardX."""

import sys

import pytest

from ferrotune import IntegrationNotInstalledError, Trainer, TrainingArguments

from test_trainer import make_args, random_rows, tiny_model

ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator", reason="the tensorboard package (test extra) is not installed")
pytest.importorskip("tensorboardX", reason="tensorboardX (test extra) is not installed")


def accumulator(log_dir):
    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def test_the_run_arguments_go_in_as_text(tmp_path):
    logdir = tmp_path / "tb"
    args = make_args(tmp_path, max_steps=3, logging_steps=1, report_to=["tensorboard"], logging_dir=str(logdir))
    Trainer(tiny_model(), args, train_dataset=random_rows(6)).train()
    acc = accumulator(logdir)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    (text,) = [t for t in acc.Tags()["tensors"] if t.startswith("args")]
    assert '"max_steps": 3' in acc.Tensors(text)[0].tensor_proto.string_val[0].decode()


def test_without_tensorboardx_the_error_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    with pytest.raises(IntegrationNotInstalledError, match="pip install tensorboardX"):
        TrainingArguments(output_dir=str(tmp_path), report_to=["tensorboard"])
    assert "tensorboard" not in TrainingArguments(output_dir=str(tmp_path), report_to="all").report_to
