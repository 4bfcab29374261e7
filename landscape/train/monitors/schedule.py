"""When and on what the monitors run: MonitorConfig, parsing, and the MonitorSet the trainer calls."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from landscape.core.data import select
from landscape.core.subsets import fixed_subset
from landscape.errors import ConfigError
from landscape.outputs import OutputFn
from landscape.train.monitors.registry import MONITORS, MonitorInputs, PerSampleLoss


@dataclass(frozen=True)
class MonitorConfig:
    """One monitor and its schedule: called at every step ``s`` with ``s % every == 0`` (step 0,
    before training, included), on ``subset`` samples of the data (all when ``None``; the same
    seeded subset at every call), ``batch_size`` at a time (all at once when ``None``)."""

    name: str
    every: int | None = None
    subset: int | None = None
    batch_size: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = MONITORS[self.name]
        object.__setattr__(self, "name", spec.name)
        if self.every is None:
            object.__setattr__(self, "every", spec.every)
        for key, value in (("every", self.every), ("subset", self.subset), ("batch_size", self.batch_size)):
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"monitor {self.name}: {key} must be an integer ≥ 1, got {value!r}")
        unknown = sorted(set(self.params) - set(spec.defaults))
        if unknown:
            valid = ", ".join(["every", "subset", "batch_size", *spec.defaults])
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)} for monitor {self.name!r}; valid: {valid}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"every": self.every}
        if self.subset is not None:
            out["subset"] = self.subset
        if self.batch_size is not None:
            out["batch_size"] = self.batch_size
        return {**out, **self.params}


def parse_monitor(spec: str | MonitorConfig) -> MonitorConfig:
    """``"lambda_max:every=50,subset=512,steps=30"`` → a :class:`MonitorConfig` (values read as
    JSON when they can be: ``per_layer=true``, ``tol=1e-4``)."""
    if isinstance(spec, MonitorConfig):
        return spec
    name, _, rest = str(spec).partition(":")
    settings: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"monitor settings are KEY=VALUE separated by commas, got {item!r} in {spec!r}")
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip()] = value
    return monitor_from_dict(name.strip(), settings)


def monitor_from_dict(name: str, settings: dict[str, Any]) -> MonitorConfig:
    """A :class:`MonitorConfig` from ``{"every": K, "subset": N, <monitor params>}``."""
    if not isinstance(settings, dict):
        raise ConfigError(f"monitor {name!r}: settings must be a JSON object, got {settings!r}")
    rest = dict(settings)
    common = {k: rest.pop(k) for k in ("every", "subset", "batch_size") if k in rest}
    return MonitorConfig(name, params=rest, **common)


def check_monitors(monitors: Iterable[str | MonitorConfig], model: nn.Module) -> None:
    """Raise the one-line error of the first monitor that cannot measure ``model``."""
    for m in monitors:
        check = MONITORS[parse_monitor(m).name].check
        if check is not None:
            check(model)


def monitors_from_config(monitors: dict[str, dict[str, Any]]) -> list[MonitorConfig]:
    """The monitors of a ``TrainConfig.monitors`` mapping, in order."""
    return [monitor_from_dict(name, settings) for name, settings in monitors.items()]


class MonitorSet:
    """Monitors over fixed data: :meth:`run` at every step, :meth:`state_dict` for resume.

    ``x, y`` are the samples (tensors, or ``x`` a Split / Stream with ``y=None``); ``loss`` maps
    ``(logits, y)`` to one value per sample. A monitor's subset is drawn once, here."""

    def __init__(self, monitors: Iterable[str | MonitorConfig], loss: PerSampleLoss, x: Any,
                 y: torch.Tensor | None = None, *, output_fn: OutputFn | None = None,
                 default_every: int | None = None) -> None:
        configs = [parse_monitor(m) for m in monitors]
        if default_every is not None:
            configs = [MonitorConfig(c.name, default_every, c.subset, c.batch_size, c.params)
                       if not _explicit_every(m) else c for m, c in zip(monitors, configs, strict=True)]
        names = [c.name for c in configs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"monitor(s) {', '.join(twice)} given twice; give each monitor once")
        self.configs = configs
        self.loss = loss
        self.output_fn = output_fn
        self.data: dict[str, tuple[Any, torch.Tensor | None]] = {}
        n = len(x)
        for c in configs:
            if c.subset is not None and c.subset > n:
                raise ConfigError(f"monitor {c.name}: subset={c.subset} but the data hold {n} samples; "
                                  f"use a subset ≤ {n}")
            default = MONITORS[c.name].subset
            size = c.subset if c.subset is not None else (min(default, n) if default is not None else None)
            self.data[c.name] = (x, y) if size is None else select(x, y, fixed_subset(n, size, 0))
        self.states: dict[str, dict[str, Any]] = {c.name: {} for c in configs}
        self._checked: set[int] = set()

    def check(self, model: nn.Module) -> None:
        """Raise the one-line error of the first monitor that cannot measure ``model``."""
        if id(model) not in self._checked:
            check_monitors(self.configs, model)
            self._checked.add(id(model))

    def due(self, step: int) -> bool:
        return any(step % c.every == 0 for c in self.configs)

    def run(self, step: int, model: nn.Module, optimizer: Any = None) -> dict[str, Any]:
        """The values of every monitor due at ``step`` (an empty dict when none is)."""
        self.check(model)
        out: dict[str, Any] = {}
        for c in self.configs:
            if step % c.every:
                continue
            x, y = self.data[c.name]
            inp = MonitorInputs(model, self.loss, x, y, step, optimizer, c.batch_size, self.output_fn)
            out.update(MONITORS[c.name].fn(inp, self.states[c.name], **c.params))
        return out

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """The monitors' states (tensors on the CPU, numbers), for a trainer checkpoint."""
        return {name: {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
                for name, s in self.states.items()}

    def load_state_dict(self, states: dict[str, dict[str, Any]], device: torch.device | None = None) -> None:
        for name in self.states:
            saved = states.get(name, {})
            self.states[name] = {k: (v.to(device) if isinstance(v, torch.Tensor) and device is not None else v)
                                 for k, v in saved.items()}


def _explicit_every(spec: str | MonitorConfig) -> bool:
    if isinstance(spec, MonitorConfig):
        return True
    _, _, rest = str(spec).partition(":")
    return any(item.strip().startswith("every=") for item in rest.split(","))


