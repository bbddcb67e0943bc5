#!/usr/bin/env python
"""Generation speed: GPT-2 124M shape (random init), batch 1, prompt 32 tokens, 128 new
tokens, greedy. Reports new tokens/s (whole generate call, prefill included), the decode-only
rate, and how close decoding is to the memory-bandwidth limit (every step reads all weights).

    python benchmarks/bench_generate.py --torch-python /path/to/venv/bin/python

runs, in alternation for --rounds rounds: ferrotune with float32 weights, ferrotune with
bfloat16 weights (``generate(..., weights_dtype="bfloat16")``) and, when --torch-python names
an interpreter with torch + transformers, transformers' ``generate`` as installed, with the
model in float32 and cast to bfloat16, each in a subprocess of that interpreter
(``--impl transformers`` is that subprocess's entry point).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import numpy as np

from hostinfo import add_isa_argument, isa_env, tier

CONFIG = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
PROMPT, NEW, REPEATS = 32, 128, 3


def measure_bandwidth(gb: float = 1.0) -> float:
    """Read bandwidth in GB/s: the best of a matrix-vector product (BLAS, all cores) and a sum
    over a 1 GB float32 buffer, far larger than the caches (the same access pattern as a
    decoding step, which reads every weight once)."""
    cols = 4096
    a = np.ones((int(gb * 1e9 / 4 / cols), cols), dtype=np.float32)
    x = np.ones(cols, dtype=np.float32)
    best = float("inf")
    for f in (lambda: a @ x, lambda: a.sum()):
        f()
        for _ in range(3):
            t0 = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def bench(run, n_params: int) -> dict:
    run(4)  # warm up
    prefill = min(_timed(lambda: run(1)) for _ in range(REPEATS))
    totals = [_timed(lambda: run(NEW)) for _ in range(REPEATS)]
    total = statistics.median(totals)
    decode_per_token = (total - prefill) / (NEW - 1)
    return {
        "new_tokens_per_s": NEW / total,
        "decode_tokens_per_s": 1.0 / decode_per_token,
        "prefill_s": prefill,
        "total_s": total,
        "n_params": n_params,
    }


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def bench_ferrotune(weights_dtype: str) -> dict:
    import ferrotune as ft

    model = ft.Model.from_config(CONFIG, seed=0).eval()
    ids = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], size=(1, PROMPT))

    def run(n):
        out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=[], weights_dtype=weights_dtype)
        assert out.shape == (1, PROMPT + n)

    # weights read per decoded token: every parameter but the position table (one row used)
    n = model.num_parameters() - CONFIG["n_positions"] * CONFIG["n_embd"]
    return bench(run, n)


def bench_transformers(dtype: str) -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**{k: v for k, v in CONFIG.items() if k != "model_type"})
    model = transformers.GPT2LMHeadModel(cfg).eval().to(getattr(torch, dtype))
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, CONFIG["vocab_size"], size=(1, PROMPT)))

    def run(n):
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=0)
        assert out.shape == (1, PROMPT + n)

    n = sum(p.numel() for p in model.parameters()) - CONFIG["n_positions"] * CONFIG["n_embd"]
    r = bench(run, n)
    r["versions"] = (f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
                     f"{tier('pytorch')}")
    return r


BYTES = {"ferrotune f32": 4, "ferrotune bf16": 2, "transformers": 4, "transformers bf16": 2}


def run_transformers(python: str, dtype: str) -> dict:
    cmd = [python, os.path.abspath(__file__), "--impl", "transformers", "--torch-dtype", dtype]
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"transformers run failed:\n{p.stdout}\n{p.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["ferrotune", "transformers"], default="ferrotune",
                    help="transformers: run only transformers and print its result as JSON (the subprocess)")
    ap.add_argument("--torch-python", default=None, help="an interpreter with torch + transformers")
    ap.add_argument("--torch-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="with --impl transformers: the dtype the model is cast to")
    ap.add_argument("--rounds", type=int, default=2)
    add_isa_argument(ap)
    args = ap.parse_args()
    # before ferrotune's first kernel call, and inherited by the transformers subprocesses
    os.environ.update(isa_env(args.isa))
    if args.impl == "transformers":
        print("RESULT " + json.dumps(bench_transformers(args.torch_dtype)), flush=True)
        return
    import ferrotune as ft

    bw = measure_bandwidth()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, kernels: "
          f"{ft.cpu_isa()}; measured read bandwidth {bw:.1f} GB/s (numpy gemv/sum over 1 GB)")
    print(f"GPT-2 124M shape, batch 1, prompt {PROMPT}, {NEW} new tokens, greedy; median of {REPEATS} "
          f"generate calls per round, {args.rounds} rounds in alternation")
    runs = {
        "ferrotune f32": lambda: bench_ferrotune("float32"),
        "ferrotune bf16": lambda: bench_ferrotune("bfloat16"),
    }
    if args.torch_python:
        runs["transformers"] = lambda: run_transformers(args.torch_python, "float32")
        runs["transformers bf16"] = lambda: run_transformers(args.torch_python, "bfloat16")
    results: dict = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, f in runs.items():
            results[name].append(f())
    med = {}
    for name, rs in results.items():
        r = {k: statistics.median(x[k] for x in rs) for k in ("new_tokens_per_s", "decode_tokens_per_s", "prefill_s", "total_s")}
        med[name] = r
        nbytes = rs[0]["n_params"] * BYTES[name]
        limit = bw * 1e9 / nbytes
        print(
            f"{name:>15}: {r['new_tokens_per_s']:.1f} new tokens/s (generate call {r['total_s']:.2f} s, prefill "
            f"{r['prefill_s'] * 1e3:.0f} ms); decode {r['decode_tokens_per_s']:.1f} tokens/s = "
            f"{r['decode_tokens_per_s'] / limit:.0%} of the bandwidth limit {limit:.1f} tokens/s "
            f"({nbytes / 1e6:.0f} MB of weights per token)"
            + (f" [{rs[0]['versions']}]" if "versions" in rs[0] else "")
        )
    if "transformers" in med:
        base = med["transformers"]["new_tokens_per_s"]
        for name in ("ferrotune f32", "ferrotune bf16"):
            print(f"{name} / transformers (f32, as installed): {med[name]['new_tokens_per_s'] / base:.2f}x")
        print(f"ferrotune bf16 / transformers bf16: "
              f"{med['ferrotune bf16']['new_tokens_per_s'] / med['transformers bf16']['new_tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
