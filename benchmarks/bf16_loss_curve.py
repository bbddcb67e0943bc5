#!/usr/bin/env python
"""bf16 mixed precision against float32 on the same data: loss curves and step times.

A GPT-2 (6 layers, 384 channels, byte-level vocabulary) learns the packaged CC-CEDICT sample
("中文 = english" lines as UTF-8 bytes) from the same initialisation and the same batches
twice: with float32 products and with ``set_float32_matmul_precision("medium")`` (what
``TrainingArguments(bf16=True)`` sets: bf16 operands, f32 sums, f32 weights and AdamW state).
Prints both loss curves, their largest gap and the median step time of each.

    python benchmarks/bf16_loss_curve.py [--steps 200] [--batch 16] [--seq 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import ferrotune as ft
from ferrotune.datasets import load_cedict_sample


def batches(steps: int, batch: int, seq: int, seed: int = 0):
    text = "\n".join(f"{r['zh']} = {'; '.join(r['en'][:2])}" for r in load_cedict_sample()).encode("utf-8")
    data = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        starts = rng.integers(0, len(data) - seq, size=batch)
        yield np.stack([data[s : s + seq] for s in starts])


def train(precision: str, args) -> tuple:
    ft.set_float32_matmul_precision(precision)
    cfg = dict(model_type="gpt2", vocab_size=256, n_positions=args.seq, n_embd=384, n_layer=6, n_head=6,
               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = ft.Model.from_config(cfg, seed=0)
    opt = ft.AdamW(model, lr=1e-3, weight_decay=0.01)
    losses, times = [], []
    for ids in batches(args.steps, args.batch, args.seq):
        t0 = time.perf_counter()
        losses.append(model.forward_backward(ids))
        opt.step()
        model.zero_grad()
        times.append(time.perf_counter() - t0)
    ft.set_float32_matmul_precision("highest")
    return np.array(losses), statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    print(f"kernels: {ft.cpu_isa()}; GPT-2 6x384, byte vocabulary, batch ({args.batch}, {args.seq}), "
          f"{args.steps} steps, AdamW lr 1e-3")
    f32, t32 = train("highest", args)
    b16, t16 = train("medium", args)
    every = max(args.steps // 10, 1)
    print("| step | f32 loss | bf16 loss | difference |")
    print("|---|---|---|---|")
    for i in list(range(0, args.steps, every)) + [args.steps - 1]:
        print(f"| {i + 1} | {f32[i]:.4f} | {b16[i]:.4f} | {b16[i] - f32[i]:+.4f} |")
    tail = slice(-every, None)
    print(f"largest |difference| {np.abs(b16 - f32).max():.4f}; mean of the last {every} steps: "
          f"f32 {f32[tail].mean():.4f}, bf16 {b16[tail].mean():.4f}")
    print(f"median step: f32 {t32:.3f} s, bf16 {t16:.3f} s ({t32 / t16:.2f}x)")


if __name__ == "__main__":
    main()
