"""Sequence-classification heads against transformers' GPT2ForSequenceClassification and
LlamaForSequenceClassification (fixtures from tests/fixtures/make_fixtures.py): logits,
loss, every gradient, 3 AdamW steps; building a head on a causal LM; save and reload."""

import json

import numpy as np
import pytest

import ferrotune as ft
from ferrotune.io import load_safetensors_with_metadata

from conftest import fixture_dir

CASES = {"seqcls_gpt2": "gpt2_tiny_a", "seqcls_llama": "llama_tiny"}


def load(case):
    d = fixture_dir(case)
    ref, meta = load_safetensors_with_metadata(d / "reference.safetensors")
    return d, ft.Model.from_pretrained(d), ref, meta


def batch(ref):
    return dict(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"], labels=ref["labels"])


@pytest.mark.parametrize("case", CASES)
def test_logits_loss_gradients(case):
    _, model, ref, _ = load(case)
    assert model.num_labels == 3
    out = model(**batch(ref))
    assert out.logits.shape == (4, 3)
    np.testing.assert_allclose(out.logits, ref["logits"], rtol=0, atol=1e-5)
    assert abs(out.loss - float(ref["loss"][0])) < 1e-5
    model.forward_backward(**batch(ref))
    for k, g in model.gradients().items():
        r = ref["grad." + k]
        scale = np.abs(r).max()
        if scale == 0:  # e.g. an embedding row only padding uses
            assert np.abs(g).max() < 1e-7, k
            continue
        assert np.abs(g - r).max() / scale < 1e-4, k


@pytest.mark.parametrize("case", CASES)
def test_three_adamw_steps(case):
    _, model, ref, meta = load(case)
    opt = ft.AdamW(model, lr=float(meta["lr"]), weight_decay=float(meta["weight_decay"]), eps=float(meta["eps"]))
    for _ in range(int(meta["steps"])):
        model.zero_grad()
        model.forward_backward(**batch(ref))
        opt.step()
    # The freshly initialised head leaves body gradients near AdamW's eps, where float32
    # rounding in any implementation moves weights by up to ~2.4e-5 (torch fp32 vs fp64, see
    # the fixture's adamw_note); the head and logits themselves agree far more tightly.
    for k, p in model.state_dict().items():
        assert np.abs(p - ref["adamw." + k]).max() < 5e-5, k
    model.eval()


def test_head_on_a_causal_lm_checkpoint(tmp_path):
    base = fixture_dir("gpt2_tiny_a")
    clf = ft.Model.for_sequence_classification(base, num_labels=3, pad_token_id=0, seed=1)
    names = clf.parameter_names()
    assert names[-1] == "score.weight" and "lm_head.weight" not in names
    score = clf.state_dict()["score.weight"]
    assert score.shape == (3, 48) and 0.01 < score.std() < 0.03  # N(0, initializer_range)
    lm = ft.Model.from_pretrained(base).state_dict()
    sd = clf.state_dict()
    assert all(np.array_equal(sd[k], v) for k, v in lm.items())
    x = np.array([[5, 6, 7, 0, 0], [0, 0, 8, 9, 10]])
    out = clf(x, labels=[2, 0])
    assert out.logits.shape == (2, 3) and np.isfinite(out.loss)
    # pooling: the rightmost non-pad token, mask ignored (transformers 5.24)
    one = clf(x[:1, :3]).logits
    np.testing.assert_allclose(out.logits[0], one[0], atol=1e-6)
    clf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2ForSequenceClassification"] and cfg["num_labels"] == 3
    again = ft.Model.from_pretrained(tmp_path)
    np.testing.assert_array_equal(again(x).logits, clf(x).logits)


def test_llama_head_drops_lm_head_and_validates_labels():
    clf = ft.Model.for_sequence_classification(fixture_dir("llama3_rope_untied"), id2label={0: "neg", 1: "pos"}, pad_token_id=0)
    assert clf.num_labels == 2 and "lm_head.weight" not in clf.parameter_names()
    assert clf.config.id2label == {"0": "neg", "1": "pos"}
    with pytest.raises(ft.InputError, match="label 2"):
        clf([[3, 4, 5]], labels=[2])
    with pytest.raises(ft.ShapeError, match="labels"):
        clf([[3, 4, 5], [3, 4, 5]], labels=[[1, 0, 1]])
    no_pad = ft.Model.for_sequence_classification(fixture_dir("gpt2_tiny_a"), num_labels=2)
    if no_pad.config.to_dict().get("pad_token_id") is None:
        with pytest.raises(ft.ConfigError, match="pad_token_id"):
            no_pad([[1, 2], [3, 4]])


def test_trainer_reports_classification_metrics(tmp_path):
    clf = ft.Model.for_sequence_classification(fixture_dir("gpt2_tiny_a"), num_labels=2, pad_token_id=0, seed=3)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        label = i % 2
        ids = rng.integers(1, 50, size=6) + (50 * label)  # class 1 uses the upper half of the vocabulary
        rows.append({"input_ids": ids.tolist(), "label": label})
    args = ft.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=8, per_device_train_batch_size=4, learning_rate=3e-3,
        report_to=[], disable_tqdm=True, save_strategy="no", logging_steps=5,
    )
    trainer = ft.Trainer(model=clf, args=args, train_dataset=rows[:16], eval_dataset=rows[16:])
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for k in ("eval_loss", "eval_accuracy", "eval_precision", "eval_recall", "eval_f1"):
        assert k in after, k
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_accuracy"] == 1.0
    pred = trainer.predict(rows[16:])
    assert pred.predictions.shape == (8, 2) and pred.label_ids.shape == (8,)
