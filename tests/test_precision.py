"""bf16 mixed precision: set_float32_matmul_precision and TrainingArguments(bf16=True).

The bf16 product itself is checked against f64 sums of rounded operands in Rust
(src/kernels/matmul_bf16.rs); here: the switch, its effect on a model's loss and gradients
(bf16 rounding size, not more), the Trainer, and the error on CPUs without AVX512_BF16."""

import os
import subprocess
import sys

import numpy as np
import pytest

import ferrotune as ft
from ferrotune.precision import bf16_available

needs_bf16 = pytest.mark.skipif(not bf16_available(), reason=f"this CPU has no AVX512_BF16 ({ft.cpu_isa()} kernels)")

CONFIG = dict(model_type="gpt2", vocab_size=500, n_positions=64, n_embd=64, n_layer=2, n_head=4,
              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


@pytest.fixture(autouse=True)
def restore_precision():
    yield
    ft.set_float32_matmul_precision("highest")


def loss_and_grads(model, ids):
    loss = model.forward_backward(ids)
    grads = model.gradients()
    model.zero_grad()
    return loss, grads


def test_precision_setting():
    assert ft.get_float32_matmul_precision() == "highest"
    with pytest.raises(ValueError, match="precision"):
        ft.set_float32_matmul_precision("low")
    model = ft.Model.from_config(CONFIG, seed=0)
    ids = np.random.default_rng(0).integers(0, 500, size=(4, 32))
    l32, g32 = loss_and_grads(model, ids)
    ft.set_float32_matmul_precision("high")  # TF32 / bf16x3 in PyTorch: float32 on a CPU
    assert ft.get_float32_matmul_precision() == "high"
    lh, gh = loss_and_grads(model, ids)
    assert lh == l32 and all(np.array_equal(g32[k], gh[k]) for k in g32)


@needs_bf16
def test_medium_rounds_products_to_bf16():
    model = ft.Model.from_config(CONFIG, seed=0)
    ids = np.random.default_rng(0).integers(0, 500, size=(4, 32))
    l32, g32 = loss_and_grads(model, ids)
    ft.set_float32_matmul_precision("medium")
    l16, g16 = loss_and_grads(model, ids)
    assert l16 != l32 and abs(l16 - l32) < 1e-3 * abs(l32)
    for k in g32:
        rel = np.abs(g16[k] - g32[k]).max() / np.abs(g32[k]).max()
        assert rel < 3e-2, (k, rel)  # bf16 keeps 8 significant bits: ~0.4% per rounding
    ft.set_float32_matmul_precision("highest")
    assert loss_and_grads(model, ids)[0] == l32


@needs_bf16
def test_trainer_bf16_trains_like_float32_and_restores_precision(tmp_path):
    """The same run in bf16 and in float32: the loss falls in both and the curves stay within
    bf16's rounding of each other."""
    rows = [{"input_ids": list(np.random.default_rng(i).integers(0, 50, 24))} for i in range(16)]
    curves = {}
    for bf16 in (False, True):
        model = ft.Model.from_config(CONFIG, seed=0)
        args = ft.TrainingArguments(output_dir=str(tmp_path / str(bf16)), bf16=bf16, per_device_train_batch_size=4,
                                    num_train_epochs=3, learning_rate=3e-3, logging_steps=1, save_strategy="no",
                                    report_to=[], disable_tqdm=True)
        trainer = ft.Trainer(model=model, args=args, train_dataset=rows)
        trainer.train()
        curves[bf16] = np.array([h["loss"] for h in trainer.state.log_history if "loss" in h])
        assert ft.get_float32_matmul_precision() == "highest"
    f32, b16 = curves[False], curves[True]
    assert len(f32) == len(b16) == 12
    assert b16[-1] < b16[0] - 0.5 and f32[-1] < f32[0] - 0.5
    assert np.abs(b16 - f32).max() < 0.02 * f32.max()


def test_bf16_needs_the_instructions(tmp_path):
    """Without AVX512_BF16 (forced here with FERROTUNE_CPU=generic), bf16=True is a ConfigError
    that says why; "medium" then keeps float32 products."""
    code = (
        "import ferrotune as ft, numpy as np\n"
        "try:\n"
        "    ft.TrainingArguments(output_dir='o', bf16=True)\n"
        "except ft.ConfigError as e:\n"
        "    print('ERR', e)\n"
        "m = ft.Model.from_config(%r, seed=0)\n"
        "ids = np.arange(64).reshape(2, 32)\n"
        "a = m.forward_backward(ids); m.zero_grad()\n"
        "ft.set_float32_matmul_precision('medium')\n"
        "print('SAME', a == m.forward_backward(ids))\n" % (CONFIG,)
    )
    env = dict(os.environ, FERROTUNE_CPU="generic")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert "ERR" in out and "AVX512_BF16" in out and "generic" in out
    assert "SAME True" in out
