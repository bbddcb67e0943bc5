"""TrainingArguments: transformers' names and defaults, validation, JSON round trip."""

import json
import os

import pytest

from ferrotune import ConfigError, TrainingArguments

# transformers' defaults for the fields issue 3 lists
HF_DEFAULTS = {
    "overwrite_output_dir": False,
    "num_train_epochs": 3.0,
    "max_steps": -1,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5e-5,
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "warmup_ratio": 0.0,
    "logging_steps": 500,
    "logging_first_step": False,
    "eval_strategy": "no",
    "eval_steps": None,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": None,
    "load_best_model_at_end": False,
    "metric_for_best_model": None,
    "greater_is_better": None,
    "seed": 42,
    "data_seed": None,
    "report_to": [],
    "disable_tqdm": False,
    "dataloader_drop_last": False,
    "group_by_length": False,
    "label_names": None,
    "resume_from_checkpoint": None,
}


def test_defaults_are_transformers(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path))
    for name, value in HF_DEFAULTS.items():
        assert getattr(args, name) == value, name
    # logging_dir: transformers' output_dir/runs/<date>_<host>
    assert os.path.dirname(args.logging_dir) == os.path.join(str(tmp_path), "runs")
    assert TrainingArguments().output_dir == "trainer_output"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fp16": True},
        {"bf16_full_eval": True},
        {"deepspeed": "ds_config.json"},
        {"fsdp": "full_shard"},
        {"torch_compile": True},
        {"tf32": True},
        {"gradient_checkpointing": "yes"},
        {"push_to_hub": True},
        {"local_rank": 0},
        {"dataloader_num_workers": 2},
        {"label_smoothing_factor": 0.1},
        {"optim": "adafactor"},
        {"report_to": "comet_ml"},
        {"lr_scheduler_type": "reduce_lr_on_plateau"},
        {"lr_scheduler_type": "nonsense"},
        {"eval_strategy": "sometimes"},
        {"per_device_train_batch_size": 0},
        {"gradient_accumulation_steps": 0},
        {"warmup_steps": -1},
        {"warmup_steps": 2.5},
        {"logging_steps": 2.5},
        {"save_strategy": "best"},  # needs an eval strategy
        {"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "epoch"},
        {"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 3, "save_steps": 4},
    ],
)
def test_unsupported_or_invalid_options_raise(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        TrainingArguments(output_dir=str(tmp_path), **kwargs)


def test_unsupported_option_message_says_why(tmp_path):
    with pytest.raises(ConfigError, match="fp16.*not supported"):
        TrainingArguments(output_dir=str(tmp_path), fp16=True)


def test_unknown_keyword_is_a_type_error(tmp_path):
    with pytest.raises(TypeError):
        TrainingArguments(output_dir=str(tmp_path), learnin_rate=1e-3)


def test_strategies_and_derived_defaults(tmp_path):
    a = TrainingArguments(output_dir=str(tmp_path), eval_strategy="steps", logging_steps=7)
    assert a.eval_steps == 7  # falls back to logging_steps, as transformers
    b = TrainingArguments(
        output_dir=str(tmp_path), eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True
    )
    assert b.metric_for_best_model == "loss" and b.greater_is_better is False
    c = TrainingArguments(output_dir=str(tmp_path), metric_for_best_model="accuracy")
    assert c.greater_is_better is True
    d = TrainingArguments(output_dir=str(tmp_path), metric_for_best_model="eval_perplexity")
    assert d.greater_is_better is False
    with pytest.warns(FutureWarning):
        e = TrainingArguments(output_dir=str(tmp_path), evaluation_strategy="epoch")
    assert e.eval_strategy == "epoch"


def test_report_to_normalisation(tmp_path):
    assert TrainingArguments(output_dir=str(tmp_path), report_to="none").report_to == []
    assert TrainingArguments(output_dir=str(tmp_path), report_to=None).report_to == []
    assert TrainingArguments(output_dir=str(tmp_path), report_to="all").report_to == ["tensorboard", "jsonl"]
    assert TrainingArguments(output_dir=str(tmp_path), report_to="tensorboard").report_to == ["tensorboard"]
    assert TrainingArguments(output_dir=str(tmp_path), report_to=["jsonl", "tensorboard"]).report_to == [
        "jsonl",
        "tensorboard",
    ]


def test_warmup_steps_int_or_ratio(tmp_path):
    assert TrainingArguments(output_dir=str(tmp_path), warmup_steps=3).get_warmup_steps(20) == 3
    assert TrainingArguments(output_dir=str(tmp_path), warmup_steps=0.1).get_warmup_steps(20) == 2
    assert TrainingArguments(output_dir=str(tmp_path), warmup_steps=0.25).get_warmup_steps(20) == 5
    assert TrainingArguments(output_dir=str(tmp_path), warmup_ratio=0.05).get_warmup_steps(100) == 5


def test_json_round_trip(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=2,
        learning_rate=3e-4,
        lr_scheduler_type="cosine",
        lr_scheduler_kwargs={"num_cycles": 0.25},
        warmup_steps=0.1,
        eval_strategy="steps",
        eval_steps=10,
        save_steps=20,
        save_total_limit=2,
        load_best_model_at_end=True,
        report_to=["tensorboard"],
        label_names=["labels"],
    )
    s = args.to_json_string()
    d = json.loads(s)
    assert d["learning_rate"] == 3e-4 and d["lr_scheduler_kwargs"] == {"num_cycles": 0.25}
    path = tmp_path / "training_args.json"
    path.write_text(s, encoding="utf-8")
    back = TrainingArguments.from_json_file(path)
    assert back == args
    assert back.to_dict() == args.to_dict()


def test_from_json_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        TrainingArguments.from_json_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"output_dir": "x", "not_a_field": 1}))
    with pytest.raises(ConfigError, match="not_a_field"):
        TrainingArguments.from_json_file(bad)
