"""Validation of optimizer hyperparameters: one :class:`~landscape.errors.ConfigError` line each."""

from __future__ import annotations

import numbers
from typing import Any

from landscape.errors import ConfigError


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"optimizer parameter {name} must be a number, got {value!r}")
    return float(value)


def _check_positive(name: str, value: Any) -> None:
    if not _number(name, value) > 0:
        raise ConfigError(f"invalid {name}={value!r}: must be > 0")


def _check_nonnegative(name: str, value: Any) -> None:
    if not _number(name, value) >= 0:
        raise ConfigError(f"invalid {name}={value!r}: must be ≥ 0")


def _check_unit(name: str, value: Any, *, closed: bool) -> None:
    v = _number(name, value)
    ok = 0 <= v <= 1 if closed else 0 <= v < 1
    if not ok:
        raise ConfigError(f"invalid {name}={value!r}: must be in [0, 1{']' if closed else ')'}")


def _check_betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ConfigError(f"invalid betas={betas!r}: must be two numbers in [0, 1)")
    _check_unit("betas[0]", betas[0], closed=False)
    _check_unit("betas[1]", betas[1], closed=False)
    return float(betas[0]), float(betas[1])


def _check_epoch_window(start_epoch: Any, end_epoch: Any) -> None:
    if isinstance(start_epoch, bool) or not isinstance(start_epoch, numbers.Integral) or start_epoch < -1:
        raise ConfigError(f"invalid start_epoch={start_epoch!r}: must be an integer ≥ -1 (epochs, 0-based)")
    if end_epoch is not None and (
        isinstance(end_epoch, bool) or not isinstance(end_epoch, numbers.Integral) or end_epoch <= start_epoch
    ):
        raise ConfigError(f"invalid end_epoch={end_epoch!r}: must be an integer > start_epoch, or null")
