"""Where independent tasks run: in-process, a local process pool, or a Ray cluster.

``map_tasks(fn, tasks, executor=...)`` yields ``fn(task)`` for every task, in order. Workers only
compute and return; the caller alone writes results (one writer per HDF5 file). ``fn`` and the
tasks must be picklable (a module-level function and plain data) for ``process`` and ``ray``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from landscape.errors import ConfigError, LandscapeError

T = TypeVar("T")
R = TypeVar("R")
EXECUTORS = ("local", "process", "ray")


def _init_process_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one worker per core: extra BLAS threads only compete


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

    ``process``: ``workers`` spawned processes (default: one per CPU). ``ray``: tasks on the Ray
    cluster at ``address`` (default: a local one with ``workers`` CPUs); each task asks Ray for
    ``gpus_per_task`` GPUs.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be ≥ 1, got {workers}")
    if executor == "local" or not tasks:
        for task in tasks:
            yield fn(task)
    elif executor == "process":
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_process_worker) as pool:
            yield from pool.map(fn, tasks)
    else:
        ray = _ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
            ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False, **kwargs)
        remote = ray.remote(num_cpus=1, num_gpus=gpus_per_task)(fn)
        refs = [remote.remote(task) for task in tasks]
        for ref in refs:
            yield ray.get(ref)


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise LandscapeError("executor 'ray' needs Ray: pip install -e '.[ray]' (or pip install ray)") from exc
    return ray
