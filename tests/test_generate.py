"""generate(): greedy ids and per-step logits against transformers (fixtures made by
tests/fixtures/make_fixtures.py), the KV cache against a full forward, transformers' logits
processors on recorded rows, seeded sampling, errors, GenerationConfig, streaming, pipeline."""

import json
import threading

import numpy as np
import pytest

import ferrotune as ft
from ferrotune.generation import generate as generate_fn
from ferrotune.generation import process_logits
from ferrotune.io import load_safetensors_with_metadata

from conftest import FIXTURES, fixture_dir

CASES = [(name, kind) for name in ("gpt2_tiny_a", "gpt2_tiny_b") for kind in ("nopad", "leftpad")]


@pytest.fixture(scope="module")
def ref():
    path = FIXTURES / "generate_reference.safetensors"
    if not path.exists():
        pytest.skip("generate_reference.safetensors is missing: run tests/fixtures/make_fixtures.py")
    return load_safetensors_with_metadata(path)


def load(name):
    return ft.Model.from_pretrained(fixture_dir(name))


class ByteTokenizer:
    """Token id = one UTF-8 byte (ids >= 256 map to nothing): every multi-byte character is
    split across tokens, the hard case for streaming."""

    eos_token_id = None

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=False):
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


# ---- parity with transformers ---------------------------------------------------------------


@pytest.mark.parametrize("name,kind", CASES)
def test_greedy_ids_match_transformers(ref, name, kind):
    tensors, _ = ref
    model = load(name)
    eos = model.generation_config.eos_token_id
    out = model.generate(
        tensors[f"{name}.{kind}.input_ids"],
        attention_mask=tensors[f"{name}.{kind}.attention_mask"],
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, tensors[f"{name}.{kind}.sequences"])


@pytest.mark.parametrize("name,kind", CASES)
def test_step_logits_match_transformers(ref, name, kind):
    tensors, _ = ref
    model = load(name)
    eos = model.generation_config.eos_token_id
    _, logits = generate_fn(
        model,
        tensors[f"{name}.{kind}.input_ids"],
        attention_mask=tensors[f"{name}.{kind}.attention_mask"],
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=eos,
        output_logits=True,
    )
    expected = tensors[f"{name}.{kind}.logits"]
    assert logits.shape == expected.shape
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2_tiny_a", "gpt2_tiny_b"])
def test_kv_cache_matches_full_forward_at_every_position(name):
    model = load(name)
    v = model.config.vocab_size
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, v - 1, size=(2, 5))
    seqs, logits = generate_fn(model, prompt, max_new_tokens=20, do_sample=True, seed=3, eos_token_id=[], output_logits=True)
    full = model(seqs).logits  # (B, T, V), positions 0..T-1 as in the cached path without padding
    t = prompt.shape[1]
    steps = logits.shape[1]
    np.testing.assert_allclose(logits, full[:, t - 1 : t - 1 + steps], rtol=0, atol=1e-5)


def _round_to_bf16(a):
    """float32 -> the nearest bfloat16 value (ties to even), as float32; finite values."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("name", ["gpt2_tiny_a", "llama3_rope_untied", "qwen2_tiny"])
def test_bf16_weights_decode_with_rounded_weights(name):
    """weights_dtype="bfloat16" decodes with bf16 copies of the weight matrices: on weights
    that are bf16 values already, its logits are float32's at every step; after the weights
    change, the copies follow them (they are made again)."""
    model = load(name)
    v = model.config.vocab_size
    prompt = np.random.default_rng(1).integers(0, v - 1, size=(2, 4))
    kw = dict(max_new_tokens=6, do_sample=True, seed=5, eos_token_id=[], output_logits=True)
    original = model.state_dict()
    _, f32 = generate_fn(model, prompt, **kw)
    _, bf16 = generate_fn(model, prompt, weights_dtype="bfloat16", **kw)
    # the rounding moves the logits a little: it really is another set of weights
    assert 0 < np.abs(bf16 - f32).max() < 0.05 * np.abs(f32).max()
    for scale in (1.0, 1.25):
        model.load_state_dict({k: _round_to_bf16(a * scale) for k, a in original.items()})
        _, want = generate_fn(model, prompt, **kw)
        _, got = generate_fn(model, prompt, weights_dtype="bfloat16", **kw)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_bf16_weights_greedy_reply_and_bad_dtype():
    model = load("gpt2_tiny_a")
    prompt = np.array([[5, 9, 2, 17]])
    out = model.generate(prompt, max_new_tokens=8, weights_dtype="bfloat16")
    assert out.shape == (1, 12) and (out[:, :4] == prompt).all()
    with pytest.raises(ValueError, match="weights_dtype"):
        model.generate(prompt, max_new_tokens=2, weights_dtype="float16")


# ---- logits processors --------------------------------------------------------------------

PROC_ARGS = {
    "repetition_penalty_1.3": dict(repetition_penalty=1.3),
    "repetition_penalty_0.7": dict(repetition_penalty=0.7),
    "repetition_penalty_1.3_ignore": dict(repetition_penalty=1.3, ignore=True),
    "temperature_0.7": dict(temperature=0.7),
    "top_k_5": dict(top_k=5),
    "top_k_1": dict(top_k=1),
    "top_p_0.8": dict(top_p=0.8),
    "top_p_0.3": dict(top_p=0.3),
    "min_p_0.1": dict(min_p=0.1),
    "min_p_0.5": dict(min_p=0.5),
    "chain": dict(repetition_penalty=1.2, temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, ignore=True),
}


@pytest.mark.parametrize("case", sorted(PROC_ARGS))
def test_processors_match_transformers(ref, case):
    tensors, meta = ref
    assert case in json.loads(meta["cases"])
    kw = dict(PROC_ARGS[case])
    ignore = tensors["proc.ignore"] if kw.pop("ignore", False) else None
    got = process_logits(tensors["proc.scores"], tensors["proc.input_ids"], prompt_ignore_length=ignore, **kw)
    expected = tensors[f"proc.{case}"]
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected), err_msg="filtered tokens differ")
    keep = ~np.isneginf(expected)
    np.testing.assert_allclose(got[keep], expected[keep], rtol=1e-6, atol=0)


# ---- sampling, stopping --------------------------------------------------------------------


def test_seeded_sampling_is_reproducible():
    model = load("gpt2_tiny_a")
    ids = np.array([[5, 6, 7]])
    kw = dict(max_new_tokens=20, do_sample=True, temperature=1.5, top_k=0, eos_token_id=[])
    a = model.generate(ids, seed=1, **kw)
    assert np.array_equal(a, model.generate(ids, seed=1, **kw))
    assert not np.array_equal(a, model.generate(ids, seed=2, **kw))


def test_top_k_1_sampling_is_greedy_and_num_return_sequences():
    model = load("gpt2_tiny_b")
    ids = np.array([[3, 4, 5], [9, 8, 7]])
    greedy = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=[])
    sampled = model.generate(ids, max_new_tokens=6, do_sample=True, top_k=1, seed=0, num_return_sequences=3, eos_token_id=[])
    assert sampled.shape == (6, 9)
    np.testing.assert_array_equal(sampled, np.repeat(greedy, 3, axis=0))


def test_eos_list_stops_rows_and_pads():
    model = load("gpt2_tiny_a")
    ids = np.array([[5, 6, 7], [1, 2, 3]])
    free = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=[])
    eos = int(free[0, 4])  # row 0's second new token
    out = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=[999999 % 101, eos], pad_token_id=0)
    row0 = list(out[0])
    k = row0.index(eos, 3)
    assert all(x == 0 for x in row0[k + 1 :])
    if eos not in free[1, 3:]:
        np.testing.assert_array_equal(out[1], free[1, : out.shape[1]])


def test_stop_strings():
    model = load("gpt2_tiny_a")
    tok = ByteTokenizer()
    ids = np.array([[40, 41, 42]])
    free = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=[])
    stop = tok.decode(free[0, 5:7])  # the 3rd and 4th new tokens
    out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=[], stop_strings=stop, tokenizer=tok)
    assert out.shape[1] <= 7 and stop in tok.decode(out[0, 3:])
    with pytest.raises(ValueError, match="tokenizer"):
        model.generate(ids, max_new_tokens=3, stop_strings="x")


def test_default_max_length_and_model_generation_config(tmp_path):
    model = load("gpt2_tiny_a")
    ids = np.array([[1, 2, 3]])
    assert model.generate(ids, eos_token_id=[]).shape == (1, 20)  # transformers' max_length 20
    model.generation_config.max_new_tokens = 4
    model.generation_config.eos_token_id = None
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text())["max_new_tokens"] == 4
    again = ft.Model.from_pretrained(tmp_path)
    assert again.generation_config.max_new_tokens == 4
    assert again.generate(ids).shape == (1, 7)
    assert again.generate(ids, max_new_tokens=2).shape == (1, 5)


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (dict(top_p=0.0, do_sample=True), ValueError, "top_p"),
        (dict(top_p=1.5, do_sample=True), ValueError, "top_p"),
        (dict(temperature=-0.5, do_sample=True), ValueError, "temperature"),
        (dict(temperature=0.0, do_sample=True), ValueError, "greedy"),
        (dict(top_k=-1, do_sample=True), ValueError, "top_k"),
        (dict(min_p=2.0, do_sample=True), ValueError, "min_p"),
        (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
        (dict(max_new_tokens=40), ft.InputError, "n_positions"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
        (dict(num_return_sequences=2), ValueError, "do_sample"),
        (dict(foo=1), TypeError, "foo"),
    ],
)
def test_bad_arguments(kw, exc, match):
    model = load("gpt2_tiny_a")
    with pytest.raises(exc, match=match):
        model.generate(np.array([[1, 2, 3]]), **kw)


def test_bad_token_ids():
    model = load("gpt2_tiny_a")
    with pytest.raises(ft.InputError, match="out of range"):
        model.generate(np.array([[1, 2, 500]]), max_new_tokens=2)


# ---- GenerationConfig -----------------------------------------------------------------------


def test_generation_config_round_trip(tmp_path):
    cfg = ft.GenerationConfig(max_new_tokens=12, do_sample=True, top_p=0.9, eos_token_id=[1, 2], custom_key="kept")
    cfg.save_pretrained(tmp_path)
    back = ft.GenerationConfig.from_pretrained(tmp_path)
    assert back == cfg and back.top_p == 0.9 and back.eos_token_id == [1, 2]
    assert json.loads((tmp_path / "generation_config.json").read_text())["custom_key"] == "kept"
    assert back.get("top_k") == 50 and back.get("temperature") == 1.0
    with pytest.raises(ValueError, match="top_p"):
        ft.GenerationConfig(top_p=0)
    with pytest.raises(FileNotFoundError):
        ft.GenerationConfig.from_pretrained(tmp_path / "missing")


def test_fixture_generation_config_is_read():
    model = load("gpt2_tiny_a")
    assert model.generation_config.eos_token_id == 100 and model.generation_config.bos_token_id == 100


# ---- streaming ------------------------------------------------------------------------------

ZH = "你好，世界！这是中文文本。Hello 世界 ok\n再见"


class Collect(ft.TextStreamer):
    def __init__(self, tok, **kw):
        super().__init__(tok, **kw)
        self.pieces = []

    def on_finalized_text(self, text, stream_end=False):
        self.pieces.append(text)


def test_streamer_decodes_chinese_across_byte_tokens():
    tok = ByteTokenizer()
    s = Collect(tok, skip_prompt=True)
    s.put(np.array([[1, 2]]))  # the prompt, skipped
    for b in tok.encode(ZH):
        s.put(np.array([b]))
    s.end()
    assert "".join(s.pieces) == ZH
    assert not any("\ufffd" in p for p in s.pieces), s.pieces
    assert "你" in s.pieces[0:2] or s.pieces[0] == "你", "CJK characters are emitted as soon as complete"


def test_streamer_with_the_bpe_tokenizer():
    if not hasattr(ft, "Tokenizer"):
        pytest.skip("ferrotune.Tokenizer is not in this build")
    tok = ft.Tokenizer.from_pretrained(fixture_dir("tokenizer_bpe"))
    ids = tok.encode(ZH, add_special_tokens=False)
    s = Collect(tok)
    s.put(np.array([ids[:1]]))
    for i in ids[1:]:
        s.put(np.array([i]))
    s.end()
    assert "".join(s.pieces) == tok.decode(ids)
    assert not any("\ufffd" in p for p in s.pieces)


def test_text_iterator_streamer_with_generate():
    model = load("gpt2_tiny_a")
    tok = ByteTokenizer()
    ids = np.array([[60, 61, 62]])
    streamer = ft.TextIteratorStreamer(tok, skip_prompt=True, timeout=60)
    result = {}
    th = threading.Thread(
        target=lambda: result.setdefault("out", model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=[], streamer=streamer))
    )
    th.start()
    text = "".join(streamer)
    th.join()
    assert text == tok.decode(result["out"][0, 3:])


# ---- pipeline -------------------------------------------------------------------------------


def test_pipeline_one_liner():
    model = load("gpt2_tiny_a")
    tok = ByteTokenizer()
    pipe = ft.pipeline("text-generation", model=model, tokenizer=tok)
    out = pipe("ab", max_new_tokens=5, do_sample=False, eos_token_id=[])
    ids = model.generate(np.array([tok.encode("ab")]), max_new_tokens=5, do_sample=False, eos_token_id=[])
    assert out == [{"generated_text": "ab" + tok.decode(ids[0, 2:])}]
    many = pipe(["a", "b"], max_new_tokens=3, do_sample=True, seed=1, num_return_sequences=2, return_full_text=False, eos_token_id=[])
    assert len(many) == 2 and all(len(x) == 2 for x in many)
    with pytest.raises(ValueError, match="text-generation"):
        ft.pipeline("summarization", model=model, tokenizer=tok)
