"""Freezing parameters: no gradient memory or work, no optimizer state, unchanged weights."""

import numpy as np
import pytest

import ferrotune as ft

from conftest import fixture_dir

TINY = dict(
    model_type="gpt2", vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
)


def ids(seed=0):
    return np.random.default_rng(seed).integers(0, 64, size=(2, 8))


def test_freeze_by_regex_and_name():
    m = ft.Model.from_config(TINY, seed=1)
    total = m.num_parameters()
    frozen = m.freeze(r"^transformer\.h\.0\.")
    assert frozen and all(n.startswith("transformer.h.0.") for n in frozen)
    assert m.num_parameters(trainable_only=True) == total - sum(
        int(np.prod(s)) for n, s in m.named_parameter_shapes() if n in frozen
    )
    assert m.requires_grad()["transformer.h.0.ln_1.weight"] is False
    assert m.requires_grad()["transformer.h.1.ln_1.weight"] is True
    m.unfreeze("transformer.h.0.ln_1.weight")
    assert m.requires_grad()["transformer.h.0.ln_1.weight"] is True
    with pytest.raises(ft.InputError, match="nothing_like_this"):
        m.freeze("nothing_like_this")


def test_frozen_parameters_get_no_gradients_and_others_are_unchanged():
    full = ft.Model.from_config(TINY, seed=1)
    part = ft.Model.from_config(TINY, seed=1)
    part.freeze([r"\.attn\.", "transformer.wpe.weight"])
    full.forward_backward(ids())
    part.forward_backward(ids())
    g_full, g_part = full.gradients(), part.gradients()
    assert set(g_part) == set(part.trainable_parameter_names())
    assert not any(".attn." in n for n in g_part) and "transformer.wpe.weight" not in g_part
    for n, g in g_part.items():  # what still trains gets exactly the same gradient
        np.testing.assert_array_equal(g, g_full[n])


def test_optimizer_only_updates_trainable_and_keeps_no_state_for_frozen():
    m = ft.Model.from_config(TINY, seed=2)
    m.freeze(r"^transformer\.h\.")
    before = m.state_dict()
    opt = ft.AdamW(m, lr=1e-2)
    for _ in range(2):
        m.forward_backward(ids()), opt.step(), m.zero_grad()
    after = m.state_dict()
    for n in before:
        same = np.array_equal(before[n], after[n])
        assert same == n.startswith("transformer.h."), n
    state = opt.state_dict()
    assert set(state["exp_avg"]) == set(m.trainable_parameter_names())


def test_changing_the_trainable_set_invalidates_the_optimizer():
    m = ft.Model.from_config(TINY, seed=2)
    opt = ft.AdamW(m)
    m.forward_backward(ids())
    m.freeze("transformer.wte.weight")
    with pytest.raises(ft.InputError, match="build a new one"):
        opt.step()


def test_freezing_lower_layers_of_a_llama_fixture():
    d = fixture_dir("llama_tiny")
    full, part = ft.Model.from_pretrained(d), ft.Model.from_pretrained(d)
    part.freeze([r"layers\.0\.", r"q_proj", "model.embed_tokens.weight"])
    x = np.random.default_rng(0).integers(0, 96, size=(2, 10))
    full.forward_backward(x), part.forward_backward(x)
    g_full, g_part = full.gradients(), part.gradients()
    assert "model.layers.1.self_attn.k_proj.weight" in g_part
    assert "model.layers.1.self_attn.q_proj.weight" not in g_part
    for n, g in g_part.items():
        np.testing.assert_array_equal(g, g_full[n])
