"""Where the pending work of one or more probes runs: in this process, or one task per
checkpoint (all its probes, its data and model loaded once) on a process pool or Ray, chosen by
``auto`` from the first checkpoint's time. Each result is stored as soon as it comes back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

import torch

from landscape.analyze.chunks import chunk_runner
from landscape.analyze.compute import _compute_checkpoint, _data_key, compute_probe
from landscape.analyze.plan import _ProbePlan
from landscape.analyze.tasks import CheckpointTask
from landscape.datasets import describe_data
from landscape.errors import CheckpointError, LandscapeError
from landscape.executors import Choice, choose_executor, cpu_count, lazy_imports_done, map_unordered
from landscape.targets import Target, load_data_and_loss


def _compute_here(plan: _ProbePlan, target: Target, group: str, caches: dict[str, Any],
                  on_progress: Callable[[Target, int], None] | None, on_data: Callable[[str], None] | None,
                  told: set[str], loaded: dict[str, Any] | None = None, *, executor: str = "local",
                  workers: int | None = None, address: str | None = None) -> float:
    """One (checkpoint, probe) in this process: resumed from its stored partial results, stored
    (partially as it goes, where the probe saves partial work) and recorded. The seconds computing.
    A chunked probe's chunks run on ``executor`` (:func:`landscape.analyze.chunks.chunk_runner`)."""
    if plan.on_target:
        plan.on_target(target, "start")
    partial = plan.store.read(group)[0] if plan.stored.get(group) == "partial" else None
    task = plan.task(target)
    runner = (chunk_runner(task, plan.identities[target.name], plan.store.path.parent, executor=executor,
                           workers=workers, address=address) if plan.spec.chunked else None)
    start = time.perf_counter()
    try:
        result, info = compute_probe(
            task, caches=caches, partial=partial, loaded=loaded, chunk_runner=runner,
            advance=(lambda n, t=target: on_progress(t, n)) if on_progress else None,
            save_partial=lambda arrays, t=target, g=group, c=caches: plan.write(t, g, arrays, c["info"], False),
        )
    except CheckpointError as exc:
        plan.failed(target, exc)
        return time.perf_counter() - start
    seconds = time.perf_counter() - start
    if on_data:  # told once the data have served a result
        for k in sorted({k for k in caches if k.startswith("data:")} - told):
            told.add(k)
            on_data(describe_data(caches[k][0]))
    plan.done(target, group, result, info)
    return seconds


def _run_checkpoints(plans: list[_ProbePlan], *, executor: str, workers: int | None, address: str | None,
                     on_progress: Callable[[Target, int], None] | None, on_data: Callable[[str], None] | None,
                     on_probe_error: Callable[[_ProbePlan, LandscapeError], None],
                     on_probe: Callable[[str], None] | None = None) -> Choice:
    """The pending work of ``plans``, one task per checkpoint (all its probes, so that its data and
    model are loaded once), on ``executor``; each result is stored as soon as it comes back, so that
    an interrupted analysis keeps what was finished. A chunked probe (the surface) runs here, after
    the others, with its chunks on the executor: each chunk is stored as it comes back. A probe that fails (other than its checkpoint)
    is told to ``on_probe_error`` and is not run on the checkpoints not yet started.

    ``auto``: the first checkpoint (two, where the first paid this process's one-time imports) is
    computed here and timed, and the rest run here or on a process pool as
    :func:`landscape.executors.choose_executor` estimates faster. Returns what ran, and why."""
    groups: dict[str, tuple[Target, list[tuple[_ProbePlan, str]]]] = {}
    for plan in plans:
        for target, group in plan.todo:
            groups.setdefault(target.name, (target, []))[1].append((plan, group))
    pending = list(groups.values())
    failed: set[str] = set()
    told: set[str] = set()
    shown = {"probe": None}

    def show(plan: _ProbePlan) -> None:
        if on_probe and shown["probe"] != plan.name:
            shown["probe"] = plan.name
            on_probe(plan.name)

    def here(target: Target, pairs: list[tuple[_ProbePlan, str]], where: Choice | None = None) -> float:
        live = [(p, g) for p, g in pairs if p.name not in failed]
        loaded: dict[str, Any] = {"left": len(live)}
        seconds = 0.0
        for plan, group in live:
            show(plan)
            try:
                seconds += _compute_here(plan, target, group, plan.caches, on_progress, on_data, told, loaded,
                                         executor=where.executor if where else "local",
                                         workers=where.workers if where else None, address=address)
            except CheckpointError:
                raise
            except LandscapeError as exc:
                failed.add(plan.name)
                on_probe_error(plan, exc)
        return seconds

    dev = plans[0].dev if plans else torch.device("cpu")
    if executor == "auto":
        choice: Choice | None = None
        while choice is None and pending:
            target, pairs = pending.pop(0)
            setup = _time_data(target, pairs[0][0])
            before = lazy_imports_done()
            seconds = here(target, pairs)
            choice = choose_executor(len(pending), seconds, workers=workers, device=dev.type,
                                     first_call=not before and lazy_imports_done(), setup_seconds=setup)
        choice = choice or Choice("local", 1, "no checkpoint left")
    elif executor == "local":
        choice = Choice("local", 1, "asked for")
    else:
        choice = Choice(executor, workers or cpu_count(), "asked for")
    if choice.executor == "local":
        for target, pairs in pending:
            here(target, pairs)
        return choice
    remote = [(target, [(p, g) for p, g in pairs if not p.spec.chunked]) for target, pairs in pending]
    remote = [(target, pairs) for target, pairs in remote if pairs]
    tasks = [CheckpointTask(tuple(p.task(target) for p, _ in pairs if p.name not in failed),
                            pairs[0][0].identities[target.name]) for target, pairs in remote]
    gpus = 1.0 if dev.type == "cuda" else 0.0
    with closing(map_unordered(_compute_checkpoint, tasks, executor=choice.executor, workers=choice.workers,
                               address=address, gpus_per_task=gpus)) as outputs:
        for index, (outcomes, lines) in outputs:
            target, pairs = remote[index]
            live = [(p, g) for p, g in pairs if p.name in {t.probe for t in tasks[index].probes}]
            for (plan, group), outcome in zip(live, outcomes, strict=True):
                show(plan)
                if isinstance(outcome, CheckpointError):
                    plan.failed(target, outcome)
                elif isinstance(outcome, LandscapeError):
                    if plan.name not in failed:
                        failed.add(plan.name)
                        on_probe_error(plan, outcome)
                elif plan.name not in failed:
                    plan.done(target, group, *outcome)
            if on_data:
                for line in lines:
                    if line not in told:
                        told.add(line)
                        on_data(line)
    for target, pairs in pending:  # here, their chunks on the executor's workers
        if any(p.spec.chunked for p, _ in pairs):
            here(target, [(p, g) for p, g in pairs if p.spec.chunked], choice)
    return choice


def _time_data(target: Target, plan: _ProbePlan) -> float:
    """Load the data of ``target`` into the plan's caches (if not there yet): the seconds it took,
    which each worker would spend once."""
    key = _data_key(target, plan.data_spec)
    if key in plan.caches:
        return 0.0
    start = time.perf_counter()
    plan.caches[key] = load_data_and_loss(target, plan.data_spec)
    return time.perf_counter() - start
