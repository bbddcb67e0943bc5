#!/usr/bin/env python
"""Activation memory of a GPT-2 124M training step at batch (4, 256), with gradient
checkpointing off and on: the bytes `model.activation_bytes()` reports after one
`forward_backward` (everything the backward reads, plus the loss's 256-row logits chunk;
parameters, gradients and optimizer state not counted). Exact, not timed.

    python benchmarks/activation_memory.py
"""

import numpy as np

import ferrotune as ft

GPT2_124M = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)

ids = np.random.default_rng(0).integers(0, GPT2_124M["vocab_size"], size=(4, 256))
for p in (0.1, 0.0):
    model = ft.Model.from_config(dict(GPT2_124M, resid_pdrop=p, embd_pdrop=p, attn_pdrop=p), seed=0)
    mib = []
    for ckpt in (False, True):
        model.gradient_checkpointing_enable() if ckpt else model.gradient_checkpointing_disable()
        model.forward_backward(ids)
        model.zero_grad()
        mib.append(model.activation_bytes() / 2**20)
    print(f"dropout {p}: {mib[0]:.1f} MiB without checkpointing, {mib[1]:.1f} MiB with ({mib[0] / mib[1]:.2f}x less)")
