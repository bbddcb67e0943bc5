"""``AdamW.backward_step``: the optimizer step fused into the backward. Each block's
gradients go into AdamW's moments as soon as its backward is done, so the model never holds
a whole gradient. It must give the parameters, moments and losses of ``forward_backward`` +
``step`` bit for bit (dropout, padding, GQA, untied heads, LoRA, gradient checkpointing),
release the model's gradients, and refuse bad input before touching anything."""

import numpy as np
import pytest

import ferrotune as ft

from test_checkpointing import CAUSAL, padded_batch, with_dropout


def trajectories(name, steps=3, prepare=lambda m: None):
    """(losses, state_dict, optimizer moments) after ``steps`` plain steps and after as many
    fused ones, from the same model and dropout state."""
    out = []
    for fused in (False, True):
        model = with_dropout(name)
        prepare(model)
        model.train()
        model.set_rng_state(777)
        opt = ft.AdamW(model, lr=1e-2, weight_decay=0.1, no_decay=[n for n in model.trainable_parameter_names() if n.endswith("bias")])
        batch = padded_batch(model.config.vocab_size)
        losses = []
        for _ in range(steps):
            if fused:
                losses.append(opt.backward_step(**batch))
            else:
                losses.append(model.forward_backward(**batch))
                opt.step()
                model.zero_grad()
        out.append((losses, model.state_dict(), opt.state_dict(), model))
    return out


def assert_same(a, b):
    (la, sa, oa, _), (lb, sb, ob, _) = a, b
    assert la == lb
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    assert oa["step"] == ob["step"] == len(la)
    for k in oa["exp_avg"]:
        np.testing.assert_array_equal(oa["exp_avg"][k], ob["exp_avg"][k], err_msg=k)
        np.testing.assert_array_equal(oa["exp_avg_sq"][k], ob["exp_avg_sq"][k], err_msg=k)


@pytest.mark.parametrize("name", CAUSAL)
def test_fused_step_is_forward_backward_then_step(name):
    plain, fused = trajectories(name)
    assert_same(plain, fused)
    assert plain[0][-1] < plain[0][0], "the steps train"
    model = fused[3]
    assert all(not g.any() for g in model.gradients().values()), "no gradient is kept"


def test_with_checkpointing_and_lora():
    assert_same(*trajectories("gpt2_tiny_a", prepare=lambda m: m.gradient_checkpointing_enable()))
    lora = lambda m: ft.get_peft_model(m, ft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1, target_modules=["c_attn", "c_fc"]))
    assert_same(*trajectories("gpt2_tiny_a", prepare=lora))


def test_bad_input_and_changed_trainable_set():
    model = with_dropout("gpt2_tiny_a")
    opt = ft.AdamW(model, lr=1e-2)
    before = model.state_dict()
    with pytest.raises(ft.InputError, match="vocab"):
        opt.backward_step(np.array([[1, model.config.vocab_size]]))
    assert opt.step_count == 0
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    model.freeze(["transformer.h.0.ln_1.weight"])
    with pytest.raises(ft.InputError, match="build a new one"):
        opt.backward_step(np.array([[1, 2]]))


def _train(tmp_path, fused, **extra):
    """Five Trainer steps on the dropout GPT-2 fixture: logged (loss, grad_norm) and weights."""
    model = with_dropout("gpt2_tiny_a")
    rng = np.random.default_rng(0)
    rows = [{"input_ids": rng.integers(0, 100, int(rng.integers(4, 20))).tolist()} for _ in range(10)]
    args = ft.TrainingArguments(
        output_dir=str(tmp_path / f"out{fused}"), per_device_train_batch_size=2, max_steps=5, learning_rate=1e-3,
        weight_decay=0.1, logging_steps=1, save_strategy="no", disable_tqdm=True, report_to="none", seed=0,
        max_grad_norm=0, optimizer_in_backward=fused, **extra,
    )
    trainer = ft.Trainer(model, args, train_dataset=rows)
    trainer.train()
    logs = [(h["loss"], h["grad_norm"], h["learning_rate"]) for h in trainer.state.log_history if "loss" in h]
    return logs, model.state_dict()


def test_trainer_with_optimizer_in_backward(tmp_path):
    """Same logged losses and learning rates, the same gradient norms up to the order of the
    sums, the same weights bit for bit as the plain Trainer (no clipping on both sides)."""
    (logs, weights), (f_logs, f_weights) = _train(tmp_path, False), _train(tmp_path, True)
    assert len(logs) == 5
    assert [(l, lr) for l, _, lr in logs] == [(l, lr) for l, _, lr in f_logs]
    np.testing.assert_allclose([g for _, g, _ in f_logs], [g for _, g, _ in logs], rtol=1e-12)
    for k in weights:
        np.testing.assert_array_equal(weights[k], f_weights[k], err_msg=k)


def test_optimizer_in_backward_needs_no_clipping_nor_accumulation():
    with pytest.raises(ft.ConfigError, match="max_grad_norm=0"):
        ft.TrainingArguments(optimizer_in_backward=True)
    with pytest.raises(ft.ConfigError, match="gradient_accumulation_steps=1"):
        ft.TrainingArguments(optimizer_in_backward=True, max_grad_norm=0, gradient_accumulation_steps=2)
    with pytest.raises(ft.ConfigError, match="must be a bool"):
        ft.TrainingArguments(optimizer_in_backward="yes", max_grad_norm=0)
    assert ft.TrainingArguments(optimizer_in_backward=True, max_grad_norm=0).optimizer_in_backward


def test_grad_norm_is_the_clip_norm():
    model = with_dropout("gpt2_tiny_a", p=0.0)
    batch = padded_batch(model.config.vocab_size)
    model.forward_backward(**batch)
    want = model.clip_grad_norm(float("inf"))
    model.zero_grad()
    opt = ft.AdamW(model, lr=1e-3)
    opt.backward_step(**batch)
    assert opt.grad_norm == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("event,step", [("on_step_end", 4), ("on_pre_optimizer_step", 3)])
def test_trainer_interrupt_and_resume_is_bit_exact(tmp_path, event, step):
    """With optimizer_in_backward, a run interrupted after a step, or right before one (the
    fused step then never starts), and resumed from its interrupt checkpoint logs the same
    losses and learning rates and ends with the same weights as an uninterrupted run."""
    from test_trainer import InterruptAt, make_args, random_rows, tiny_model

    rows = random_rows(10, seed=7)

    def run(out, callbacks=None, resume=None):
        args = make_args(
            tmp_path, output_dir=str(tmp_path / out), max_steps=8, lr_scheduler_type="linear", warmup_steps=2,
            weight_decay=0.01, logging_steps=2, save_strategy="steps", save_steps=5, max_grad_norm=0,
            optimizer_in_backward=True,
        )
        model = tiny_model(dropout=0.1, tmp_path=tmp_path)
        trainer = ft.Trainer(model, args, train_dataset=rows, callbacks=callbacks)
        return trainer, model, trainer.train(resume_from_checkpoint=resume)

    full, full_model, _ = run("full")
    with pytest.raises(KeyboardInterrupt):
        run("cut", callbacks=[InterruptAt(step, event)])
    resumed, resumed_model, out = run("cut", resume=True)

    def steps(t):
        return [(h["step"], h["loss"], h["learning_rate"], h["grad_norm"]) for h in t.state.log_history if "loss" in h]

    assert out.global_step == 8
    assert steps(resumed) == steps(full)
    a, b = full_model.state_dict(), resumed_model.state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
