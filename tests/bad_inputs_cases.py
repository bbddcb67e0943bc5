"""The bad-input catalogue run by tests/test_bad_inputs.py, and the child process that runs it.

Each case is data: an id, a code snippet (run with ``exec`` in a namespace holding the helpers
below, with ``tmp`` a fresh directory), the exception class name(s) it must raise (None: it
must return normally) and a regex its message must contain, plus an optional ``after`` snippet
that checks the state is intact once the expected exception was caught.

``python bad_inputs_cases.py RESULTS_FILE TMP_ROOT CASE_ID...`` runs the named cases one
after another in this process and appends one JSON line per case to RESULTS_FILE (written
and flushed as each case ends, so a crash leaves the earlier cases' results behind).
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple, Union

HERE = Path(__file__).resolve().parent
FIX = HERE / "fixtures"


@dataclass(frozen=True)
class Case:
    id: str
    code: str
    exc: Union[None, str, Tuple[str, ...]]  # class name(s), matched against the raised exception's MRO
    match: Optional[str] = None  # regex searched in str(exception)
    after: Optional[str] = None  # runs after the expected exception: asserts intact state
    solo: bool = False  # alone in its own process (peak RSS, threads, ...)
    mount: bool = False  # needs a private mount namespace (tmpfs)
    timeout: float = 60.0
    why: str = ""  # what the case checks, when the id does not say it


# ------------------------------------------------------------------------------------- helpers
# (module level, so the snippets see them; only imported in the child)

TINY_GPT2 = dict(
    model_type="gpt2", vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
)


class Skip(Exception):
    """Raised by a snippet whose precondition does not hold here (reported as a pytest skip)."""


def copy_fixture(name: str, dest: Optional[Path] = None) -> Path:
    import shutil

    src = FIX / name
    if not src.exists():
        raise Skip(f"fixture {src} is missing")
    d = dest or (TMP / name)
    shutil.copytree(src, d)
    return d


def edit_json(path: Path, **changes) -> None:
    d = json.loads(Path(path).read_text())
    for k, v in changes.items():
        if v is DROP:
            d.pop(k, None)
        else:
            d[k] = v
    Path(path).write_text(json.dumps(d))


DROP = object()


def gpt2(**kw):
    import ferrotune as ft

    return ft.Model.from_config({**TINY_GPT2, **kw}, seed=0)


def gen_model(**kw):
    """A tiny GPT-2 whose bos/eos ids lie inside its vocabulary (GPT2Config's default 50256 does not)."""
    return gpt2(bos_token_id=1, eos_token_id=2, **kw)


def llama_config(**kw) -> dict:
    d = json.loads((FIX / "llama_tiny" / "config.json").read_text())
    d.update(kw)
    return d


def ids(b: int = 2, t: int = 8, v: int = 64, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, v, size=(b, t))


def tok():
    import ferrotune as ft

    return ft.Tokenizer.from_pretrained(FIX / "tokenizer_bpe")


def rss_mb() -> float:
    """Peak RSS of this process since it started its program, in MB. VmHWM is the high-water
    mark of this program's own memory; ru_maxrss also keeps that of the parent it was forked
    from (the kernel carries it across exec), so a large pytest process would count."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def same_weights(a, b) -> bool:
    import numpy as np

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def limit_memory(extra_mb: int) -> None:
    """Caps this child's address space at its current size plus ``extra_mb`` (a runaway
    allocation then fails fast with MemoryError instead of swapping the machine)."""
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + (extra_mb << 20), hard))


def mount_tmpfs(path: Path, size: str, ro: bool = False) -> Path:
    """A tmpfs at ``path`` (in this child's private mount namespace); Skip where not permitted."""
    import subprocess

    if os.environ.get("BAD_INPUTS_PRIVATE_MOUNTS") != "1":
        raise Skip("no private mount namespace here (unshare -m not permitted): cannot mount a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise Skip(f"mount -t tmpfs not permitted: {r.stderr.strip()}")
    return path


def remount_ro(path: Path) -> None:
    import subprocess

    r = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise Skip(f"remount read-only not permitted: {r.stderr.strip()}")


def read_only_dir(path: Path) -> Path:
    """Makes ``path`` (holding files already) unwritable: chmod for a normal user; for root,
    who ignores permissions, a read-only remount of a tmpfs it was created on."""
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        os.chmod(path.parent, 0o555)
        return path
    raise Skip("running as root, which ignores permissions (the tmpfs variant covers this)")


# ---- GGUF writer ----------------------------------------------------------------------------

GT = dict(u8=0, i8=1, u16=2, i16=3, u32=4, i32=5, f32=6, bool=7, str=8, arr=9, u64=10, i64=11, f64=12)
_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _gstr(s: Union[str, bytes]) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _gval(ty: int, v) -> bytes:
    if ty == 8:
        return _gstr(v)
    if ty == 9:
        item_ty, items = v
        if isinstance(item_ty, str):
            item_ty = GT[item_ty]
        return struct.pack("<IQ", item_ty, len(items)) + b"".join(_gval(item_ty, x) for x in items)
    return struct.pack(_FMT[ty], v)


def gguf_bytes(kvs, tensors=(), alignment: int = 32, version: int = 3) -> bytes:
    """kvs: [(key, type name, value)] (arrays: ("arr", (item type name, [values])));
    tensors: [(name, ggml dims (ne0 first), ggml type, data bytes, offset or None)]."""
    out = [b"GGUF", struct.pack("<IQQ", version, len(tensors), len(kvs))]
    for k, ty, v in kvs:
        t = GT[ty]
        out.append(_gstr(k) + struct.pack("<I", t) + _gval(t, v))
    data, offsets = b"", []
    for name, dims, gtype, raw, off in tensors:
        if off is None:
            data += b"\0" * (-len(data) % alignment)
            off = len(data)
            data += raw
        out.append(_gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims))
        out.append(struct.pack("<IQ", gtype, off))
    head = b"".join(out)
    head += b"\0" * (-len(head) % alignment)
    return head + data


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _gguf_name(hf: str) -> str:
    if hf in GGUF_NAMES:
        return GGUF_NAMES[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, suffix = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER[module]}.{suffix}"


def llama_gguf_parts(overrides=None, drop=(), extra_kvs=(), tensor_patch=None):
    """(kvs, tensors) of a loadable F32 llama GGUF made from the llama_tiny fixture's weights
    (rows left in HF order: the numbers do not matter here). ``overrides``: {key: (type, value)}."""
    import numpy as np

    from ferrotune.io import load_safetensors

    cfg = json.loads((FIX / "llama_tiny" / "config.json").read_text())
    sd = load_safetensors(FIX / "llama_tiny" / "model.safetensors")
    vocab = cfg["vocab_size"]
    tokens = [f"t{i}" for i in range(vocab - 2)] + ["<s>", "</s>"]
    kv = {
        "general.architecture": ("str", "llama"),
        "general.name": ("str", "bad-inputs tiny"),
        "llama.context_length": ("u32", cfg["max_position_embeddings"]),
        "llama.embedding_length": ("u32", cfg["hidden_size"]),
        "llama.block_count": ("u32", cfg["num_hidden_layers"]),
        "llama.feed_forward_length": ("u32", cfg["intermediate_size"]),
        "llama.attention.head_count": ("u32", cfg["num_attention_heads"]),
        "llama.attention.head_count_kv": ("u32", cfg["num_key_value_heads"]),
        "llama.rope.dimension_count": ("u32", cfg["head_dim"]),
        "llama.rope.freq_base": ("f32", 10000.0),
        "llama.attention.layer_norm_rms_epsilon": ("f32", 1e-5),
        "tokenizer.ggml.model": ("str", "gpt2"),
        "tokenizer.ggml.tokens": ("arr", ("str", tokens)),
        "tokenizer.ggml.merges": ("arr", ("str", [])),
        "tokenizer.ggml.bos_token_id": ("u32", vocab - 2),
        "tokenizer.ggml.eos_token_id": ("u32", vocab - 1),
    }
    kv.update(overrides or {})
    for k in drop:
        kv.pop(k, None)
    kvs = [(k, t, v) for k, (t, v) in kv.items()] + list(extra_kvs)
    tensors = []
    for name, arr in sd.items():
        if name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        a = np.ascontiguousarray(arr, dtype="<f4")
        tensors.append([_gguf_name(name), list(a.shape[::-1]), 0, a.tobytes(), None])
    if tensor_patch:
        tensor_patch(tensors)
    return kvs, tensors


def write_llama_gguf(path: Path, **kw) -> Path:
    kvs, tensors = llama_gguf_parts(**kw)
    path.write_bytes(gguf_bytes(kvs, [tuple(t) for t in tensors]))
    return path


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


# ------------------------------------------------------------------------------------- child


def _mro_names(e: BaseException):
    return [c.__name__ for c in type(e).__mro__]


def run_case(case: Case, tmp: Path) -> dict:
    global TMP
    import numpy as np

    import ferrotune as ft
    from ferrotune import _core

    TMP = tmp
    tmp.mkdir(parents=True, exist_ok=True)
    ns = dict(globals())
    ns.update(ft=ft, np=np, _core=_core, tmp=tmp, json=json, os=os, Path=Path)
    res: dict = {"id": case.id}
    try:
        exec(compile(case.code, f"<case {case.id}>", "exec"), ns)
        res["raised"] = None
    except Skip as e:
        return {"id": case.id, "skip": str(e)}
    except BaseException as e:  # noqa: BLE001 - the catalogue reports whatever it was
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        res["raised"] = {
            "type": f"{type(e).__module__}.{type(e).__qualname__}",
            "mro": _mro_names(e),
            "message": str(e)[:4000],
            "traceback": traceback.format_exc()[-3000:],
        }
    if case.after is not None:
        try:
            exec(compile(case.after, f"<case {case.id} after>", "exec"), ns)
            res["after"] = None
        except Skip as e:
            return {"id": case.id, "skip": str(e)}
        except BaseException as e:  # noqa: BLE001
            res["after"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
    res["rss_mb"] = rss_mb()
    return res


if __name__ == "__main__":
    results_file, tmp_root, *case_ids = sys.argv[1:]
    sys.path.insert(0, str(HERE))
    from test_bad_inputs import BY_ID

    with open(results_file, "a", encoding="utf-8") as out:
        for cid in case_ids:
            out.write(json.dumps({"id": cid, "started": True}) + "\n")
            out.flush()
            r = run_case(BY_ID[cid], Path(tmp_root) / cid)
            out.write(json.dumps(r) + "\n")
            out.flush()
        out.write(json.dumps({"done": True}) + "\n")
        out.flush()
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown: a case's leftover threads cannot hang the exit
