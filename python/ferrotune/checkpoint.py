"""Trainer checkpoints on disk: the ``checkpoint-<step>`` directories of a run, the files one
holds besides the model, their rotation, and reading them back.

A checkpoint directory holds the model (``Model.save_pretrained``), ``training_args.json``,
``trainer_state.json`` (transformers' ``TrainerState``), and to resume: the AdamW moments
(``optimizer.safetensors``), the schedule (``scheduler.json``), the RNG states
(``rng_state.json``) and where the loop stood (``loop_state.json``). The Trainer writes all
of it into one temporary directory that is renamed into place (``ferrotune.io``), so a
``checkpoint-*`` is complete or absent. Damaged files raise
:class:`ferrotune.CheckpointError` naming the file and key.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ._core import CheckpointError
from .io import read_checkpoint_json, remove_directory

__all__ = ["PREFIX_CHECKPOINT_DIR", "get_last_checkpoint", "sorted_checkpoints", "rotate_checkpoints"]

PREFIX_CHECKPOINT_DIR = "checkpoint"
_re_checkpoint = re.compile(r"^" + PREFIX_CHECKPOINT_DIR + r"-(\d+)$")

TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_ARGS_NAME = "training_args.json"
OPTIMIZER_NAME = "optimizer.safetensors"
SCHEDULER_NAME = "scheduler.json"
RNG_STATE_NAME = "rng_state.json"
LOOP_STATE_NAME = "loop_state.json"

# the types of the keys read back from rng_state.json and loop_state.json on resume
_RNG_STATE_TYPES = {
    "model_rng_state": Optional[int],
    "data_seed": Optional[int],
    # data-parallel runs: the number of ranks and each one's dropout generator, by rank
    "world_size": Optional[int],
    "model_rng_states": Optional[List[Optional[int]]],
}
_LOOP_STATE_TYPES = {
    "data_position": Optional[Dict[str, Any]],
    "tr_loss_sum": float,
    "globalstep_last_logged": int,
    "last_grad_norm": Optional[float],
    "last_learning_rate": Optional[float],
    "post": Optional[Dict[str, Any]],
}

#: Arguments whose change between a checkpoint and the resuming run changes what follows.
_RESUME_SENSITIVE_ARGS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "max_steps",
    "num_train_epochs",
    "seed",
    "data_seed",
    "group_by_length",
    "dataloader_drop_last",
    "packing",
    "max_length",
)


# --------------------------------------------------------------------------- a run's checkpoints


def sorted_checkpoints(folder: Union[str, os.PathLike]) -> List[str]:
    """The ``checkpoint-<step>`` directories in ``folder``, by step."""
    folder = os.fspath(folder)
    found: List[Tuple[int, str]] = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            m = _re_checkpoint.match(name)
            path = os.path.join(folder, name)
            if m and os.path.isdir(path):
                found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def get_last_checkpoint(folder: Union[str, os.PathLike]) -> Optional[str]:
    """The ``checkpoint-<step>`` directory with the highest step in ``folder`` (None if there is none)."""
    ckpts = sorted_checkpoints(folder)
    return ckpts[-1] if ckpts else None


def rotate_checkpoints(run_dir: str, limit: Optional[int], best: Optional[str]) -> None:
    """Keep the ``limit`` most recent checkpoints, plus ``best``. Each one deleted is renamed
    away first, so no ``checkpoint-*`` is ever seen half-deleted."""
    if limit is None or limit <= 0:
        return
    ckpts = sorted_checkpoints(run_dir)
    keep = set(ckpts[-limit:])
    best_path = os.path.abspath(best) if best else None
    for c in ckpts:
        if c in keep or (best_path is not None and os.path.abspath(c) == best_path):
            continue
        remove_directory(c)


# --------------------------------------------------------------------------- files


def write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def save_optimizer(optimizer: Any, out: str) -> None:
    """AdamW's moments as tensors ``exp_avg.<param>`` / ``exp_avg_sq.<param>``, its step and
    hyper-parameters in the safetensors metadata."""
    from .io import save_safetensors

    sd = optimizer.state_dict()
    tensors: Dict[str, np.ndarray] = {}
    for kind in ("exp_avg", "exp_avg_sq"):
        for n, a in dict(sd.get(kind, {})).items():
            tensors[f"{kind}.{n}"] = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    meta = {"format": "ferrotune.AdamW", "step": str(int(sd.get("step", 0)))}
    for k, v in sd.items():
        if k in ("exp_avg", "exp_avg_sq", "step"):
            continue
        meta[k] = json.dumps(list(v) if isinstance(v, tuple) else v)
    save_safetensors(tensors, os.path.join(out, OPTIMIZER_NAME), metadata=meta)


def load_optimizer_state(ckpt: str) -> Dict[str, Any]:
    """The optimizer ``state_dict`` that :func:`save_optimizer` wrote into ``ckpt``."""
    from .io import load_safetensors

    path = os.path.join(ckpt, OPTIMIZER_NAME)
    tensors = load_safetensors(path)
    meta = _safetensors_metadata(path)
    osd: Dict[str, Any] = {"step": int(meta.get("step", "0")), "exp_avg": {}, "exp_avg_sq": {}}
    for k, v in meta.items():
        if k in ("format", "step"):
            continue
        try:
            val = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            val = v
        osd[k] = tuple(val) if k == "betas" and isinstance(val, list) else val
    for key, arr in tensors.items():
        kind, _, name = key.partition(".")
        if kind in ("exp_avg", "exp_avg_sq"):
            osd[kind][name] = arr
    return osd


def _safetensors_metadata(path: str) -> Dict[str, str]:
    """The ``__metadata__`` of a safetensors file (its JSON header)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path} is not a safetensors file")
        n = int.from_bytes(head, "little")
        header = json.loads(f.read(n).decode("utf-8"))
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def check_resumable(ckpt: str, weights_name: str) -> None:
    """Raises CheckpointError unless ``ckpt`` holds what resuming reads."""
    for required in (TRAINER_STATE_NAME, weights_name):
        if not os.path.isfile(os.path.join(ckpt, required)):
            raise CheckpointError(f"checkpoint {ckpt} is incomplete: {required} is missing")
    if not os.path.isfile(os.path.join(ckpt, OPTIMIZER_NAME)):
        raise CheckpointError(
            f"checkpoint {ckpt} has no {OPTIMIZER_NAME} (saved with save_only_model=True?): it holds weights "
            "only and cannot be resumed from; load it with Model.from_pretrained instead"
        )


def read_rng_state(ckpt: str) -> Optional[Dict[str, Any]]:
    """``rng_state.json`` of ``ckpt`` (None, with a warning, when it has none)."""
    path = os.path.join(ckpt, RNG_STATE_NAME)
    if not os.path.isfile(path):
        warnings.warn(f"{ckpt} has no {RNG_STATE_NAME}: dropout after resuming will differ from the original run")
        return None
    return read_checkpoint_json(path, _RNG_STATE_TYPES)


def read_loop_state(ckpt: str) -> Optional[Dict[str, Any]]:
    """``loop_state.json`` of ``ckpt`` (None when it has none: older checkpoints)."""
    path = os.path.join(ckpt, LOOP_STATE_NAME)
    return read_checkpoint_json(path, _LOOP_STATE_TYPES) if os.path.isfile(path) else None


def warn_on_changed_args(ckpt: str, now: Dict[str, Any]) -> None:
    """Warns when arguments that shape the run differ from those ``ckpt`` was trained with."""
    path = os.path.join(ckpt, TRAINING_ARGS_NAME)
    if not os.path.isfile(path):
        return
    old = read_checkpoint_json(path, {})
    changed = [k for k in _RESUME_SENSITIVE_ARGS if k in old and old[k] != now.get(k)]
    if changed:
        warnings.warn(
            "resuming with different arguments than the checkpoint was trained with ("
            + ", ".join(f"{k}: {old[k]!r} -> {now.get(k)!r}" for k in changed)
            + "): the run will not continue exactly as the original"
        )
