"""Faults: processes killed (SIGKILL) or interrupted (SIGINT) during training, saving and
checkpoint rotation; saves that fail half-way; damaged checkpoint files; odd data.

The kill and interrupt tests run the work in a child process (``sys.executable``) and act on
it at times drawn from a seeded generator, so a failure reproduces. After every kill each
``checkpoint-*`` must be complete and loadable and a saved model directory must hold either
the old or the new model, never a mix; chains of killed-and-resumed runs must end with the
weights of an uninterrupted run, bit for bit.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ferrotune
from ferrotune import CheckpointError, LoraConfig, Model, PeftModel, Trainer, TrainingArguments, get_peft_model
from ferrotune.io import atomic_directory, load_safetensors
from ferrotune.trainer import get_last_checkpoint

FIX = Path(__file__).parent / "fixtures"
TINY_A, TINY_B = FIX / "gpt2_tiny_a", FIX / "gpt2_tiny_b"  # different shapes: a mix of the two cannot load

TRAIN_KILL_CHAINS = 3  # output directories, each killed and resumed TRAIN_KILLS_PER_CHAIN times
TRAIN_KILLS_PER_CHAIN = 10
SAVE_KILL_ROUNDS = 10  # each for Model.save_pretrained and for PeftModel.save_pretrained
MAX_STEPS = 200  # well beyond what a chain of kills reaches (~25 ms a step with a save)
SEED = 20240611

CHECKPOINT_FILES = ("config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json")

# The child process: {"mode": "train" | "save_model" | "save_peft", ...} as argv[1]; prints
# "started" when the work to interrupt has begun.
CHILD = r"""
import json, signal, sys, time
# Ctrl-C raises KeyboardInterrupt as at a terminal, also when the test suite itself runs as a
# shell's background job (which starts every child with SIGINT ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
import ferrotune
from ferrotune import LoraConfig, Model, Trainer, TrainerCallback, TrainingArguments, get_peft_model
from ferrotune.callbacks import PrinterCallback
from ferrotune.trainer import get_last_checkpoint

spec = json.loads(sys.argv[1])

class Announce(TrainerCallback):
    def on_train_begin(self, args, state, control, **kw):
        print("started", flush=True)

    def on_prediction_step(self, args, state, control, **kw):
        if state.global_step == spec.get("announce_eval"):
            spec["announce_eval"] = None
            print("evaluating", flush=True)
            time.sleep(5)  # the parent's Ctrl-C arrives in here, in the middle of the evaluation

if spec["mode"] == "train":
    args = TrainingArguments(**spec["args"])
    trainer = Trainer(Model.from_pretrained(spec["model"]), args, train_dataset=spec["rows"],
                      eval_dataset=spec.get("eval_rows"), callbacks=[Announce])
    trainer.remove_callback(PrinterCallback)
    resume = True if get_last_checkpoint(args.output_dir) else None
    try:
        trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        print(f"interrupted {trainer.state.global_step}", flush=True)
        sys.exit(130)
    trainer.model.save_pretrained(spec["final"])
    with open(spec["final"] + "/losses.json", "w") as f:
        json.dump([[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h], f)
else:
    if spec["mode"] == "save_model":
        versions = [Model.from_pretrained(p) for p in spec["models"]]
    else:
        versions = [get_peft_model(Model.from_pretrained(spec["models"][0]), LoraConfig(r=r), seed=r)
                    for r in spec["ranks"]]
    k = 0
    while True:
        versions[k % len(versions)].save_pretrained(spec["out"])
        if k == 0:
            print("started", flush=True)
        k += 1
"""


def need(path):
    if not Path(path).exists():
        pytest.skip(f"fixture {Path(path).relative_to(FIX)} is absent (run tests/fixtures/make_fixtures.py)")


def rows(n, seed, lo=4, hi=12, vocab=100):
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, vocab, int(rng.integers(lo, hi + 1))).tolist()} for _ in range(n)]


def dropout_model(tmp_path):
    """gpt2_tiny_a with dropout on, so that resuming must restore the dropout generator too."""
    need(TINY_A / "model.safetensors")
    d = tmp_path / "tiny_dropout"
    if not d.exists():
        shutil.copytree(TINY_A, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
        (d / "config.json").write_text(json.dumps(cfg))
    return d


def train_spec(tmp_path, out, announce_eval=None, **args):
    base = dict(
        output_dir=str(out), per_device_train_batch_size=2, learning_rate=1e-3, lr_scheduler_type="linear",
        warmup_steps=2, weight_decay=0.01, logging_steps=1, max_steps=MAX_STEPS, save_strategy="steps",
        save_steps=1, save_total_limit=2, disable_tqdm=True, report_to="none", seed=0,
    )
    base.update(args)
    return {"mode": "train", "model": str(dropout_model(tmp_path)), "rows": rows(8, seed=1), "eval_rows": rows(16, seed=2),
            "args": base, "final": str(Path(out) / "final"), "announce_eval": announce_eval}


def start(spec, log):
    """The child process, once it printed "started" (its stdout is then left to it)."""
    with open(log, "a") as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec)], stdout=subprocess.PIPE,
                                stderr=err, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "started", f"child said {line!r}; its stderr is in {log}"
    return proc


def finish(spec, log):
    """Runs the child to its end; returns (final weights, [(step, loss)])."""
    with open(log, "a") as err:
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], stdout=subprocess.DEVNULL,
                              stderr=err, timeout=120)
    assert proc.returncode == 0, f"child failed; its stderr is in {log}"
    final = Path(spec["final"])
    return load_safetensors(final / "model.safetensors"), json.loads((final / "losses.json").read_text())


def kill_after(proc, delay):
    time.sleep(delay)
    proc.kill()
    proc.stdout.close()
    assert proc.wait() == -signal.SIGKILL, "the child ended before the kill: raise MAX_STEPS"


def assert_checkpoints_complete(out):
    for ckpt in sorted(Path(out).glob("checkpoint-*")):
        for name in CHECKPOINT_FILES:
            assert (ckpt / name).is_file(), f"{ckpt} has no {name}: {sorted(os.listdir(ckpt))}"
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert f"checkpoint-{state['global_step']}" == ckpt.name
        Model.from_pretrained(ckpt)
        load_safetensors(ckpt / "optimizer.safetensors")


def assert_same_weights(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --------------------------------------------------------------------------- kill -9


def test_kills_during_checkpoint_saves_and_rotations_then_resume_bit_exact(tmp_path):
    """TRAIN_KILL_CHAINS x TRAIN_KILLS_PER_CHAIN kills of a run saving a checkpoint every step
    (most of a step's time is the save and the rotation, so most kills land in one); each
    round resumes from the latest checkpoint. Every chain ends with the weights and losses
    of the uninterrupted run."""
    log = tmp_path / "child.log"
    reference = finish(train_spec(tmp_path, tmp_path / "reference", save_strategy="no"), log)
    rng = np.random.default_rng(SEED)
    for chain in range(TRAIN_KILL_CHAINS):
        out = tmp_path / f"chain{chain}"
        spec = train_spec(tmp_path, out)
        for _ in range(TRAIN_KILLS_PER_CHAIN):
            kill_after(start(spec, log), rng.uniform(0.0, 0.3))
            assert_checkpoints_complete(out)
        weights, losses = finish(spec, log)
        assert losses == reference[1]
        assert_same_weights(weights, reference[0])
        assert not [p for p in os.listdir(out) if ".tmp-" in p]  # the resumed runs removed the killed ones' leftovers


def saved_versions(mode):
    if mode == "save_model":
        return [Model.from_pretrained(TINY_A), Model.from_pretrained(TINY_B)]
    return [get_peft_model(Model.from_pretrained(TINY_A), LoraConfig(r=r), seed=r) for r in (2, 4)]


def load_saved(mode, directory):
    if mode == "save_model":
        return Model.from_pretrained(directory)
    return PeftModel.from_pretrained(Model.from_pretrained(TINY_A), directory)


@pytest.mark.parametrize("mode", ["save_model", "save_peft"])
def test_kills_during_repeated_save_pretrained_leave_the_old_or_the_new_model(tmp_path, mode):
    need(TINY_B / "model.safetensors")
    out = tmp_path / "saved"
    (tmp_path / "saved").mkdir()
    (out / "notes.txt").write_text("the user's own file")
    spec = {"mode": mode, "out": str(out), "models": [str(TINY_A), str(TINY_B)], "ranks": [2, 4]}
    versions = [m.state_dict() for m in saved_versions(mode)]
    rng = np.random.default_rng(SEED + 1)
    seen = set()
    for _ in range(SAVE_KILL_ROUNDS):
        kill_after(start(spec, tmp_path / "child.log"), rng.uniform(0.0, 0.2))
        loaded = load_saved(mode, out)
        state = loaded.state_dict()
        match = [i for i, v in enumerate(versions) if set(v) == set(state) and all(np.array_equal(v[k], state[k]) for k in v)]
        assert len(match) == 1, "the directory holds neither of the two saved models"
        if mode == "save_model":  # generation_config.json is written after the weights: it must match them
            assert loaded.generation_config.eos_token_id == loaded.config.eos_token_id
        assert (out / "notes.txt").read_text() == "the user's own file"
        seen.add(match[0])
    assert seen == {0, 1}, "the kills never caught the second version: lengthen the delays"
    saved_versions(mode)[0].save_pretrained(out)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # the killed saves' leftovers are gone


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("during", ["training", "evaluation"])
def test_sigint_stops_at_a_step_boundary_saves_and_resumes_bit_exact(tmp_path, during):
    log = tmp_path / "child.log"
    args = dict(max_steps=80, save_steps=4)
    if during == "evaluation":
        args.update(eval_strategy="steps", eval_steps=5, per_device_eval_batch_size=1)
    reference = finish(train_spec(tmp_path, tmp_path / "reference", **args), log)

    spec = train_spec(tmp_path, tmp_path / "cut", announce_eval=10 if during == "evaluation" else None, **args)
    proc = start(spec, log)
    if during == "evaluation":
        assert proc.stdout.readline().strip() == "evaluating"
    else:
        time.sleep(np.random.default_rng(SEED + 2).uniform(0.05, 0.2))
    proc.send_signal(signal.SIGINT)
    said = proc.stdout.read().splitlines()  # the Trainer's message, then the child's
    proc.stdout.close()
    assert proc.wait() == 130 and said[-1].startswith("interrupted "), f"no stop on Ctrl-C: {said}; see {log}"
    step = int(said[-1].split()[1])
    assert 0 < step < 80
    if during == "evaluation":
        assert step == 10
    assert get_last_checkpoint(tmp_path / "cut").endswith(f"checkpoint-{step}")
    assert_checkpoints_complete(tmp_path / "cut")

    weights, losses = finish({**spec, "announce_eval": None}, log)
    assert losses == reference[1]
    assert_same_weights(weights, reference[0])


# --------------------------------------------------------------------------- saves that fail half-way


def tmp_leftovers(parent):
    return [p for p in os.listdir(parent) if ".tmp-" in p]


@pytest.mark.parametrize("kind", ["model", "peft"])
def test_a_save_failing_after_its_first_file_leaves_the_old_directory(tmp_path, monkeypatch, kind):
    """The weights are written, then generation_config.json fails: the directory still loads
    the old model (before, it held new weights with the old config)."""
    need(TINY_B / "model.safetensors")
    mode = "save_model" if kind == "model" else "save_peft"
    old, new = saved_versions(mode)
    out = tmp_path / "saved"
    old.save_pretrained(out)

    def fail(self, *a, **kw):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(ferrotune.GenerationConfig, "save_pretrained", fail)
    with pytest.raises(OSError, match="simulated"):
        new.save_pretrained(out)
    assert tmp_leftovers(tmp_path) == []
    assert_same_weights(load_saved(mode, out).state_dict(), old.state_dict())


def test_trainer_save_model_is_one_atomic_write_and_keeps_other_files(tmp_path, monkeypatch):
    need(FIX / "tokenizer_bpe" / "tokenizer.json")
    tok = ferrotune.Tokenizer.from_pretrained(FIX / "tokenizer_bpe")
    args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", disable_tqdm=True)
    out = tmp_path / "final"
    Trainer(Model.from_pretrained(TINY_A), args, processing_class=tok).save_model(out)
    (out / "README.md").write_text("mine")
    first = sorted(os.listdir(out))

    monkeypatch.setattr(TrainingArguments, "to_json_string", lambda self: 1 / 0)  # the last file fails
    with pytest.raises(ZeroDivisionError):
        Trainer(Model.from_pretrained(TINY_B), args).save_model(out)
    assert sorted(os.listdir(out)) == first and tmp_leftovers(tmp_path) == []
    assert Model.from_pretrained(out).config.n_embd == 48  # still tiny_a

    monkeypatch.undo()
    Model.from_pretrained(TINY_B).save_pretrained(out)  # a model alone: the tokenizer and README stay
    assert sorted(os.listdir(out)) == first
    assert Model.from_pretrained(out).config.n_embd == 64
    assert ferrotune.Tokenizer.from_pretrained(out).get_vocab() == tok.get_vocab()


def test_save_into_a_file_or_nested_save_or_without_renameat2(tmp_path, monkeypatch):
    model = Model.from_pretrained(TINY_A)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileExistsError, match="a_file"):
        model.save_pretrained(tmp_path / "a_file")
    assert sorted(os.listdir(tmp_path)) == ["a_file"]

    # inside an atomic write, a save into the directory being written makes no second temporary
    with atomic_directory(tmp_path / "outer") as tmp:
        model.save_pretrained(tmp)
        assert sorted(os.listdir(tmp_path)) == sorted(["a_file", os.path.basename(tmp)])
    assert (tmp_path / "outer" / "model.safetensors").is_file()

    # where renameat2 is missing, the old directory is renamed aside and the new one put in place
    monkeypatch.setattr(ferrotune.io, "_exchange", lambda a, b: False)
    (tmp_path / "outer" / "keep.txt").write_text("kept")
    Model.from_pretrained(TINY_B).save_pretrained(tmp_path / "outer")
    assert Model.from_pretrained(tmp_path / "outer").config.n_embd == 64
    assert (tmp_path / "outer" / "keep.txt").read_text() == "kept"
    assert sorted(os.listdir(tmp_path)) == ["a_file", "outer"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user (root ignores modes)")
def test_save_under_a_read_only_parent_names_the_path(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="ro"):
            Model.from_pretrained(TINY_A).save_pretrained(parent / "m")
        assert os.listdir(parent) == []
    finally:
        parent.chmod(0o755)


# --------------------------------------------------------------------------- rotation


def test_rotation_killed_mid_delete_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    """A deletion that stops half-way (a kill inside rmtree) only ever hits a hidden,
    renamed directory: every checkpoint-* stays complete and resuming picks the latest."""
    real_rmtree = shutil.rmtree

    def half_rmtree(path, *a, **kw):
        os.remove(os.path.join(path, "config.json"))  # ... and the process dies here

    monkeypatch.setattr(ferrotune.io.shutil, "rmtree", half_rmtree)
    spec = train_spec(tmp_path, tmp_path / "out", max_steps=5)
    args = TrainingArguments(**spec["args"])
    Trainer(Model.from_pretrained(spec["model"]), args, train_dataset=spec["rows"]).train()
    out = Path(args.output_dir)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    assert_checkpoints_complete(out)
    assert len(tmp_leftovers(out)) == 3  # the half-deleted ones, hidden

    monkeypatch.setattr(ferrotune.io.shutil, "rmtree", real_rmtree)
    for name in tmp_leftovers(out):  # as if left by a process that is gone (no process has this id)
        os.rename(out / name, out / (name.split(".tmp-")[0] + ".tmp-999999999-0123abcd"))
    args = TrainingArguments(**{**spec["args"], "max_steps": 6})
    with pytest.warns(UserWarning, match="max_steps: 5 -> 6"):
        resumed = Trainer(Model.from_pretrained(spec["model"]), args, train_dataset=spec["rows"]).train(
            resume_from_checkpoint=True)
    assert resumed.global_step == 6
    assert tmp_leftovers(out) == []


# --------------------------------------------------------------------------- damaged checkpoint files


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    need(TINY_A / "model.safetensors")
    tmp = tmp_path_factory.mktemp("ckpt")
    spec = train_spec(tmp, tmp / "out", max_steps=2, save_steps=2)
    Trainer(Model.from_pretrained(spec["model"]), TrainingArguments(**spec["args"]), train_dataset=spec["rows"]).train()
    return spec, tmp / "out" / "checkpoint-2"


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("trainer_state.json", "{not json", r"trainer_state\.json is not valid JSON"),
        ("trainer_state.json", "[1, 2]", r"trainer_state\.json holds a JSON list"),
        ("trainer_state.json", {"global_step": "two"}, r"trainer_state\.json: 'global_step' is 'two'"),
        ("trainer_state.json", {"log_history": 3}, r"'log_history' is 3"),
        ("rng_state.json", "\x00\x01garbage", r"rng_state\.json is not valid JSON"),
        ("rng_state.json", {"model_rng_state": "abc"}, r"rng_state\.json: 'model_rng_state'"),
        ("loop_state.json", {"tr_loss_sum": None}, r"loop_state\.json: 'tr_loss_sum' is None"),
        ("loop_state.json", {"globalstep_last_logged": True}, r"'globalstep_last_logged' is True"),
        ("training_args.json", "", r"training_args\.json is not valid JSON"),
    ],
)
def test_damaged_checkpoint_json_raises_checkpoint_error_naming_file_and_key(tmp_path, checkpoint, name, content, match):
    spec, good = checkpoint
    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(good, ckpt)
    if isinstance(content, dict):
        content = json.dumps({**json.loads((ckpt / name).read_text()), **content})
    (ckpt / name).write_text(content)
    trainer = Trainer(Model.from_pretrained(spec["model"]), TrainingArguments(**{**spec["args"], "output_dir": str(tmp_path)}),
                      train_dataset=spec["rows"])
    with pytest.raises(CheckpointError, match=match):
        trainer.train(resume_from_checkpoint=str(ckpt))


# --------------------------------------------------------------------------- data


def test_pad_id_outside_the_vocabulary_pads_with_a_valid_id_and_the_same_losses(tmp_path):
    """No tokenizer and eos_token_id (the pad fallback) >= vocab_size: padding uses a valid id;
    pad positions are masked, so losses and weights equal those of a run padding with eos 100."""
    need(TINY_A / "model.safetensors")
    bad = tmp_path / "bad_eos"
    shutil.copytree(TINY_A, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(eos_token_id=500, bos_token_id=500)
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "generation_config.json").unlink()

    def run(model_dir, out):
        args = TrainingArguments(output_dir=str(tmp_path / out), per_device_train_batch_size=3, max_steps=4,
                                 logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True)
        trainer = Trainer(Model.from_pretrained(model_dir), args, train_dataset=rows(6, seed=3, lo=2, hi=14))
        trainer.train()
        return [h["loss"] for h in trainer.state.log_history if "loss" in h], trainer.model.state_dict()

    losses, weights = run(bad, "bad")
    ref_losses, ref_weights = run(TINY_A, "ref")
    assert losses == ref_losses
    assert_same_weights(weights, ref_weights)
