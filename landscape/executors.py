"""Where independent tasks run: in-process, a local process pool, or a Ray cluster.

``map_tasks(fn, tasks, executor=...)`` yields ``fn(task)`` for every task, in order;
``map_unordered`` yields ``(index, fn(task))`` as each finishes, so that a caller can write each
result as soon as it exists. Workers only compute and return; the caller alone writes results (one
writer per HDF5 file). ``fn`` and the tasks must be picklable (a module-level function and plain
data) for ``process`` and ``ray``.

The process pool is persistent: started on first use, kept for later calls in this process and
shut down at exit. Each worker is warmed once when it starts (:func:`warm_up`: torch imported, one
thread, one tiny double-backward), so that no task pays those costs. :func:`choose_executor`
decides ``auto``: in-process unless the estimated work is clearly larger than the start-up.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from landscape.errors import ConfigError, LandscapeError

T = TypeVar("T")
R = TypeVar("R")
EXECUTORS = ("local", "process", "ray")

# What a fresh worker costs before its first task (spawn, import torch 2.2-2.7 s, the first
# autograd.grad(grad_outputs=...) 1.3-1.5 s: measured on a 2-core machine, issue #17), and the
# most a first task in this process can pay once for lazy imports (the latter of those).
WORKER_START_SECONDS = 4.0
FIRST_CALL_SECONDS = 1.5
AUTO_MARGIN = 1.25  # the pool must be estimated this many times faster than in-process
_LAZY_MODULE = "torch.fx.experimental.symbolic_shapes"  # imported by the first grad(grad_outputs=...)


def warm_up() -> None:
    """What a worker does once when it starts: import torch, use one thread (one worker per core:
    extra BLAS threads only compete), and run one tiny double-backward, which pays the lazy imports
    of the first ``autograd.grad(grad_outputs=...)`` (sympy, symbolic shapes)."""
    import torch

    torch.set_num_threads(1)
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad((x**3).sum(), x, create_graph=True)
    torch.autograd.grad(g, x, grad_outputs=torch.ones_like(x))


def lazy_imports_done() -> bool:
    """Whether this process has already paid the one-time cost of its first double-backward."""
    return _LAZY_MODULE in sys.modules


def cpu_count() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---- the persistent process pool ---------------------------------------------------------------

_POOL: dict[str, Any] = {"pool": None, "workers": 0, "served": 0}


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of at least ``workers`` warm spawned workers: this process's pool when it has that
    many or more (a call asking fewer keeps at most ``workers`` tasks in flight on it, so that a
    pool once started stays warm), else a new one of ``workers`` (the old one is shut down)."""
    import multiprocessing

    if _POOL["pool"] is not None and _POOL["workers"] < workers:
        shutdown_pool()
    if _POOL["pool"] is None:
        _POOL["pool"] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=warm_up)
        _POOL.update(workers=workers, served=0)
    return _POOL["pool"]


def pool_is_warm(workers: int) -> bool:
    """Whether this process holds a pool of at least ``workers`` whose every worker has started."""
    return _POOL["pool"] is not None and _POOL["workers"] >= workers and _POOL["served"] >= _POOL["workers"]


def shutdown_pool(*, kill: bool = False) -> None:
    """Shut the persistent pool down (``kill``: end its workers now, tasks running included)."""
    pool, _POOL["pool"], _POOL["workers"] = _POOL["pool"], None, 0
    if pool is None:
        return
    if kill:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
    pool.shutdown(wait=not kill, cancel_futures=True)


atexit.register(shutdown_pool)


# ---- mapping tasks ---------------------------------------------------------------------------


def map_tasks(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    *,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    gpus_per_task: float = 0.0,
) -> Iterator[R]:
    """``fn(task)`` for each task, in order, on the chosen executor.

    ``process``: the persistent pool of ``workers`` warm processes (default: one per CPU).
    ``ray``: tasks on the Ray cluster at ``address`` (default: a local one with ``workers`` CPUs);
    each task asks Ray for ``gpus_per_task`` GPUs.
    """
    done: dict[int, R] = {}
    following = 0
    for index, result in map_unordered(fn, tasks, executor=executor, workers=workers, address=address,
                                       gpus_per_task=gpus_per_task):
        done[index] = result
        while following in done:
            yield done.pop(following)
            following += 1


def map_unordered(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    *,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    gpus_per_task: float = 0.0,
) -> Iterator[tuple[int, R]]:
    """``(index, fn(tasks[index]))`` for each task as it finishes (in order for ``local``).

    Leaving the loop early (an error, an interrupt) cancels the tasks not started; a process pool
    with tasks still running is ended, so that nothing goes on computing unseen.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be ≥ 1, got {workers}")
    if executor == "local" or not tasks:
        for index, task in enumerate(tasks):
            yield index, fn(task)
    elif executor == "process":
        yield from _pool_map(fn, tasks, workers or cpu_count())
    else:
        yield from _ray_map(fn, tasks, workers, address, gpus_per_task)


def _pool_map(fn: Callable[[T], R], tasks: Sequence[T], workers: int) -> Iterator[tuple[int, R]]:
    """The tasks on the pool, at most ``workers`` in flight where the pool has more workers (else
    all are queued at once, so that a worker never waits for this process to hand it the next)."""
    pool = process_pool(workers)
    limit = workers if _POOL["workers"] > workers else len(tasks)
    futures: dict[Future, int] = {}
    queued = iter(enumerate(tasks))
    pending: set[Future] = set()

    def submit() -> None:
        for i, task in queued:
            future = pool.submit(fn, task)
            futures[future] = i
            pending.add(future)
            if len(pending) >= limit:
                return

    submit()
    try:
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            submit()
            for future in sorted(finished, key=futures.__getitem__):
                try:
                    result = future.result()
                except BrokenProcessPool:
                    shutdown_pool(kill=True)
                    raise LandscapeError(f"a worker process ended abruptly (out of memory, or a script "
                                         f"that starts workers without an `if __name__ == \"__main__\":` "
                                         f"guard?); the results finished so far are kept: rerun with fewer "
                                         f"--workers than {workers} or --executor local") from None
                _POOL["served"] += 1
                yield futures[future], result
    finally:
        if pending:  # left early: cancel what has not started, end what has
            running = [f for f in pending if not f.cancel()]
            if running:
                shutdown_pool(kill=True)


def _ray_map(fn: Callable[[T], R], tasks: Sequence[T], workers: int | None, address: str | None,
             gpus_per_task: float) -> Iterator[tuple[int, R]]:
    ray = _ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
        ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False, **kwargs)
    remote = ray.remote(num_cpus=1, num_gpus=gpus_per_task)(fn)
    refs = {remote.remote(task): i for i, task in enumerate(tasks)}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                yield refs[ref], ray.get(ref)
    finally:
        for ref in pending:
            ray.cancel(ref)


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise LandscapeError("executor 'ray' needs Ray: pip install -e '.[ray]' (or pip install ray)") from exc
    return ray


# ---- executor "auto" -------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """What ``auto`` chose: ``executor`` (``local`` or ``process``), its ``workers``, and why."""

    executor: str
    workers: int
    reason: str


def choose_executor(
    n_tasks: int,
    task_seconds: float,
    *,
    workers: int | None = None,
    device: str = "cpu",
    first_call: bool = False,
    setup_seconds: float = 0.0,
) -> Choice | None:
    """In-process or the process pool for ``n_tasks`` more tasks of about ``task_seconds`` each
    (measured in-process); ``None`` when the measurement cannot tell yet.

    In-process costs ``n · t``; ``w`` workers cost their start-up (:data:`WORKER_START_SECONDS`
    per round of ``cpus`` workers, or nothing for a pool already warm, plus ``setup_seconds``
    each: the data they load once) and ``⌈n / w⌉ · t``. The pool is chosen when it is estimated
    :data:`AUTO_MARGIN` times faster. ``first_call``: the measured task paid this process's
    one-time lazy imports, so it may be up to :data:`FIRST_CALL_SECONDS` longer than the next
    ones; where that leaves the choice open, the answer is ``None`` (measure one more task).
    """
    cpus = cpu_count()
    w = max(1, min(workers or cpus, n_tasks))
    if device != "cpu":
        return Choice("local", 1, f"device {device}: in-process (workers would share the one device)")
    if n_tasks < 2 or w < 2:
        why = f"{n_tasks} task left" if n_tasks < 2 else f"{w} worker"
        return Choice("local", 1, f"{why}: in-process")
    warm = pool_is_warm(w)
    start = setup_seconds + (0.0 if warm else WORKER_START_SECONDS * math.ceil(w / cpus))

    def pool_wins(t: float) -> bool:
        return AUTO_MARGIN * (start + math.ceil(n_tasks / w) * t) < n_tasks * t

    def estimate(t: float) -> str:
        return (f"{n_tasks} tasks of ~{t:.2g} s: ~{n_tasks * t:.3g} s in-process vs "
                f"~{start + math.ceil(n_tasks / w) * t:.3g} s on {w} {'warm ' if warm else ''}workers "
                f"({'already started' if warm else f'~{start:.2g} s to start'})")

    low = max(task_seconds - FIRST_CALL_SECONDS, 0.0) if first_call else task_seconds
    if pool_wins(low):
        return Choice("process", w, estimate(low))
    if not pool_wins(task_seconds) or not first_call:
        return Choice("local", 1, estimate(task_seconds))
    return None
