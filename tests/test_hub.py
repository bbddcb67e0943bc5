"""Models by name (ferrotune.hub): Hub ids found in a Hugging Face cache laid out as
huggingface_hub lays it out (refs/<revision> -> snapshots/<commit>/ -> links into blobs/),
offline rules, the download call, and the error that names every place looked at.
Nothing here reaches the network: huggingface_hub is replaced by a recorder."""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import ferrotune as ft
from ferrotune import hub

from conftest import fixture_dir

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def add_snapshot(cache: Path, repo_id: str, commit: str, source: Path, names=None, refs=("main",)) -> Path:
    """Puts ``source``'s files (or ``names`` of them) into the cache as commit ``commit`` of
    ``repo_id``: content-addressed blobs, snapshot links into them, refs naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name in names or sorted(p.name for p in source.iterdir()):
        data = (source / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


class Recorder(types.ModuleType):
    """Stands in for huggingface_hub: records snapshot_download calls and serves ``serve``."""

    def __init__(self) -> None:
        super().__init__("huggingface_hub")
        self.calls: list[tuple[tuple, dict]] = []
        self.serve: Path | None = None

    def snapshot_download(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return str(self.serve)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache in $HF_HUB_CACHE, offline, and huggingface_hub replaced by a recorder."""
    root = tmp_path / "hub"
    root.mkdir()
    for var in ("HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(sys.modules, "huggingface_hub", Recorder())
    return root


def weights(model):
    return model.state_dict()["transformer.wte.weight"]


def test_model_by_hub_id_loads_the_main_snapshot(cache):
    snapshot = add_snapshot(cache, "org/tiny", COMMIT_A, fixture_dir("gpt2_tiny_a"))
    model = ft.Model.from_pretrained("org/tiny")
    assert (snapshot / "model.safetensors").is_symlink()
    assert model.name_or_path == "org/tiny"  # as transformers: the id it was loaded by
    np.testing.assert_array_equal(weights(model), weights(ft.Model.from_pretrained(fixture_dir("gpt2_tiny_a"))))
    classifier = ft.Model.for_sequence_classification("org/tiny", num_labels=3, pad_token_id=0)
    assert classifier.num_labels == 3 and classifier.name_or_path == "org/tiny"


def test_tokenizer_by_hub_id(cache):
    source = Path(__file__).parent / "fixtures" / "tokenizer_bpe"
    snapshot = add_snapshot(cache, "org/tok", COMMIT_A, source, names=["tokenizer.json", "tokenizer_config.json"])
    tok = ft.Tokenizer.from_pretrained("org/tok")
    text = "The quick brown fox jumps over the lazy dog."
    assert tok.encode(text) == ft.Tokenizer.from_pretrained(source).encode(text)
    assert tok.name_or_path == str(snapshot)


def test_revision_by_branch_and_by_commit_hash(cache):
    a = add_snapshot(cache, "org/tiny", COMMIT_A, fixture_dir("gpt2_tiny_a"))
    b = add_snapshot(cache, "org/tiny", COMMIT_B, fixture_dir("gpt2_tiny_b"), refs=("v2",))
    model = ft.Model.from_pretrained("org/tiny", revision="v2")
    assert model.name_or_path == "org/tiny"
    np.testing.assert_array_equal(weights(model), weights(ft.Model.from_pretrained(fixture_dir("gpt2_tiny_b"))))
    assert hub.resolve("org/tiny", revision=COMMIT_A) == str(a)
    assert hub.resolve("org/tiny", revision=COMMIT_B) == str(b)
    assert hub.resolve("org/tiny") == str(a)
    with pytest.raises(hub.ModelNotFoundError, match="no refs/v3 and no snapshots/v3"):
        hub.resolve("org/tiny", revision="v3")


def test_a_ref_to_a_missing_snapshot_is_named(cache):
    add_snapshot(cache, "org/tiny", COMMIT_A, fixture_dir("gpt2_tiny_a"))
    (cache / "models--org--tiny" / "refs" / "main").write_text(COMMIT_B)
    missing = f"refs/main names commit {COMMIT_B}, which has no snapshots/{COMMIT_B}"
    with pytest.raises(hub.ModelNotFoundError, match=missing):
        hub.resolve("org/tiny")


def test_offline_serves_the_cache_and_downloads_nothing(cache, monkeypatch):
    add_snapshot(cache, "org/tiny", COMMIT_A, fixture_dir("gpt2_tiny_a"))
    recorder = sys.modules["huggingface_hub"]
    assert hub.resolve("org/tiny").endswith(COMMIT_A)
    with pytest.raises(hub.ModelNotFoundError, match="offline mode") as err:
        ft.Model.from_pretrained("org/missing")
    assert "pip install" not in str(err.value), "huggingface_hub is importable: only the offline switch is in the way"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    with pytest.raises(hub.ModelNotFoundError, match="offline mode"):
        ft.Tokenizer.from_pretrained("org/missing")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    with pytest.raises(hub.ModelNotFoundError, match="local_files_only=True"):
        ft.Model.from_pretrained("org/missing", local_files_only=True)
    assert recorder.calls == []


def test_missing_id_names_every_place_looked_and_how_to_download(cache, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        ft.Model.from_pretrained("org/missing")
    assert isinstance(err.value, ft.FerrotuneError) and isinstance(err.value, hub.ModelNotFoundError)
    assert err.value.filename == "org/missing" and err.value.errno == errno.ENOENT
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)
    message = str(err.value)
    for part in (
        "'org/missing' (revision 'main')",
        str(tmp_path / "org" / "missing") + ": no such local file or directory",
        str(cache / "models--org--missing") + ": no such folder",
        "pip install huggingface_hub",
    ):
        assert part in message, (part, message)
    both = r"local_files_only=True \(pass False to download\), and huggingface_hub is not installed"
    with pytest.raises(hub.ModelNotFoundError, match=both):
        ft.Tokenizer.from_pretrained("org/missing", local_files_only=True)


def test_a_missing_path_that_is_no_hub_id_says_so(cache, tmp_path):
    with pytest.raises(hub.ModelNotFoundError, match="^No such file or directory: .*not-here$") as err:
        ft.Model.from_pretrained(tmp_path / "not-here")
    assert err.value.filename == str(tmp_path / "not-here")


def test_download_fetches_the_loaders_files_into_the_cache(cache, monkeypatch):
    """Online with huggingface_hub: a snapshot without weights (as AutoConfig leaves it)
    does not serve a model; snapshot_download is asked for the model files, at the revision,
    into the same cache."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    add_snapshot(cache, "org/tiny", COMMIT_A, fixture_dir("gpt2_tiny_a"), names=["config.json"])
    recorder = sys.modules["huggingface_hub"]
    recorder.serve = add_snapshot(cache, "org/tiny", COMMIT_B, fixture_dir("gpt2_tiny_a"), refs=("v2",))
    model = ft.Model.from_pretrained("org/tiny")
    assert model.name_or_path == "org/tiny"
    assert recorder.calls == [
        (("org/tiny",), dict(revision=None, cache_dir=str(cache), allow_patterns=list(hub.MODEL_FILES)))
    ]
    source = Path(__file__).parent / "fixtures" / "tokenizer_bpe"
    recorder.serve = add_snapshot(cache, "org/tok", COMMIT_A, source, names=["vocab.json", "merges.txt"])
    assert ft.Tokenizer.from_pretrained("org/tok", revision="v1", cache_dir=cache / "elsewhere").vocab_size > 0
    assert recorder.calls[1] == (
        ("org/tok",),
        dict(revision="v1", cache_dir=str(cache / "elsewhere"), allow_patterns=list(hub.TOKENIZER_FILES)),
    )


def test_incomplete_snapshot_offline_names_what_it_lacks(cache):
    add_snapshot(cache, "org/tiny", COMMIT_A, fixture_dir("gpt2_tiny_a"), names=["config.json"])
    lacks = f"snapshots/{COMMIT_A} has no model.safetensors or model.safetensors.index.json"
    with pytest.raises(hub.ModelNotFoundError, match=lacks):
        ft.Model.from_pretrained("org/tiny")


def test_legacy_bare_names_find_either_spelling(cache):
    moved = add_snapshot(cache, "openai-community/gpt2", COMMIT_A, fixture_dir("gpt2_tiny_a"))
    assert hub.resolve("gpt2") == str(moved)
    bare = add_snapshot(cache, "distilgpt2", COMMIT_B, fixture_dir("gpt2_tiny_b"))
    assert hub.resolve("distilbert/distilgpt2") == str(bare)
    with pytest.raises(hub.ModelNotFoundError) as err:
        hub.resolve("gpt2-xl")
    assert "models--gpt2-xl: no such folder" in str(err.value)
    assert "models--openai-community--gpt2-xl: no such folder" in str(err.value)


def test_a_local_directory_wins_over_the_cache(cache, tmp_path, monkeypatch):
    add_snapshot(cache, "org/tiny", COMMIT_B, fixture_dir("gpt2_tiny_b"))
    shutil.copytree(fixture_dir("gpt2_tiny_a"), tmp_path / "org" / "tiny")
    monkeypatch.chdir(tmp_path)
    model = ft.Model.from_pretrained("org/tiny")
    assert model.name_or_path == str(tmp_path / "org" / "tiny")
    np.testing.assert_array_equal(weights(model), weights(ft.Model.from_pretrained(fixture_dir("gpt2_tiny_a"))))


def test_gguf_file_and_adapter_by_hub_id(cache):
    add_snapshot(cache, "org/gguf", COMMIT_A, fixture_dir("gguf_tiny"))
    path = hub.resolve_gguf("org/gguf", "tiny.gguf")
    assert path == str(cache / "models--org--gguf" / "snapshots" / COMMIT_A / "tiny.gguf")
    with pytest.raises(hub.ModelNotFoundError, match=f"snapshots/{COMMIT_A} has no other.gguf"):
        ft.Model.from_pretrained("org/gguf", gguf_file="other.gguf")
    add_snapshot(cache, "org/lora", COMMIT_A, fixture_dir("lora_gpt2"))
    peft = ft.PeftModel.from_pretrained(ft.Model.from_pretrained(fixture_dir("gpt2_tiny_a")), "org/lora")
    local = ft.PeftModel.from_pretrained(ft.Model.from_pretrained(fixture_dir("gpt2_tiny_a")), fixture_dir("lora_gpt2"))
    for name, value in local.adapter_state_dict().items():
        np.testing.assert_array_equal(peft.adapter_state_dict()[name], value)


def test_cache_location_follows_huggingface_hub(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.default_cache_dir() == str(tmp_path / ".cache" / "huggingface" / "hub")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.default_cache_dir() == str(tmp_path / "xdg" / "huggingface" / "hub")
    monkeypatch.setenv("HF_HOME", "~/hf")
    assert hub.default_cache_dir() == str(tmp_path / "hf" / "hub")
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub.default_cache_dir() == str(tmp_path / "legacy")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "new"))
    assert hub.default_cache_dir() == str(tmp_path / "new")
