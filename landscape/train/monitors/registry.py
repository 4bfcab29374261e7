"""The monitor registry: what a monitor reads (MonitorInputs), how it is declared (register_monitor)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from landscape.core.data import iter_batches
from landscape.core.kernel import logits_at
from landscape.outputs import OutputFn
from landscape.params import model_state, select_parameters
from landscape.registry import Registry

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MonitorInputs:
    """What a monitor reads at one call: the samples are ``(x, y)`` tensors, or ``x`` a
    ``Split`` / :class:`~landscape.core.data.Stream` with ``y=None``."""

    model: nn.Module
    loss: PerSampleLoss
    x: Any
    y: torch.Tensor | None
    step: int
    optimizer: Any = None
    batch_size: int | None = None
    output_fn: OutputFn | None = None

    def batches(self) -> Iterator[tuple[Any, torch.Tensor]]:
        yield from iter_batches(self.x, self.y, self.batch_size)


MonitorFn = Callable[[MonitorInputs, dict[str, Any]], dict[str, float]]


@dataclass(frozen=True)
class MonitorSpec:
    """A registered monitor: ``fn(inputs, state, **params) -> {key: number}``, its parameters'
    defaults, its default schedule and its cost (in words)."""

    name: str
    fn: Callable[..., dict[str, float]]
    cost: str
    defaults: dict[str, Any] = field(default_factory=dict)
    every: int = 1
    subset: int | None = None
    check: Callable[[nn.Module], None] | None = None


MONITORS: Registry[MonitorSpec] = Registry("monitor")


def register_monitor(name: str, cost: str, every: int = 1, subset: int | None = None,
                     check: Callable[[nn.Module], None] | None = None, **defaults: Any):
    """Decorator: ``@register_monitor("grad_norm", "one forward + backward pass")``. ``subset``:
    the default number of samples (all when ``None``); ``check(model)`` raises a one-line
    :class:`ConfigError` when the monitor cannot measure this model (called before the first
    measurement)."""

    def decorator(fn: Callable[..., dict[str, float]]):
        MONITORS.register(name)(MonitorSpec(name, fn, cost, dict(defaults), every, subset, check))
        return fn

    return decorator





def _flat_weights(model: nn.Module) -> tuple[torch.Tensor, Any]:
    layout = select_parameters(model)
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1) for n in layout.names]), layout


def _logits(inp: MonitorInputs) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    state = model_state(inp.model)
    with torch.no_grad():
        for xb, yb in inp.batches():
            yield logits_at(inp.model, state, xb, bn_mode="eval", output_fn=inp.output_fn), yb


