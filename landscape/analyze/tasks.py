"""The units of work analyze hands out: picklable identities of what to compute, for this
process, a worker process or a Ray task alike (plain data: a worker rebuilds everything from
them, reading files, never writing them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from landscape.checkpoints import ModelSpec
from landscape.targets import DataSpec, Target


@dataclass(frozen=True)
class ProbeTask:
    """One (checkpoint, probe) computation, picklable for worker processes and Ray."""

    target: Target
    probe: str
    cfg: Any
    device: str
    model_spec: ModelSpec | None = None
    data_spec: DataSpec | None = None
    allow_outside_links: bool = False


@dataclass(frozen=True)
class CheckpointTask:
    """Every pending probe of one checkpoint, for one worker, which loads its data and model once.
    ``scope``: the data's identity (:func:`landscape.targets.data_identity`): what a worker has
    loaded serves only tasks of the same data (its pool outlives one analysis)."""

    probes: tuple[ProbeTask, ...]
    scope: str


@dataclass(frozen=True)
class ChunkTask:
    """One chunk of a chunked probe's work (:meth:`~landscape.probes.base.ProbeContext.map_chunks`)
    for a worker: the probe's identity (``probe``: checkpoint, model, data, config), where the
    tensors every chunk shares were saved (``shared``: a file the parent writes and deletes),
    the probe module's function ``fn`` and its ``item``. ``scope`` as :class:`CheckpointTask`'s."""

    probe: ProbeTask
    scope: str
    shared: str
    fn: Callable[..., Any]
    item: Any
