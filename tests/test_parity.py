"""Every architecture against transformers + PyTorch dumps (tests/fixtures/make_fixtures.py),
like llm.c's test_gpt2.c: logits, loss, every parameter gradient, parameters after 3 AdamW
steps."""

import numpy as np
import pytest

import ferrotune as ft
from ferrotune.io import load_safetensors_with_metadata

from conftest import fixture_dir

CASES = [
    "gpt2_tiny_a",  # n_embd 48, no padding
    "gpt2_tiny_b",  # right + left padding
    "llama_tiny",  # GQA 6/2, tied, right + left padding
    "llama3_rope_untied",  # llama3 rope scaling, untied lm_head
    "qwen2_tiny",  # q/k/v bias, right padding
    "mistral_tiny",  # sliding window 4 < T
    "qwen3_tiny",  # q/k RMSNorm per head, head_dim 12 != C / NH, untied, left padding
]


def load(name):
    d = fixture_dir(name)
    ref, meta = load_safetensors_with_metadata(d / "reference.safetensors")
    return d, ref, meta


def batch(ref):
    return dict(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"], labels=ref["labels"])


@pytest.mark.parametrize("name", CASES)
def test_logits_and_loss(name):
    d, ref, _ = load(name)
    out = ft.Model.from_pretrained(d)(**batch(ref))
    assert out.logits.shape == ref["logits"].shape
    # every position, padded ones included (left-padding rows follow transformers' eager attention)
    np.testing.assert_allclose(out.logits, ref["logits"], rtol=0, atol=1e-5)
    assert abs(out.loss - float(ref["loss"][0])) < 1e-5


@pytest.mark.parametrize("name", CASES)
def test_every_gradient(name):
    d, ref, _ = load(name)
    model = ft.Model.from_pretrained(d)
    loss = model.forward_backward(**batch(ref))
    assert abs(loss - float(ref["loss"][0])) < 1e-5
    grads = model.gradients()
    expected = {k[len("grad."):]: v for k, v in ref.items() if k.startswith("grad.")}
    assert set(grads) == set(expected)
    for k, g in grads.items():
        scale = np.abs(expected[k]).max()
        err = np.abs(g - expected[k]).max() / scale
        assert err < 1e-4, f"{k}: relative error {err:.2e}"


@pytest.mark.parametrize("name", CASES)
def test_three_adamw_steps(name):
    d, ref, meta = load(name)
    model = ft.Model.from_pretrained(d)
    opt = ft.AdamW(
        model,
        lr=float(meta["lr"]),
        betas=(float(meta["beta1"]), float(meta["beta2"])),
        eps=float(meta["eps"]),
        weight_decay=float(meta["weight_decay"]),
    )
    for _ in range(int(meta["steps"])):
        model.zero_grad()
        model.forward_backward(**batch(ref))
        opt.step()
    params = model.state_dict()
    for k, p in params.items():
        # fp32 torch is itself a few 1e-6 from the float64 run: compare with both
        assert np.abs(p - ref["adamw." + k]).max() < 2e-5, k
        assert np.abs(p - ref["f64.adamw." + k]).max() < 2e-5, k


def test_gradients_accumulate_and_zero():
    d, ref, _ = load("gpt2_tiny_a")
    model = ft.Model.from_pretrained(d)
    model.forward_backward(**batch(ref))
    once = model.gradients()
    model.forward_backward(**batch(ref))
    twice = model.gradients()
    for k in once:
        np.testing.assert_allclose(twice[k], 2 * once[k], rtol=1e-5, atol=1e-7)
    model.zero_grad()
    assert all(not np.any(g) for g in model.gradients().values())


def test_gradient_flow_every_parameter():
    model = ft.Model.from_config(
        dict(model_type="gpt2", vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4), seed=1
    )
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 16))
    model.forward_backward(ids)
    model.check_gradient_flow()  # raises on any all-zero or non-finite gradient
    for name, g in model.gradients().items():
        assert np.all(np.isfinite(g)) and np.any(g), name
