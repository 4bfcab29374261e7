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
                       advance=advance or (lambda n: None), run_dir=target.run_dir,
                       save_partial=save_partial or (lambda arrays: None), partial=partial,
                       resolve_checkpoint=lambda which: _checkpoint_tensors(target, which, caches["info"]),
                       load_trajectory=trajectory_loader(target))
    torch.manual_seed(getattr(task.cfg, "seed", 0))
    start = time.perf_counter()
    result = spec.run(ctx, task.cfg)
    info = {**caches["info"], "seconds": time.perf_counter() - start,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return result, info


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
    import json

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

DEFAULT_PROBES = ("hessian", "sharpness", "coherence", "collapse", "rankme")


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
            return list(DEFAULT_PROBES)
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


# ---- measures of many runs, for correlating with generalization -------------------------------

MEASURES: dict[str, tuple[str, str]] = {  # name → (probe, key path in its stored group)
    "lambda_max": ("hessian", "eigenvalues"),
    "hessian_trace": ("hessian", "trace"),
    "first_order_flatness": ("sharpness", "first_order_flatness"),
    "pac_bayes_inv_sigma2": ("sharpness", "pac_bayes/inv_sigma2"),
    "pac_bayes_mag_inv_sigma2": ("sharpness", "pac_bayes/inv_sigma2_mag"),
    "coherence_m_alpha": ("coherence", "m_alpha"),
    "nc1_train": ("collapse", "train/nc1"),
    "rankme_train": ("rankme", "train/rankme"),
    # Jiang et al. 2020, Appendix C (landscape.probes.measures): stored under the same names
    **{name: ("measures", name) for name in (
        "num_params", "inv_margin2", "log_prod_spectral", "log_prod_spectral_over_margin", "log_sum_spectral",
        "log_sum_spectral_over_margin", "fro_over_spectral", "log_spec_orig_main", "log_spec_init_main",
        "log_prod_frobenius", "log_prod_frobenius_over_margin", "log_sum_frobenius",
        "log_sum_frobenius_over_margin", "dist_init_frobenius", "dist_init_spectral", "param_norm",
        "path_norm", "path_norm_over_margin", "steps_to_ce_0.1", "steps_ce_0.1_to_0.01", "gradient_noise",
        "pacbayes_init", "pacbayes_orig", "pacbayes_flatness", "pacbayes_mag_init", "pacbayes_mag_orig",
        "pacbayes_mag_flatness", "sharpness_init", "sharpness_orig", "sharpness_flatness")},
}


MEASURE_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (  # Jiang et al. 2020's grouping, first match wins
    ("VC (parameter count)", ("num_params",)),
    ("output margin", ("inv_margin2",)),
    ("sharpness-based", ("pacbayes", "pac_bayes", "sharpness", "first_order_flatness")),
    ("curvature (Hessian)", ("lambda_max", "hessian_")),
    ("norm-based", ("log_prod_", "log_sum_", "fro_over", "log_spec_", "dist_init", "param_norm", "path_norm")),
    ("optimization-based", ("steps_", "gradient_noise", "coherence")),
    ("representation", ("nc1", "rankme")),
)


def measure_family(name: str) -> str:
    """The family of a measure of :data:`MEASURES` (``sharpness@0.002`` is sharpness-based), for
    the per-family figure of ``landscape correlate``."""
    for family, prefixes in MEASURE_FAMILIES:
        if name.startswith(prefixes):
            return family
    return "other"


def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items() if not isinstance(v, dict | list)})
        else:
            out[key] = value
    return out


def collect_runs(run_dirs: list[str | Path], checkpoint: str = "last",
                 on_skip: Callable[[str, str], None] | None = None) -> list[dict[str, Any]]:
    """One record per run: its hyper-parameters (``lr``, ``optimizer_params.rho``, …), the metrics
    logged at the checkpoint (``train_acc``, ``test_acc``, …) and every measure of :data:`MEASURES`
    stored for it in ``RUN_DIR/analysis.h5`` (sharpness once per radius: ``sharpness@0.002``).

    ``checkpoint`` is one rule for every run (:func:`landscape.run_selection.select_run_checkpoint`):
    ``last``, ``epoch=K``, ``step=S``, ``stop_at_train_loss=X`` (each run's first checkpoint whose
    logged train loss is ≤ X), …; the record names the checkpoint chosen (``checkpoint``). A run
    that never meets a ``stop_at_…`` rule is left out and told to ``on_skip(run, reason)``; without
    ``on_skip`` it is a :class:`~landscape.errors.ConfigError` naming every such run."""
    from landscape.checkpoints import RunDir
    from landscape.run_selection import NotReached, select_run_checkpoint

    records = []
    missed: list[NotReached] = []
    for run_dir in run_dirs:
        run = RunDir(run_dir)
        try:
            target = select_run_checkpoint(run_dir, checkpoint)
        except NotReached as exc:
            missed.append(exc)
            if on_skip is not None:
                on_skip(exc.run, exc.reason)
            continue
        record: dict[str, Any] = {"run": str(run_dir), "step": target.step, "checkpoint": target.name,
                                  **_flat_config(run.meta["config"])}
        record.update({k: v for k, v in target.metrics().items() if isinstance(v, int | float)})
        store = Store(Path(run_dir) / "analysis.h5")
        stored = set(store.groups())
        for name, (probe, key) in MEASURES.items():
            group = f"{group_name(target.name)}/{probe}"
            if group in stored:
                value: Any = store.read(group)[0]
                for part in key.split("/"):
                    value = value.get(part) if isinstance(value, dict) else None
                if value is not None:
                    record[name] = float(np.asarray(value).reshape(-1)[0])
        if f"{group_name(target.name)}/sharpness" in stored:
            r = store.read(f"{group_name(target.name)}/sharpness")[0]
            for rho, delta in zip(np.atleast_1d(r["rhos"]), np.atleast_1d(r["delta_loss"]), strict=True):
                record[f"sharpness@{rho:g}"] = float(delta)
        records.append(record)
    if missed and on_skip is None:
        shown = "; ".join(str(e) for e in missed[:3]) + (f"; and {len(missed) - 3} more" if len(missed) > 3 else "")
        raise ConfigError(f"{len(missed)} of {len(run_dirs)} runs have no checkpoint under {checkpoint!r} ({shown}); "
                          "train them further, or choose another rule")
    return records


HYPERPARAMETERS = ("lr", "batch_size", "optimizer", "optimizer_params.rho", "weight_decay", "loss", "label_noise",
                   "model_params.width", "model_params.depth", "epochs", "schedule")


NOT_AXES = ("seed", "data_seed", "checkpoints", "eval_batch_size")  # training settings that are not hyper-parameters


def _config_keys(records: list[dict[str, Any]]) -> list[str]:
    """The training-config keys of the records (``lr``, ``optimizer_params.momentum``, …): those whose
    first part is a :class:`~landscape.train.config.TrainConfig` field."""
    from landscape.train.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    keys = dict.fromkeys(k for r in records for k in r if k.split(".", 1)[0] in fields)
    return list(keys)


def varying_axes(records: list[dict[str, Any]], *, seed: bool = False) -> list[str]:
    """The hyper-parameters that take more than one value across the runs: those of
    :data:`HYPERPARAMETERS` first, in that order, then any other training-config key that varies
    (``optimizer_params.momentum``, ``loss_params.smoothing``, …). ``seed`` is not an axis unless
    ``seed=True`` (Jiang et al. train one run per configuration; :func:`correlation_table` averages
    the seeds of a configuration instead)."""
    others = [k for k in _config_keys(records) if k not in HYPERPARAMETERS and k not in NOT_AXES]
    keys = [*HYPERPARAMETERS, *others, *(("seed",) if seed else ())]
    return [k for k in keys if len({json.dumps(r.get(k), sort_keys=True) for r in records}) > 1]


def correlation_table(records: list[dict[str, Any]], *, gap: str = "acc", axes: list[str] | None = None,
                      n_boot: int = 1000, seed: int = 0, cmi: bool = False, cmi_variant: str = "pgdl",
                      average_seeds: bool = True) -> list[dict[str, Any]]:
    """For every measure present in all records: Kendall τ with the generalization gap, its bootstrap
    95% interval, Spearman ρ, the granulated Kendall Ψ over ``axes`` (default: the hyper-parameters
    that vary, seed excepted; Jiang et al. 2019) with its per-axis values, and optionally the CMI
    score (``cmi_variant``: "pgdl", the PGDL 2020 scorer, or "landscape"; see
    :func:`landscape.correlate.conditional_mutual_information`; NaN where it is undefined, e.g. the
    PGDL form with fewer than 2 axes). Rows are ranked by |τ|.

    Unless ``seed`` is one of ``axes`` (or ``average_seeds=False``), runs that differ only in their
    seed (every training-config key equal but ``seed``) are one configuration: its measure and gap
    are the means over its seeds, and τ, Ψ, CMI and the bootstrap run over configurations. Each row
    says so: ``n`` configurations from ``runs`` runs, ``seeds_per_config`` (a number, or "min-max")."""
    from landscape.correlate import (
        CMI_VARIANTS,
        bootstrap_ci,
        conditional_mutual_information,
        generalization_gap,
        granulated_kendall,
        kendall_tau,
        seed_groups,
        spearman,
    )
    from landscape.train.config import TrainConfig

    if cmi_variant not in CMI_VARIANTS:
        raise ConfigError(f"unknown CMI variant {cmi_variant!r}; use one of {', '.join(CMI_VARIANTS)}")
    axes = varying_axes(records) if axes is None else list(axes)
    if len(records) < 2:
        raise ConfigError(f"correlating needs at least 2 runs, got {len(records)}")
    g_runs = generalization_gap(records, kind=gap)
    if average_seeds and "seed" not in axes:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        config_keys = [k for k in dict.fromkeys(k for r in records for k in r) if k.split(".")[0] in fields]
        groups = seed_groups(records, [*config_keys, *axes])
    else:
        groups = [[k] for k in range(len(records))]
    if len(groups) < 2:
        raise ConfigError(f"the {len(records)} runs are {len(groups)} configuration once seeds are averaged; "
                          "correlating needs at least 2 (or name seed in the axes)")
    sizes = sorted({len(grp) for grp in groups})
    seeds_per_config: int | str = sizes[0] if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    configs = [records[grp[0]] for grp in groups]
    g = np.array([g_runs[grp].mean() for grp in groups])
    rows = []
    names = [k for k in records[0] if k in MEASURES or k.startswith("sharpness@")]
    for name in names:
        values = [r.get(name) for r in records]
        if any(v is None or not np.isfinite(v) for v in values):
            continue
        per_run = np.array(values, dtype=float)
        mu = np.array([per_run[grp].mean() for grp in groups])
        lo, hi = bootstrap_ci(mu, g, n_boot=n_boot, seed=seed)
        row = {"measure": name, "n": len(mu), "tau": kendall_tau(mu, g), "tau_low": lo, "tau_high": hi,
               "spearman": spearman(mu, g), "runs": len(records), "seeds_per_config": seeds_per_config}
        with_gap = [{**{a: json.dumps(r.get(a)) for a in axes}, "_gap": gi, "_measure": m}
                    for r, gi, m in zip(configs, g, mu, strict=True)]
        if axes:
            try:
                psi = granulated_kendall(with_gap, "_measure", "_gap", axes)
                row["psi"] = psi["psi"]
                row.update({f"psi({a})": v for a, v in psi["per_axis"].items()})
            except ConfigError:  # no axis has a group of ≥ 2 runs that agree on the other axes
                row["psi"] = float("nan")
        if cmi:
            try:
                row["cmi"] = conditional_mutual_information(with_gap, "_measure", "_gap", axes,
                                                            variant=cmi_variant)["score"] if axes else float("nan")
            except ConfigError:  # PGDL needs ≥ 2 axes; a constant gap has no ordering to explain
                row["cmi"] = float("nan")
        rows.append(row)
    return sorted(rows, key=lambda r: -abs(r["tau"]))
