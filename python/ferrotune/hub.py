"""Model names to local files: a local path as it is, else a Hugging Face Hub id
(``"org/name"``, or a legacy bare name like ``"gpt2"``) found in the Hugging Face cache
exactly as huggingface_hub lays it out, or downloaded into it by huggingface_hub.

The cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)
holds one folder per repository, ``models--org--name``: ``refs/<revision>`` names a
commit and ``snapshots/<commit>/`` holds that commit's files (links into ``blobs/``).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
from collections.abc import Sequence
from typing import Any, Optional, Union

from ._core import FerrotuneError

PathLike = Union[str, "os.PathLike[str]"]

#: The files Model.from_pretrained reads (what a download fetches) ...
MODEL_FILES = ("config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json")
#: ... and the ones without which a cached snapshot cannot serve it.
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "additional_chat_templates/*.jinja",
)
TOKENIZER_VOCABULARY = ("tokenizer.json", "vocab.json")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")

#: Legacy names the Hub moved into organisations; the cache keeps the spelling that was downloaded.
_MOVED = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
_REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_TRUE = {"1", "ON", "YES", "TRUE"}


class ModelNotFoundError(FerrotuneError, FileNotFoundError):
    """A model name is neither a local path nor in the Hugging Face cache, and was not
    downloaded. Raised as ``ModelNotFoundError(errno.ENOENT, message, name)``."""

    def __str__(self) -> str:
        return str(self.strerror)


def default_cache_dir() -> str:
    """The Hugging Face Hub cache, with huggingface_hub's precedence: ``$HF_HUB_CACHE``
    (or the legacy ``$HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    env = os.environ.get
    home = env("HF_HOME") or os.path.join(env("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    path = env("HF_HUB_CACHE") or env("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return os.path.expandvars(os.path.expanduser(path))


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or transformers' ``TRANSFORMERS_OFFLINE``) forbids downloads."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE


def resolve(
    name_or_path: PathLike,
    *,
    revision: Optional[str] = None,
    local_files_only: bool = False,
    cache_dir: Optional[PathLike] = None,
    filenames: Sequence[str] = MODEL_FILES,
    required: Optional[Sequence[str]] = None,
) -> str:
    """The local file or directory ``name_or_path`` names.

    A path that exists is returned as it is. Otherwise ``name_or_path`` is a Hub id, looked
    up in the cache (``cache_dir``, else :func:`default_cache_dir`) at ``revision`` (a branch, tag or
    commit hash; default ``"main"``); a snapshot serves when it holds a file matching one
    of ``required`` (default: of ``filenames``). Failing that, unless ``local_files_only``
    or ``HF_HUB_OFFLINE`` is set, ``huggingface_hub.snapshot_download`` fetches the files
    matching ``filenames`` into the cache. Raises :class:`ModelNotFoundError` naming every
    place it looked.
    """
    path = os.fspath(name_or_path)
    if os.path.exists(path):
        return path
    if not _is_repo_id(path):
        raise ModelNotFoundError(errno.ENOENT, f"No such file or directory: {path}", path)
    cache = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    rev = revision or "main"
    wanted = tuple(filenames if required is None else required)
    looked = [f"{os.path.abspath(path)}: no such local file or directory"]
    for repo_id in _spellings(path):
        folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
        snapshot, problem = _cached_snapshot(folder, rev, wanted)
        if snapshot is not None:
            return snapshot
        looked.append(f"{folder}: {problem}")
    if local_files_only:
        offline: Optional[str] = "local_files_only=True (pass False to download)"
    elif is_offline():
        offline = "offline mode (unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE to download)"
    else:
        offline = None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        why = "huggingface_hub is not installed (pip install huggingface_hub to download)"
        if offline is not None:
            why = f"{offline}, and {why}"
    else:
        if offline is None:
            return str(snapshot_download(path, revision=revision, cache_dir=cache, allow_patterns=list(filenames)))
        why = offline
    places = "\n".join(f"  - {place}" for place in looked)
    raise ModelNotFoundError(
        errno.ENOENT,
        f"{path!r} (revision {rev!r}) is neither a local path nor in the Hugging Face cache; looked at:\n"
        f"{places}\nNothing was downloaded: {why}.",
        path,
    )


def resolve_gguf(name_or_path: PathLike, gguf_file: PathLike, **kwargs: Any) -> str:
    """The path of transformers' ``from_pretrained(name_or_path, gguf_file=...)``: the file
    ``gguf_file`` in the directory or Hub repository ``name_or_path`` (``kwargs`` as in
    :func:`resolve`)."""
    gguf_file = os.fspath(gguf_file)
    return os.path.join(resolve(name_or_path, filenames=(gguf_file,), **kwargs), gguf_file)


def _is_repo_id(name: str) -> bool:
    """Whether ``name`` is spelled like a Hub model id (``name`` or ``org/name``)."""
    return _REPO_ID.fullmatch(name) is not None and "--" not in name and ".." not in name


def _spellings(repo_id: str) -> tuple[str, ...]:
    """``repo_id`` and, for a legacy name the Hub moved, its other spelling."""
    other = _MOVED.get(repo_id) or next((old for old, new in _MOVED.items() if new == repo_id), None)
    return (repo_id,) if other is None else (repo_id, other)


def _cached_snapshot(folder: str, revision: str, wanted: Sequence[str]) -> tuple[Optional[str], str]:
    """(the snapshot directory of ``revision`` in a repository's cache folder, "") or
    (None, what is missing)."""
    if not os.path.isdir(folder):
        return None, "no such folder"
    ref = os.path.join(folder, "refs", revision)
    if os.path.isfile(ref):
        with open(ref, encoding="utf-8") as f:
            commit = f.read().strip()
    else:
        commit = revision  # a commit hash names its snapshot directly
    snapshot = os.path.join(folder, "snapshots", commit)
    if not os.path.isdir(snapshot):
        if commit == revision:
            return None, f"no refs/{revision} and no snapshots/{revision}"
        return None, f"refs/{revision} names commit {commit}, which has no snapshots/{commit}"
    names = [name for name in os.listdir(snapshot) if os.path.exists(os.path.join(snapshot, name))]
    if not any(fnmatch.filter(names, pattern) for pattern in wanted):
        return None, f"snapshots/{commit} has no {' or '.join(wanted)}"
    return snapshot, ""
