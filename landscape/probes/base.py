"""What every probe shares: the context it runs in, and the registry that names it.

A probe is a function ``run(ctx, cfg) -> dict`` plus a frozen config dataclass. The dict holds
arrays and scalars (nested dicts become HDF5 subgroups); the probe never opens a file —
:mod:`landscape.analyze` and :mod:`landscape.store` do the I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.core.subsets import fixed_subset, parse_splits
from landscape.datasets import Dataset, Split
from landscape.errors import ConfigError
from landscape.registry import Registry

__all__ = ["PROBES", "Probe", "ProbeContext", "fixed_subset", "make_config", "parse_splits", "register_probe"]


@dataclass
class ProbeContext:
    """A loaded checkpoint: the model (on ``device``), the per-sample loss, and the data.

    ``loss(logits, y)`` receives :func:`landscape.outputs.logits_of` of the model's output (a
    tensor, a tuple's first element, or ``.logits``), or ``output_fn(output)`` when given."""

    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    data: Dataset
    device: torch.device
    advance: Callable[[int], None] = lambda n: None  # progress: n units of work done so far
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the probes of one checkpoint
    run_cache: dict[str, Any] = field(default_factory=dict)  # shared across checkpoints of one run
    run_dir: Path | None = None  # the RUN_DIR the checkpoint belongs to, if any
    partial: dict[str, Any] | None = None  # results of an interrupted run with the same settings
    save_partial: Callable[[dict[str, Any]], None] = lambda arrays: None  # record work done so far
    resolve_checkpoint: Callable[[str], dict[str, torch.Tensor]] | None = None  # another checkpoint's tensors
    # the run's checkpoints as the tensors a direction of a kind perturbs, with their steps (RUN_DIR only)
    load_trajectory: Callable[[str], tuple[list[dict[str, torch.Tensor]], list[int]]] | None = None
    output_fn: Callable[[Any], torch.Tensor] | None = None  # model output → logits (see landscape.outputs)
    features_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None  # (model, x) → features [N, D]

    def split(self, name: str) -> Split:
        table = {"train": self.data.train, "test": self.data.test}
        if name not in table:
            raise ConfigError(f"unknown split {name!r}; use train or test")
        return table[name]


@dataclass(frozen=True)
class Probe:
    name: str
    config: type
    run: Callable[[ProbeContext, Any], dict[str, Any]]
    summary: tuple[str, ...] = ()  # result keys worth a column in a summary table


PROBES: Registry[Probe] = Registry("probe")


def register_probe(name: str, config: type, summary: tuple[str, ...] = ()):
    """Decorator: ``@register_probe("hessian", HessianConfig)`` on ``run(ctx, cfg)``."""

    def decorator(run: Callable[[ProbeContext, Any], dict[str, Any]]):
        PROBES.register(name)(Probe(name, config, run, summary))
        return run

    return decorator


def make_config(probe: str, **settings: Any) -> Any:
    """Build a probe's config from keyword settings; unknown keys fail with the valid ones."""
    cls = PROBES[probe].config
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} for probe {probe!r}; valid: {', '.join(names)}")
    return cls(**settings)
