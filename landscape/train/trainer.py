"""The training loop: seeded, resumable, writing a RUN_DIR.

RUN_DIR/
  config.json                         {"config": TrainConfig, "model_spec", "dataset", "versions", ...}
  checkpoints/step_000000.safetensors model weights (state_dict incl. BatchNorm buffers)
  checkpoints/step_000000.state.pt    optimizer / schedule / RNG state for resume (weights_only)
  metrics.jsonl                       one object per evaluation: step, epoch, lr, train/test loss, CE, acc;
                                      monitor values (config.monitors) join the record of their step, or
                                      make one of their own ({"step", "epoch", "lr", values}) between evaluations

Early stop (``stop_at_train_loss=X``): at every epoch end (step 0 included) the evaluated full
train-set ``train_loss`` (the training objective's per-sample loss, no flooding; ``train_ce`` is
logged beside it) is compared with X; at the first one ≤ X the run saves a checkpoint there,
appends ``{"step", "epoch", "event": "stopped", "rule": "stop_at_train_loss", "threshold": X,
"value": train_loss}`` to metrics.jsonl and ends (:attr:`TrainResult.stopped`).

Determinism: the model is initialized from ``seed``; epoch ``e`` visits the training set in the
order ``randperm(N, generator=seed·1_000_003 + e)``; the torch RNG state (dropout) is saved with
every checkpoint. A run resumed from any checkpoint therefore ends with bit-identical weights
(on CPU) to an uninterrupted one. Monitors (:mod:`landscape.train.monitors`) read the model
functionally and touch no RNG; their states (warm-start vector, previous weights) are saved with
every checkpoint, so a resumed run repeats their values too.

The steps, one module each: :mod:`~landscape.train.components` builds what the run is made of
(data, model, objective, optimizer, schedule) before anything is written;
:mod:`~landscape.train.run_setup` checks and prepares the run directory (resume, overwrite, the
cleanup after a full disk); :mod:`~landscape.train.loop` runs the steps of one call
(:mod:`~landscape.train.progress` draws its bar). This module holds :func:`train`, which chains
them, and re-exports their public names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from landscape.train.components import (
    Components,
    build_components,
    build_loss_from,
    load_data,
    model_params_for,
    steps_per_epoch,
    with_monitors,
)
from landscape.train.config import TrainConfig
from landscape.train.loop import TrainResult, _Run, epoch_order
from landscape.train.run_setup import (
    RESUME_HINT,
    _clean_after_disk_full,
    _recorded_meta,
    open_run_dir,
)
from landscape.utils import disk_full_error, is_disk_full, resolve_device

__all__ = ["RESUME_HINT", "Components", "TrainResult", "build_components", "build_loss_from", "epoch_order",
           "load_data", "model_params_for", "open_run_dir", "steps_per_epoch", "train", "with_monitors"]


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    stop_after: int | None = None,
    monitors: list[Any] | None = None,
) -> TrainResult:
    """Train ``config`` into the run directory ``out``.

    ``resume`` continues from the newest checkpoint that has its trainer state (a new run if ``out``
    is empty); ``overwrite`` replaces an existing run directory. ``stop_after`` ends this call after
    that many optimizer steps (as if interrupted; resume finishes the run). ``monitors``
    (names, ``"name:every=K,..."`` strings or :class:`~landscape.train.monitors.MonitorConfig`)
    are added to ``config.monitors`` (and so recorded in config.json); their values go into
    metrics.jsonl at every step they are due (:mod:`landscape.train.monitors`).
    """
    out = Path(out)
    config = with_monitors(config, monitors)
    dev = resolve_device(device)
    parts = build_components(config, dev, _recorded_meta(out) if resume else None)
    # Only now, with every component built and validated, touch the output directory.
    resuming = open_run_dir(out, config, resume, overwrite)
    writing = {"path": out}  # what is being written: named by a disk-full error
    try:
        return _Run(out, config, dev, parts, writing).run(resuming, progress, stop_after)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        _clean_after_disk_full(out)
        raise disk_full_error(writing["path"], RESUME_HINT) from exc
