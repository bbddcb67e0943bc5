"""trainer_state.json against the files transformers.Trainer writes for the same tiny run.

tests/fixtures/trainer_state_hf/ holds transformers' checkpoint-3/, checkpoint-6/ and final
trainer_state.json for 7 steps on gpt2_tiny_a (log every 2 steps, evaluate and save every 3,
best model by eval_loss, tokens counted) and run.json with the rows and arguments (made by
tests/fixtures/make_fixtures.py). ferrotune runs the same configuration here and every field
is compared in meaning: the same keys and types, the same steps, counts and bookkeeping. The
losses differ (the two Trainers shuffle with different generators), so floats other than
total_flos are compared by type only; every row has the same length, so every batch has the
same shape in any order and the FLOP counts agree exactly.
"""

import json
from pathlib import Path

import pytest

import ferrotune
from conftest import fixture_dir

# what ferrotune logs beyond transformers: its evaluation also reports perplexity and next-token
# accuracy, and its final training metrics the token throughput
EXTRA_KEYS = {"eval_loss": {"eval_perplexity", "eval_accuracy"}, "train_loss": {"train_tokens_per_second"}}
FILES = ("checkpoint-3/trainer_state.json", "checkpoint-6/trainer_state.json", "trainer_state.json")


def kind(entry):
    return next(k for k in ("loss", "eval_loss", "train_loss") if k in entry)


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    hf_dir = fixture_dir("trainer_state_hf")
    run = json.loads((hf_dir / "run.json").read_text())
    out = tmp_path_factory.mktemp("state") / "out"
    targs = dict(run["training_args"], report_to="none")
    args = ferrotune.TrainingArguments(output_dir=str(out), **targs)
    model = ferrotune.Model.from_pretrained(str(fixture_dir(run["model"])))
    trainer = ferrotune.Trainer(model, args, train_dataset=run["train_rows"], eval_dataset=run["eval_rows"])
    result = trainer.train()
    trainer.save_state()
    ours = {}
    for name in FILES:
        text = (out / name).read_text().replace(str(out), "<output_dir>")
        ours[name] = json.loads(text)
    hf = {name: json.loads((hf_dir / name).read_text()) for name in FILES}
    return ours, hf, result, run


@pytest.mark.parametrize("name", FILES)
def test_same_fields_types_and_bookkeeping(states, name):
    ours, hf = states[0][name], states[1][name]
    assert sorted(ours) == sorted(hf)
    for key in hf:
        if hf[key] is not None:
            assert type(ours[key]) is type(hf[key]), (key, ours[key], hf[key])
    for key in ("global_step", "max_steps", "logging_steps", "eval_steps", "save_steps", "train_batch_size",
                "num_train_epochs", "num_input_tokens_seen", "is_local_process_zero", "is_world_process_zero",
                "is_hyper_param_search", "trial_name", "trial_params", "stateful_callbacks", "total_flos"):
        assert ours[key] == hf[key], key
    assert ours["epoch"] == pytest.approx(hf["epoch"])
    # the best model: the lowest eval_loss so far, its step, and that step's checkpoint
    evals = [(h["eval_loss"], h["step"]) for h in ours["log_history"] if "eval_loss" in h]
    best_loss, best_step = min(evals)
    assert (ours["best_metric"], ours["best_global_step"]) == (best_loss, best_step)
    assert ours["best_model_checkpoint"] == f"<output_dir>/checkpoint-{best_step}"
    assert hf["best_model_checkpoint"] == f"<output_dir>/checkpoint-{hf['best_global_step']}"


@pytest.mark.parametrize("name", FILES)
def test_log_history_entries_match(states, name):
    ours, hf = states[0][name]["log_history"], states[1][name]["log_history"]
    assert [(h["step"], kind(h)) for h in ours] == [(h["step"], kind(h)) for h in hf]
    for mine, theirs in zip(ours, hf):
        assert set(mine) - EXTRA_KEYS.get(kind(mine), set()) == set(theirs), (mine, theirs)
        for key, value in theirs.items():
            assert type(mine[key]) is type(value), (key, mine[key], value)
        assert mine["epoch"] == pytest.approx(theirs["epoch"])
        assert mine["num_input_tokens_seen"] == theirs["num_input_tokens_seen"]
        if "total_flos" in theirs:
            assert mine["total_flos"] == theirs["total_flos"]


def test_total_flos_is_carried_by_the_state(states):
    ours, _, result, run = states
    final = ours["trainer_state.json"]
    tokens = final["num_input_tokens_seen"]
    assert final["total_flos"] == result.metrics["total_flos"] == 6 * run["num_parameters_exclude_embeddings"] * tokens
    # each checkpoint carries the count of the steps before it
    for step in (3, 6):
        state = ours[f"checkpoint-{step}/trainer_state.json"]
        assert state["total_flos"] == 6 * run["num_parameters_exclude_embeddings"] * state["num_input_tokens_seen"] > 0
