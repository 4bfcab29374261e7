"""Run probes over checkpoints and store the results in one HDF5 file.

``run_probe(path, "hessian", cfg)`` resolves the checkpoints (:mod:`landscape.targets`), skips
those whose results are already stored with the same settings, runs the probe on each of the
others, and writes ``/<checkpoint>/<probe>`` through :class:`landscape.store.Store` with every
setting needed to repeat it as attributes; :func:`analyze` does so for several probes at once.

The package, one concept a module: :mod:`~landscape.analyze.plan` (what a probe's run will do,
checked before any work), :mod:`~landscape.analyze.stored` (what is already stored and may be
served or resumed), :mod:`~landscape.analyze.tasks` (the picklable units of work),
:mod:`~landscape.analyze.compute` (one (checkpoint, probe) computed anywhere) and
:mod:`~landscape.analyze.schedule` (where the tasks run). Reading results back is
:mod:`landscape.results`; the cross-run study is :mod:`landscape.study`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from landscape.analyze.compute import (
    _load_model,  # noqa: F401  (re-exported: imported from landscape.analyze by tests)
    check_model_on_data,
    check_model_specs,
    compute_probe,
    keep_global_rng,
    preload_data,
)
from landscape.analyze.plan import (
    ANALYZE_EXECUTORS,
    ProbeRecord,
    _plan_probe,
    _ProbePlan,
    check_executor,
    default_output,
)
from landscape.analyze.schedule import _compute_here, _run_checkpoints
from landscape.analyze.stored import (  # noqa: F401  (re-exported: facade.py and tests import them from here)
    _same_settings,
    _storable,
)
from landscape.analyze.tasks import CheckpointTask, ProbeTask
from landscape.checkpoints import ModelSpec
from landscape.errors import ConfigError, LandscapeError
from landscape.probes import PROBES, make_config
from landscape.probes.base import default_probes, measure_families, measure_table
from landscape.results import collect_series
from landscape.store import Store, group_name
from landscape.targets import DataSpec, Target, check_data_spec, resolve_targets

__all__ = [
    "ANALYZE_EXECUTORS", "AnalysisReport", "CheckpointTask", "ProbeRecord", "ProbeTask", "analyze",
    "check_executor", "check_model_on_data", "check_model_specs", "collect_series", "compute_probe",
    "default_output", "keep_global_rng", "parse_probes", "preload_data", "probe_configs", "run_probe",
]


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
    identical, each is stored as it comes back, and this process alone writes them. A chunked probe
    (the surface) runs in this process with its chunks on the executor, so that each chunk is
    stored as it comes back and interrupted work resumes under any executor.
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


def probe_configs(names: list[str], settings: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Each probe's config: its defaults updated by ``settings[probe]`` (:func:`make_config`).
    Settings for a probe that is not among ``names`` are refused (they would do nothing)."""
    settings = {PROBES.canonical(p) if p in PROBES else p: given for p, given in (settings or {}).items()}
    idle = sorted(p for p, given in settings.items() if given and p not in names)
    if idle:
        one = len(idle) == 1
        raise ConfigError(f"settings given for {', '.join(idle)}, which {'is' if one else 'are'} not run "
                          f"(the probes run: {', '.join(names)}); add {'it' if one else 'them'} to the probes "
                          f"or drop {'its' if one else 'their'} settings")
    return {name: make_config(name, **settings.get(name, {})) for name in names}


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
    check_executor(executor, workers)
    names = parse_probes(probes)
    configs = probe_configs(names, settings)
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
