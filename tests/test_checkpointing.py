"""Gradient checkpointing (``gradient_checkpointing_enable``): the backward recomputes each
block's activations from the block's input, with the same dropout masks. Gradients, losses
and the dropout generator's state must equal those without it bit for bit (dropout in
training mode, LoRA with dropout, padding, GQA, sliding window, untied heads, a
classification head), the Trainer's trajectory must not change, and the activation memory
must shrink to one block's (measured by ``Model.activation_bytes``, not by timing)."""

import json
import shutil

import numpy as np
import pytest

import ferrotune as ft
from ferrotune import ConfigError, Trainer, TrainingArguments

from conftest import fixture_dir

CAUSAL = ["gpt2_tiny_a", "llama_tiny", "mistral_tiny", "qwen2_tiny", "llama3_rope_untied", "qwen3_tiny"]
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def with_dropout(name, p=0.1, **overrides):
    """The fixture's model with dropout ``p`` in its config (GPT-2's three kinds; the Llama
    family has none besides LoRA's): its weights, or random ones when ``overrides`` (such as
    more layers) change the shapes."""
    d = fixture_dir(name)
    cfg = json.loads((d / "config.json").read_text())
    if cfg["model_type"] == "gpt2":
        cfg.update(resid_pdrop=p, embd_pdrop=p, attn_pdrop=p)
    cfg.update(overrides)
    model = ft.Model.from_config(cfg, seed=1)
    if not overrides:
        model.load_state_dict(ft.Model.from_pretrained(d).state_dict())
    return model


def padded_batch(vocab, b=3, t=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (b, t))
    mask = np.ones((b, t), dtype=np.int64)
    mask[1, :3] = 0  # left padding
    mask[2, -4:] = 0  # right padding
    return dict(input_ids=ids, attention_mask=mask)


def run(model, batch, checkpointing, steps=2):
    """Losses of ``steps`` accumulating forward_backward calls from a fixed dropout state, the
    accumulated gradients, the dropout state after and the activation bytes."""
    if checkpointing:
        model.gradient_checkpointing_enable()
    else:
        model.gradient_checkpointing_disable()
    assert model.is_gradient_checkpointing == checkpointing
    model.train()
    model.set_rng_state(12345)
    model.zero_grad()
    losses = [model.forward_backward(**batch) for _ in range(steps)]
    return losses, model.gradients(), model.get_rng_state(), model.activation_bytes()


def assert_same(model, batch, dropout):
    losses, grads, rng, full = run(model, batch, False)
    ck_losses, ck_grads, ck_rng, ckpt = run(model, batch, True)
    assert ck_losses == losses
    assert rng == ck_rng
    assert (rng != 12345) == dropout, "masks were drawn exactly when the model has dropout"
    assert set(grads) == set(ck_grads)
    for name, g in grads.items():
        assert np.array_equal(g, ck_grads[name]), name
    assert any(np.any(g) for g in grads.values())
    assert ckpt < full
    return full, ckpt


@pytest.mark.parametrize("name", CAUSAL)
def test_same_gradients_with_dropout_and_padding(name):
    model = with_dropout(name)
    assert_same(model, padded_batch(model.config.vocab_size), dropout=name.startswith("gpt2"))


@pytest.mark.parametrize("name", ["gpt2_tiny_a", "mistral_tiny"])
def test_same_gradients_in_a_deeper_model(name):
    layers = {"n_layer": 5} if name.startswith("gpt2") else {"num_hidden_layers": 5}
    model = with_dropout(name, **layers)
    assert_same(model, padded_batch(model.config.vocab_size, seed=1), dropout=name.startswith("gpt2"))


@pytest.mark.parametrize("name", ["gpt2_tiny_a", "llama_tiny"])
def test_same_gradients_with_lora_dropout(name):
    model = with_dropout(name)
    targets = LORA_TARGETS[model.config.model_type]
    peft = ft.get_peft_model(model, ft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=targets), seed=3)
    rng = np.random.default_rng(0)
    shapes = dict(peft.named_parameter_shapes())
    peft.load_state_dict({n: rng.normal(0, 0.1, s) for n, s in shapes.items() if "lora_B" in n}, strict=False)
    assert_same(peft, padded_batch(peft.config.vocab_size, seed=2), dropout=True)


@pytest.mark.parametrize("name", ["seqcls_gpt2", "seqcls_llama"])
def test_same_gradients_with_a_classification_head(name):
    model = ft.Model.for_sequence_classification(fixture_dir(name), num_labels=3)
    batch = padded_batch(model.config.vocab_size, seed=3)
    batch["input_ids"][batch["attention_mask"] == 0] = 0  # pad_token_id
    batch["labels"] = np.array([[0], [2], [1]])
    assert_same(model, batch, dropout=False)


def test_eval_forward_and_switching_back():
    model = ft.Model.from_pretrained(fixture_dir("gpt2_tiny_a")).eval()
    batch = padded_batch(model.config.vocab_size)
    assert model.activation_bytes() == 0
    full_logits = model(**batch).logits
    full = model.activation_bytes()
    model.gradient_checkpointing_enable({"use_reentrant": False})
    np.testing.assert_array_equal(model(**batch).logits, full_logits)
    assert model.activation_bytes() < full
    model.gradient_checkpointing_disable()
    model(**batch)
    assert model.activation_bytes() == full
    with pytest.raises(ft.InputError):
        model.gradient_checkpointing_enable("use_reentrant")
    model.gradient_checkpointing_enable()
    model.resize_token_embeddings(model.config.vocab_size + 3)
    assert model.is_gradient_checkpointing


def test_activation_memory_is_one_block_plus_the_block_inputs():
    """Without checkpointing each of the L blocks keeps 5 (N, C), 1 (N, 4C), 4 (N) and the
    attention's (B, NH, T, 2) row statistics in float32, with or without dropout (masks are
    drawn again from seeds, attention probabilities and LayerNorm/GELU outputs recomputed);
    with it one set is shared, so L - 1 sets go. Block outputs, logits and scratch stay."""
    for p in (0.0, 0.1):
        model = with_dropout("gpt2_tiny_a", p=p, n_layer=6)
        c, nh, layers = model.config.n_embd, model.config.n_head, model.config.n_layer
        b, t = 2, 16
        batch = dict(input_ids=np.arange(b * t).reshape(b, t) % model.config.vocab_size)
        _, _, _, full = run(model, batch, False, steps=1)
        _, _, _, ckpt = run(model, batch, True, steps=1)
        n = b * t
        block = (5 * n * c + n * 4 * c + 4 * n + b * nh * t * 2) * 4
        assert full - ckpt == (layers - 1) * block


def test_training_arguments_accept_it():
    args = TrainingArguments(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    assert args.gradient_checkpointing is True
    assert TrainingArguments().gradient_checkpointing is False
    assert TrainingArguments(gradient_checkpointing_kwargs='{"use_reentrant": true}').gradient_checkpointing_kwargs == {
        "use_reentrant": True
    }
    with pytest.raises(ConfigError):
        TrainingArguments(gradient_checkpointing="yes")
    with pytest.raises(ConfigError):
        TrainingArguments(gradient_checkpointing_kwargs=["use_reentrant"])


def test_trainer_trajectory_is_unchanged(tmp_path):
    """Four AdamW steps with dropout and gradient accumulation: the logged losses, gradient
    norms and final weights are the same with gradient_checkpointing=True."""
    d = tmp_path / "tiny_dropout"
    shutil.copytree(fixture_dir("gpt2_tiny_a"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    (d / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    rows = [{"input_ids": rng.integers(0, 100, int(rng.integers(4, 20))).tolist()} for _ in range(8)]
    results = []
    for on in (False, True):
        model = ft.Model.from_pretrained(d)
        args = TrainingArguments(
            output_dir=str(tmp_path / f"out{on}"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
            max_steps=4, learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True,
            report_to="none", seed=0, gradient_checkpointing=on,
        )
        trainer = Trainer(model, args, train_dataset=rows)
        trainer.train()
        assert model.is_gradient_checkpointing == on
        logs = [(h["loss"], h["grad_norm"]) for h in trainer.state.log_history if "loss" in h]
        results.append((logs, model.state_dict()))
    (logs, weights), (ck_logs, ck_weights) = results
    assert len(logs) == 4 and ck_logs == logs
    for name, w in weights.items():
        assert np.array_equal(w, ck_weights[name]), name
