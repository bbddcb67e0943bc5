"""The real SmolLM2-135M-Instruct GGUF (../shared/models, see the asset notes) end to end:
logits and greedy replies on chat prompts against transformers (tests/fixtures/gguf_smollm2/
chat_reference.json + chat_logits.f32, written by tests/fixtures/make_gguf_fixtures.py),
save_pretrained into a Hugging Face Llama directory and back, and a short SFT run on
Chinese->English chats that lowers the held-out loss.

How "relative" is measured here: for one row of logits (one position, the whole vocabulary or
the fixed probe ids), ``max|ours - transformers| / max|transformers|`` over that row; every
row must be within ``RTOL``. The log-sum-exp (the softmax normaliser, so the loss) must agree
within ``RTOL * max(1, |lse|)``.
"""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from ferrotune import Model, Tokenizer, Trainer, TrainingArguments
from ferrotune.datasets import load_cedict_sample

FIXTURE = Path(__file__).parent / "fixtures" / "gguf_smollm2"
GGUF = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
RTOL = 1e-3

pytestmark = pytest.mark.skipif(
    not GGUF.exists(), reason=f"the SmolLM2 GGUF is absent ({GGUF.name} under ../shared/models; only the project machines have it)"
)


def _reference():
    ref = json.loads((FIXTURE / "chat_reference.json").read_text(encoding="utf-8"))
    buf = np.fromfile(FIXTURE / "chat_logits.f32", dtype="<f4")

    def take(s, *shape):
        return buf[s[0] : s[0] + s[1]].reshape(*shape)

    for p in ref["prompts"]:
        t = len(p["input_ids"])
        p["logsumexp"] = take(p["logsumexp"], t)
        p["probe_logits"] = take(p["probe_logits"], t, len(ref["probe_ids"]))
        p["full_logits"] = take(p["full_logits"], len(p["full_logits_positions"]), ref["vocab_size"])
    return ref


@pytest.fixture(scope="module")
def ref():
    return _reference()


@pytest.fixture(scope="module")
def model():
    return Model.from_pretrained(GGUF)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_pretrained(GGUF)


@pytest.fixture(scope="module")
def logits(model, ref):
    """Our float32 logits (T, V) for each reference prompt, one forward each."""
    return [model(np.array([p["input_ids"]])).logits[0] for p in ref["prompts"]]


def _rel_rows(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """max|ours - theirs| / max|theirs| for each row."""
    return np.abs(ours - theirs).max(-1) / np.abs(theirs).max(-1)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return (np.log(np.exp(x - m).sum(-1, keepdims=True)) + m)[..., 0]


def test_chat_prompt_ids_match_transformers(tokenizer, ref):
    for p in ref["prompts"]:
        assert tokenizer.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=False) == p["rendered"]
        enc = tokenizer.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=True)
        assert list(enc["input_ids"]) == p["input_ids"]


def test_chat_logits_match_transformers(logits, ref):
    probe = np.array(ref["probe_ids"])
    for p, lg in zip(ref["prompts"], logits):
        assert lg.shape == (len(p["input_ids"]), ref["vocab_size"]) and lg.dtype == np.float32
        # the whole vocabulary at the last position(s)
        full = _rel_rows(lg[p["full_logits_positions"]], p["full_logits"])
        assert full.max() < RTOL, full
        # every position: the probe ids, the normaliser and the argmax
        rows = _rel_rows(lg[:, probe], p["probe_logits"])
        assert rows.max() < RTOL, rows
        lse = _logsumexp(lg)
        assert np.all(np.abs(lse - p["logsumexp"]) < RTOL * np.maximum(1.0, np.abs(p["logsumexp"])))
        # argmax: identical wherever our top two are not a near tie
        top2 = np.sort(lg, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > RTOL * np.abs(lg).max(-1)
        assert np.array_equal(lg.argmax(-1)[clear], np.array(p["argmax"])[clear])
        assert clear.mean() > 0.9


def test_greedy_reply_matches_transformers(model, tokenizer, ref):
    # eos comes from the model's generation config (the GGUF's eos id), as in transformers
    assert model.generation_config.eos_token_id == ref["eos_token_id"] == tokenizer.eos_token_id
    for p in ref["prompts"]:
        ids = np.array([p["input_ids"]])
        out = model.generate(ids, do_sample=False, max_new_tokens=ref["max_new_tokens"])
        new = out[0, ids.shape[1] :].tolist()
        assert new == p["generated_ids"], (tokenizer.decode(new), p["generated_text"])
        assert (len(new) < ref["max_new_tokens"]) == p["stopped_at_eos"]
        assert tokenizer.decode(new, skip_special_tokens=True) == p["generated_text"]


@pytest.fixture(scope="module")
def saved_dir(model, tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("smollm2_hf")
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def test_save_pretrained_writes_a_hf_llama_directory(saved_dir, tokenizer, ref):
    names = {p.name for p in saved_dir.iterdir()}
    for f in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert f in names, f
    config = json.loads((saved_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True and config["vocab_size"] == ref["vocab_size"]
    assert (config["bos_token_id"], config["eos_token_id"]) == (ref["bos_token_id"], ref["eos_token_id"])
    gen = json.loads((saved_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == ref["eos_token_id"] == tokenizer.eos_token_id
    assert gen["bos_token_id"] == ref["bos_token_id"] and gen["pad_token_id"] == ref["pad_token_id"]
    # transformers 5 keeps the template in chat_template.jinja, not in tokenizer_config.json
    assert (saved_dir / "chat_template.jinja").read_text(encoding="utf-8") == tokenizer.chat_template
    assert "chat_template" not in json.loads((saved_dir / "tokenizer_config.json").read_text())


def test_saved_directory_reloads_with_identical_logits(saved_dir, logits, ref):
    reloaded = Model.from_pretrained(saved_dir)
    tok = Tokenizer.from_pretrained(saved_dir)
    assert reloaded.generation_config.eos_token_id == ref["eos_token_id"]
    for p, lg in zip(ref["prompts"], logits):
        enc = tok.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=True)
        assert list(enc["input_ids"]) == p["input_ids"]
        assert np.array_equal(reloaded(np.array([p["input_ids"]])).logits[0], lg)


def test_saved_directory_loads_in_transformers(saved_dir, ref):
    torch = pytest.importorskip("torch", reason="torch is not installed (transformers' side of the check)")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    hf = transformers.LlamaForCausalLM.from_pretrained(saved_dir, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(saved_dir)
    for p in ref["prompts"]:
        assert tok.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=False) == p["rendered"]
        with torch.no_grad():
            lg = hf(torch.tensor([p["input_ids"]])).logits[0].numpy()
        assert _rel_rows(lg[p["full_logits_positions"]], p["full_logits"]).max() < RTOL


# ---- a short SFT run on Chinese -> English chats --------------------------------------


def _chat(entry):
    return {
        "messages": [
            {"role": "user", "content": f"Translate to English: {entry['zh']}"},
            {"role": "assistant", "content": "; ".join(entry["en"])},
        ]
    }


def _short_chats(tokenizer, n, max_tokens):
    """The first ``n`` chats (in a fixed shuffled order of the packaged CC-CEDICT sample) that
    render to at most ``max_tokens`` tokens."""
    rows = load_cedict_sample()
    out = []
    for i in np.random.default_rng(0).permutation(len(rows)):
        ex = _chat(rows[i])
        if len(tokenizer.apply_chat_template(ex["messages"], tokenize=True)["input_ids"]) <= max_tokens:
            out.append(ex)
            if len(out) == n:
                break
    return out


def test_short_sft_lowers_held_out_loss(tokenizer, tmp_path):
    model = Model.from_pretrained(GGUF)  # a fresh copy: the module's model stays untouched
    chats = _short_chats(tokenizer, 56, max_tokens=48)
    train, held_out = chats[:40], chats[40:]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=10,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=3e-4,
        lr_scheduler_type="constant",
        max_length=48,
        save_strategy="no",
        logging_steps=5,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=held_out, processing_class=tokenizer)
    before = trainer.evaluate()["eval_loss"]
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    after = trainer.evaluate()["eval_loss"]
    print(f"SmolLM2 SFT: held-out loss {before:.3f} -> {after:.3f}, 10 steps in {seconds:.1f} s")
    assert np.isfinite(after) and after < before - 0.5, (before, after)
