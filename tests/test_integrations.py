"""report_to="wandb"/"mlflow": fake wandb and mlflow modules (recording every call) injected
into sys.modules, a tiny real training run, and the calls, steps and values they received."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import ferrotune
from ferrotune import ConfigError, JSONLLoggerCallback, TensorBoardCallback, Trainer, TrainingArguments
from ferrotune.integrations import (
    IntegrationNotInstalledError,
    MLflowCallback,
    WandbCallback,
    get_reporting_integration_callbacks,
)

TINY = Path(__file__).parent / "fixtures" / "gpt2_tiny_a"


# --------------------------------------------------------------------------- fakes


class FakeWandb(types.ModuleType):
    """The part of wandb's API that WandbCallback uses; every call lands in ``calls``."""

    def __init__(self):
        super().__init__("wandb")
        self.calls = []
        self.run = None
        self.config = types.SimpleNamespace(update=lambda d, **kw: self.calls.append(("config.update", d, kw)))

    def init(self, **kw):
        self.calls.append(("init", kw))
        self.run = types.SimpleNamespace(id=kw.get("id", "run-1"), summary={})
        return self.run

    def define_metric(self, name, **kw):
        self.calls.append(("define_metric", name, kw))

    def log(self, d):
        self.calls.append(("log", d))

    def finish(self, exit_code=0):
        self.calls.append(("finish", exit_code, dict(self.run.summary)))
        self.run = None

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


class FakeMlflow(types.ModuleType):
    """The part of mlflow's fluent API that MLflowCallback uses; every call lands in ``calls``."""

    def __init__(self):
        super().__init__("mlflow")
        self.calls = []
        self.run = None
        limits = types.SimpleNamespace(MAX_PARAM_VAL_LENGTH=40, MAX_PARAMS_TAGS_PER_BATCH=30)
        self.utils = types.SimpleNamespace(validation=limits)

    def active_run(self):
        return self.run

    def set_tracking_uri(self, uri):
        self.calls.append(("set_tracking_uri", uri))

    def set_experiment(self, name):
        self.calls.append(("set_experiment", name))

    def start_run(self, run_id=None, run_name=None, nested=False):
        self.calls.append(("start_run", run_id, run_name, nested))
        self.run = types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id or "mlrun-1"))
        return self.run

    def log_params(self, params):
        self.calls.append(("log_params", params))

    def set_tags(self, tags):
        self.calls.append(("set_tags", tags))

    def log_metrics(self, metrics, step=None):
        self.calls.append(("log_metrics", metrics, step))

    def end_run(self, status="FINISHED"):
        self.calls.append(("end_run", status))
        self.run = None

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


@pytest.fixture
def wandb(monkeypatch):
    for var in ("WANDB_PROJECT",):
        monkeypatch.delenv(var, raising=False)
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


@pytest.fixture
def mlflow(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_NESTED_RUN", "MLFLOW_TAGS"):
        monkeypatch.delenv(var, raising=False)
    fake = FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    return fake


def rows(n, seed):
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, 100, 10).tolist()} for _ in range(n)]


def trainer_with(tmp_path, callback, **kw):
    if not (TINY / "model.safetensors").exists():
        pytest.skip("fixture gpt2_tiny_a is absent (run tests/fixtures/make_fixtures.py)")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=4,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",  # the callback under test is passed explicitly
        **kw,
    )
    model = ferrotune.Model.from_pretrained(str(TINY))
    return Trainer(model, args, train_dataset=rows(8, 0), eval_dataset=rows(2, 1), callbacks=[callback])


# --------------------------------------------------------------------------- report_to


def test_report_to_names_need_their_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    for name in ("wandb", "mlflow"):
        with pytest.raises(IntegrationNotInstalledError, match=f"pip install {name}") as info:
            TrainingArguments(output_dir=str(tmp_path), report_to=["jsonl", name])
        assert isinstance(info.value, ImportError) and isinstance(info.value, ConfigError)
    assert TrainingArguments(output_dir=str(tmp_path), report_to="all").report_to == ["tensorboard", "jsonl"]
    with pytest.raises(IntegrationNotInstalledError, match="pip install wandb"):
        WandbCallback()
    with pytest.raises(ConfigError, match="not supported"):
        TrainingArguments(output_dir=str(tmp_path), report_to="comet_ml")


def test_report_to_all_takes_the_installed_ones(wandb, mlflow, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="all")
    assert args.report_to == ["tensorboard", "jsonl", "wandb", "mlflow"]
    assert get_reporting_integration_callbacks(args.report_to) == [
        TensorBoardCallback,
        JSONLLoggerCallback,
        WandbCallback,
        MLflowCallback,
    ]
    assert TrainingArguments(output_dir=str(tmp_path), report_to="wandb").report_to == ["wandb"]


# --------------------------------------------------------------------------- wandb


def test_wandb_run_config_logs_and_summary(wandb, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_PROJECT", "tiny-project")
    trainer = trainer_with(tmp_path, WandbCallback(), run_name="tiny-run")
    trainer.train()
    history = trainer.state.log_history

    assert wandb.named("init") == [("init", {"project": "tiny-project", "name": "tiny-run"})]
    (update,) = wandb.named("config.update")
    config = update[1]
    assert update[2] == {"allow_val_change": True}
    assert config["learning_rate"] == trainer.args.learning_rate and config["run_name"] == "tiny-run"
    assert config["n_embd"] == trainer.model.config.to_dict()["n_embd"]  # the model config too
    assert config["model/num_parameters"] == trainer.model.num_parameters()
    assert ("define_metric", "*", {"step_metric": "train/global_step", "step_sync": True}) in wandb.calls

    logged = [c[1] for c in wandb.named("log")]
    train_logs = [d for d in logged if "train/loss" in d]
    assert [d["train/global_step"] for d in train_logs] == [1, 2, 3, 4]
    assert [d["train/loss"] for d in train_logs] == [h["loss"] for h in history if "loss" in h]
    assert all(d["train/learning_rate"] > 0 and "train/grad_norm" in d for d in train_logs)
    eval_logs = [d for d in logged if "eval/loss" in d]
    assert [(d["train/global_step"], d["eval/loss"]) for d in eval_logs] == [
        (h["step"], h["eval_loss"]) for h in history if "eval_loss" in h
    ]
    assert "eval/perplexity" in eval_logs[0] and "eval_loss" not in eval_logs[0]

    # end of training: the run's figures go to the summary, not to a curve, then finish
    last = logged[-1]
    assert "train/train_loss" not in last and "train/train_runtime" not in last
    (finish,) = wandb.named("finish")
    assert finish[1] == 0
    assert finish[2]["train_loss"] == history[-1]["train_loss"]
    assert set(finish[2]) >= {"train_runtime", "train_samples_per_second", "total_flos"}
    assert wandb.calls[-1][0] == "finish"

    # evaluating after training goes back into the same run
    trainer.evaluate()
    assert wandb.named("init")[-1] == ("init", {"project": "tiny-project", "name": "tiny-run", "id": "run-1",
                                                "resume": "allow"})
    assert "eval/loss" in wandb.named("log")[-1][1]


def test_wandb_run_started_by_the_user_is_left_open(wandb, tmp_path, capsys):
    wandb.init(project="mine")
    trainer_with(tmp_path, WandbCallback()).train()
    assert len(wandb.named("init")) == 1
    assert wandb.named("finish") == []
    assert wandb.named("config.update") and wandb.named("log")


def test_wandb_run_finishes_failed_when_training_stops(wandb, tmp_path, capsys):
    class Stop(ferrotune.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                raise KeyboardInterrupt

    trainer = trainer_with(tmp_path, WandbCallback())
    trainer.add_callback(Stop())
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    (finish,) = wandb.named("finish")
    assert finish[1] == 1


# --------------------------------------------------------------------------- mlflow


def test_mlflow_run_params_metrics_and_end(mlflow, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns-test")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tiny-exp")
    monkeypatch.setenv("MLFLOW_TAGS", json.dumps({"team": "ferrotune"}))
    trainer = trainer_with(tmp_path, MLflowCallback(), run_name="tiny-run")
    trainer.train()
    history = trainer.state.log_history

    assert mlflow.calls[:3] == [
        ("set_tracking_uri", "file:///tmp/mlruns-test"),
        ("set_experiment", "tiny-exp"),
        ("start_run", None, "tiny-run", False),
    ]
    batches = [c[1] for c in mlflow.named("log_params")]
    assert all(len(b) <= 30 for b in batches) and len(batches) > 1  # batched by MLflow's limit
    params = {k: v for b in batches for k, v in b.items()}
    expected = {**trainer.model.config.to_dict(), **trainer.args.to_dict()}
    assert set(params) == set(expected)
    assert params["learning_rate"] == str(trainer.args.learning_rate)
    assert params["output_dir"] == str(trainer.args.output_dir)[:40]
    assert all(isinstance(v, str) and len(v) <= 40 for v in params.values())
    assert mlflow.named("set_tags") == [("set_tags", {"team": "ferrotune"})]

    metrics = mlflow.named("log_metrics")
    assert [(step, m) for _, m, step in metrics] == [
        (h["step"], {k: v for k, v in h.items() if k != "step"}) for h in history
    ]
    assert all(isinstance(v, float) for _, m, _ in metrics for v in m.values())
    assert mlflow.calls[-1] == ("end_run", "FINISHED")

    trainer.evaluate()  # after training: back into the same run, params not logged again
    assert mlflow.named("start_run")[-1] == ("start_run", "mlrun-1", "tiny-run", False)
    assert len(mlflow.named("log_params")) == len(batches)
    assert "eval_loss" in mlflow.named("log_metrics")[-1][1]


def test_mlflow_resumes_a_run_by_id_and_leaves_an_active_run_open(mlflow, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_RUN_ID", "earlier-run")
    trainer_with(tmp_path, MLflowCallback()).train()
    assert mlflow.named("start_run") == [("start_run", "earlier-run", None, False)]
    assert mlflow.calls[-1] == ("end_run", "FINISHED")

    monkeypatch.delenv("MLFLOW_RUN_ID")
    mlflow.calls.clear()
    mlflow.start_run(run_name="mine")
    trainer_with(tmp_path, MLflowCallback()).train()
    assert len(mlflow.named("start_run")) == 1 and mlflow.named("end_run") == []
    assert mlflow.named("log_metrics")


def test_mlflow_non_numeric_values_are_skipped(mlflow, tmp_path):
    cb = MLflowCallback()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state = ferrotune.TrainerState(global_step=7)
    cb.on_log(args, state, ferrotune.TrainerControl(), logs={"loss": np.float32(0.5), "note": "x", "flag": True,
                                                              "vec": np.ones(2), "lr": 1e-3})
    assert mlflow.named("log_metrics") == [("log_metrics", {"loss": 0.5, "lr": 1e-3}, 7)]


def test_the_trainer_builds_its_callbacks_from_report_to_and_the_frontend(wandb, tmp_path, monkeypatch):
    """report_to=["wandb"] in Jupyter: the Trainer's callbacks are transformers' choice, the
    flow callback, the integration, then the notebook display."""
    from ferrotune.callbacks import DefaultFlowCallback, ProgressCallback
    from ferrotune.notebook import NotebookProgressCallback

    if not (TINY / "model.safetensors").exists():
        pytest.skip("fixture gpt2_tiny_a is absent (run tests/fixtures/make_fixtures.py)")
    model = ferrotune.Model.from_pretrained(str(TINY))
    kinds = lambda t: [type(cb) for cb in t.callback_handler.callbacks]  # noqa: E731
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=["wandb"], max_steps=1)
    monkeypatch.setattr("ferrotune.progress.in_notebook", lambda: True)
    assert kinds(Trainer(model, args, train_dataset=rows(2, 0))) == [DefaultFlowCallback, WandbCallback, NotebookProgressCallback]
    monkeypatch.setattr("ferrotune.progress.in_notebook", lambda: False)
    assert kinds(Trainer(model, args, train_dataset=rows(2, 0))) == [DefaultFlowCallback, WandbCallback, ProgressCallback]
