"""Learning-rate schedules as :class:`~torch.optim.lr_scheduler.LambdaLR` multipliers.

A schedule is a callable ``f(t)`` of the number ``t`` of optimizer steps
already taken; the learning rate of step ``t`` (0-based) is ``base_lr · f(t)``.
The trainer steps the scheduler once per optimizer step. Every schedule takes
an optional linear warmup from 0:

.. math::
    f(t) = \\min(1, t / t_w) \\cdot s(t),

with ``t_w = warmup_steps`` (no warmup when 0), so step 0 runs at lr 0 and
step ``t_w`` at the full rate. The decay ``s`` of ``cosine`` and ``linear``
runs over ``[t_w, T]`` (``T = total_steps``) and stays at its final value after
``T``. Schedules are callable objects, so ``LambdaLR.state_dict`` stores their
parameters (plain numbers and lists; loads with ``weights_only=True``).

For the sharpness-aware optimizers the scheduler is attached to the wrapper,
whose ``param_groups`` are the base optimizer's, so the base optimizer's
learning rate follows the schedule.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from landscape.errors import ConfigError
from landscape.registry import Registry

__all__ = ["SCHEDULES", "Constant", "Cosine", "Linear", "Step", "build_schedule"]


class Schedule:
    """Base: the warmup factor times the decay :meth:`factor`."""

    def __init__(self, *, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0) -> None:
        self.total_steps = int(total_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_steps = int(warmup_steps)

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def progress(self, step: int) -> float:
        """Fraction of the decay phase ``[t_w, T]`` done at ``step``, clamped to [0, 1]."""
        span = self.total_steps - self.warmup_steps
        return min(1.0, max(0.0, (step - self.warmup_steps) / span)) if span > 0 else 1.0

    def __call__(self, step: int) -> float:
        warm = min(1.0, step / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return warm * self.factor(step)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({inner})"


SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


@SCHEDULES.register("constant")
class Constant(Schedule):
    """``s(t) = 1``."""

    def factor(self, step: int) -> float:
        return 1.0


@SCHEDULES.register("step", "multistep")
class Step(Schedule):
    """``s(t) = γ^k``, ``k`` = number of milestones ``≤ t``.

    ``milestones`` are fractions of training (``0 < m < 1`` → step
    ``round(m·T)``) or epochs (whole numbers ``≥ 1`` → step
    ``m · steps_per_epoch``, the first step of that epoch) with ``unit="auto"``;
    ``unit`` = ``"fraction"``, ``"epoch"`` or ``"step"`` forces one reading.
    """

    def __init__(
        self,
        *,
        total_steps: int,
        steps_per_epoch: int,
        warmup_steps: int = 0,
        milestones: Sequence[float] = (0.5, 0.75),
        gamma: float = 0.1,
        unit: str = "auto",
    ) -> None:
        super().__init__(
            total_steps=total_steps, steps_per_epoch=steps_per_epoch, warmup_steps=warmup_steps
        )
        if not isinstance(gamma, numbers.Real) or isinstance(gamma, bool) or not gamma > 0:
            raise ConfigError(f"invalid gamma={gamma!r} for the step schedule: must be > 0")
        if unit not in ("auto", "fraction", "epoch", "step"):
            raise ConfigError(
                f"invalid unit={unit!r} for the step schedule; valid: auto, fraction, epoch, step"
            )
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
            raise ConfigError(f"milestones must be a list of numbers, got {milestones!r}")
        self.gamma = float(gamma)
        self.milestones = [float(m) for m in _numbers("milestones", milestones)]
        self.unit = unit
        self.milestone_steps = sorted(self._to_step(m) for m in self.milestones)

    def _to_step(self, m: float) -> int:
        unit = self.unit
        if unit == "auto":
            if 0 < m < 1:
                unit = "fraction"
            elif m >= 1 and m == int(m):
                unit = "epoch"
            else:
                raise ConfigError(
                    f"milestone {m!r} is neither a fraction of training (0 < m < 1) nor an epoch "
                    "(whole number ≥ 1); set unit= to say which"
                )
        if unit == "fraction":
            if not 0 <= m <= 1:
                raise ConfigError(f"fraction milestone {m!r} must be in [0, 1]")
            return round(m * self.total_steps)
        if m < 0 or m != int(m):
            raise ConfigError(f"{unit} milestone {m!r} must be a whole number ≥ 0")
        return int(m) * (self.steps_per_epoch if unit == "epoch" else 1)

    def factor(self, step: int) -> float:
        return self.gamma ** sum(1 for s in self.milestone_steps if s <= step)


class _DecayToMinimum(Schedule):
    """A decay over ``[t_w, T]`` to the factor ``min_lr`` (shared by cosine and linear)."""

    def __init__(
        self, *, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0, min_lr: float = 0.0
    ) -> None:
        super().__init__(
            total_steps=total_steps, steps_per_epoch=steps_per_epoch, warmup_steps=warmup_steps
        )
        self.min_lr = _factor("min_lr", min_lr)


@SCHEDULES.register("cosine")
class Cosine(_DecayToMinimum):
    """``s(t) = m + (1 − m)·½(1 + cos(π p))``, ``p`` = progress over ``[t_w, T]``, ``m = min_lr`` (a factor)."""

    def factor(self, step: int) -> float:
        return self.min_lr + (1.0 - self.min_lr) * 0.5 * (
            1.0 + math.cos(math.pi * self.progress(step))
        )


@SCHEDULES.register("linear")
class Linear(_DecayToMinimum):
    """``s(t) = 1 − (1 − m)·p``, ``p`` = progress over ``[t_w, T]``, ``m = min_lr`` (a factor)."""

    def factor(self, step: int) -> float:
        return 1.0 - (1.0 - self.min_lr) * self.progress(step)


def _numbers(name: str, values: Sequence[Any]) -> list[float]:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ConfigError(f"{name} must be numbers, got {v!r}")
    return [float(v) for v in values]


def _factor(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ConfigError(f"invalid {name}={value!r}: must be a factor of the base lr in [0, 1]")
    return float(value)


def _whole(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"invalid {name}={value!r}: must be a whole number ≥ {minimum}")
    return int(value)


def build_schedule(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_steps: int = 0,
    **params: Any,
) -> LambdaLR:
    """A :class:`LambdaLR` for ``optimizer``, to be stepped once per optimizer step."""
    cls = SCHEDULES[name]
    canonical = SCHEDULES.canonical(name)
    total_steps = _whole("total_steps", total_steps, 1)
    steps_per_epoch = _whole("steps_per_epoch", steps_per_epoch, 1)
    warmup_steps = _whole("warmup_steps", warmup_steps, 0)
    if warmup_steps > total_steps:
        raise ConfigError(f"warmup_steps={warmup_steps} exceeds total_steps={total_steps}")
    if canonical in ("cosine", "linear") and warmup_steps == total_steps and warmup_steps > 0:
        raise ConfigError(
            f"the {canonical} schedule needs warmup_steps < total_steps (got both = {total_steps})"
        )
    fixed = {"total_steps", "steps_per_epoch", "warmup_steps"}
    accepted = [
        n for n in inspect.signature(cls.__init__).parameters if n != "self" and n not in fixed
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for schedule "
            f"{canonical}; accepted: {', '.join(accepted) or '(none)'}"
        )
    schedule = cls(
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=warmup_steps,
        **params,
    )
    return LambdaLR(optimizer, schedule)
