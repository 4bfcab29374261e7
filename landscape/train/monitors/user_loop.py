"""Monitors in a training loop the toolkit did not write: ls.Monitor."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.batch import forward
from landscape.core.data import samples_args
from landscape.core.loss import task_loss
from landscape.errors import ConfigError
from landscape.outputs import OutputFn, logits_of
from landscape.tasks import get_task
from landscape.train.monitors.schedule import (
    MonitorConfig,
    MonitorSet,
)
from landscape.user_data import as_dataset


class Monitor:
    """Monitors for a training loop the toolkit did not write.

    >>> mon = ls.Monitor(model, nn.CrossEntropyLoss(), (x, y), ["lambda_max", "grad_norm"],
    ...                  every=50, out="my_metrics.jsonl")
    >>> for step in range(1, steps + 1):
    ...     ...; optimizer.step()
    ...     mon.step(step, optimizer)      # writes {"step", "lr", <values>} when a monitor is due

    ``data`` and ``loss`` are taken as :mod:`landscape.facade` takes them (tensors / arrays, a
    Dataset, a DataLoader, dict batches; a per-sample or mean loss; ``task=``). ``every``
    schedules the monitors named without their own ``every=``. ``out`` (optional) receives one
    JSON line per call that measured something; an existing non-empty file is kept and refused
    unless ``append=True``. :meth:`state_dict` / :meth:`load_state_dict` carry the warm-start
    vectors across a restart of the user's loop.
    """

    def __init__(self, model: nn.Module, loss: Callable, data: Any, monitors: Sequence[str | MonitorConfig],
                 every: int | None = None, out: str | Path | None = None, *, append: bool = False,
                 task: str = "classification", target_key: str = "labels",
                 output_fn: OutputFn | None = None) -> None:

        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(monitors, str):
            monitors = [monitors]
        t = get_task(task)
        dataset = as_dataset(data, None, target_key=target_key, task=t)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        train = dataset.train.to(device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                first = dataset.train.take(torch.arange(min(2, len(dataset.train)))).to(device)
                logits = logits_of(forward(model, first.x), output_fn)
        finally:
            model.train(was_training)
        per_sample = task_loss(loss, logits, first.y, t, dataset)
        x, y = samples_args(train)
        self.model = model
        self.monitors = MonitorSet(monitors, per_sample, x, y, output_fn=output_fn, default_every=every)
        self.monitors.check(model)
        self.out = Path(out) if out is not None else None
        if self.out is not None:
            if self.out.is_dir():
                raise ConfigError(f"monitor output {self.out} is a directory; name a file")
            if self.out.is_file() and self.out.stat().st_size and not append:
                raise ConfigError(f"{self.out} already holds records; pass append=True to add to it, "
                                  "or name another file")
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.touch()

    def step(self, step: int, optimizer: Any = None) -> dict[str, Any] | None:
        """Measure the monitors due at ``step`` (call it after ``optimizer.step()``); the record
        written, or ``None`` when no monitor was due."""
        if not self.monitors.due(step):
            return None
        values = self.monitors.run(step, self.model, optimizer)
        record: dict[str, Any] = {"step": step}
        if optimizer is not None and getattr(optimizer, "param_groups", None):
            record["lr"] = optimizer.param_groups[0]["lr"]
        record.update(values)
        if self.out is not None:
            with open(self.out, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        return record

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return self.monitors.state_dict()

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> None:
        device = next((p.device for p in self.model.parameters()), None)
        self.monitors.load_state_dict(states, device)
