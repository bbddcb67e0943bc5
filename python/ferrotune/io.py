"""safetensors files as dictionaries of numpy arrays (no torch, no safetensors package)."""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

from . import _core

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
