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

A context made in memory (the façade's, from the user's own model, loss and data) has no identity
to rebuild from: :func:`context_runner` sends the chunks to the warm process pool with a pickled
copy of what built it (in memory, never a file), rebuilt once per worker and call, or keeps them
here, with an :class:`InProcessWarning`, when that copy cannot be made or read in a worker.
"""

from __future__ import annotations

import io
import pickle
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from types import FunctionType
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


# ---- chunks of a context built in memory (the façade) ------------------------------------------


class InProcessWarning(UserWarning):
    """Chunks asked to run on worker processes ran in this process instead (why: the message)."""


@dataclass(frozen=True)
class _BuiltChunk:
    """One chunk of a context built in memory, for a worker: ``payload`` is ``pickle`` of
    ``(build, parts, shared)`` (made once per call, sent with every chunk, unpickled once per worker
    and call: ``token`` names the call), the probe module's ``fn`` and its ``item``."""

    token: str
    payload: bytes
    fn: Callable[..., Any]
    item: Any


@dataclass(frozen=True)
class _NotBuilt:
    """What a worker returns when it cannot rebuild the context (the chunk then runs here)."""

    reason: str


def context_runner(build: Callable[..., ProbeContext], parts: tuple[Any, ...], what: str = "the probe") -> Runner:
    """The ``chunk_runner`` of a context made in this process by ``build(*parts)`` (the façade's,
    from the user's model, loss and data): with the probe's ``workers`` > 1 and more than one chunk,
    the chunks run on the warm process pool, each worker rebuilding the context once per call by
    ``build(*parts)`` from a pickled copy (in memory); else here. Parts that cannot be pickled or
    rebuilt in a worker (a lambda, a class of an interactive session, a generator) leave the chunks
    here, said once by an :class:`InProcessWarning`."""

    def run(ctx: ProbeContext, fn: Callable[..., Any], shared: dict[str, Any], items: list[Any],
            probe_workers: int) -> Iterator[tuple[int, Any]]:
        if probe_workers <= 1 or len(items) <= 1:
            yield from _here(ctx, fn, shared, items, range(len(items)))
            return
        try:
            payload = _dumps((build, parts, shared))
        except Exception as exc:  # whatever pickle raises for an object it cannot take
            _say_here(what, probe_workers, exc)
            yield from _here(ctx, fn, shared, items, range(len(items)))
            return
        token = uuid.uuid4().hex
        tasks = [_BuiltChunk(token, payload, fn, item) for item in items]
        said = False
        with closing(map_unordered(_run_built_chunk, tasks, executor="process", workers=probe_workers)) as outputs:
            for index, out in outputs:
                if isinstance(out, _NotBuilt):
                    if not said:
                        _say_here(what, probe_workers, out.reason)
                        said = True
                    yield from _here(ctx, fn, shared, items, [index])
                else:
                    yield index, out

    return run


def _here(ctx: ProbeContext, fn: Callable[..., Any], shared: dict[str, Any], items: list[Any],
          indices: Any) -> Iterator[tuple[int, Any]]:
    for index in indices:
        yield index, fn(ctx, shared, items[index])


def _say_here(what: str, workers: int, why: Any) -> None:
    reason = str(why).splitlines()[0] if str(why) else type(why).__name__
    warnings.warn(f"{what}: workers={workers} asked for, but the model, loss and data cannot be sent to worker "
                  f"processes ({reason}); its chunks run in this process (define them at module level in an "
                  "importable file, or pass workers=1)", InProcessWarning, stacklevel=4)


class _Pickler(pickle.Pickler):
    """``pickle`` that refuses, here, what a spawned worker could not import back: a class or
    function of ``__main__`` when ``__main__`` is no file (an interactive session, ``python -c``)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type | FunctionType) and getattr(obj, "__module__", None) == "__main__" \
                and not getattr(sys.modules.get("__main__"), "__file__", None):
            raise pickle.PicklingError(f"{obj.__qualname__} is defined in an interactive session")
        return NotImplemented


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


_BUILT: dict[str, Any] = {}  # a worker's latest context built in memory: {"token", "ctx" | "failed", "shared"}


def _run_built_chunk(task: _BuiltChunk) -> Any:
    """One chunk, in a worker: the context rebuilt from the payload once per call (``token``),
    then ``task.fn(ctx, shared, item)``; a :class:`_NotBuilt` when the payload cannot be read here."""
    if _BUILT.get("token") != task.token:
        _BUILT.clear()  # the previous call's context goes first
        try:
            build, parts, shared = pickle.loads(task.payload)
            _BUILT.update(ctx=build(*parts), shared=shared)
        except Exception as exc:
            _BUILT["failed"] = f"in a worker: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        _BUILT["token"] = task.token
    if "failed" in _BUILT:
        return _NotBuilt(_BUILT["failed"])
    return task.fn(_BUILT["ctx"], _BUILT["shared"], task.item)
