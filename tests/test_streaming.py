"""Streams (iterable datasets without a length) and map-style datasets read by index.

As transformers' Trainer: a stream needs max_steps, is read lazily micro-batch by
micro-batch (a step's micro-batches are pulled before its tokens are counted), is not
shuffled, is iterated again when it ends before max_steps, and resumes by consuming the
micro-batches its checkpoint had already used.
"""

import json
import warnings

import numpy as np
import pytest

from ferrotune import CheckpointError, ConfigError, DataError, Trainer, TrainerCallback
from ferrotune.data import (
    IndexedDataset,
    is_iterable_dataset,
    iter_examples,
    pack_examples,
    pack_stream,
)
from test_trainer import InterruptAt, make_args, random_rows, tiny_model


class Stream:
    """A re-iterable stream without ``__len__``: each iteration calls the generator factory
    afresh (the same rows every time); counts iterations, rows read and set_epoch calls."""

    def __init__(self, rows):
        self.rows = rows
        self.iterations = 0
        self.read = 0
        self.epochs = []

    def _generate(self):
        for row in self.rows:
            self.read += 1
            yield row

    def __iter__(self):
        self.iterations += 1
        return self._generate()

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


class Indexable:
    """A map-style dataset that counts the rows read."""

    def __init__(self, rows):
        self.rows = rows
        self.reads = 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        self.reads += 1
        return self.rows[i]


class RecordAt(TrainerCallback):
    """Records ``probe()`` at every step end."""

    def __init__(self, probe):
        self.probe = probe
        self.seen = []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(self.probe())


def logged_losses(trainer):
    return [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]


def test_what_counts_as_a_stream():
    rows = [{"input_ids": [1, 2]}]
    assert is_iterable_dataset(iter(rows)) and is_iterable_dataset(Stream(rows)) and is_iterable_dataset(r for r in rows)
    assert not any(is_iterable_dataset(d) for d in (rows, tuple(rows), {"input_ids": [[1]]}, Indexable(rows), "text"))


def test_a_stream_needs_max_steps(tmp_path):
    with pytest.raises(ConfigError, match=r"stream .*max_steps has to be set to a positive number \(got max_steps=-1\)"):
        Trainer(tiny_model(), make_args(tmp_path), train_dataset=Stream(random_rows(4)))
    # a dataset assigned after construction is checked when training starts
    trainer = Trainer(tiny_model(), make_args(tmp_path), train_dataset=random_rows(4))
    trainer.train_dataset = Stream(random_rows(4))
    with pytest.raises(ConfigError, match="max_steps"):
        trainer.train()
    with pytest.raises(ConfigError, match="group_by_length"):
        Trainer(tiny_model(), make_args(tmp_path, max_steps=2, group_by_length=True), train_dataset=Stream(random_rows(4)))


def test_a_stream_is_read_one_step_at_a_time_in_its_own_order(tmp_path):
    """Before step k ends exactly k * batch * accumulation rows have been read, in stream order
    (no shuffling), and the step's loss divides by the label tokens of all its micro-batches."""
    rows = random_rows(40, seed=3, lo=3, hi=15)
    stream = Stream(rows)
    probe = RecordAt(lambda: stream.read)
    args = make_args(tmp_path, max_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=0.0)
    trainer = Trainer(tiny_model(), args, train_dataset=stream, callbacks=[probe])
    out = trainer.train()
    assert probe.seen == [4, 8, 12] and out.global_step == 3
    assert trainer.state.max_steps == 3  # the progress bar's total

    # lr 0: every step sees the initial weights; step k's loss is the token-weighted mean over rows 4(k-1)..4k-1
    model = tiny_model()
    for step, loss in logged_losses(trainer):
        total = tokens = 0
        for first in (4 * (step - 1), 4 * (step - 1) + 2):
            batch = trainer._collate(rows[first : first + 2])
            s, n, _ = model.loss_stats(batch["input_ids"], labels=batch["labels"], attention_mask=batch["attention_mask"])
            total, tokens = total + float(s), tokens + int(n)
        assert loss == pytest.approx(total / tokens, rel=1e-5)


def test_an_endless_generator_trains_for_max_steps_holding_one_step_of_rows(tmp_path):
    """A generator that never ends: training stops at max_steps, having pulled exactly the rows
    of those steps, and no row is kept alive after its step (weak references die)."""
    import gc
    import itertools
    import weakref

    class Row(dict):  # a dict that weak references can point at
        pass

    pulled, alive = [], []

    def endless():
        rng = np.random.default_rng(0)
        for i in itertools.count():
            row = Row(input_ids=rng.integers(0, 64, size=int(rng.integers(3, 12))).tolist())
            pulled.append(i)
            alive.append(weakref.ref(row))
            yield row

    def live_rows():
        gc.collect()
        return sum(r() is not None for r in alive)

    probe = RecordAt(live_rows)
    args = make_args(tmp_path, max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    out = Trainer(tiny_model(), args, train_dataset=endless(), callbacks=[probe]).train()
    assert out.global_step == 6 and len(pulled) == 6 * 4
    assert max(probe.seen) <= 4, probe.seen  # at most the rows of the step in flight


def test_a_stream_that_ends_is_iterated_again_as_a_new_epoch(tmp_path):
    rows = random_rows(5, seed=4)  # 3 micro-batches of 2 per pass: 2 steps (the second short) per pass
    stream = Stream(rows)
    args = make_args(tmp_path, max_steps=5, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    trainer = Trainer(tiny_model(), args, train_dataset=stream)
    trainer.train()
    assert trainer.state.global_step == 5
    assert stream.iterations == 3 and stream.epochs == [0, 1, 2] and stream.read == 5 + 5 + 4
    # transformers' epoch for a stream: passes + micro-batches of this pass / (max_steps * accumulation)
    assert trainer.state.epoch == pytest.approx(2 + 2 / 10)


def test_a_one_shot_generator_stops_training_when_it_runs_dry(tmp_path):
    args = make_args(tmp_path, max_steps=10, per_device_train_batch_size=2)
    trainer = Trainer(tiny_model(), args, train_dataset=(r for r in random_rows(6)))
    with pytest.warns(UserWarning, match="yielded nothing when iterated again.*step 3 of max_steps=10"):
        out = trainer.train()
    assert out.global_step == 3
    with pytest.raises(DataError, match="yielded no examples"):
        Trainer(tiny_model(), args, train_dataset=iter([])).train()


@pytest.mark.parametrize(
    "event,step",
    [("on_step_end", 2), ("on_step_end", 3), ("on_epoch_end", 3), ("on_step_begin", 5), ("on_save", 4)],
)
def test_stream_interrupt_and_resume_is_bit_exact(tmp_path, event, step):
    """Interrupted mid-pass, at a pass's short last step, at a pass end, before a step and while
    saving: the resumed run skips the consumed micro-batches (reading, not training on them)
    and matches the uninterrupted run bit for bit (losses, learning rates, weights)."""
    rows = random_rows(10, seed=7)  # 5 micro-batches per pass: steps of 2, 2, 1 micro-batches

    def run(out, callbacks=None, resume=None):
        args = make_args(
            tmp_path,
            output_dir=str(tmp_path / out),
            max_steps=7,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            lr_scheduler_type="linear",
            warmup_steps=2,
            logging_steps=2,
            save_strategy="steps",
            save_steps=4,
        )
        model = tiny_model(dropout=0.1, tmp_path=tmp_path)
        stream = Stream(rows)
        trainer = Trainer(model, args, train_dataset=stream, callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, model, stream

    full, full_model, _ = run("full")
    with pytest.raises(KeyboardInterrupt):
        run("cut", callbacks=[InterruptAt(step, event)])
    resumed, resumed_model, stream = run("cut", resume=True)

    def history(t):
        return [(h["step"], h["loss"], h["learning_rate"], h["epoch"]) for h in t.state.log_history if "loss" in h]

    assert history(resumed) == history(full)
    assert resumed.state.global_step == 7 and resumed.state.epoch == full.state.epoch
    a, b = full_model.state_dict(), resumed_model.state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the resumed run started in the checkpoint's pass (step 3 ends pass 0; 5 and 6 are pass 1)
    assert stream.epochs[0] == (0 if step == 2 or (step == 3 and event == "on_step_end") else 1)


def test_a_damaged_stream_position_is_a_checkpoint_error(tmp_path):
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    Trainer(tiny_model(), args, train_dataset=Stream(random_rows(6))).train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    saved = json.loads((ckpt / "loop_state.json").read_text())
    assert saved["data_position"] == {"epoch": 0, "batches": 2}
    (ckpt / "loop_state.json").write_text(json.dumps(dict(saved, data_position={"epoch": "zero", "batches": 2})))
    with pytest.raises(CheckpointError, match=r"loop_state.json: data_position must be"):
        Trainer(tiny_model(), args, train_dataset=Stream(random_rows(6))).train(resume_from_checkpoint=str(ckpt))


def test_map_style_datasets_are_read_by_index_batch_by_batch(tmp_path):
    data = Indexable(random_rows(50, seed=5))
    args = make_args(tmp_path, max_steps=2, per_device_train_batch_size=3, gradient_accumulation_steps=2)
    trainer = Trainer(tiny_model(), args, train_dataset=data)
    trainer.train()
    assert data.reads == 2 * 3 * 2  # only the rows of the steps run, not the whole set
    # the order is still the seeded per-epoch shuffle of the whole set
    assert sorted(i for b in trainer._epoch_batches(trainer._features(data), 0) for i in b) == list(range(50))
    columns = {"input_ids": [r["input_ids"] for r in data.rows]}
    view = IndexedDataset(columns)
    assert len(view) == 50 and view[7] == data.rows[7] and list(view)[-1] == data.rows[-1]
    with pytest.raises(IndexError):
        view[50]


def test_datasets_objects_when_installed(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the optional `datasets` package is not installed")
    rows = random_rows(12, seed=6)
    ds = datasets.Dataset.from_list(rows)
    view = Trainer(tiny_model(), make_args(tmp_path), train_dataset=ds)._features(ds)
    assert len(view) == 12 and view[3]["input_ids"] == rows[3]["input_ids"]
    stream = ds.to_iterable_dataset(num_shards=1)
    assert is_iterable_dataset(stream)
    trainer = Trainer(tiny_model(), make_args(tmp_path, max_steps=7, per_device_train_batch_size=4), train_dataset=stream)
    assert trainer.train().global_step == 7  # 3 micro-batches a pass: iterated again, twice


def test_an_eval_stream_is_read_once_batch_by_batch(tmp_path):
    rows = random_rows(7, seed=9)
    args = make_args(tmp_path, per_device_eval_batch_size=3)
    trainer = Trainer(tiny_model(), args, train_dataset=rows)
    stream = Stream(rows)
    on_list, on_stream = trainer.evaluate(rows), trainer.evaluate(stream)
    assert stream.iterations == 1 and stream.read == 7
    assert on_stream["eval_loss"] == on_list["eval_loss"] and on_stream["eval_accuracy"] == on_list["eval_accuracy"]
    pred = trainer.predict(Stream(rows))
    assert pred.predictions.shape[0] == 7 and pred.label_ids.shape[0] == 7
    with pytest.raises(DataError, match="evaluation stream yielded no examples"):
        trainer.evaluate(iter([]))


def test_packing_a_stream_yields_blocks_as_they_fill():
    feats = [{"input_ids": list(range(1, 1 + n))} for n in (3, 5, 2, 6)]
    pulled = []

    def gen():
        for f in feats:
            pulled.append(f)
            yield f

    blocks = pack_stream(gen(), max_length=4, eos_token_id=0)
    first = next(blocks)
    assert len(pulled) == 1 and first["input_ids"] == [1, 2, 3, 0]
    assert [first, *blocks] == pack_examples(feats, 4, eos_token_id=0)
    with pytest.raises(DataError, match="max_length >= 2"):
        pack_stream(gen(), max_length=1)


def test_packed_stream_training_uses_the_same_blocks_as_a_packed_list(tmp_path):
    rows = [{"input_ids": r["input_ids"]} for r in random_rows(9, seed=10, lo=2, hi=9)]
    args = make_args(tmp_path, max_steps=1, packing=True, max_length=8, per_device_train_batch_size=2)
    trainer = Trainer(tiny_model(), args, train_dataset=Stream(rows))
    streamed = [b for batch in trainer._stream_batches(Stream(rows), 2, drop_last=False) for b in batch]
    assert streamed == list(trainer._features(rows))
    assert all(len(b["input_ids"]) <= 8 for b in streamed)


def test_iter_examples_reads_rows_lazily_with_their_index():
    stream = Stream([{"text": "a"}, "b"])
    pairs = iter_examples(stream, text_field="text")
    assert stream.read == 0
    assert list(pairs) == [(0, {"text": "a"}), (1, {"text": "b"})]
    with pytest.raises(DataError, match="example 1 is a int"):
        list(iter_examples(iter([{"text": "a"}, 5])))
    with pytest.raises(DataError, match="cannot read examples from a int"):
        iter_examples(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(iter_examples({"text": ["x", "y"]})) == [(0, {"text": "x"}), (1, {"text": "y"})]
