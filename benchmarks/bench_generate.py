#!/usr/bin/env python
"""Generation speed: GPT-2 124M shape (random init), batch 1, prompt 32 tokens, 128 new
tokens, greedy. Reports new tokens/s (whole generate call, prefill included), the decode-only
rate, and how close decoding is to the memory-bandwidth limit (every step reads all weights).

    python benchmarks/bench_generate.py                   # ferrotune (+ transformers if importable)
    python benchmarks/bench_generate.py --impl transformers   # in an environment with torch

ferrotune is imported only for --impl ferrotune/both, torch only for transformers/both.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

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
        "weight_bytes_per_token": n_params * 4,
    }


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def bench_ferrotune() -> dict:
    import ferrotune as ft

    model = ft.Model.from_config(CONFIG, seed=0).eval()
    ids = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], size=(1, PROMPT))

    def run(n):
        out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=[])
        assert out.shape == (1, PROMPT + n)

    # weights read per decoded token: every parameter but the position table (one row used)
    n = model.num_parameters() - CONFIG["n_positions"] * CONFIG["n_embd"]
    return bench(run, n)


def bench_transformers() -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**{k: v for k, v in CONFIG.items() if k != "model_type"})
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, CONFIG["vocab_size"], size=(1, PROMPT)))

    def run(n):
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=0)
        assert out.shape == (1, PROMPT + n)

    n = sum(p.numel() for p in model.parameters()) - CONFIG["n_positions"] * CONFIG["n_embd"]
    r = bench(run, n)
    r["versions"] = f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads"
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["ferrotune", "transformers", "both"], default="both")
    args = ap.parse_args()
    bw = measure_bandwidth()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"measured read bandwidth {bw:.1f} GB/s (numpy gemv/sum over 1 GB)")
    print(f"GPT-2 124M shape, batch 1, prompt {PROMPT}, {NEW} new tokens, greedy, median of {REPEATS}")
    impls = ["ferrotune", "transformers"] if args.impl == "both" else [args.impl]
    results = {}
    for impl in impls:
        try:
            r = bench_ferrotune() if impl == "ferrotune" else bench_transformers()
        except ImportError as e:
            print(f"{impl}: skipped ({e})")
            continue
        results[impl] = r
        limit = bw * 1e9 / r["weight_bytes_per_token"]
        print(
            f"{impl:>12}: {r['new_tokens_per_s']:.1f} new tokens/s (generate call {r['total_s']:.2f} s, prefill "
            f"{r['prefill_s'] * 1e3:.0f} ms); decode {r['decode_tokens_per_s']:.1f} tokens/s = "
            f"{r['decode_tokens_per_s'] / limit:.0%} of the bandwidth limit {limit:.1f} tokens/s "
            f"({r['weight_bytes_per_token'] / 1e6:.0f} MB of f32 weights per token)"
            + (f" [{r['versions']}]" if "versions" in r else "")
        )
    if len(results) == 2:
        print(f"speed-up: {results['ferrotune']['new_tokens_per_s'] / results['transformers']['new_tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
