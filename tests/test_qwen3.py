"""Qwen3 (q/k RMSNorm per head, explicit head_dim) beyond the parity cases of test_parity.py:
decoding over the KV cache, save_pretrained in the layout transformers reads, LoRA on every
projection, and the sequence-classification head."""

import json

import numpy as np

import ferrotune as ft
from ferrotune.generation import generate as generate_fn
from ferrotune.io import load_safetensors

from conftest import fixture_dir

NAME = "qwen3_tiny"


def load():
    return ft.Model.from_pretrained(fixture_dir(NAME))


def test_config_maps_head_dim_and_norms():
    model = load()
    cfg = model.config.to_dict()
    assert cfg["model_type"] == "qwen3" and cfg["head_dim"] == 12  # not hidden_size / heads = 8
    names = model.state_dict()
    assert names["model.layers.0.self_attn.q_norm.weight"].shape == (12,)
    assert names["model.layers.1.self_attn.k_norm.weight"].shape == (12,)
    assert names["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 12, 32)
    # transformers' default when config.json has no head_dim is 128, not hidden_size / heads
    del cfg["head_dim"]
    assert ft.Model.from_config(cfg).state_dict()["model.layers.0.self_attn.q_norm.weight"].shape == (128,)


def test_kv_cache_matches_full_forward_at_every_position():
    model = load()
    prompt = np.random.default_rng(0).integers(0, model.config.vocab_size - 1, size=(2, 5))
    seqs, logits = generate_fn(model, prompt, max_new_tokens=12, do_sample=True, seed=3, eos_token_id=[], output_logits=True)
    full = model(seqs).logits
    t = prompt.shape[1]
    np.testing.assert_allclose(logits, full[:, t - 1 : t - 1 + logits.shape[1]], rtol=0, atol=1e-5)


def test_save_pretrained_writes_what_transformers_reads(tmp_path):
    model = load()
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "qwen3" and cfg["architectures"] == ["Qwen3ForCausalLM"]
    assert cfg["head_dim"] == 12 and cfg["tie_word_embeddings"] is False
    saved, original = load_safetensors(tmp_path / "model.safetensors"), load_safetensors(fixture_dir(NAME) / "model.safetensors")
    assert set(saved) == set(original)
    for k in saved:
        np.testing.assert_array_equal(saved[k], original[k])
    ids = np.arange(1, 17).reshape(2, 8)
    np.testing.assert_array_equal(ft.Model.from_pretrained(tmp_path)(ids).logits, model(ids).logits)


def test_lora_on_every_projection():
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert ft.get_peft_model(load(), ft.LoraConfig()).peft_config.target_modules == ["q_proj", "v_proj"]
    peft = ft.get_peft_model(load(), ft.LoraConfig(r=2, target_modules=targets))
    ids = np.arange(1, 19).reshape(2, 9)
    peft.forward_backward(ids)
    grads = peft.gradients()
    assert len(grads) == 2 * 2 * len(targets)  # A and B, two layers
    b_grads = [g for k, g in grads.items() if "lora_B" in k]
    assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in b_grads)


def test_sequence_classification_head():
    model = ft.Model.for_sequence_classification(fixture_dir(NAME), num_labels=3, pad_token_id=0)
    assert model.config.to_dict()["architectures"] == ["Qwen3ForSequenceClassification"]
    out = model(np.array([[5, 6, 7, 0], [8, 9, 10, 11]]))
    assert out.logits.shape == (2, 3)
