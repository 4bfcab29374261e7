"""What a training run is made of, built from its :class:`~landscape.train.config.TrainConfig`
before anything is written: the data, the seeded model, the objective, the optimizer and its
schedule, the steps per epoch and the checkpoint steps (:func:`build_components`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from landscape.datasets import Dataset
from landscape.models import build_model, model_params
from landscape.run_data import load_run_data
from landscape.train.config import TrainConfig, checkpoint_steps
from landscape.train.losses import Loss, SequenceLoss, build_loss, task_objective
from landscape.train.monitors import check_monitors, monitors_from_config, parse_monitor
from landscape.train.optim import build_optimizer
from landscape.train.schedules import build_schedule
from landscape.utils import seed_everything


def load_data(config: TrainConfig | Mapping[str, Any], meta: dict[str, Any] | None = None) -> Dataset:
    """The data ``config`` (a TrainConfig, or a run's config dict: ``RunDir(...).config``) names, as
    :func:`landscape.run_data.load_run_data` rebuilds it; ``meta`` (a run's ``config.json``) keeps an
    old run on the data it was trained on."""
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(dict(config))
    return load_run_data(config.to_dict(), meta)


def build_loss_from(config: TrainConfig, data: Dataset | None = None) -> Loss | SequenceLoss:
    """The training objective: the config's loss, per token when ``data`` has token targets."""
    loss = build_loss(config.loss, z_loss=config.z_loss, flooding=config.flooding, **config.loss_params)
    return loss if data is None else task_objective(loss, data)


def model_params_for(config: TrainConfig, data: Dataset) -> dict[str, Any]:
    """``config.model_params`` plus ``vocab`` from the dataset (``info["source"]["vocab"]``) when
    the model takes one and the config does not set it (recorded in config.json's model_spec)."""
    params = dict(config.model_params)
    vocab = (data.info.get("source") or {}).get("vocab") if isinstance(data.info, dict) else None
    if "vocab" not in params and vocab is not None and "vocab" in model_params(config.model):
        params["vocab"] = int(vocab)
    return params


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of a single sample is dropped (BatchNorm cannot train on it)."""
    full, rest = divmod(n_train, batch_size)
    return max(full + (1 if rest > 1 else 0), 1)


@dataclass(frozen=True)
class Components:
    """What a run is made of, built (and checked) before the output directory is touched."""

    data: Dataset
    model: torch.nn.Module
    loss_fn: Loss | SequenceLoss
    optimizer: Any
    scheduler: Any
    steps_per_epoch: int
    total_steps: int
    save_at: frozenset[int]


def with_monitors(config: TrainConfig, monitors: list[Any] | None) -> TrainConfig:
    """``config`` with ``monitors`` (names, ``"name:every=K"`` strings or configs) added to its own."""
    if not monitors:
        return config
    added = {c.name: c.to_dict() for c in map(parse_monitor, monitors)}
    return config.replace(monitors={**config.monitors, **added})


def build_components(config: TrainConfig, dev: torch.device, meta: dict[str, Any] | None = None) -> Components:
    """Data, model (seeded by ``config.seed``), objective, optimizer, schedule and checkpoint steps;
    ``meta`` (the resumed run's config.json) keeps the run on the data it was trained on
    (:func:`load_data`). Monitors are checked against the model here, before anything is written."""
    data = load_data(config, meta)
    seed_everything(config.seed)
    model = build_model(config.model, data.input_shape, data.num_classes,
                        **model_params_for(config, data)).to(dev)
    loss_fn = build_loss_from(config, data)
    optimizer = build_optimizer(
        config.optimizer,
        model,
        lr=config.lr,
        weight_decay=config.weight_decay,
        decoupled_weight_decay=config.decoupled_weight_decay,
        base=config.base_optimizer,
        **config.optimizer_params,
    )
    spe = steps_per_epoch(len(data.train), config.batch_size)
    total = config.epochs * spe
    scheduler = build_schedule(
        config.schedule,
        optimizer,
        total_steps=total,
        steps_per_epoch=spe,
        warmup_steps=round(config.warmup_epochs * spe),
        **config.schedule_params,
    )
    save_at = frozenset(checkpoint_steps(config.checkpoints, spe, total))
    if config.monitors:  # a monitor that cannot measure this model says so before anything is written
        check_monitors(monitors_from_config(config.monitors), model)
    return Components(data, model, loss_fn, optimizer, scheduler, spe, total, save_at)
