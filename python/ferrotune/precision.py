"""Matmul precision, PyTorch's way: ``set_float32_matmul_precision``.

``"highest"`` (the default): every product is float32. ``"medium"``: products large enough
to matter (every side >= 16, split across threads) round their operands to bfloat16 and sum in
float32 on CPUs with AVX512_BF16 (``vdpbf16ps``; speed: benchmarks/RESULTS.md); weights,
gradients and optimizer state stay float32. ``"high"`` means TF32 or bf16x3 in PyTorch, which
CPUs do not have: it falls back to ``"highest"``, as PyTorch does there. On a CPU without
AVX512_BF16 ``"medium"`` also stays float32. ``TrainingArguments(bf16=True)`` sets
``"medium"`` for the duration of ``Trainer.train``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from . import _core
from ._core import ConfigError

_PRECISIONS = ("highest", "high", "medium")
_requested = "highest"


def set_float32_matmul_precision(precision: str) -> None:
    """Sets the precision of float32 products: "highest", "high" or "medium" (see the module)."""
    global _requested
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    _core.set_bf16_products(precision == "medium")
    _requested = precision


def get_float32_matmul_precision() -> str:
    return _requested


def bf16_available() -> bool:
    """Whether this CPU runs bf16 products (AVX512_BF16, not disabled by FERROTUNE_CPU=avx2 or =generic)."""
    return _core.cpu_isa() == "avx512+bf16"


def require_bf16(who: str) -> None:
    """ConfigError naming `who` when this CPU cannot run bf16 products."""
    if not bf16_available():
        raise ConfigError(
            f"{who} needs a CPU with AVX512_BF16; this one runs {_core.cpu_isa()!r} kernels "
            "(FERROTUNE_CPU=avx2 or =generic also disables it): train in float32 (bf16=False)"
        )


@contextlib.contextmanager
def bf16_products() -> Iterator[None]:
    """bf16 products inside the block (mixed precision); ConfigError on a CPU without them."""
    require_bf16("bf16 mixed precision")
    before = get_float32_matmul_precision()
    set_float32_matmul_precision("medium")
    try:
        yield
    finally:
        set_float32_matmul_precision(before)
