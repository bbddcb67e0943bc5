"""Model.resize_token_embeddings (transformers' semantics, mean_resizing), with frozen
parameters, LoRA + modules_to_save (PEFT's adapter files, both ways: fixtures resize_gpt2 and
resize_llama made through transformers + peft by tests/fixtures/make_fixtures.py) and a
tokenizer that gained tokens."""

import json

import numpy as np
import pytest

import ferrotune as ft
from ferrotune.io import load_safetensors, load_safetensors_with_metadata

from conftest import FIXTURES, fixture_dir

PREFIX = "base_model.model."
BASES = ["gpt2_tiny_a", "llama_tiny", "llama3_rope_untied"]
EMBEDDING = {"gpt2": "transformer.wte.weight", "llama": "model.embed_tokens.weight"}
SAVE = {"gpt2_tiny_a": ["wte"], "llama_tiny": ["embed_tokens"], "llama3_rope_untied": ["embed_tokens", "lm_head"]}
TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


def vocab_params(model):
    emb = EMBEDDING[model.config.model_type]
    return [emb] + (["lm_head.weight"] if "lm_head.weight" in model.parameter_names() else [])


def tokens(vocab, seed=0, shape=(2, 10)):
    return np.random.default_rng(seed).integers(0, vocab, size=shape)


@pytest.mark.parametrize("base", BASES)
def test_grow_keeps_old_rows_and_logits(base):
    model = ft.Model.from_pretrained(fixture_dir(base))
    v, x = model.config.vocab_size, tokens(model.config.vocab_size)
    before, logits = model.state_dict(), model(x).logits
    assert model.resize_token_embeddings(v + 7) == v + 7
    assert model.config.vocab_size == v + 7
    after = model.state_dict()
    names = vocab_params(model)
    assert len(names) == (2 if base == "llama3_rope_untied" else 1)
    for name in before:
        if name in names:
            assert after[name].shape == (v + 7, before[name].shape[1])
            assert np.array_equal(after[name][:v], before[name]), f"{name}: old rows changed"
            mean = before[name].astype(np.float64).mean(axis=0)
            new = after[name][v:].astype(np.float64)
            assert np.abs(new - mean).max() < 1e-4, "new rows are not near the mean of the old ones"
            assert np.abs(new - mean).max() > 0 and len({r.tobytes() for r in after[name][v:]}) == 7, "no draw"
        else:
            assert np.array_equal(after[name], before[name]), name
    new_logits = model(x).logits
    assert new_logits.shape == logits.shape[:2] + (v + 7,)
    np.testing.assert_allclose(new_logits[..., :v], logits, rtol=0, atol=1e-6)
    x_new = np.concatenate([x, [[v, v + 6], [v + 3, v + 1]]], axis=1)
    assert np.isfinite(model(x_new, labels=x_new).loss)


@pytest.mark.parametrize("case", ["resize_gpt2", "resize_llama"])
def test_mean_resizing_matches_transformers(case):
    """The new rows are draws around the same mean transformers uses (the draws themselves
    come from numpy, not torch: they cannot be equal)."""
    d = fixture_dir(case)
    ref, meta = load_safetensors_with_metadata(d / "reference.safetensors")
    model = ft.Model.from_pretrained(FIXTURES / meta["base"].split("/")[-1])
    v, new_v = int(meta["old_vocab_size"]), int(meta["new_vocab_size"])
    old = model.state_dict()
    model.resize_token_embeddings(new_v)
    sd = model.state_dict()
    names = [k[len("old_mean."):] for k in ref if k.startswith("old_mean.")]
    assert sorted(names) == sorted(vocab_params(model))
    for name in names:
        hf_mean, hf_rows = ref["old_mean." + name], ref["new_rows." + name]
        np.testing.assert_allclose(old[name].astype(np.float64).mean(axis=0), hf_mean, rtol=0, atol=1e-7)
        ours = sd[name][v:]
        # both draws scatter around that mean with 1e-9 * covariance (std ~ 1e-6 here)
        spread = np.abs(hf_rows - hf_mean).max()
        assert 0 < spread < 2e-5
        assert 0 < np.abs(ours - hf_mean).max() < 5 * spread
        np.testing.assert_allclose(ours.mean(axis=0), hf_rows.mean(axis=0), rtol=0, atol=5 * spread)


def test_seed_shrink_padding_and_plain_init():
    d = fixture_dir("gpt2_tiny_a")
    a, b, c = (ft.Model.from_pretrained(d) for _ in range(3))
    a.resize_token_embeddings(110, seed=1)
    b.resize_token_embeddings(110, seed=1)
    c.resize_token_embeddings(110, seed=2)
    wa, wb, wc = (m.state_dict()["transformer.wte.weight"][101:] for m in (a, b, c))
    assert np.array_equal(wa, wb) and not np.array_equal(wa, wc)

    m = ft.Model.from_pretrained(d)
    old = m.state_dict()["transformer.wte.weight"]
    assert m.resize_token_embeddings() == 101 and m.config.vocab_size == 101  # nothing to do
    assert m.resize_token_embeddings(pad_to_multiple_of=64) == 128
    assert m.resize_token_embeddings(130, pad_to_multiple_of=8) == 136
    assert m.resize_token_embeddings(60) == 60
    np.testing.assert_array_equal(m.state_dict()["transformer.wte.weight"], old[:60])
    assert m(tokens(60)).logits.shape == (2, 10, 60)

    plain = ft.Model.from_pretrained(d)
    plain.resize_token_embeddings(101 + 4000, mean_resizing=False)
    rows = plain.state_dict()["transformer.wte.weight"][101:]
    assert abs(rows.std() - 0.02) < 0.001 and abs(rows.mean()) < 0.001  # N(0, initializer_range)

    for bad in (0, -3, 2.5, True):
        with pytest.raises(ft.InputError, match="new_num_tokens"):
            ft.Model.from_pretrained(d).resize_token_embeddings(bad)
    with pytest.raises(ft.InputError, match="pad_to_multiple_of"):
        ft.Model.from_pretrained(d).resize_token_embeddings(120, pad_to_multiple_of=0)


def test_training_state_carries_over_and_new_rows_train():
    model = ft.Model.from_pretrained(fixture_dir("llama3_rope_untied"))
    model.freeze(r"layers\.0\.")
    frozen = sorted(n for n, t in model.requires_grad().items() if not t)
    model.eval()
    model.set_rng_state(12345)
    model.generation_config.max_new_tokens = 7
    model.resize_token_embeddings(100)
    assert sorted(n for n, t in model.requires_grad().items() if not t) == frozen
    assert not model.training and model.get_rng_state() == 12345
    assert model.generation_config.max_new_tokens == 7
    model.train()
    before = model.state_dict()
    opt = ft.AdamW(model, lr=1e-2)  # built after the resize
    x = np.array([[1, 97, 5, 98, 99, 7], [96, 3, 99, 2, 4, 97]])
    for _ in range(2):
        model.zero_grad()
        model.forward_backward(x)
        opt.step()
    after = model.state_dict()
    assert not np.array_equal(after["model.embed_tokens.weight"][96:], before["model.embed_tokens.weight"][96:])
    assert not np.array_equal(after["lm_head.weight"][96:], before["lm_head.weight"][96:])
    assert all(np.array_equal(after[n], before[n]) for n in frozen)


def test_refused_with_adapters_attached():
    model = ft.get_peft_model(ft.Model.from_pretrained(fixture_dir("gpt2_tiny_a")), ft.LoraConfig(r=2))
    with pytest.raises(ft.InputError, match="get_peft_model"):
        model.resize_token_embeddings(110)


@pytest.mark.parametrize("base", BASES)
def test_lora_with_modules_to_save_trains_and_saves_the_resized_embedding(base, tmp_path):
    model = ft.Model.from_pretrained(fixture_dir(base))
    v = model.config.vocab_size
    model.resize_token_embeddings(v + 3)
    base_weights = model.state_dict()
    config = ft.LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS[model.config.model_type],
                           modules_to_save=SAVE[base])
    peft = ft.get_peft_model(model, config)
    names = vocab_params(peft)
    assert set(names) <= set(peft.trainable_parameter_names())
    x = np.array([[1, v, 5, v + 1, v + 2, 7, 9, v], [v + 2, 3, v, 2, 4, v + 1, 8, 6]])
    opt = ft.AdamW(peft, lr=1e-2)
    losses = []
    for _ in range(4):
        peft.zero_grad()
        losses.append(peft.forward_backward(x))
        opt.step()
    assert losses[-1] < losses[0]
    sd = peft.state_dict()
    for n, w in base_weights.items():
        assert np.array_equal(sd[n], w) == (n not in names), n
    peft.save_pretrained(tmp_path)
    saved = load_safetensors(tmp_path / "adapter_model.safetensors")
    expected = {PREFIX + n for n in peft.trainable_parameter_names()}
    if len(names) == 1:  # tied: PEFT's key for the output projection, holding the same matrix
        expected.add(PREFIX + "lm_head.weight")
        np.testing.assert_array_equal(saved[PREFIX + "lm_head.weight"], sd[names[0]])
    assert set(saved) == expected
    assert json.loads((tmp_path / "adapter_config.json").read_text())["modules_to_save"] == SAVE[base]
    for n in names:
        np.testing.assert_array_equal(saved[PREFIX + n], sd[n])
    peft.eval()

    fresh = ft.Model.from_pretrained(fixture_dir(base))
    fresh.resize_token_embeddings(v + 3, seed=99)  # other new rows: the file's embedding replaces them
    again = ft.PeftModel.from_pretrained(fresh, tmp_path)
    np.testing.assert_array_equal(again(x).logits, peft(x).logits)
    with pytest.raises(ft.FerrotuneError):  # PEFT's order: resize the base first
        ft.PeftModel.from_pretrained(ft.Model.from_pretrained(fixture_dir(base)), tmp_path)


@pytest.mark.parametrize("case", ["resize_gpt2", "resize_llama"])
def test_peft_written_adapter_with_resized_embeddings(case):
    """PEFT's file (with the embedding layers it adds after a resize) loads here; our file
    uses the same key names."""
    d = fixture_dir(case)
    ref, meta = load_safetensors_with_metadata(d / "reference.safetensors")
    base = FIXTURES / meta["base"].split("/")[-1]
    model = ft.Model.from_pretrained(base)
    model.resize_token_embeddings(int(meta["new_vocab_size"]))
    if case == "resize_gpt2":
        # PEFT trains a copy of the tied wte and keeps the resized base matrix as lm_head; this
        # model ties them, so it matches PEFT's logits when lm_head.weight is the trained copy
        with pytest.warns(UserWarning, match="lm_head.weight differs"):
            peft = ft.PeftModel.from_pretrained(model, d)
        want = ref["tied_logits"]
    else:
        peft = ft.PeftModel.from_pretrained(model, d)
        want = ref["logits"]
    np.testing.assert_allclose(peft(ref["input_ids"]).logits, want, rtol=0, atol=1e-5)
    theirs = set(load_safetensors(d / "adapter_model.safetensors"))
    ours = {PREFIX + n for n in peft.trainable_parameter_names()}
    assert ours <= theirs, sorted(ours - theirs)
    assert {k for k in theirs - ours if ".lora_" in k} == set()


def test_save_embedding_layers_after_a_resize_without_modules_to_save(tmp_path):
    """Like PEFT's save_embedding_layers="auto": a resized vocabulary is saved with the adapter."""
    model = ft.Model.from_pretrained(fixture_dir("llama3_rope_untied"))
    model.resize_token_embeddings(99)
    peft = ft.get_peft_model(model, ft.LoraConfig(r=2, target_modules=["q_proj"]))
    peft.save_pretrained(tmp_path / "auto")
    peft.save_pretrained(tmp_path / "off", save_embedding_layers=False)
    auto = load_safetensors(tmp_path / "auto" / "adapter_model.safetensors")
    assert {PREFIX + "model.embed_tokens.weight", PREFIX + "lm_head.weight"} <= set(auto)
    assert not any("embed_tokens" in k for k in load_safetensors(tmp_path / "off" / "adapter_model.safetensors"))
    other = ft.Model.from_pretrained(fixture_dir("llama3_rope_untied"))
    other.resize_token_embeddings(99, seed=5)
    x = np.array([[1, 96, 97, 98, 4]])
    np.testing.assert_array_equal(ft.PeftModel.from_pretrained(other, tmp_path / "auto")(x).logits, peft(x).logits)
    with pytest.raises(ft.InputError, match="save_embedding_layers"):
        peft.save_pretrained(tmp_path / "bad", save_embedding_layers="yes")


def test_tokenizer_with_new_tokens_round_trip(tmp_path):
    tok = ft.Tokenizer.from_pretrained(FIXTURES / "tokenizer_bpe")
    n = len(tok)
    assert tok.add_tokens(["<lang_zh>", "<lang_en>"]) == 2
    assert tok.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<sep>"]}) == 2
    assert len(tok) == n + 4
    model = ft.Model.from_config(
        dict(model_type="gpt2", vocab_size=n, n_positions=32, n_embd=32, n_layer=1, n_head=2,
             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
        seed=3,
    )
    assert model.resize_token_embeddings(len(tok)) == len(tok)
    batch = tok(["<lang_zh>你好<sep>hello", "<lang_en>world<sep>"], padding=True, return_tensors="np")
    assert batch["input_ids"].max() >= n  # the new ids are used
    opt = ft.AdamW(model, lr=1e-2)
    model.forward_backward(batch["input_ids"], attention_mask=batch["attention_mask"])
    opt.step()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tok2, model2 = ft.Tokenizer.from_pretrained(tmp_path), ft.Model.from_pretrained(tmp_path)
    assert len(tok2) == model2.config.vocab_size == len(tok)
    again = tok2(["<lang_zh>你好<sep>hello", "<lang_en>world<sep>"], padding=True, return_tensors="np")
    np.testing.assert_array_equal(again["input_ids"], batch["input_ids"])
    np.testing.assert_array_equal(model2(again["input_ids"]).logits, model(batch["input_ids"]).logits)


def test_resize_a_classifier():
    if not hasattr(ft.Model, "for_sequence_classification"):
        pytest.skip("this build has no sequence-classification heads")
    clf = ft.Model.for_sequence_classification(fixture_dir("gpt2_tiny_a"), num_labels=3, pad_token_id=0, seed=1)
    x = np.array([[5, 6, 7, 0], [8, 9, 10, 11]])
    logits = clf(x).logits
    clf.resize_token_embeddings(104)
    assert clf.num_labels == 3 and clf.config.vocab_size == 104
    np.testing.assert_allclose(clf(x).logits, logits, rtol=0, atol=1e-6)
    assert clf(np.array([[5, 101, 103, 102]])).logits.shape == (1, 3)
