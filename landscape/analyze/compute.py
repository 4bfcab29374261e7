"""Compute one (checkpoint, probe) anywhere: load the data, the loss and the model, build the
probe's context and run it; and the checks that load them once before any work.

:func:`compute_probe` reads files and never writes them (the caller stores the result), so it
runs alike in this process, a worker process or a Ray task; :func:`_compute_checkpoint` is what a
worker runs for all the pending probes of one checkpoint, its data and model loaded once. The
probe runs with its own seeded RNG: the caller's global torch RNG state is left as it was.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from landscape.analyze.tasks import CheckpointTask, ProbeTask
from landscape.batch import forward
from landscape.checkpoints import ModelSpec, RunDir, file_fingerprint, file_sha256, load_state_dict
from landscape.datasets import describe_data
from landscape.errors import CheckpointError, ConfigError, LandscapeError
from landscape.outputs import logits_of
from landscape.probes import PROBES, ProbeContext
from landscape.targets import (
    DataSpec,
    Target,
    load_data_and_loss,
    load_model_and_record,
    model_spec_for,
    resolve_targets,
    trajectory_loader,
)
from landscape.tasks import check_shapes
from landscape.utils import keep_global_rng, seed_global_rng

_WORKER_CACHES: dict[str, Any] = {}


def _data_key(target: Target, data_spec: DataSpec | None) -> str:
    return f"data:{target.run_dir}:{data_spec if target.run_dir is None else ''}"


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


def check_model_specs(targets: list[Target], model_spec: ModelSpec | None) -> None:
    """Fail once, before any work, when a target's model cannot be built: a factory that cannot be
    imported, or one recorded in a run's config.json that the user has not named."""
    seen: set[Any] = set()
    for target in targets:
        key = target.run_dir
        if key in seen:
            continue
        seen.add(key)
        model_spec_for(target, model_spec).check()


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
    with keep_global_rng(torch.device("cpu")):  # its initial weights draw from the global RNG
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
    chunk_runner: Callable[..., Iterator[tuple[int, Any]]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the checkpoint and run the probe: ``(result, info)``; ``info`` holds what the stored
    attributes need (data, loss, seconds). Runs anywhere: it reads files, it never writes them.
    The probe's draws start from its config's ``seed``; the caller's global RNG is left as it was.
    ``chunk_runner``: where the probe's :meth:`~landscape.probes.base.ProbeContext.map_chunks` runs
    its chunks (:mod:`landscape.analyze.chunks`); None: here."""
    dev = torch.device(task.device)
    caches = _WORKER_CACHES if caches is None else caches
    with keep_global_rng(dev):
        ctx = probe_context(task, dev, caches, loaded, partial=partial, advance=advance,
                            save_partial=save_partial, chunk_runner=chunk_runner)
        start = time.perf_counter()
        seed_global_rng(getattr(task.cfg, "seed", 0), dev)
        result = PROBES[task.probe].run(ctx, task.cfg)
    info = {**caches["info"], "seconds": time.perf_counter() - start,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return result, info


def probe_context(task: ProbeTask, dev: torch.device, caches: dict[str, Any], loaded: dict[str, Any] | None,
                  *, partial: dict[str, Any] | None = None, advance: Callable[[int], None] | None = None,
                  save_partial: Callable[[dict[str, Any]], None] | None = None,
                  chunk_runner: Callable[..., Iterator[tuple[int, Any]]] | None = None) -> ProbeContext:
    """The context ``task``'s probe runs in: its data and loss (loaded once into ``caches``), its
    checkpoint's model (:func:`_load_model`), and what the stored attributes will say about them
    (``caches["info"]``)."""
    target = task.target
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
    return ProbeContext(model=model, loss=loss.per_sample, data=data, device=dev,
                        run_cache=caches.setdefault(f"run:{target.run_dir}", {}),
                        advance=advance or (lambda n: None), run_record=_run_record(target),
                        save_partial=save_partial or (lambda arrays: None), partial=partial,
                        resolve_checkpoint=lambda which: _checkpoint_tensors(target, which, caches["info"]),
                        load_trajectory=trajectory_loader(target), chunk_runner=chunk_runner)


def _run_record(target: Target) -> Callable[[], tuple[list[dict[str, Any]], dict[str, Any]]] | None:
    """``() → (metrics records, training config)`` of ``target``'s run, read when a probe asks for
    them (:attr:`~landscape.probes.base.ProbeContext.run_record`); None outside a RUN_DIR."""
    if target.run_dir is None:
        return None
    run_dir = target.run_dir

    def read() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        run = RunDir(run_dir)
        return run.metrics(), dict(run.meta.get("config") or {})

    return read


def _checkpoint_tensors(target: Target, which: str, info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors of another checkpoint: a file path, or a step/name of the target's run. The file is
    recorded in ``info["other_checkpoints"]`` (path, sha256): results that used it are bound to it too."""
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
