"""One rank of tests/test_distributed.py, started by ``mpiexec -n 2`` (or alone, as the
single-process reference): ``python distributed_worker.py SPEC_JSON``.

The spec names a model directory, a mode and the Trainer arguments; each rank writes what
the test checks into ``spec["report"]/rank-<r>.json`` (the test's own files, apart from the
Trainer's ``output_dir``, where only rank 0 may write).
"""

import json
import os
import sys

import numpy as np

import ferrotune
from ferrotune import Trainer, TrainerCallback, TrainingArguments, checkpoint, distributed


def rows(n, seed, lo=4, hi=20, vocab=100):
    """Examples of uneven lengths (micro-batches pad differently on each rank)."""
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, vocab, int(rng.integers(lo, hi + 1))).tolist()} for _ in range(n)]


class Stream:
    """A re-iterable dataset without a length (the Trainer's stream path)."""

    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


class RaiseOnRank(TrainerCallback):
    def __init__(self, rank, step):
        self.rank, self.step = rank, step

    def on_step_end(self, args, state, control, **kw):
        if args.process_index == self.rank and state.global_step == self.step:
            raise RuntimeError(f"boom from rank {self.rank} at step {self.step}")


class SignalAt(TrainerCallback):
    """Writes a file when a step ends (the test then sends Ctrl-C) and slows the steps down."""

    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step and args.should_save:
            open(self.path, "w").close()
        if state.global_step >= self.step:
            import time

            time.sleep(0.5)


def count_optimizer_saves():
    """Wraps checkpoint.save_optimizer to count this rank's checkpoint writes."""
    calls = {"n": 0}
    inner = checkpoint.save_optimizer

    def counted(*a, **kw):
        calls["n"] += 1
        return inner(*a, **kw)

    checkpoint.save_optimizer = counted
    return calls


def train(spec, report):
    if "bucket_bytes" in spec:
        distributed.BUCKET_BYTES = spec["bucket_bytes"]
    saves = count_optimizer_saves()
    model = ferrotune.Model.from_pretrained(spec["model"])
    args = TrainingArguments(**spec["args"])
    callbacks = []
    if "raise_on" in spec:
        callbacks.append(RaiseOnRank(*spec["raise_on"]))
    if "signal_at" in spec:
        callbacks.append(SignalAt(*spec["signal_at"]))
    train = rows(*spec["train"])
    trainer = Trainer(model, args, train_dataset=Stream(train) if spec.get("stream") else train,
                      eval_dataset=rows(*spec["eval"]), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=spec.get("resume"))
    trainer.save_model(os.path.join(args.output_dir, "final"))
    report["weights"] = {k: v.tolist() for k, v in model.state_dict().items()}
    report["log_history"] = trainer.state.log_history
    report["optimizer_saves"] = saves["n"]


def evaluate(spec, report):
    model = ferrotune.Model.from_pretrained(spec["model"])
    trainer = Trainer(
        model,
        TrainingArguments(**spec["args"]),
        compute_metrics=lambda p: {"n_rows": float(len(p.predictions)), "checksum": float(np.sum(
            p.predictions * np.arange(1, p.predictions.shape[1] + 1)))},
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
    )
    data = rows(*spec["eval"])
    report["metrics"] = trainer.evaluate(data)
    report["plain"] = Trainer(model, TrainingArguments(**spec["args"])).evaluate(data)


def reduce_gradients(spec, report):
    """The Trainer's overlapped, bucketed reduction against one blocking all-reduce of the
    same gradients: equal bit for bit."""
    distributed.BUCKET_BYTES = spec["bucket_bytes"]
    model = ferrotune.Model.from_pretrained(spec["model"])
    data = rows(4, seed=distributed.rank())
    from ferrotune.data import DataCollatorForLanguageModeling

    b = DataCollatorForLanguageModeling(None, pad_token_id=0)(data)
    reducer = distributed.GradientReducer(model)
    model.forward_backward(b["input_ids"], labels=b["labels"], attention_mask=b["attention_mask"],
                           on_block_done=reducer.begin())
    reducer.finish()
    overlapped = model._core.grad_buffer().copy()
    model.zero_grad()
    model.forward_backward(b["input_ids"], labels=b["labels"], attention_mask=b["attention_mask"])
    distributed.all_reduce_gradients(model)
    blocking = model._core.grad_buffer().copy()
    report["buckets"] = len(reducer.buckets)
    report["equal"] = bool(np.array_equal(overlapped, blocking))
    report["max_diff"] = float(np.max(np.abs(overlapped - blocking)))
    report["threads"] = os.environ.get("RAYON_NUM_THREADS")
    report["shard"] = distributed.shard(list(range(5)))


def main():
    spec = json.loads(sys.argv[1])
    report = {"rank": distributed.rank(), "world_size": distributed.world_size()}
    {"train": train, "evaluate": evaluate, "reduce": reduce_gradients}[spec["mode"]](spec, report)
    os.makedirs(spec["report"], exist_ok=True)
    with open(os.path.join(spec["report"], f"rank-{distributed.rank()}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
