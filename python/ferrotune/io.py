"""Files on disk: safetensors as dictionaries of numpy arrays (no torch, no safetensors
package), directories written atomically, checkpoint JSON files read with type checks."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import re
import secrets
import shutil
import threading
import types
import typing
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

import numpy as np

from . import _core
from ._core import CheckpointError

PathLike = Union[str, "os.PathLike[str]"]

_NUMPY_DTYPES = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


def _bf16_to_f32(raw: bytes) -> np.ndarray:
    # bfloat16 is the upper half of a float32
    return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


def load_safetensors_with_metadata(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Reads every tensor of a safetensors file, and its metadata. bfloat16 becomes float32."""
    tensors, metadata = _core.load_safetensors(os.fspath(path))
    out: Dict[str, np.ndarray] = {}
    for name, dtype, shape, raw in tensors:
        if dtype == "bfloat16":
            arr = _bf16_to_f32(raw)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder("<"))
        out[name] = arr.reshape(shape).astype(arr.dtype.newbyteorder("="), copy=True)
    return out, dict(metadata)


def load_safetensors(path: PathLike) -> Dict[str, np.ndarray]:
    """Reads every tensor of a safetensors file into a dict of numpy arrays."""
    return load_safetensors_with_metadata(path)[0]


def save_safetensors(
    tensors: Mapping[str, np.ndarray], path: PathLike, metadata: Optional[Mapping[str, str]] = None
) -> None:
    """Writes numpy arrays to a safetensors file (atomically: temp file + rename)."""
    items = []
    for name, value in tensors.items():
        arr = np.asarray(value)
        key = arr.dtype.name
        if key not in _NUMPY_DTYPES:
            raise TypeError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored in safetensors by ferrotune")
        le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        items.append((str(name), key, list(arr.shape), le.tobytes()))
    meta = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    _core.save_safetensors(os.fspath(path), items, meta)


# ----------------------------------------------------------------------------- atomic directories

# ".<name>.tmp-<pid>-<8 hex>": a directory being written, or an old one being deleted
_TEMPORARY_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
_writing = threading.local()  # .dirs: the temporary directories this thread is filling


def _temporary_sibling(path: str) -> str:
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: another user's process, running
    except (ProcessLookupError, OverflowError):  # none, or an impossible pid
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temporaries(parent: str, name: Optional[str] = None) -> None:
    """Removes the temporary siblings (of the entry ``name``, or of every entry) in ``parent``
    that :func:`atomic_directory` and :func:`remove_directory` of processes that are no longer
    running left behind (after a kill). Those of running processes are kept."""
    if not os.path.isdir(parent):
        return
    for entry in os.listdir(parent):
        m = _TEMPORARY_RE.match(entry)
        if m and (name is None or m["name"] == name) and not _pid_running(int(m["pid"])):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def fsync_directory(path: str) -> None:
    """Flushes a directory's entries (a rename in it) to disk; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    for folder, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(folder, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(folder)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _link_missing(old: str, new: str) -> None:
    """Hard-links (copies where links fail) into ``new`` each entry of ``old`` that ``new``
    lacks, recursing into folders both have; symbolic links are recreated as links."""
    for entry in os.scandir(old):
        dst = os.path.join(new, entry.name)
        if os.path.lexists(dst):
            if entry.is_dir(follow_symlinks=False) and os.path.isdir(dst) and not os.path.islink(dst):
                _link_missing(entry.path, dst)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, dst)


@functools.lru_cache(maxsize=None)
def _renameat2() -> Optional[Callable[..., int]]:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2")
    except (OSError, AttributeError):  # not glibc >= 2.28 (or not Linux)
        return None


def _exchange(a: str, b: str) -> bool:
    """Swaps two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``);
    False, with nothing changed, where the system or the filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def remove_directory(path: str) -> None:
    """Deletes a directory so that it is never seen half-deleted under its name: it is renamed
    to a temporary sibling (one atomic step, flushed to disk), then removed. A kill during the
    removal leaves only that hidden sibling, which :func:`remove_stale_temporaries` deletes."""
    trash = _temporary_sibling(path)
    os.rename(path, trash)
    fsync_directory(os.path.dirname(path))
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: PathLike, keep_other_files: bool = True) -> Iterator[str]:
    """Yields a new empty directory to write into instead of ``path``; when the block ends
    without an exception that directory (flushed to disk) takes the place of ``path`` in one
    atomic step, so ``path`` holds either all of the old files or all of the new ones, even
    if the process is killed at any point. On an exception the new directory is removed and
    ``path`` is untouched.

    - The new directory is a hidden sibling, ``.<name>.tmp-<pid>-<random>``, on the same
      filesystem. Siblings left by a killed process are removed by the next save of ``path``.
    - ``keep_other_files``: files of an existing ``path`` that the new save does not write
      (a tokenizer saved by a separate call, the user's own files) are kept (hard-linked into
      the new directory before the swap); False replaces the directory wholesale.
    - An existing directory is swapped with ``renameat2(RENAME_EXCHANGE)`` where the system
      has it; elsewhere it is renamed aside first, leaving a moment without ``path``.
    - Inside another ``atomic_directory`` block of this thread, a ``path`` in the directory
      being written is written directly (that outer block makes it atomic).
    - ``path`` being a file raises FileExistsError naming it, before anything is written.
    """
    target = os.path.realpath(os.fspath(path))
    active = _writing.__dict__.setdefault("dirs", [])
    if any(target == d or target.startswith(d + os.sep) for d in active):
        os.makedirs(target, exist_ok=True)
        yield target
        return
    if os.path.exists(target) and not os.path.isdir(target):
        raise FileExistsError(errno.EEXIST, "exists and is not a directory, cannot save into it", os.fspath(path))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, os.path.basename(target))
    tmp = _temporary_sibling(target)
    os.mkdir(tmp)
    committed = False
    try:
        active.append(tmp)
        try:
            yield tmp
        finally:
            active.remove(tmp)
        _fsync_tree(tmp)
        if not os.path.isdir(target):
            os.rename(tmp, target)
            committed = True
            fsync_directory(parent)
            return
        if keep_other_files:
            _link_missing(target, tmp)
        shutil.copymode(target, tmp)
        if _exchange(tmp, target):
            old = tmp  # the swap left the previous directory under the temporary name
        else:
            old = _temporary_sibling(target)
            os.rename(target, old)
            os.rename(tmp, target)
        committed = True
        fsync_directory(parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if not committed:
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- checkpoint JSON


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type hint (int, float, str, bool, Any, Optional/Union,
    List, Dict; a float field accepts integers, an int field never accepts a bool)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if origin is not None:
        return isinstance(value, origin)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def read_checkpoint_json(path: PathLike, types: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON object in the checkpoint file ``path``. Raises :class:`ferrotune.CheckpointError`
    naming the file when it is not valid JSON or not an object, and naming the key when a key
    of ``types`` (key -> type hint) is present with a value of another type. Other keys are
    returned unchecked; absent keys are allowed."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): the checkpoint is damaged") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} holds a JSON {type(d).__name__}, expected an object: the checkpoint is damaged")
    for key, hint in types.items():
        if key in d and not _has_type(d[key], hint):
            raise CheckpointError(
                f"{path}: {key!r} is {d[key]!r} ({type(d[key]).__name__}), expected {_hint_name(hint)}: "
                "the checkpoint is damaged"
            )
    return d


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
