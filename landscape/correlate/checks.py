"""The checks every score makes of its input: equal lengths, ≥ 2 runs, finite values, known axes and keys (one-line :class:`~landscape.errors.ConfigError`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from landscape.errors import ConfigError

# --------------------------------------------------------------------------- validation


def _vector(x: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name} must be a 1-D array of numbers ({e})") from None
    if a.ndim != 1:
        raise ConfigError(f"{name} must be 1-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ConfigError(f"{name} has a NaN or infinite value (run {bad}); drop or fix that run")
    return a


def _pair(measure: Any, gap: Any) -> tuple[np.ndarray, np.ndarray]:
    m, g = _vector(measure, "measure"), _vector(gap, "gap")
    if m.shape != g.shape:
        raise ConfigError(f"measure has {m.size} runs but gap has {g.size}; they must match")
    if m.size < 2:
        raise ConfigError(f"need at least 2 runs to correlate, got {m.size}")
    return m, g


def _check_records(records: Sequence[Mapping], keys: Sequence[str]) -> None:
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise ConfigError("records must be a list of dicts, one per run")
    if len(records) < 2:
        raise ConfigError(f"need at least 2 runs (records), got {len(records)}")
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ConfigError(f"record {i} is a {type(r).__name__}, not a dict")
        for k in keys:
            if k not in r:
                known = ", ".join(sorted(map(str, r))) or "none"
                raise ConfigError(f"unknown key or axis {k!r} (record {i} has: {known})")


def _check_axes(axes: Sequence[str], measure: str, gap: str) -> list[str]:
    if isinstance(axes, str):
        axes = [axes]
    axes = list(axes)
    if not axes:
        raise ConfigError("axes is empty; name at least one hyper-parameter axis")
    if len(set(axes)) != len(axes):
        raise ConfigError(f"axes has duplicates: {axes}")
    for a in axes:
        if a in (measure, gap):
            raise ConfigError(f"axis {a!r} is also the measure or the gap key")
    return axes


def _key(v: Any) -> Hashable:
    """A hashable stand-in for a hyper-parameter value (lists → tuples, else repr)."""
    if isinstance(v, Hashable):
        return v
    if isinstance(v, (list, tuple)):
        return tuple(_key(x) for x in v)
    return repr(v)


def _columns(
    records: Sequence[Mapping], measure: str, gap: str, axes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    _check_records(records, [*axes, measure, gap])
    m = _vector([r[measure] for r in records], f"measure {measure!r}")
    g = _vector([r[gap] for r in records], f"gap {gap!r}")
    return m, g
