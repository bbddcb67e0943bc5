"""GGUF from Python (ferrotune._core's GGUF functions). The numerics are checked in Rust
(tests/gguf.rs, against the gguf package and transformers); these tests check the binding:
types, shapes, errors, and that the tokenizer it returns loads into ferrotune's Tokenizer."""

import json
from pathlib import Path

import numpy as np
import pytest

from ferrotune import _core

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "gguf_tiny" / "tiny.gguf"


@pytest.fixture
def smollm2(shared_dir: Path) -> Path:
    p = shared_dir / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.exists():
        pytest.skip(f"{p} is absent")
    return p


def test_tiny_metadata_and_tensor_infos():
    exp = json.loads((FIXTURES / "gguf_tiny" / "expected.json").read_text())
    meta = _core.read_gguf_metadata(TINY)
    for k, v in exp["metadata"].items():
        assert meta[k] == v, k
    assert isinstance(meta["test.bool"], bool)
    infos = _core.read_gguf_tensor_infos(TINY)
    assert [(n, t) for n, t, _ in infos] == [(e["name"], e["ggml_type"]) for e in exp["tensors"]]
    assert [s for _, _, s in infos] == [e["dims"][::-1] for e in exp["tensors"]]


def test_errors():
    with pytest.raises(FileNotFoundError):
        _core.read_gguf_metadata("no/such/file.gguf")
    with pytest.raises(_core.CheckpointError, match="bad magic"):
        _core.read_gguf_metadata(FIXTURES / "gguf_tiny" / "expected.json")
    # tiny.gguf says "llama" but has none of its metadata
    with pytest.raises(_core.CheckpointError, match="llama.embedding_length"):
        _core.load_gguf(TINY)
    with pytest.raises(_core.TokenizerError, match="no tokenizer"):
        _core.load_gguf_tokenizer(TINY)


def test_smollm2_load(smollm2: Path):
    config_json, tensors, tokenizer_json, chat_template, tokenizer_config_json = _core.load_gguf(smollm2)
    config = json.loads(config_json)
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    want = json.loads((FIXTURES / "gguf_smollm2" / "config.json").read_text())
    for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_key_value_heads", "rms_norm_eps"):
        assert config[k] == want[k], k
    by_name = {n: (s, a) for n, s, a in tensors}
    assert len(by_name) == 2 + 9 * 30
    shape, q = by_name["model.layers.0.self_attn.q_proj.weight"]
    assert shape == [576, 576] and q.shape == (576, 576) and q.dtype == np.float32 and q.flags.c_contiguous
    assert by_name["model.layers.0.self_attn.k_proj.weight"][1].shape == (192, 576)
    assert by_name["model.embed_tokens.weight"][1].shape == (49152, 576)
    assert "lm_head.weight" not in by_name
    assert "<|im_start|>" in chat_template

    tok = _core.Tokenizer.from_state(tokenizer_json, tokenizer_config_json)
    ref = json.loads((FIXTURES / "gguf_smollm2" / "tokenizer_expected.json").read_text())
    for case in ref["cases"]:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
    assert _core.load_gguf_tokenizer(smollm2) == (tokenizer_json, tokenizer_config_json, chat_template)


def test_smollm2_tokenizer_from_pretrained(smollm2: Path, tmp_path: Path):
    from ferrotune import Tokenizer

    ref = json.loads((FIXTURES / "gguf_smollm2" / "tokenizer_expected.json").read_text())
    tok = Tokenizer.from_pretrained(smollm2)
    same = Tokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    for case in ref["cases"]:
        assert tok(case["text"]).input_ids == case["ids"], case["text"]
        assert same(case["text"], add_special_tokens=False).input_ids == case["ids_no_special"], case["text"]
        assert tok.decode(case["ids"]) == case["decoded"], case["text"]
        assert tok.decode(case["ids"], skip_special_tokens=True) == case["decoded_skip_special"], case["text"]
    st = ref["special_tokens"]
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (
        st["bos_token"], st["eos_token"], st["unk_token"], st["pad_token"],
    )
    messages = [
        {"role": "user", "content": "Translate to English: 你好"},
        {"role": "assistant", "content": "hello; hi"},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == ref["chat_rendered"]
    assert (
        tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        == ref["chat_rendered_generation_prompt"]
    )
    # saved as an HF tokenizer directory, it reloads with the same ids and template
    tok.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    for case in ref["cases"]:
        assert again(case["text"]).input_ids == case["ids"], case["text"]
    assert again.apply_chat_template(messages, tokenize=False) == ref["chat_rendered"]
