#!/usr/bin/env python
"""LoRA fine-tuning speed and memory, side by side: ferrotune against PyTorch + peft.

GPT-2 124M shape (random init from a config: n_embd 768, 12 layers, 12 heads, vocab 50257,
n_positions 1024, dropouts 0), LoRA r=8, lora_alpha=16, lora_dropout=0 on ``c_attn``, every
base weight frozen, AdamW (lr 1e-4) over the adapter parameters only, batch (4, 256) of
random token ids (labels = inputs). The same loop on both sides:

    ferrotune: model.zero_grad(); model.forward_backward(ids); opt.step()
    PyTorch:   loss = model(input_ids=ids, labels=ids).loss; loss.backward(); opt.step();
               opt.zero_grad(set_to_none=True)     (transformers GPT2LMHeadModel + peft, as
               installed: default attention implementation, torch.optim.AdamW)

Each framework runs in its own subprocess (so ``ru_maxrss`` is that run's peak RSS: the
interpreter, imports, model, adapters, optimizer state and activations); with
``--repeats`` the order alternates. One warm-up step, then ``--steps`` timed steps; the
table shows the median seconds per step, tokens/s (B * T / step), the best step (less
sensitive to other jobs on a shared machine), peak RSS and the ratios.

Usage (from the repository root, ferrotune installed in the running environment):

    python benchmarks/bench_lora.py                                        # ferrotune (+ torch if importable)
    python benchmarks/bench_lora.py --torch-python /path/to/venv/bin/python
    python benchmarks/bench_lora.py --frameworks ferrotune --steps 3

The PyTorch side runs when --torch-python names an interpreter with torch + transformers +
peft, or when those import here. Neither ferrotune nor torch is imported by the parent
process. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys

from hostinfo import add_isa_argument, isa_env, machine, tier

GPT2_124M = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["c_attn"])
LR = 1e-4
DATA_SEED = 1234


# ----------------------------------------------------------------------------- workers
# Each runs in a fresh interpreter and prints one JSON line.


def _ids(batch: int, seq: int):
    import numpy as np

    return np.random.default_rng(DATA_SEED).integers(0, GPT2_124M["vocab_size"], size=(batch, seq))


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def worker_ferrotune(batch: int, seq: int, steps: int, threads: int) -> dict:
    import time

    import ferrotune as ft

    model = ft.Model.from_config({"model_type": "gpt2", **GPT2_124M}, seed=0)
    model = ft.get_peft_model(model, ft.LoraConfig(**LORA))
    opt = ft.AdamW(model, lr=LR)
    ids = _ids(batch, seq)
    times, losses = [], []
    for _ in range(1 + steps):
        t0 = time.perf_counter()
        model.zero_grad()
        losses.append(model.forward_backward(ids))
        opt.step()
        times.append(time.perf_counter() - t0)
    return {
        "version": ft.__version__,
        "trainable": model.num_parameters(trainable_only=True),
        "total": model.num_parameters(),
        "times": times[1:],
        "warmup": times[0],
        "losses": losses,
        "peak_rss": _peak_rss_bytes(),
        "threads": os.environ.get("RAYON_NUM_THREADS", "default"),
    }


def worker_torch(batch: int, seq: int, steps: int, threads: int) -> dict:
    import time

    import peft
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_124M))
    model = peft.get_peft_model(model, peft.LoraConfig(**LORA))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    ids = torch.from_numpy(_ids(batch, seq))
    times, losses = [], []
    for _ in range(1 + steps):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        times.append(time.perf_counter() - t0)
    trainable, total = model.get_nb_trainable_parameters()
    return {
        "version": f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
        "attn_implementation": model.config._attn_implementation,
        "trainable": trainable,
        "total": total,
        "times": times[1:],
        "warmup": times[0],
        "losses": losses,
        "peak_rss": _peak_rss_bytes(),
        "threads": torch.get_num_threads(),
    }


WORKERS = {"ferrotune": worker_ferrotune, "torch": worker_torch}


# ----------------------------------------------------------------------------- parent


def run_worker(python: str, framework: str, args: argparse.Namespace) -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", framework,
           "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **isa_env(args.isa)})
    if out.returncode != 0:
        raise RuntimeError(f"{framework} worker failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_python(args: argparse.Namespace) -> str | None:
    if args.torch_python:
        return args.torch_python
    if all(importlib.util.find_spec(m) for m in ("torch", "transformers", "peft")):
        return sys.executable
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--torch-python", help="an interpreter with torch + transformers + peft (default: this one, if it has them)")
    p.add_argument("--frameworks", nargs="+", choices=sorted(WORKERS), default=["ferrotune", "torch"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    p.add_argument("--repeats", type=int, default=1, help="runs per framework, alternating the order")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--json", help="also write the raw results here")
    add_isa_argument(p)
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        r = WORKERS[args.worker](args.batch, args.seq, args.steps, args.threads)
        r["tier"] = tier("ferrotune" if args.worker == "ferrotune" else "pytorch")
        print(json.dumps(r))
        return 0

    pythons = {"ferrotune": sys.executable}
    if "torch" in args.frameworks:
        tp = torch_python(args)
        if tp is None:
            print("PyTorch side skipped: no --torch-python and torch/transformers/peft do not import here")
        else:
            pythons["torch"] = tp
    frameworks = [f for f in args.frameworks if f in pythons]
    tokens = args.batch * args.seq
    print(f"machine: {machine()}")
    print(f"GPT-2 124M shape, LoRA {LORA}, AdamW lr {LR}, batch ({args.batch}, {args.seq}) = {tokens} tokens/step, "
          f"{args.steps} timed steps after 1 warm-up, {args.repeats} repeat(s)")
    results: dict[str, list[dict]] = {f: [] for f in frameworks}
    for rep in range(args.repeats):
        order = frameworks if rep % 2 == 0 else frameworks[::-1]
        for fw in order:
            r = run_worker(pythons[fw], fw, args)
            results[fw].append(r)
            print(f"  run {rep + 1} {fw} ({r['tier']}): steps {', '.join(f'{t:.2f}' for t in r['times'])} s "
                  f"(warm-up {r['warmup']:.2f} s), loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}, "
                  f"peak RSS {r['peak_rss'] / 1e9:.2f} GB", flush=True)

    rows = {}
    for fw, runs in results.items():
        times = [t for r in runs for t in r["times"]]
        step = statistics.median(times)
        rows[fw] = {
            "step": step,
            "tokens_per_s": tokens / step,
            "best_step": min(times),
            "peak_rss": max(r["peak_rss"] for r in runs),
            "trainable": runs[0]["trainable"],
            "total": runs[0]["total"],
            "version": runs[0]["version"],
        }
    print()
    print("| framework | s/step (median) | tokens/s (median) | best step: s, tokens/s | peak RSS | trainable / total params |")
    print("|---|---|---|---|---|---|")
    for fw, r in rows.items():
        print(f"| {fw} ({r['version']}) | {r['step']:.3f} | {r['tokens_per_s']:.0f} | "
              f"{r['best_step']:.3f}, {tokens / r['best_step']:.0f} | {r['peak_rss'] / 1e9:.2f} GB | "
              f"{r['trainable']:,} / {r['total']:,} |")
    if "ferrotune" in rows and "torch" in rows:
        f, t = rows["ferrotune"], rows["torch"]
        print(f"\nferrotune / PyTorch+peft: {f['tokens_per_s'] / t['tokens_per_s']:.2f}x tokens/s (median steps), "
              f"{t['best_step'] / f['best_step']:.2f}x (best steps), {f['peak_rss'] / t['peak_rss']:.2f}x peak RSS")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": machine(), "args": vars(args), "results": results, "summary": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
