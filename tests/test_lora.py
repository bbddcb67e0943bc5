"""LoRA against PEFT (fixtures made by tests/fixtures/make_fixtures.py through peft):
logits, loss, adapter gradients and adapter weights after 3 AdamW steps; base weights
unchanged; merge_and_unload; PEFT's adapter files both ways."""

import json
import os

import numpy as np
import pytest

import ferrotune as ft
from ferrotune.io import load_safetensors, load_safetensors_with_metadata

from conftest import fixture_dir

CASES = {"lora_gpt2": "gpt2_tiny_a", "lora_gpt2_rslora": "gpt2_tiny_a", "lora_llama": "llama_tiny"}
PREFIX = "base_model.model."


def load(case, trainable=True):
    d, base = fixture_dir(case), fixture_dir(CASES[case])
    ref, meta = load_safetensors_with_metadata(d / "reference.safetensors")
    model = ft.PeftModel.from_pretrained(ft.Model.from_pretrained(base), d, is_trainable=trainable)
    return d, base, model, ref, meta


def batch(ref):
    return dict(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"], labels=ref["labels"])


@pytest.mark.parametrize("case", CASES)
def test_logits_loss_and_adapter_gradients(case):
    _, _, model, ref, meta = load(case)
    out = model(**batch(ref))
    np.testing.assert_allclose(out.logits, ref["logits"], rtol=0, atol=1e-5)
    assert abs(out.loss - float(ref["loss"][0])) < 1e-5
    model.forward_backward(**batch(ref))
    grads = {PREFIX + k: v for k, v in model.gradients().items()}
    expected = {k[len("grad."):]: v for k, v in ref.items() if k.startswith("grad.")}
    assert set(grads) == set(expected), "only the adapters get gradients"
    for k, g in grads.items():
        err = np.abs(g - expected[k]).max() / np.abs(expected[k]).max()
        assert err < 1e-4, f"{k}: relative error {err:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_three_adamw_steps_and_frozen_base(case):
    d, base, model, ref, meta = load(case)
    base_weights = ft.Model.from_pretrained(base).state_dict()
    opt = ft.AdamW(model, lr=float(meta["lr"]), weight_decay=float(meta["weight_decay"]), eps=float(meta["eps"]))
    for _ in range(int(meta["steps"])):
        model.zero_grad()
        model.forward_backward(**batch(ref))
        opt.step()
    adapters = model.adapter_state_dict()
    for k, v in adapters.items():
        assert np.abs(v - ref["adamw." + k]).max() < 2e-5, k
        assert np.abs(v - ref["f64.adamw." + k]).max() < 2e-5, k
    sd = model.state_dict()
    for k, w in base_weights.items():
        assert np.array_equal(sd[k], w), f"base weight {k} changed"
    model.eval()
    np.testing.assert_allclose(model(**batch(ref)).logits, ref["adapted_logits"], rtol=0, atol=1e-5)
    merged = model.merge_and_unload()
    assert not any(".lora_" in n for n in merged.parameter_names())
    np.testing.assert_allclose(merged(**batch(ref)).logits, ref["merged_logits"], rtol=0, atol=1e-5)
    if (d / "merged.safetensors").exists():
        msd = merged.state_dict()
        for k, w in load_safetensors(d / "merged.safetensors").items():
            np.testing.assert_allclose(msd[k], w, rtol=0, atol=1e-6, err_msg=k)


def test_get_peft_model_targets_scaling_and_no_op_start():
    base = ft.Model.from_pretrained(fixture_dir("gpt2_tiny_a"))
    x = np.arange(24).reshape(2, 12) % 101
    before = base(x).logits
    model = ft.get_peft_model(base, ft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"]))
    names = model.trainable_parameter_names()
    assert "transformer.h.0.attn.c_attn.lora_A.weight" in names
    assert "transformer.h.1.mlp.c_proj.lora_B.weight" in names  # "c_proj" matches attn and mlp
    assert not any("c_fc" in n for n in names)
    assert model.num_parameters(trainable_only=True) == 2 * (4 * 48 + 144 * 4 + 2 * (4 * 48 + 48 * 4) + (4 * 192 + 48 * 4)) - 2 * (4 * 48 + 48 * 4)
    np.testing.assert_array_equal(model(x).logits, before)  # B starts at zero
    a = model.state_dict()["transformer.h.0.attn.c_attn.lora_A.weight"]
    assert 0 < np.abs(a).max() <= 1 / np.sqrt(48)  # PEFT's kaiming-uniform bound
    assert ft.LoraConfig(r=8, lora_alpha=16, use_rslora=True).scaling == pytest.approx(16 / np.sqrt(8))
    regex = ft.get_peft_model(
        ft.Model.from_pretrained(fixture_dir("llama_tiny")), ft.LoraConfig(target_modules=r".*layers\.1\.self_attn\.(q|v)_proj")
    )
    assert sorted({n.rsplit(".", 2)[0] for n in regex.trainable_parameter_names()}) == [
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    default = ft.get_peft_model(ft.Model.from_pretrained(fixture_dir("llama_tiny")), ft.LoraConfig())
    assert default.peft_config.target_modules == ["q_proj", "v_proj"]


def test_adapter_round_trip_in_peft_format(tmp_path):
    d, base, model, ref, _ = load("lora_gpt2")
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    saved = load_safetensors(tmp_path / "adapter_model.safetensors")
    original = load_safetensors(d / "adapter_model.safetensors")
    assert set(saved) == set(original)
    for k in saved:
        np.testing.assert_array_equal(saved[k], original[k])
    again = ft.PeftModel.from_pretrained(ft.Model.from_pretrained(base), tmp_path)
    np.testing.assert_array_equal(again(**batch(ref)).logits, model(**batch(ref)).logits)


@pytest.mark.parametrize("base, fan_in_fan_out", [("gpt2_tiny_a", True), ("llama_tiny", False)])
def test_new_adapters_name_their_base_as_peft_does(tmp_path, base, fan_in_fan_out):
    model = ft.Model.from_pretrained(fixture_dir(base))
    assert model.name_or_path == str(fixture_dir(base).resolve())
    peft = ft.get_peft_model(model, ft.LoraConfig(r=2))
    peft.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    # AutoPeftModelForCausalLM loads the base from here; GPT-2's Conv1D weights are (in, out)
    assert cfg["base_model_name_or_path"] == model.name_or_path
    assert cfg["fan_in_fan_out"] is fan_in_fan_out
    assert ft.Model.from_config(model.config.to_dict()).name_or_path == ""
    assert peft.merge_and_unload().name_or_path == model.name_or_path


def test_peft_auto_class_loads_our_adapters_without_warnings(tmp_path):
    """tests/fixtures/make_fixtures.py --only peft_autoload saved adapters with ferrotune and
    loaded them with peft's AutoPeftModelForCausalLM from the adapter directory alone; what
    ferrotune writes today must still be what was checked there."""
    result = json.loads((fixture_dir("peft_autoload") / "result.json").read_text())
    for base in ("gpt2_tiny_a", "llama_tiny"):
        checked = result[base]
        assert set(checked["warnings"]) <= set(result["control_warnings"]), checked["warnings"]
        assert checked["max_abs_logit_diff"] < 1e-5
        model = ft.get_peft_model(ft.Model.from_pretrained(fixture_dir(base)), ft.LoraConfig(r=4, lora_alpha=8), seed=0)
        model.save_pretrained(tmp_path / base)
        cfg = json.loads((tmp_path / base / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = os.path.relpath(cfg["base_model_name_or_path"], fixture_dir(base).parent)
        assert cfg == checked["adapter_config"]


def test_trainer_with_lora_saves_adapters_and_resumes(tmp_path):
    base = ft.Model.from_pretrained(fixture_dir("gpt2_tiny_a"))
    model = ft.get_peft_model(base, ft.LoraConfig(r=2, target_modules=["c_attn"]))
    rows = [{"input_ids": list(range(i, i + 10))} for i in range(8)]
    args = ft.TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2,
        save_steps=2, report_to=[], disable_tqdm=True, logging_steps=1,
    )
    out = ft.Trainer(model=model, args=args, train_dataset=rows).train()
    assert out.global_step == 4
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").exists() and not (ckpt / "model.safetensors").exists()
    resumed = ft.get_peft_model(ft.Model.from_pretrained(fixture_dir("gpt2_tiny_a")), ft.LoraConfig(r=2, target_modules=["c_attn"]))
    ft.Trainer(model=resumed, args=args, train_dataset=rows).train(resume_from_checkpoint=str(ckpt))
    a, b = model.adapter_state_dict(), resumed.adapter_state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_errors(tmp_path):
    base = ft.Model.from_pretrained(fixture_dir("gpt2_tiny_a"))
    with pytest.raises(ft.InputError, match="match no linear module"):
        ft.get_peft_model(base, ft.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ft.ConfigError, match="lora_dropout"):
        ft.LoraConfig(lora_dropout=1.5)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        ft.PeftModel.from_pretrained(base, tmp_path)
