"""Where a chunked probe's chunks run: the run layer's side of
:meth:`landscape.probes.base.ProbeContext.map_chunks`.

A chunked probe (the surface) runs in the process that stores its results, so that each chunk is
saved as it comes back and an interrupted run resumes from what was saved, whatever the executor.
Its chunks go through :func:`landscape.executors.map_unordered` on the executor analyze chose
(``process``, ``ray``), or, under ``local``, on the warm process pool with as many workers as the
probe's own ``workers`` setting asks for (in this process when that is 1). A worker rebuilds the
probe's context from the task's identity (checkpoint, model spec, data spec: the data and model
loaded once per worker) and reads the shared tensors from a file the parent wrote beside the
results (``torch.save`` of plain tensors, read with ``weights_only=True``, deleted at the end).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import torch

from landscape.analyze.compute import _worker_caches, keep_global_rng, probe_context
from landscape.analyze.tasks import ChunkTask, ProbeTask
from landscape.executors import map_unordered
from landscape.probes import ProbeContext

Runner = Callable[[ProbeContext, Callable[..., Any], dict[str, Any], list[Any], int], Iterator[tuple[int, Any]]]


def chunk_runner(task: ProbeTask, scope: str, folder: Path, *, executor: str = "local",
                 workers: int | None = None, address: str | None = None) -> Runner:
    """The ``chunk_runner`` of ``task``'s probe context: its chunks on ``executor`` (``local``: on
    the process pool of the probe's own ``workers``, or here when that is 1 or there is one chunk),
    the shared tensors saved under ``folder`` while they run."""

    def run(ctx: ProbeContext, fn: Callable[..., Any], shared: dict[str, Any], items: list[Any],
            probe_workers: int) -> Iterator[tuple[int, Any]]:
        where, n = (executor, workers) if executor != "local" else ("process", probe_workers)
        if (executor == "local" and probe_workers <= 1) or len(items) <= 1:
            for index, item in enumerate(items):
                yield index, fn(ctx, shared, item)
            return
        path = folder / f".{task.probe}-chunks-{uuid.uuid4().hex}.pt"
        torch.save(shared, path)
        try:
            tasks = [ChunkTask(task, scope, str(path), fn, item) for item in items]
            gpus = 1.0 if torch.device(task.device).type == "cuda" else 0.0
            with closing(map_unordered(_run_chunk, tasks, executor=where, workers=n, address=address,
                                       gpus_per_task=gpus)) as outputs:
                yield from outputs
        finally:
            path.unlink(missing_ok=True)

    return run


def _run_chunk(task: ChunkTask) -> Any:
    """One chunk, in a worker: ``task.fn(ctx, shared, item)`` with the probe's context rebuilt here
    and the shared tensors read once per worker and call (the latest kept)."""
    caches = _worker_caches(task.scope)
    held = caches.get("chunks")
    if held is None or held[0] != task.shared:
        dev = torch.device(task.probe.device)
        with keep_global_rng(dev):
            ctx = probe_context(task.probe, dev, caches, None)
        caches["chunks"] = None  # the previous call's tensors go first
        shared = torch.load(task.shared, map_location=dev, weights_only=True)
        caches["chunks"] = held = (task.shared, ctx, shared)
    _, ctx, shared = held
    return task.fn(ctx, shared, task.item)
