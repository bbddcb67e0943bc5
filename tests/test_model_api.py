"""The Model / AdamW / io API: construction, save and load, modes, and typed errors."""

import json
import shutil

import numpy as np
import pytest

import ferrotune as ft
from ferrotune.io import load_safetensors, load_safetensors_with_metadata, save_safetensors

from conftest import fixture_dir

TINY = dict(
    model_type="gpt2", vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
)


def tiny(seed=0, **kw):
    return ft.Model.from_config({**TINY, **kw}, seed=seed)


def ids(b=2, t=8, v=64, seed=0):
    return np.random.default_rng(seed).integers(0, v, size=(b, t))


# ---- construction ----------------------------------------------------------------------

def test_from_config_initialisation_like_transformers():
    model = ft.Model.from_config({**TINY, "n_embd": 256, "n_head": 4, "vocab_size": 512}, seed=3)
    sd = model.state_dict()
    assert np.all(sd["transformer.h.0.ln_1.weight"] == 1) and np.all(sd["transformer.h.0.ln_1.bias"] == 0)
    assert np.all(sd["transformer.h.1.attn.c_attn.bias"] == 0)
    assert abs(sd["transformer.wte.weight"].std() - 0.02) < 0.001
    assert abs(sd["transformer.h.0.mlp.c_fc.weight"].std() - 0.02) < 0.001
    # residual projections are scaled by 1/sqrt(2 * n_layer)
    assert abs(sd["transformer.h.0.mlp.c_proj.weight"].std() - 0.02 / 2) < 0.001
    again = ft.Model.from_config({**TINY, "n_embd": 256, "n_head": 4, "vocab_size": 512}, seed=3).state_dict()
    assert all(np.array_equal(sd[k], again[k]) for k in sd)
    other = ft.Model.from_config({**TINY, "n_embd": 256, "n_head": 4, "vocab_size": 512}, seed=4).state_dict()
    assert not np.array_equal(sd["transformer.wte.weight"], other["transformer.wte.weight"])


def test_config_and_parameter_names():
    model = tiny()
    assert model.config.n_embd == 32 and model.config.model_type == "gpt2"
    names = model.parameter_names()
    assert names[0] == "transformer.wte.weight" and "transformer.h.1.mlp.c_proj.bias" in names
    assert "lm_head.weight" not in names  # tied to wte
    c, v, p, L = 32, 64, 16, 2
    per_layer = 2 * c + c * 3 * c + 3 * c + c * c + c + 2 * c + c * 4 * c + 4 * c + 4 * c * c + c
    assert model.num_parameters() == v * c + p * c + L * per_layer + 2 * c
    assert model.num_parameters(trainable_only=True) == model.num_parameters()
    # transformers' exclude_embeddings: without the token and position tables
    assert model.num_parameters(exclude_embeddings=True) == L * per_layer + 2 * c
    model.freeze("transformer.h.0.")
    assert model.num_parameters(trainable_only=True, exclude_embeddings=True) == per_layer + 2 * c


def test_forward_shapes_and_1d_input():
    model = tiny()
    out = model(ids())
    assert out.loss is None and out.logits.shape == (2, 8, 64) and out.logits.dtype == np.float32
    one = model(ids()[0].tolist())
    np.testing.assert_allclose(one.logits[0], out.logits[0], atol=1e-6)
    with_labels = model(ids(), labels=ids())
    assert np.isfinite(with_labels.loss) and with_labels["loss"] == with_labels.loss
    # the logits array is handed over, not a view: later forwards and training leave it alone
    kept = out.logits.copy()
    model(ids()[::-1].copy())
    model.forward_backward(ids())
    np.testing.assert_array_equal(out.logits, kept)


def test_loss_stats_match_forward():
    model = tiny()
    x, mask = ids(), np.ones((2, 8), dtype=np.int64)
    mask[1, 5:] = 0
    labels = np.where(mask == 1, x, -100)
    out = model(x, attention_mask=mask, labels=labels)
    loss_sum, n, correct = model.loss_stats(x, labels=labels, attention_mask=mask)
    assert n == 7 + 4
    assert abs(loss_sum / n - out.loss) < 1e-6
    shifted = labels[:, 1:]
    pred = out.logits[:, :-1].argmax(-1)
    assert correct == int(((pred == shifted) & (shifted != -100)).sum())


def test_dropout_only_in_train_mode():
    model = tiny(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)
    assert model.training
    x = ids()
    model.eval()
    a, b = model(x).logits, model(x).logits
    np.testing.assert_array_equal(a, b)
    model.train()
    state = model.get_rng_state()
    c = model(x).logits
    assert not np.allclose(a, c)
    model.set_rng_state(state)
    np.testing.assert_array_equal(model(x).logits, c)  # the dropout stream is restorable


def test_clip_grad_norm():
    model = tiny()
    model.forward_backward(ids())
    norm = float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in model.gradients().values())))
    returned = model.clip_grad_norm(norm / 4)
    assert abs(returned - norm) < 1e-4 * norm
    after = float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in model.gradients().values())))
    assert abs(after - norm / 4) < 1e-4 * norm


# ---- save / load -----------------------------------------------------------------------

def test_save_pretrained_round_trip_is_bit_exact(tmp_path):
    model = tiny(seed=5)
    model.forward_backward(ids())
    ft.AdamW(model).step()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    loaded = ft.Model.from_pretrained(tmp_path / "m")
    a, b = model.state_dict(), loaded.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    model.eval(), loaded.eval()
    np.testing.assert_array_equal(model(ids()).logits, loaded(ids()).logits)
    _, meta = load_safetensors_with_metadata(tmp_path / "m" / "model.safetensors")
    assert meta == {"format": "pt"}


def test_loads_transformers_written_directory_with_generation_config():
    d = fixture_dir("gpt2_tiny_a")
    model = ft.Model.from_pretrained(str(d))
    assert model.config.n_embd == 48


def test_sharded_checkpoint(tmp_path):
    d = fixture_dir("gpt2_tiny_a")
    tensors = load_safetensors(d / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    out = tmp_path / "sharded"
    out.mkdir()
    shutil.copy(d / "config.json", out / "config.json")
    for fname, keys in shards.items():
        save_safetensors({k: tensors[k] for k in keys}, out / fname, {"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    x = ids(v=101)
    np.testing.assert_array_equal(ft.Model.from_pretrained(out)(x).logits, ft.Model.from_pretrained(d)(x).logits)
    # a shard listed in the index but absent
    (out / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        ft.Model.from_pretrained(out)


def test_loads_in_transformers_with_same_logits(tmp_path):
    torch = pytest.importorskip("torch", reason="transformers parity needs torch (never a dependency of ferrotune)")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    model = tiny(seed=2)
    model.eval()
    model.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    x = ids()
    with torch.no_grad():
        expected = hf(torch.tensor(x)).logits.numpy()
    np.testing.assert_allclose(model(x).logits, expected, atol=1e-5)


def test_state_dict_round_trip_and_strictness():
    a, b = tiny(seed=1), tiny(seed=2)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(ids()).logits, b(ids()).logits)
    sd = a.state_dict()
    del sd["transformer.wpe.weight"]
    with pytest.raises(ft.CheckpointError, match="transformer.wpe.weight"):
        b.load_state_dict(sd)
    b.load_state_dict(sd, strict=False)
    with pytest.raises(ft.CheckpointError, match="nope"):
        b.load_state_dict({"nope": np.zeros(3)})
    before = b.state_dict()
    bad = a.state_dict()
    bad["transformer.ln_f.bias"] = np.zeros(5)
    with pytest.raises(ft.ShapeError, match=r"transformer.ln_f.bias.*\[32\].*\[5\]"):
        b.load_state_dict(bad)
    after = b.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before), "a failed load changes nothing"


# ---- optimizer ---------------------------------------------------------------------------

def test_adamw_state_round_trip_continues_exactly():
    x = ids()
    ref, opt = tiny(seed=1), None
    opt = ft.AdamW(ref, lr=1e-2, no_decay=["transformer.ln_f.bias"])
    for _ in range(4):
        ref.zero_grad(), ref.forward_backward(x), opt.step()

    m = tiny(seed=1)
    o = ft.AdamW(m, lr=1e-2, no_decay=["transformer.ln_f.bias"])
    for _ in range(2):
        m.zero_grad(), m.forward_backward(x), o.step()
    state, params = o.state_dict(), m.state_dict()
    assert state["step"] == 2 and set(state["exp_avg"]) == set(m.parameter_names())
    m2 = tiny(seed=9)
    m2.load_state_dict(params)
    o2 = ft.AdamW(m2, lr=1e-2, no_decay=["transformer.ln_f.bias"])
    o2.load_state_dict(state)
    for _ in range(2):
        m2.zero_grad(), m2.forward_backward(x), o2.step()
    a, b = ref.state_dict(), m2.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_adamw_validation():
    model = tiny()
    with pytest.raises(ft.InputError, match="unknown parameter"):
        ft.AdamW(model, no_decay=["transformer.h.9.ln_1.bias"])
    with pytest.raises(ft.InputError, match="learning rate"):
        ft.AdamW(model, lr=-1.0)
    opt = ft.AdamW(model, lr=0.1)
    opt.lr = 0.05
    assert opt.lr == 0.05
    with pytest.raises(TypeError):
        ft.AdamW(object())


# ---- io --------------------------------------------------------------------------------

def test_safetensors_io_dtypes(tmp_path):
    tensors = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64": np.linspace(0, 1, 4),
        "f16": np.ones(3, dtype=np.float16),
        "i64": np.array([[1, -2]], dtype=np.int64),
        "u8": np.array([255], dtype=np.uint8),
        "scalar": np.array(3.5, dtype=np.float32),
    }
    save_safetensors(tensors, tmp_path / "t.safetensors", {"a": "b"})
    back, meta = load_safetensors_with_metadata(tmp_path / "t.safetensors")
    assert meta == {"a": "b"}
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"], "no temp files left"


# ---- errors ----------------------------------------------------------------------------

def copy_fixture(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(fixture_dir("gpt2_tiny_a"), d)
    return d


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        ft.Model.from_pretrained(tmp_path / "does-not-exist")
    d = copy_fixture(tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ft.Model.from_pretrained(d)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        ft.Model.from_pretrained(d)


@pytest.mark.parametrize("keep", [0, 7, 100, -1000])
def test_truncated_or_corrupt_safetensors(tmp_path, keep):
    d = copy_fixture(tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:keep] if keep > 0 else data[:keep] if keep < 0 else b"garbage!")
    with pytest.raises(ft.CheckpointError, match="model.safetensors"):
        ft.Model.from_pretrained(d)


def test_config_errors(tmp_path):
    d = copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    for key in ["n_embd", "vocab_size"]:
        broken = {k: v for k, v in cfg.items() if k != key}
        (d / "config.json").write_text(json.dumps(broken))
        with pytest.raises(ft.ConfigError, match=key):
            ft.Model.from_pretrained(d)
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(ft.ConfigError, match="bert"):
        ft.Model.from_pretrained(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ft.ConfigError, match="config.json"):
        ft.Model.from_pretrained(d)
    with pytest.raises(ft.ConfigError, match="divisible"):
        ft.Model.from_config({**TINY, "n_head": 5})
    with pytest.raises(ft.ConfigError, match="activation_function"):
        ft.Model.from_config({**TINY, "activation_function": "relu"})


def test_wrong_tensor_shape_and_missing_tensor(tmp_path):
    d = copy_fixture(tmp_path)
    tensors = load_safetensors(d / "model.safetensors")
    tensors["transformer.h.0.attn.c_attn.weight"] = tensors["transformer.h.0.attn.c_attn.weight"][:, :10]
    save_safetensors(tensors, d / "model.safetensors", {"format": "pt"})
    with pytest.raises(ft.ShapeError, match=r"transformer.h.0.attn.c_attn.weight.*\[48, 144\].*\[48, 10\]"):
        ft.Model.from_pretrained(d)
    del tensors["transformer.h.0.attn.c_attn.weight"]
    save_safetensors(tensors, d / "model.safetensors", {"format": "pt"})
    with pytest.raises(ft.CheckpointError, match="transformer.h.0.attn.c_attn.weight"):
        ft.Model.from_pretrained(d)


def test_bad_inputs():
    model = tiny()
    with pytest.raises(ft.InputError, match=r"token id 64 at \[1, 3\]"):
        x = ids()
        x[1, 3] = 64
        model(x)
    with pytest.raises(ft.InputError, match="token id -1"):
        model([[1, -1]])
    with pytest.raises(ft.InputError, match="label 70"):
        model(ids(), labels=np.full((2, 8), 70))
    with pytest.raises(ft.ShapeError, match="attention_mask"):
        model(ids(), attention_mask=np.ones((2, 7)))
    with pytest.raises(ft.ShapeError, match="labels"):
        model.forward_backward(ids(), labels=np.ones((1, 8)))
    with pytest.raises(ft.InputError, match="17 exceeds"):
        model(np.zeros((1, 17)))
    with pytest.raises(ValueError, match="ragged"):
        model([[1, 2, 3], [1]])
    with pytest.raises(TypeError, match="integers"):
        model(np.array([[0.5, 1.0]]))
    with pytest.raises(ft.InputError, match="0 or 1"):
        model(ids(), attention_mask=np.full((2, 8), 2))
    assert model(ids()).logits.shape == (2, 8, 64), "the model still works after errors"
