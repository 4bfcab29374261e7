"""What one probe's run will do, decided before any work: its config checked, its checkpoints
resolved, what is already stored served, the rest listed to compute, and how each result is
written (by this process alone: one writer per results file).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from landscape.analyze.compute import check_model_specs, preload_data
from landscape.analyze.stored import _check_stored, _storable
from landscape.analyze.tasks import ProbeTask
from landscape.checkpoints import ModelSpec, file_fingerprint, file_sha256
from landscape.errors import CheckpointError, ConfigError
from landscape.probes import PROBES
from landscape.store import Store, group_name, settings_hash
from landscape.targets import DataSpec, Target, check_data_spec, data_identity, resolve_targets
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



ANALYZE_EXECUTORS = ("local", "auto", "process", "ray")


def check_executor(executor: str, workers: int | None) -> None:
    """An executor :func:`analyze` knows, and a positive number of workers."""
    if executor not in ANALYZE_EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid: {', '.join(ANALYZE_EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be ≥ 1, got {workers}")
