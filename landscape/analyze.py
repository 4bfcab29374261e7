"""Run probes over checkpoints and store the results in one HDF5 file.

``run_probe(path, "hessian", cfg)`` resolves the checkpoints (:mod:`landscape.targets`), skips
those whose results are already stored with the same settings, runs the probe on each of the
others, and writes ``/<checkpoint>/<probe>`` through :class:`landscape.store.Store` with every
setting needed to repeat it as attributes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape.checkpoints import ModelSpec, checkpoint_matches, file_fingerprint, file_sha256
from landscape.datasets import describe_data
from landscape.errors import CheckpointError, ConfigError, LandscapeError
from landscape.executors import Choice, choose_executor, cpu_count, lazy_imports_done, map_unordered
from landscape.probes import PROBES, ProbeContext
from landscape.probes.base import default_probes, measure_families, measure_table
from landscape.results import collect_series  # noqa: F401  (moved; re-exported for callers)
from landscape.store import Store, group_name, settings_hash
from landscape.targets import (
    DataSpec,
    Target,
    check_data_spec,
    data_identity,
    load_data_and_loss,
    load_model_and_record,
    resolve_targets,
    trajectory_loader,
)
from landscape.utils import resolve_device, versions


@dataclass(frozen=True)
class ProbeRecord:
    """One (checkpoint, probe) result: stored now, or found already stored."""

    target: Target
    group: str
    result: dict[str, Any]
    skipped: bool
    seconds: float


def default_output(path: str | Path) -> Path:
    """``RUN_DIR/analysis.h5`` for a run (or one of its checkpoints); otherwise an explicit --out is needed."""
    path = Path(path)
    for candidate in (path, path.parent.parent):
        if candidate.is_dir() and (candidate / "config.json").is_file():
            return candidate / "analysis.h5"
    raise ConfigError(f"{path} is not a run directory: name the results file with --out FILE.h5")


def run_probe(
    path: str | Path,
    probe: str,
    cfg: Any = None,
    *,
    checkpoints: str = "last",
    out: str | Path | None = None,
    device: str | torch.device = "auto",
    model_spec: ModelSpec | None = None,
    data_spec: DataSpec | None = None,
    force: bool = False,
    on_progress: Callable[[Target, int], None] | None = None,
    on_target: Callable[[Target, str], None] | None = None,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    on_failure: Callable[[Target, str], None] | None = None,
    allow_outside_links: bool = False,
    weights: str = "auto",
    strip_prefix: str | None = None,
    on_data: Callable[[str], None] | None = None,
    data_cache: dict[str, Any] | None = None,
) -> list[ProbeRecord]:
    """Run ``probe`` with config ``cfg`` on the selected checkpoints of ``path``; store and return the results.

    ``data_cache``: data already loaded (:func:`preload_data`), shared by several probes' calls.

    A checkpoint that cannot be loaded (unreadable, wrong architecture) is told to
    ``on_failure(target, message)`` and the others go on; without ``on_failure`` it raises.
    A factory recorded in a run's ``config.json`` runs only when ``model_spec`` names one
    (the trust boundary of :class:`landscape.checkpoints.ModelSpec`). ``weights`` (``auto`` | ``ema``
    | ``raw``) and ``strip_prefix`` say which tensors of a checkpoint are the model's
    (:func:`landscape.checkpoints.load_state_dict`, :func:`~landscape.checkpoints.fit_state_dict`);
    what was used is stored beside the results (``checkpoint_load``). ``on_data(line)`` is told,
    once per dataset loaded in this process, what the data are and what was done to them
    (:func:`landscape.datasets.describe_data`).

    ``on_target(target, state)`` is told ``"start"``/``"done"``/``"stored"`` per checkpoint and
    ``on_progress(target, n)`` the probe's units of work (HVPs for the Hessian). ``executor``
    ``process`` or ``ray`` computes the checkpoints in parallel (:mod:`landscape.executors`; the
    process pool is kept warm for later calls), ``auto`` times the first checkpoint here and runs
    the rest where it estimates faster (:func:`landscape.executors.choose_executor`); results are
    identical, each is stored as it comes back, and this process alone writes them. Interrupted
    partial work (a surface) resumes only in-process.
    """
    check_executor(executor, workers)
    plan = _plan_probe(path, probe, cfg, checkpoints=checkpoints, out=out, device=device, model_spec=model_spec,
                       data_spec=data_spec, force=force, on_target=on_target, on_failure=on_failure,
                       allow_outside_links=allow_outside_links, weights=weights, strip_prefix=strip_prefix,
                       caches=data_cache)
    if executor == "local":
        told: set[str] = set()
        for target, group in plan.todo:
            _compute_here(plan, target, group, plan.caches, on_progress, on_data, told)
    else:
        def fail(_: _ProbePlan, exc: LandscapeError) -> None:
            raise exc

        _run_checkpoints([plan], executor=executor, workers=workers, address=address, on_progress=on_progress,
                         on_data=on_data, on_probe_error=fail)
    return plan.sorted_records()


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


@dataclass
class _ProbePlan:
    """One probe's work once its checks have passed: the records already stored, the (checkpoint,
    group) pairs to compute, and how a result is stored (this process alone writes)."""

    spec: Any
    cfg: Any
    dev: torch.device
    store: Store
    targets: list[Target]
    stored: dict[str, str]
    identities: dict[str, str]
    records: list[ProbeRecord]
    todo: list[tuple[Target, str]]
    caches: dict[str, Any]
    model_spec: ModelSpec | None
    data_spec: DataSpec | None
    allow_outside_links: bool
    on_target: Callable[[Target, str], None] | None
    on_failure: Callable[[Target, str], None] | None

    @property
    def name(self) -> str:
        return self.spec.name

    def task(self, target: Target) -> ProbeTask:
        return ProbeTask(target, self.spec.name, self.cfg, str(self.dev), self.model_spec, self.data_spec,
                         self.allow_outside_links)

    def write(self, target: Target, group: str, result: dict[str, Any], info: dict[str, Any], complete: bool) -> None:
        settings = dataclasses.asdict(self.cfg)
        attrs = {"probe": self.spec.name, "settings": settings, "settings_hash": settings_hash(settings),
                 "versions": versions(), "device": str(self.dev), **info, "complete": complete}
        binding = {"checkpoint": str(target.path), "checkpoint_sha256": file_sha256(target.path),
                   **file_fingerprint(target.path)}  # results are bound to the file they came from
        attrs.update(binding)
        attrs["data_identity"] = self.identities[target.name]
        parent = {
            **binding,
            **target.attrs(),
            **{k: v for k, v in target.metrics().items() if isinstance(v, int | float)},
        }
        self.store.write(group, _storable(result), attrs, parent)

    def done(self, target: Target, group: str, result: dict[str, Any], info: dict[str, Any]) -> None:
        self.write(target, group, result, info, True)
        self.records.append(ProbeRecord(target, group, result, False, info["seconds"]))
        if self.on_target:
            self.on_target(target, "done")

    def failed(self, target: Target, exc: CheckpointError) -> None:
        if self.on_failure is None:
            raise exc
        self.on_failure(target, str(exc))
        if self.on_target:
            self.on_target(target, "failed")

    def sorted_records(self) -> list[ProbeRecord]:
        order = {t.name: i for i, t in enumerate(self.targets)}
        return sorted(self.records, key=lambda r: order[r.target.name])


def _plan_probe(path: str | Path, probe: str, cfg: Any, *, checkpoints: str, out: str | Path | None,
                device: str | torch.device, model_spec: ModelSpec | None, data_spec: DataSpec | None,
                force: bool, on_target: Callable[[Target, str], None] | None,
                on_failure: Callable[[Target, str], None] | None, allow_outside_links: bool, weights: str,
                strip_prefix: str | None, caches: dict[str, Any] | None) -> _ProbePlan:
    """The checks of :func:`run_probe` (config, checkpoints, model, data, what is stored, a writable
    file), all before any work; the stored records are told to ``on_target`` as ``"stored"``."""
    spec = PROBES[probe]
    cfg = cfg if cfg is not None else spec.config()
    if not isinstance(cfg, spec.config):
        raise ConfigError(f"probe {probe!r} takes a {spec.config.__name__}, got {type(cfg).__name__}")
    dev = resolve_device(device)
    targets = resolve_targets(path, checkpoints, weights=weights, strip_prefix=strip_prefix)
    store = Store(out if out is not None else default_output(path))
    check_model_specs(targets, model_spec)
    check_data_spec(targets, data_spec)
    settings = dataclasses.asdict(cfg)
    identities = {t.name: data_identity(t, data_spec) for t in targets}
    stored = _check_stored(store, targets, spec.name, settings, force, identities)
    records: list[ProbeRecord] = []
    todo: list[tuple[Target, str]] = []
    for target in targets:
        group = f"{group_name(target.name)}/{spec.name}"
        if stored.get(group) == "complete":
            if on_target:
                on_target(target, "stored")
            records.append(ProbeRecord(target, group, store.read(group)[0], True, 0.0))
        else:
            todo.append((target, group))
    caches: dict[str, Any] = caches if caches is not None else {}
    if todo:  # fail now, not after an hour of work; a rerun with everything stored writes nothing
        preload_data([t for t, _ in todo], data_spec, caches, model_spec)
        store.check_writable()
    return _ProbePlan(spec, cfg, dev, store, targets, stored, identities, records, todo, caches, model_spec,
                      data_spec, allow_outside_links, on_target, on_failure)


def _compute_here(plan: _ProbePlan, target: Target, group: str, caches: dict[str, Any],
                  on_progress: Callable[[Target, int], None] | None, on_data: Callable[[str], None] | None,
                  told: set[str], loaded: dict[str, Any] | None = None) -> float:
    """One (checkpoint, probe) in this process: resumed from its stored partial results, stored
    (partially as it goes, where the probe saves partial work) and recorded. The seconds computing."""
    if plan.on_target:
        plan.on_target(target, "start")
    partial = plan.store.read(group)[0] if plan.stored.get(group) == "partial" else None
    start = time.perf_counter()
    try:
        result, info = compute_probe(
            plan.task(target), caches=caches, partial=partial, loaded=loaded,
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
    an interrupted analysis keeps what was finished. A probe that fails (other than its checkpoint)
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

    def here(target: Target, pairs: list[tuple[_ProbePlan, str]]) -> float:
        live = [(p, g) for p, g in pairs if p.name not in failed]
        loaded: dict[str, Any] = {"left": len(live)}
        seconds = 0.0
        for plan, group in live:
            show(plan)
            try:
                seconds += _compute_here(plan, target, group, plan.caches, on_progress, on_data, told, loaded)
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
    tasks = [CheckpointTask(tuple(p.task(target) for p, _ in pairs if p.name not in failed),
                            pairs[0][0].identities[target.name]) for target, pairs in pending]
    gpus = 1.0 if dev.type == "cuda" else 0.0
    with closing(map_unordered(_compute_checkpoint, tasks, executor=choice.executor, workers=choice.workers,
                               address=address, gpus_per_task=gpus)) as outputs:
        for index, (outcomes, lines) in outputs:
            target, pairs = pending[index]
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


def _compute_checkpoint(task: CheckpointTask) -> tuple[list[Any], list[str]]:
    """:func:`compute_probe` for each probe of a checkpoint, in a worker: ``(outcomes, data lines)``;
    an outcome is ``(result, info)``, or the error of a probe (or of its checkpoint) that failed.
    The data and the model are loaded once; each probe gets its own copy of the model."""
    caches = _worker_caches(task.scope)
    loaded: dict[str, Any] = {"left": len(task.probes)}
    outcomes: list[Any] = []
    for probe_task in task.probes:
        try:
            outcomes.append(compute_probe(probe_task, caches=caches, loaded=loaded))
        except LandscapeError as exc:
            outcomes.append(exc)
    first = task.probes[0] if task.probes else None
    key = _data_key(first.target, first.data_spec) if first else ""
    return outcomes, [describe_data(caches[key][0])] if key in caches else []


_WORKER_SCOPES: dict[str, dict[str, Any]] = {}  # a worker's caches per data identity, the latest last


def _worker_caches(scope: str, keep: int = 2) -> dict[str, Any]:
    caches = _WORKER_SCOPES.pop(scope, None)
    _WORKER_SCOPES[scope] = caches = caches if caches is not None else {}
    while len(_WORKER_SCOPES) > keep:
        del _WORKER_SCOPES[next(iter(_WORKER_SCOPES))]
    return caches


def _load_model(task: ProbeTask, dev: torch.device, loaded: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """The checkpoint's model and how it was read. With ``loaded`` (shared by the probes of one
    checkpoint, ``{"left": n}``) the file is read once; each probe but the last gets a copy, so
    that no probe sees what another did to its model."""
    if loaded is None:
        return load_model_and_record(task.target, task.model_spec, dev, allow_outside=task.allow_outside_links)
    loaded["left"] -= 1
    if "error" in loaded:
        raise loaded["error"]
    if "model" not in loaded:
        try:
            loaded["model"], loaded["record"] = load_model_and_record(task.target, task.model_spec, dev,
                                                                      allow_outside=task.allow_outside_links)
        except CheckpointError as exc:
            loaded["error"] = exc
            raise
    if loaded["left"] <= 0:
        return loaded.pop("model"), dict(loaded["record"])
    try:
        return copy.deepcopy(loaded["model"]), dict(loaded["record"])
    except Exception:  # a model that cannot be copied (a handle, a lock): read the file again
        return load_model_and_record(task.target, task.model_spec, dev, allow_outside=task.allow_outside_links)



ANALYZE_EXECUTORS = ("local", "auto", "process", "ray")


def check_executor(executor: str, workers: int | None) -> None:
    """An executor :func:`analyze` knows, and a positive number of workers."""
    if executor not in ANALYZE_EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid: {', '.join(ANALYZE_EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be ≥ 1, got {workers}")


def check_model_specs(targets: list[Target], model_spec: ModelSpec | None) -> None:
    """Fail once, before any work, when a target's model cannot be built: a factory that cannot be
    imported, or one recorded in a run's config.json that the user has not named."""
    from landscape.targets import model_spec_for

    seen: set[Any] = set()
    for target in targets:
        key = target.run_dir
        if key in seen:
            continue
        seen.add(key)
        model_spec_for(target, model_spec).check()


_WORKER_CACHES: dict[str, Any] = {}


def _data_key(target: Target, data_spec: DataSpec | None) -> str:
    return f"data:{target.run_dir}:{data_spec if target.run_dir is None else ''}"


def preload_data(targets: list[Target], data_spec: DataSpec | None, caches: dict[str, Any],
                 model_spec: ModelSpec | None = None) -> None:
    """Load (and so check) the data the checkpoints outside a RUN_DIR are probed on, once, before
    anything is written: an empty DataLoader or a batch the task cannot read is one line, and no
    results file is made. A RUN_DIR's own data are loaded where they are used."""
    for target in targets:
        key = _data_key(target, data_spec)
        if target.run_dir is None and key not in caches:
            caches[key] = load_data_and_loss(target, data_spec)
            if model_spec is not None:
                check_model_on_data(target, model_spec, caches[key][0])


def check_model_on_data(target: Target, model_spec: ModelSpec, data: Any) -> None:
    """The model the spec builds (its own initial weights: no checkpoint is read) on two training
    samples: an output with no logits, or logits the task cannot read with these targets, is one
    line before anything runs."""
    from landscape.batch import forward
    from landscape.outputs import logits_of
    from landscape.targets import model_spec_for
    from landscape.tasks import check_shapes

    model = model_spec_for(target, model_spec).build().eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    first = data.train.take(torch.arange(min(2, len(data.train)))).to(dtype=dtype)  # as the probes cast it
    try:
        with torch.no_grad():
            out = forward(model, first.x)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"the model from {model_spec.factory or model_spec.name} fails on the data's first "
                          f"samples: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    logits = logits_of(out)
    task = first.task
    n = len(first.y)
    check_shapes((n, *logits.shape[1:]) if logits.ndim and logits.shape[0] == n else logits.shape,
                 tuple(first.y.shape), task)


def compute_probe(
    task: ProbeTask,
    *,
    caches: dict[str, Any] | None = None,
    partial: dict[str, Any] | None = None,
    advance: Callable[[int], None] | None = None,
    save_partial: Callable[[dict[str, Any]], None] | None = None,
    loaded: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the checkpoint and run the probe: ``(result, info)``; ``info`` holds what the stored
    attributes need (data, loss, seconds). Runs anywhere: it reads files, it never writes them."""
    caches = _WORKER_CACHES if caches is None else caches
    spec, target, dev = PROBES[task.probe], task.target, torch.device(task.device)
    key = _data_key(target, task.data_spec)
    if key not in caches:
        caches[key] = load_data_and_loss(target, task.data_spec)
    data, loss = caches[key]
    caches["info"] = {"data": {"dataset": data.name, "n_train": len(data.train), "n_test": len(data.test),
                               "input_dtype": str(data.train.sample_inputs.dtype).removeprefix("torch."),
                               "normalization": data.normalization,
                               "source": (data.info or {}).get("source", {}),
                               **{k: data.info[k] for k in ("task", "inputs") if k in (data.info or {})}},
                      "loss": getattr(loss, "spec", lambda: {})()}
    model, caches["info"]["checkpoint_load"] = _load_model(task, dev, loaded)
    ctx = ProbeContext(model=model, loss=loss.per_sample, data=data, device=dev,
                       run_cache=caches.setdefault(f"run:{target.run_dir}", {}),
                       advance=advance or (lambda n: None), run_record=_run_record(target),
                       save_partial=save_partial or (lambda arrays: None), partial=partial,
                       resolve_checkpoint=lambda which: _checkpoint_tensors(target, which, caches["info"]),
                       load_trajectory=trajectory_loader(target))
    torch.manual_seed(getattr(task.cfg, "seed", 0))
    start = time.perf_counter()
    result = spec.run(ctx, task.cfg)
    info = {**caches["info"], "seconds": time.perf_counter() - start,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return result, info


def _run_record(target: Target) -> Callable[[], tuple[list[dict[str, Any]], dict[str, Any]]] | None:
    """``() → (metrics records, training config)`` of ``target``'s run, read when a probe asks for
    them (:attr:`~landscape.probes.base.ProbeContext.run_record`); None outside a RUN_DIR."""
    if target.run_dir is None:
        return None
    run_dir = target.run_dir

    def read() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from landscape.checkpoints import RunDir

        run = RunDir(run_dir)
        return run.metrics(), dict(run.meta.get("config") or {})

    return read


def _check_stored(store: Store, targets: list[Target], probe: str, settings: dict[str, Any],
                  force: bool, identities: dict[str, str] | None = None) -> dict[str, str]:
    """``{group: "complete"|"partial"}`` for stored groups with these settings, this checkpoint file
    and this data and loss (``identities``: :func:`landscape.targets.data_identity` per target);
    results stored otherwise are never served nor replaced silently: that is an error unless ``force``."""
    if force:
        return {}
    wanted = settings_hash(settings)
    found: dict[str, str] = {}
    for target in targets:
        group = f"{group_name(target.name)}/{probe}"
        attrs = store.attrs(group) if store.exists() else {}
        if not attrs:
            continue
        bound = attrs if attrs.get("checkpoint_sha256") else store.attrs(group_name(target.name))
        if not checkpoint_matches(target.path, bound):
            raise ConfigError(
                f"{store.path} already holds {probe} results for {target.name}, computed from another "
                f"checkpoint file (sha256 {str(bound.get('checkpoint_sha256') or 'unknown')[:12]}…, "
                f"{bound.get('checkpoint') or 'unrecorded path'}), not {target.path}; "
                "pass --force to recompute them, or write to another --out"
            )
        for which, other in (attrs.get("other_checkpoints") or {}).items():
            if not Path(other.get("checkpoint", "")).is_file() or not checkpoint_matches(other["checkpoint"], other):
                raise ConfigError(
                    f"{store.path} holds {probe} results for {target.name} computed with checkpoint {which!r} "
                    f"({other.get('checkpoint')}), which has changed or is gone; pass --force to recompute them"
                )
        identity = (identities or {}).get(target.name)
        if identity is not None and attrs.get("data_identity", identity) != identity:
            raise ConfigError(
                f"{store.path} already holds {probe} results for {target.name} computed with other data or "
                "another loss (dataset, its parameters or file contents, label noise, loss settings); "
                "pass --force to replace them, or write to another --out"
            )
        asked = {"weights": target.weights, "strip_prefix": target.strip_prefix}
        load = attrs.get("checkpoint_load") or {}
        was = load.get("requested", asked)
        same_tensors = (not load.get("other_weights") and was.get("strip_prefix") == asked["strip_prefix"]
                        and asked["weights"] in ("auto", load.get("weights")))  # one set of weights in the file
        if was != asked and not same_tensors:
            raise ConfigError(
                f"{store.path} already holds {probe} results for {target.name} read with --weights "
                f"{was.get('weights')} --strip-prefix {was.get('strip_prefix')}, not --weights "
                f"{asked['weights']} --strip-prefix {asked['strip_prefix']}; pass --force to replace "
                "them, or write to another --out"
            )
        if attrs.get("settings_hash") != wanted and not _same_settings(probe, attrs.get("settings") or {}, settings):
            old = attrs.get("settings") or {}
            diff = ", ".join(f"{k} {old.get(k)!r} → {v!r}" for k, v in settings.items() if old.get(k) != v)
            raise ConfigError(
                f"{store.path} already holds {probe} results for {target.name} with other settings ({diff}); "
                "pass --force to replace them, or write to another --out"
            )
        found[group] = "partial" if attrs.get("complete", True) is False else "complete"
    return found


def _same_settings(probe: str, stored: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether results stored with ``stored`` settings are these ``settings``: a setting added in a
    later version counts as its default where the stored record lacks it, or as what the config's
    ``ABSENT_MEANS`` says the results were computed with before it existed."""

    config = PROBES[probe].config
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    defaults.update(getattr(config, "ABSENT_MEANS", {}))  # a setting whose default changed when it was added

    def same(a: Any, b: Any) -> bool:
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)

    return set(stored) <= set(settings) and all(
        same(stored[k], v) if k in stored else (k in defaults and same(defaults[k], v)) for k, v in settings.items())


def _checkpoint_tensors(target: Target, which: str, info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors of another checkpoint: a file path, or a step/name of the target's run. The file is
    recorded in ``info["other_checkpoints"]`` (path, sha256): results that used it are bound to it too."""
    from landscape.checkpoints import RunDir, load_state_dict

    if Path(which).is_file():
        path = Path(which)
    elif target.run_dir is None:  # a name (or step, glob) among the checkpoints beside the target
        try:
            (other,) = resolve_targets(target.path.parent, which)
        except (ConfigError, ValueError):
            raise ConfigError(f"checkpoint {which!r} not found beside {target.path}; give its name there "
                              "or a path to a checkpoint file") from None
        path = other.path
    else:
        path = RunDir(target.run_dir).checkpoint(which).path
    info.setdefault("other_checkpoints", {})[which] = {"checkpoint": str(path), "checkpoint_sha256": file_sha256(path),
                                                       **file_fingerprint(path)}
    return load_state_dict(path)


def _storable(result: dict[str, Any]) -> dict[str, Any]:
    """Scalars and arrays as HDF5 can hold them (bools → uint8, None → NaN, tensors → numpy)."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            out[key] = _storable(value)
        elif isinstance(value, torch.Tensor):
            out[key] = value.detach().cpu().numpy()
        elif value is None:
            out[key] = np.nan
        elif isinstance(value, bool | np.bool_):
            out[key] = np.uint8(value)
        else:
            out[key] = value
    return out


# ---- many probes at once ---------------------------------------------------------------------

# The tables below are derived from the probes' declarations (landscape.probes.base.Probe):
# ``DEFAULT_PROBES``, ``MEASURES`` and ``MEASURE_FAMILIES`` stay importable names, computed on access
# (module ``__getattr__``), so a probe registered later appears in them too.
_DERIVED = {"DEFAULT_PROBES": default_probes, "MEASURES": measure_table, "MEASURE_FAMILIES": measure_families}


def __getattr__(name: str) -> Any:
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class AnalysisReport:
    """What :func:`analyze` did: the records of each probe that ran, and the error of each that failed."""

    results: dict[str, list[ProbeRecord]]
    failures: dict[str, str]
    executor: str = "local"  # where the work ran (what ``auto`` chose)
    executor_reason: str = "asked for"


def parse_probes(probes: str | list[str]) -> list[str]:
    """``"default"``, ``"all"`` or a comma-separated list of registered probe names."""
    if isinstance(probes, str):
        if probes == "default":
            return list(default_probes())
        if probes == "all":
            return PROBES.names()
        probes = [p.strip() for p in probes.split(",") if p.strip()]
    return [PROBES.canonical(p) for p in probes]


def analyze(
    path: str | Path,
    probes: str | list[str] = "default",
    *,
    settings: dict[str, dict[str, Any]] | None = None,
    checkpoints: str = "last",
    out: str | Path | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    on_progress: Callable[[Target, int], None] | None = None,
    on_target: Callable[[Target, str], None] | None = None,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    model_spec: ModelSpec | None = None,
    data_spec: DataSpec | None = None,
    on_probe: Callable[[str], None] | None = None,
    allow_outside_links: bool = False,
    weights: str = "auto",
    strip_prefix: str | None = None,
    on_data: Callable[[str], None] | None = None,
) -> AnalysisReport:
    """Run several probes (each with its default config, updated by ``settings[probe]``) on the
    selected checkpoints, all into one results file. A probe that fails is reported and recorded
    (``/failures/<probe>`` in the file) and the others go on, and so does a checkpoint that cannot be
    loaded (``failures["<probe> <checkpoint>"]``, ``/failures/<probe>/<checkpoint>``); a mistake in
    the arguments themselves (an unknown probe, a bad setting, a model factory that cannot be
    imported or is not trusted) fails before anything runs. ``on_probe(name)`` is told each probe
    as it starts.

    ``executor`` other than ``local`` runs one task per checkpoint, all its probes together (its data
    and model loaded once); ``auto`` stays in-process unless the work measured on the first
    checkpoint is estimated clearly longer than starting workers. The report says what ran, and why."""
    from landscape.probes import make_config

    check_executor(executor, workers)
    names = parse_probes(probes)
    configs = {name: make_config(name, **(settings or {}).get(name, {})) for name in names}
    store = Store(out if out is not None else default_output(path))
    targets = resolve_targets(path, checkpoints, weights=weights, strip_prefix=strip_prefix)
    check_model_specs(targets, model_spec)
    check_data_spec(targets, data_spec)
    data_cache: dict[str, Any] = {}
    preload_data(targets, data_spec, data_cache, model_spec)  # the user's data (and model) fail here, in one line, before any file is made
    results: dict[str, list[ProbeRecord]] = {}
    failures: dict[str, str] = {}

    def record_failure(group: str, key: str, error: str) -> None:
        failures[key] = error
        store.write(group, {}, {"error": error, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def on_failure(name: str) -> Callable[[Target, str], None]:
        return lambda t, e: record_failure(f"failures/{name}/{group_name(t.name)}", f"{name} {t.name}", e)

    if executor == "local":
        for name, cfg in configs.items():
            if on_probe:
                on_probe(name)
            try:
                results[name] = run_probe(
                    path, name, cfg, checkpoints=checkpoints, out=store.path, device=device, force=force,
                    on_progress=on_progress, on_target=on_target, executor=executor, workers=workers,
                    address=address, model_spec=model_spec, data_spec=data_spec,
                    allow_outside_links=allow_outside_links, weights=weights, strip_prefix=strip_prefix,
                    on_data=on_data, data_cache=data_cache, on_failure=on_failure(name))
            except LandscapeError as exc:
                record_failure(f"failures/{name}", name, str(exc))
        return AnalysisReport(results, failures)
    plans: list[_ProbePlan] = []  # every probe checked first, then one task per checkpoint
    for name, cfg in configs.items():
        if on_probe:
            on_probe(name)
        try:
            plans.append(_plan_probe(
                path, name, cfg, checkpoints=checkpoints, out=store.path, device=device, model_spec=model_spec,
                data_spec=data_spec, force=force, on_target=on_target, on_failure=on_failure(name),
                allow_outside_links=allow_outside_links, weights=weights, strip_prefix=strip_prefix,
                caches=data_cache))
        except LandscapeError as exc:
            record_failure(f"failures/{name}", name, str(exc))
    choice = _run_checkpoints(
        plans, executor=executor, workers=workers, address=address, on_progress=on_progress, on_data=on_data,
        on_probe=on_probe, on_probe_error=lambda plan, exc: record_failure(f"failures/{plan.name}", plan.name, str(exc)))
    results = {plan.name: plan.sorted_records() for plan in plans if plan.name not in failures}
    return AnalysisReport(results, failures, choice.executor, choice.reason)
