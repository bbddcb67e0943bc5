"""Learning-rate schedules with the exact numerics of ``transformers.optimization``.

``transformers`` builds its schedules as ``torch.optim.lr_scheduler.LambdaLR``
objects: the learning rate used by optimizer step ``k`` (0-based) is
``base_lr * lr_lambda(k)``, computed in Python floats.  The functions here are
the same lambdas, so the learning rate at every step is bit-identical to the one
a ``transformers.Trainer`` run with the same arguments uses.

Example::

    >>> from ferrotune.optimization import get_scheduler
    >>> sched = get_scheduler("linear", base_lr=1e-3, num_warmup_steps=2, num_training_steps=10)
    >>> [round(sched(k), 6) for k in range(4)]
    [0.0, 0.0005, 0.001, 0.000875]
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Dict, Optional

from ._core import ConfigError

__all__ = ["LRScheduler", "get_scheduler", "SCHEDULER_TYPES"]


# ---------------------------------------------------------------------------
# The lambdas (multiplicative factors), one per schedule, as in transformers.
# ---------------------------------------------------------------------------


def _constant_lambda(current_step: int) -> float:
    return 1


def _constant_with_warmup_lambda(current_step: int, *, num_warmup_steps: int) -> float:
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1.0, num_warmup_steps))
    return 1.0


def _linear_lambda(current_step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    return max(
        0.0, float(num_training_steps - current_step) / float(max(1, num_training_steps - num_warmup_steps))
    )


def _cosine_lambda(
    current_step: int,
    *,
    num_warmup_steps: int,
    num_training_steps: int,
    num_cycles: float = 0.5,
    min_lr_rate: float = 0.0,
) -> float:
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    progress = float(current_step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    if min_lr_rate == 0.0:
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    factor = factor * (1 - min_lr_rate) + min_lr_rate
    return max(0, factor)


def _cosine_with_restarts_lambda(
    current_step: int, *, num_warmup_steps: int, num_training_steps: int, num_cycles: int = 1
) -> float:
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    progress = float(current_step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))


def _polynomial_lambda(
    current_step: int,
    *,
    num_warmup_steps: int,
    num_training_steps: int,
    lr_end: float,
    power: float,
    lr_init: float,
) -> float:
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    elif current_step > num_training_steps:
        return lr_end / lr_init  # as LambdaLR multiplies by lr_init
    else:
        lr_range = lr_init - lr_end
        decay_steps = num_training_steps - num_warmup_steps
        pct_remaining = 1 - (current_step - num_warmup_steps) / decay_steps
        decay = lr_range * pct_remaining**power + lr_end
        return decay / lr_init  # as LambdaLR multiplies by lr_init


def _inverse_sqrt_lambda(current_step: int, *, num_warmup_steps: int, timescale: int) -> float:
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    shift = timescale - num_warmup_steps
    return 1.0 / math.sqrt((current_step + shift) / timescale)


SCHEDULER_TYPES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
)
"""Names accepted by :func:`get_scheduler` and ``TrainingArguments.lr_scheduler_type``."""

UNSUPPORTED_SCHEDULER_TYPES = {
    "reduce_lr_on_plateau": "it needs metric feedback and is not implemented",
    "cosine_warmup_with_min_lr": "it is not implemented yet",
    "warmup_stable_decay": "it is not implemented yet",
    "greedy": "it is not implemented",
}


def scheduler_name(name: Any) -> str:
    value = getattr(name, "value", name)  # accept enum members such as transformers.SchedulerType
    if not isinstance(value, str):
        raise ConfigError(f"lr_scheduler_type must be a string, got {name!r}")
    return value.lower()


def _build_lambda(
    name: str,
    base_lr: float,
    num_warmup_steps: int,
    num_training_steps: Optional[int],
    kwargs: Dict[str, Any],
) -> Callable[[int], float]:
    def need_total() -> int:
        if num_training_steps is None:
            raise ConfigError(f"the {name!r} schedule requires num_training_steps")
        return int(num_training_steps)

    def check_kwargs(allowed: tuple) -> None:
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ConfigError(
                f"unknown lr_scheduler_kwargs for {name!r}: {unknown}; accepted: {list(allowed) or 'none'}"
            )

    if name == "constant":
        check_kwargs(())
        return _constant_lambda
    if name == "constant_with_warmup":
        check_kwargs(())
        return partial(_constant_with_warmup_lambda, num_warmup_steps=num_warmup_steps)
    if name == "linear":
        check_kwargs(())
        return partial(_linear_lambda, num_warmup_steps=num_warmup_steps, num_training_steps=need_total())
    if name == "cosine":
        check_kwargs(("num_cycles",))
        return partial(
            _cosine_lambda,
            num_warmup_steps=num_warmup_steps,
            num_training_steps=need_total(),
            num_cycles=kwargs.get("num_cycles", 0.5),
        )
    if name == "cosine_with_restarts":
        check_kwargs(("num_cycles",))
        return partial(
            _cosine_with_restarts_lambda,
            num_warmup_steps=num_warmup_steps,
            num_training_steps=need_total(),
            num_cycles=kwargs.get("num_cycles", 1),
        )
    if name == "polynomial":
        check_kwargs(("lr_end", "power"))
        lr_end = kwargs.get("lr_end", 1e-7)
        if not base_lr > lr_end:
            raise ConfigError(f"lr_end ({lr_end}) must be smaller than initial lr ({base_lr})")
        return partial(
            _polynomial_lambda,
            num_warmup_steps=num_warmup_steps,
            num_training_steps=need_total(),
            lr_end=lr_end,
            power=kwargs.get("power", 1.0),
            lr_init=base_lr,
        )
    if name == "inverse_sqrt":
        check_kwargs(("timescale",))
        timescale = kwargs.get("timescale")
        if timescale is None:
            timescale = num_warmup_steps or 10_000
        return partial(_inverse_sqrt_lambda, num_warmup_steps=num_warmup_steps, timescale=timescale)
    if name == "cosine_with_min_lr":
        check_kwargs(("num_cycles", "min_lr", "min_lr_rate"))
        min_lr = kwargs.get("min_lr")
        min_lr_rate = kwargs.get("min_lr_rate")
        if min_lr is not None and min_lr_rate is not None:
            raise ConfigError("cosine_with_min_lr: only one of min_lr or min_lr_rate may be set")
        if min_lr is not None:
            min_lr_rate = min_lr / base_lr
        elif min_lr_rate is None:
            raise ConfigError("cosine_with_min_lr needs min_lr or min_lr_rate in lr_scheduler_kwargs")
        return partial(
            _cosine_lambda,
            num_warmup_steps=num_warmup_steps,
            num_training_steps=need_total(),
            num_cycles=kwargs.get("num_cycles", 0.5),
            min_lr_rate=min_lr_rate,
        )
    if name in UNSUPPORTED_SCHEDULER_TYPES:
        raise ConfigError(f"lr_scheduler_type={name!r} is not supported: {UNSUPPORTED_SCHEDULER_TYPES[name]}")
    raise ConfigError(f"unknown lr_scheduler_type {name!r}; supported: {', '.join(SCHEDULER_TYPES)}")


class LRScheduler:
    """A learning-rate schedule: ``sched(step)`` is the learning rate of optimizer step ``step``.

    Steps are 0-based, like ``LambdaLR.last_epoch``: the first optimizer step
    uses ``sched(0)``.  The object is stateless (the trainer's ``global_step``
    is the state), and :meth:`state_dict` describes it for ``scheduler.json``.
    """

    def __init__(
        self,
        name: str,
        base_lr: float,
        num_warmup_steps: int = 0,
        num_training_steps: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        self.name = scheduler_name(name)
        self.base_lr = float(base_lr)
        if num_warmup_steps is None:
            num_warmup_steps = 0
        if num_warmup_steps < 0:
            raise ConfigError(f"num_warmup_steps must be >= 0, got {num_warmup_steps}")
        self.num_warmup_steps = int(num_warmup_steps)
        self.num_training_steps = None if num_training_steps is None else int(num_training_steps)
        self.kwargs: Dict[str, Any] = dict(kwargs)
        self.lr_lambda = _build_lambda(
            self.name, self.base_lr, self.num_warmup_steps, self.num_training_steps, self.kwargs
        )

    def factor(self, step: int) -> float:
        """The multiplicative factor ``lr_lambda(step)``."""
        return self.lr_lambda(int(step))

    def __call__(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): ``base_lr * lr_lambda(step)``."""
        return self.base_lr * self.lr_lambda(int(step))

    lr_at = __call__

    def state_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "base_lr": self.base_lr,
            "num_warmup_steps": self.num_warmup_steps,
            "num_training_steps": self.num_training_steps,
            "kwargs": dict(self.kwargs),
        }

    @classmethod
    def from_state_dict(cls, sd: Dict[str, Any]) -> "LRScheduler":
        return cls(
            sd["name"],
            base_lr=sd["base_lr"],
            num_warmup_steps=sd.get("num_warmup_steps", 0),
            num_training_steps=sd.get("num_training_steps"),
            **sd.get("kwargs", {}),
        )

    def __repr__(self) -> str:
        return (
            f"LRScheduler(name={self.name!r}, base_lr={self.base_lr}, num_warmup_steps={self.num_warmup_steps}, "
            f"num_training_steps={self.num_training_steps}, kwargs={self.kwargs})"
        )


def get_scheduler(
    name: str,
    base_lr: float,
    num_warmup_steps: Optional[int] = 0,
    num_training_steps: Optional[int] = None,
    **kwargs: Any,
) -> LRScheduler:
    """Build the schedule ``name`` (a ``lr_scheduler_type`` value).

    Args:
        name: one of :data:`SCHEDULER_TYPES` (``"linear"``, ``"cosine"``,
            ``"cosine_with_restarts"``, ``"polynomial"``, ``"constant"``,
            ``"constant_with_warmup"``, ``"inverse_sqrt"``, ``"cosine_with_min_lr"``).
        base_lr: the peak learning rate (``TrainingArguments.learning_rate``).
        num_warmup_steps: linear warm-up length, in optimizer steps.
        num_training_steps: total optimizer steps (needed by the decaying schedules).
        **kwargs: schedule options, as ``lr_scheduler_kwargs`` in transformers:
            ``num_cycles`` (cosine, cosine_with_restarts), ``lr_end``/``power``
            (polynomial), ``timescale`` (inverse_sqrt), ``min_lr``/``min_lr_rate``
            (cosine_with_min_lr).

    Returns:
        an :class:`LRScheduler`; ``sched(k)`` is the learning rate of step ``k``.
    """
    return LRScheduler(name, base_lr, num_warmup_steps or 0, num_training_steps, **kwargs)
