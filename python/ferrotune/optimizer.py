"""AdamW with torch.optim.AdamW's numerics, fused in Rust and applied in place."""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import numpy as np

from . import _core
from ._core import CheckpointError
from .modeling import ArrayLike, Model, training_call


class AdamW:
    """``torch.optim.AdamW`` for a ferrotune model.

    Every parameter decays by default (like torch); ``no_decay`` lists parameter names that
    do not (the Trainer passes biases and LayerNorm weights, like transformers).

    >>> opt = AdamW(model, lr=1e-3)
    >>> loss = model.forward_backward(input_ids); opt.step(); model.zero_grad()
    """

    def __init__(
        self,
        model: Model,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        no_decay: Iterable[str] = (),
    ) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"AdamW expects a ferrotune.Model, got {type(model).__name__}")
        beta1, beta2 = (float(b) for b in betas)
        self.model = model
        self.eps = float(eps)
        self.betas = (beta1, beta2)
        self.weight_decay = float(weight_decay)
        self.no_decay = sorted(set(no_decay))
        self._core = _core.AdamW(model._core, float(lr), beta1, beta2, self.eps, self.weight_decay, self.no_decay)
        self.grad_norm: Optional[float] = None
        """The global L2 norm of the gradients of the last ``backward_step``."""

    def step(self) -> None:
        """Applies one update from the gradients accumulated in the model."""
        self._core.step()

    def backward_step(
        self,
        input_ids: ArrayLike,
        labels: Optional[ArrayLike] = None,
        attention_mask: Optional[ArrayLike] = None,
        num_items_in_batch: Optional[int] = None,
        reduce_gradients: Optional[Callable[[np.ndarray], object]] = None,
    ) -> float:
        """Forward, backward and one update, the update fused into the backward
        (torchtune's ``optimizer_in_bwd``): each transformer block's gradients go into the
        moments as soon as its backward is done, so the model never holds a whole gradient
        (peak memory: benchmarks/RESULTS.md). The same parameters as ``model.forward_backward(...)``
        then ``step()``, bit for bit; returns the batch's mean loss and sets ``grad_norm`` (the
        gradients' global L2 norm). The model's gradients are released (``model.gradients()``
        reads zeros after it).

        No clipping and no accumulation over micro-batches: both need the whole gradient
        (use ``forward_backward`` + ``clip_grad_norm`` + ``step`` for them). Non-finite
        gradients raise :class:`ferrotune.NonFiniteError` with no parameter updated; the blocks
        folded before the first non-finite one keep their moments' update (it cannot be
        undone), which the message says.

        ``reduce_gradients(g)`` is called on each block's final gradients, then on those outside
        the blocks, before they are folded: ``g`` is a float32 array over the step's own memory,
        to change in place and valid only during the call (data-parallel training sums it over
        the ranks there: :func:`ferrotune.distributed.all_reduce_array`).

        >>> loss = opt.backward_step(input_ids)   # instead of forward_backward; step; zero_grad
        """
        fn = self._core.backward_step
        if reduce_gradients is not None:
            fn = functools.partial(fn, reduce_gradients=reduce_gradients)
        loss, (self.grad_norm,) = training_call(self.model, fn, input_ids, labels, attention_mask, num_items_in_batch)
        return loss

    @property
    def lr(self) -> float:
        return self._core.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._core.lr = float(value)

    @property
    def step_count(self) -> int:
        return self._core.step_count

    def state_dict(self) -> Dict[str, Any]:
        step, moments = self._core.moments()
        return {
            "step": step,
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "no_decay": list(self.no_decay),
            "exp_avg": {name: m for name, m, _ in moments},
            "exp_avg_sq": {name: v for name, _, v in moments},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        absent = [k for k in ("step", "exp_avg", "exp_avg_sq") if k not in state]
        if absent:
            raise CheckpointError(f"optimizer state is missing {', '.join(map(repr, absent))} (has {sorted(state)})")
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        missing = set(exp_avg) ^ set(exp_avg_sq)
        if missing:
            raise CheckpointError(f"optimizer state has exp_avg and exp_avg_sq for different parameters: {sorted(missing)}")
        moments = [
            (name, np.ascontiguousarray(exp_avg[name], np.float32), np.ascontiguousarray(exp_avg_sq[name], np.float32))
            for name in exp_avg
        ]
        self._core.load_moments(int(state["step"]), moments)
        if "lr" in state:
            self.lr = state["lr"]

    def __repr__(self) -> str:
        return (
            f"AdamW(lr={self.lr}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay}, "
            f"no_decay={len(self.no_decay)} parameters, step={self.step_count})"
        )
