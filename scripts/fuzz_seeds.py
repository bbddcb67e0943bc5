"""Writes the fuzzers' seed corpora from tests/fixtures into a (git-ignored) directory:
one file per seed, named by the SHA-1 of its content as libFuzzer names corpus files, so
reruns add nothing twice. Only small inputs are used (the fuzzers mutate them thousands
of times a second). Usage: python3 scripts/fuzz_seeds.py fuzz/corpus

Targets: safetensors (small .safetensors fixtures, plus one with every float dtype),
gguf (tests/fixtures/gguf_tiny/tiny.gguf, plus tiny llama and qwen2 GGUFs written here
with full metadata, a byte-level BPE tokenizer and tensors of several ggml types),
tokenizer (tokenizer.json NUL tokenizer_config.json NUL text), config (config.json
files), chat_template (chat templates NUL a seed for the messages).
"""

import hashlib
import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
MAX_SEED = 128 * 1024


def put(out: Path, target: str, data: bytes) -> None:
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


# ---- safetensors --------------------------------------------------------------------


def safetensors_bytes(tensors: dict, metadata: dict) -> bytes:
    header, blob = {"__metadata__": metadata}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def safetensors_seeds(out: Path) -> None:
    for p in sorted(FIX.glob("*/*.safetensors")) + sorted(FIX.glob("*.safetensors")):
        if p.stat().st_size <= MAX_SEED:
            put(out, "safetensors", p.read_bytes())
    dtypes = {"F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I32": 4, "U8": 1, "BOOL": 1, "F8_E4M3": 1}
    tensors = {f"t.{d.lower()}": (d, [2, 3], bytes(range(6 * n))) for d, n in dtypes.items()}
    tensors["empty"] = ("F32", [0, 4], b"")
    tensors["scalar"] = ("F16", [], b"\x00\x3c")
    put(out, "safetensors", safetensors_bytes(tensors, {"format": "pt"}))


# ---- GGUF ---------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
GGML = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q8_0": (8, 32, 34),
        "BF16": (30, 1, 2)}


def gstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(ty: int, v) -> bytes:
    if ty == STR:
        return gstr(v)
    if ty == ARR:
        ety, items = v
        return struct.pack("<IQ", ety, len(items)) + b"".join(gval(ety, x) for x in items)
    return struct.pack("<" + {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?",
                              U64: "Q", I64: "q", F64: "d"}[ty], v)


def gguf_bytes(kv: list, tensors: list, alignment: int = 32) -> bytes:
    """kv: [(key, type, value)]; tensors: [(name, ggml dims (ne0 first), type name)]."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    head += b"".join(gstr(k) + struct.pack("<I", ty) + gval(ty, v) for k, ty, v in kv)
    data, info = b"", b""
    for i, (name, dims, tname) in enumerate(tensors):
        tid, block, size = GGML[tname]
        n = 1
        for d in dims:
            n *= d
        assert n % block == 0, (name, dims, tname)
        data += b"\x00" * (-len(data) % alignment)
        info += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        info += struct.pack("<IQ", tid, len(data))
        # small deterministic bytes: finite f16 scales (< 0x3c00 = 1.0) and arbitrary quants
        data += bytes(((j * 7 + i) % 60) for j in range(n // block * size))
    head += info
    head += b"\x00" * (-len(head) % alignment)
    return head + data


def gguf_seeds(out: Path) -> None:
    put(out, "gguf", (FIX / "gguf_tiny" / "tiny.gguf").read_bytes())
    vocab = json.loads((FIX / "tokenizer_bpe" / "vocab.json").read_text())
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:96] + ["<|im_start|>", "<|im_end|>"]
    merges = [m for m in (FIX / "tokenizer_bpe" / "merges.txt").read_text().splitlines() if m and not m.startswith("#")]
    tmpl = (FIX / "chat_tokenizer" / "chat_template.jinja").read_text()
    for arch, pre, name in [("llama", "llama-bpe", "tiny llama"), ("qwen2", "qwen2", "tiny qwen"), ("llama", "smollm", "Mistral tiny")]:
        v, h, ff, nh, nkv, hd = len(tokens), 8, 16, 2, 1, 4
        kv = [
            ("general.architecture", STR, arch), ("general.name", STR, name), ("general.alignment", U32, 32),
            (f"{arch}.block_count", U32, 1), (f"{arch}.context_length", U32, 64), (f"{arch}.embedding_length", U32, h),
            (f"{arch}.feed_forward_length", U32, ff), (f"{arch}.attention.head_count", U32, nh),
            (f"{arch}.attention.head_count_kv", U32, nkv), (f"{arch}.rope.freq_base", F32, 10000.0),
            (f"{arch}.attention.layer_norm_rms_epsilon", F32, 1e-5), (f"{arch}.rope.dimension_count", U32, hd),
            (f"{arch}.rope.scaling.type", STR, "linear"), (f"{arch}.rope.scaling.factor", F32, 2.0),
            (f"{arch}.vocab_size", U32, v),
            ("tokenizer.ggml.model", STR, "gpt2"), ("tokenizer.ggml.pre", STR, pre),
            ("tokenizer.ggml.tokens", ARR, (STR, tokens)),
            ("tokenizer.ggml.token_type", ARR, (I32, [3 if t.startswith("<|") else 1 for t in tokens])),
            ("tokenizer.ggml.merges", ARR, (STR, merges[:64])),
            ("tokenizer.ggml.bos_token_id", U32, v - 2), ("tokenizer.ggml.eos_token_id", U32, v - 1),
            ("tokenizer.ggml.padding_token_id", U32, 0), ("tokenizer.ggml.add_bos_token", BOOL, True),
            ("tokenizer.chat_template", STR, tmpl),
        ]
        qbias = [("blk.0.attn_q.bias", [nh * hd], "F32"), ("blk.0.attn_k.bias", [nkv * hd], "F32")] if arch == "qwen2" else []
        tensors = [
            ("token_embd.weight", [h, v], "F16"), ("output_norm.weight", [h], "F32"),
            ("blk.0.attn_norm.weight", [h], "F32"), ("blk.0.ffn_norm.weight", [h], "F32"),
            ("blk.0.attn_q.weight", [h, nh * hd], "Q8_0"), ("blk.0.attn_k.weight", [h, nkv * hd], "F16"),
            ("blk.0.attn_v.weight", [h, nkv * hd], "BF16"), ("blk.0.attn_output.weight", [nh * hd, h], "Q4_0"),
            ("blk.0.ffn_gate.weight", [h, ff], "Q4_1"), ("blk.0.ffn_up.weight", [h, ff], "F32"),
            ("blk.0.ffn_down.weight", [ff, h], "F16"), *qbias,
        ]
        if name.startswith("Mistral"):
            tensors += [("output.weight", [h, v], "F32"), ("rope_freqs.weight", [hd // 2], "F32")]
        put(out, "gguf", gguf_bytes(kv, tensors))


# ---- tokenizer, config, chat templates -----------------------------------------------

MINI_TOKENIZER = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": 0, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True}],
    "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                          "use_regex": True},
    "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                        "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
              "vocab": {"<s>": 0, "a": 1, "b": 2, "ab": 3, "Ġ": 4, "Ġab": 5}, "merges": [["a", "b"], ["Ġ", "ab"]]},
}


def text_seeds(out: Path) -> None:
    for d in ["tokenizer_bpe", "chat_tokenizer"]:
        tj = (FIX / d / "tokenizer.json").read_bytes()
        cfg = (FIX / d / "tokenizer_config.json").read_bytes()
        put(out, "tokenizer", tj + b"\0" + cfg)
        put(out, "tokenizer", tj + b"\0" + cfg + b"\0" + "<|endoftext|>héllo wörld 12 \n".encode())
    mini = json.dumps(MINI_TOKENIZER).encode()
    put(out, "tokenizer", mini)
    put(out, "tokenizer", mini + b'\0{"bos_token": "<s>", "pad_token": {"content": "<s>"}, "padding_side": "left",'
        b' "model_max_length": 5, "additional_special_tokens": ["ab"]}\0ab ab b')

    for p in sorted(FIX.glob("*/config.json")):
        put(out, "config", p.read_bytes())

    expected = json.loads((FIX / "chat_tokenizer" / "expected.json").read_text())
    templates = list(expected["templates"].values())
    templates.append((FIX / "chat_tokenizer" / "chat_template.jinja").read_text())
    smol = json.loads((FIX / "gguf_smollm2" / "tokenizer_expected.json").read_text()).get("chat_template")
    if smol:
        templates.append(smol)
    for i, t in enumerate(templates):
        # the bytes after the NUL seed the random conversation (see fuzz/chat_template.py)
        put(out, "chat_template", t.encode() + b"\0" + bytes(range(i, i + 64)))


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "fuzz" / "corpus")
    safetensors_seeds(out)
    gguf_seeds(out)
    text_seeds(out)
    for d in sorted(out.iterdir()):
        print(f"fuzz seeds: {d.name}: {sum(1 for _ in d.iterdir())} files in the corpus")


if __name__ == "__main__":
    main()
