"""What a probe runs against: checkpoints, resolved from a RUN_DIR or a foreign file, and loaded
with their model, loss and data."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.checkpoints import (
    CHECKPOINT_DIR,
    HF_WEIGHT_FILES,
    SELECTION_HELP,
    WEIGHT_CHOICES,
    Checkpoint,
    ModelSpec,
    RunDir,
    file_sha256,
    folder_checkpoints,
    hf_weight_file,
    resolve_factory,
    restore_model,
    select_checkpoints,
)
from landscape.core.loss import regression_loss
from landscape.datasets import load_dataset
from landscape.errors import ConfigError
from landscape.run_data import load_run_data
from landscape.tasks import get_task, sequence_loss
from landscape.train.config import TrainConfig
from landscape.train.losses import build_loss, task_objective
from landscape.trajectory import run_trajectory
from landscape.user_data import as_dataset

__all__ = ["SELECTION_HELP", "DataSpec", "Target", "check_data_spec", "data_identity", "factory_data",
           "infer_model_shapes", "load_data_and_loss", "load_model", "load_model_and_record", "model_spec_for",
           "resolve_targets",
           "select_checkpoints", "trajectory_loader"]


@dataclass(frozen=True)
class DataSpec:
    """Data and loss for checkpoints from outside a RUN_DIR (a RUN_DIR brings its own).

    ``dataset`` has no default: a foreign checkpoint's data must be named. ``dataset_params``
    go to :func:`~landscape.datasets.load_dataset` (``normalize`` among them: a registered
    dataset keeps its documented preprocessing, ``npz`` arrays are used as given). Or ``factory``
    (``--data-factory``): a callable of the user's, called as ``fn(**dataset_params)``, returning
    ``(train, test)``, ``{"train": …, "test": …}`` or the train data alone, each in any form of
    :mod:`landscape.user_data`, used as given; ``task`` says what the targets are and how the
    loss is reduced (:mod:`landscape.tasks`: for a token task ``loss`` is the per-token loss; for
    ``regression`` the loss is the squared error, ``nn.MSELoss`` per sample), ``target_key``
    which key of a dict batch holds them.
    """

    dataset: str | None = None
    dataset_params: dict[str, Any] = field(default_factory=dict)
    loss: str = "ce"
    loss_params: dict[str, Any] = field(default_factory=dict)
    factory: str | None = None  # "pkg.mod:fn" / "file.py:fn" the user names: fn(**dataset_params) → data
    task: str = "classification"  # landscape.tasks: classification | causal_lm | token_classification | regression
    target_key: str = "labels"  # which key of a dict batch holds the targets

    @property
    def named(self) -> bool:
        return self.dataset is not None or self.factory is not None


@dataclass(frozen=True)
class Target:
    """One checkpoint to probe; ``name`` is its HDF5 group.

    ``step``/``epoch`` come from the RUN_DIR or are parsed from a foreign file's name (``None``
    where the name gives none); ``weights`` (ema | raw | auto) and ``strip_prefix`` say how its
    weights are read (:func:`~landscape.checkpoints.load_state_dict`,
    :func:`~landscape.checkpoints.fit_state_dict`).
    """

    name: str
    path: Path
    step: int | None = None
    run_dir: Path | None = None
    epoch: int | None = None
    weights: str = "auto"
    strip_prefix: str | None = None

    def attrs(self) -> dict[str, Any]:
        """Where this checkpoint sits in training, for its results group: ``name`` and the
        ``step``/``epoch`` that are known."""
        out: dict[str, Any] = {"name": self.name}
        if self.step is not None:
            out["step"] = self.step
        if self.epoch is not None:
            out["epoch"] = self.epoch
        return out

    def metrics(self) -> dict[str, Any]:
        """The training metrics logged at this checkpoint's step (empty outside a RUN_DIR)."""
        if self.run_dir is None or self.step is None:
            return {}
        rows = [r for r in RunDir(self.run_dir).metrics() if r.get("step") == self.step and "event" not in r]
        return {k: v for k, v in rows[-1].items() if k != "time"} if rows else {}


def _is_run_dir(path: Path) -> bool:
    """A landscape RUN_DIR (a Hugging Face checkpoint folder has a config.json too, beside its weights)."""
    return path.is_dir() and (path / "config.json").is_file() and hf_weight_file(path) is None


def resolve_targets(path: str | Path, checkpoints: str = "last", *, weights: str = "auto",
                    strip_prefix: str | None = None) -> list[Target]:
    """The checkpoints named by ``path``, selected by ``checkpoints`` (:func:`select_checkpoints`).

    ``path`` is a RUN_DIR, one of its checkpoint files, a folder of foreign weights
    (``.safetensors``/``.pt``/``.pth``/``.bin``/``.ckpt`` files and Hugging Face
    ``checkpoint-N/`` folders, in natural order: ``epoch_5`` before ``epoch_10``), a Hugging Face
    checkpoint folder, or one weights file. Lists files; reads none of them. ``weights`` and
    ``strip_prefix`` travel with each target to where it is loaded.
    """
    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"--weights takes {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    how = {"weights": weights, "strip_prefix": strip_prefix or None}
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist; give a RUN_DIR or a checkpoint file")
    if _is_run_dir(path):
        run = RunDir(path)
        chosen = select_checkpoints(run.checkpoints(), checkpoints)
        if not chosen:
            raise ConfigError(f"run {path} has no checkpoints yet")
        return [Target(c.name, c.path, c.step, path, **how) for c in chosen]
    if path.is_file() and path.parent.name == CHECKPOINT_DIR and _is_run_dir(path.parent.parent):
        cp = RunDir(path.parent.parent).checkpoint(path.name.removesuffix(".safetensors"))
        return [Target(cp.name, cp.path, cp.step, path.parent.parent, **how)]
    if path.is_dir():
        cps = folder_checkpoints(path)
        own = hf_weight_file(path)
        if own is not None and all(c.path.parent == path for c in cps):  # one Hugging Face checkpoint
            cps = [Checkpoint.from_name(own, label=path.name)]
        if not cps:
            raise ConfigError(
                f"{path} holds no config.json and no .safetensors/.pt/.pth/.bin/.ckpt checkpoint files "
                "(nor checkpoint-N/ folders holding model.safetensors or pytorch_model.bin)")
        chosen = select_checkpoints(cps, checkpoints)
    else:
        chosen = [Checkpoint.from_name(path, label=path.parent.name if path.name in HF_WEIGHT_FILES else None)]
    return [Target(c.name, c.path, c.step, None, c.epoch, **how) for c in chosen]


def model_spec_for(target: Target, spec: ModelSpec | None) -> ModelSpec:
    """The spec that builds ``target``'s model.

    A RUN_DIR brings its own spec; a factory recorded in its ``config.json`` is used only when the
    user names a factory again (``spec.factory``, which then replaces it, with the run's
    parameters, shape and class count unless the user gave their own).
    """
    if target.run_dir is not None:
        run_spec = RunDir(target.run_dir).model_spec
        if spec is not None and spec.factory and spec.trusted:
            return ModelSpec(name=run_spec.name, input_shape=spec.input_shape or run_spec.input_shape,
                             num_classes=spec.num_classes or run_spec.num_classes,
                             params=spec.params or run_spec.params, factory=spec.factory)
        return run_spec
    if spec is None:
        raise ConfigError(
            f"{target.path} is not inside a run directory; give a model spec "
            "(--model NAME --num-classes C --input-shape C,H,W, or --model-factory pkg.module:fn)"
        )
    return spec


def infer_model_shapes(spec: ModelSpec | None, data_spec: DataSpec) -> ModelSpec | None:
    """``spec`` with the input shape and class count it lacks taken from the registered dataset
    ``data_spec`` names (which is loaded for it); unchanged for a factory, a complete spec, no
    spec, or no named dataset."""
    if spec is None or spec.factory is not None or data_spec.dataset is None:
        return spec
    if spec.input_shape is not None and spec.num_classes is not None:
        return spec
    data = load_dataset(data_spec.dataset, **data_spec.dataset_params)
    return ModelSpec(name=spec.name, input_shape=spec.input_shape or data.input_shape,
                     num_classes=spec.num_classes or data.num_classes, params=spec.params)


def check_inside_run(target: Target, allow_outside: bool = False) -> None:
    """A RUN_DIR checkpoint that is a symlink to a file outside the run is refused unless asked for."""
    if target.run_dir is None or allow_outside:
        return
    real, run = target.path.resolve(), Path(target.run_dir).resolve()
    if not real.is_relative_to(run):
        raise ConfigError(
            f"checkpoint {target.path} links to {real}, outside the run directory {target.run_dir}; "
            "copy the file into the run, or allow it with --allow-outside-links"
        )


def load_model(target: Target, spec: ModelSpec | None, device: torch.device,
               allow_outside: bool = False) -> torch.nn.Module:
    """The target's model with its weights, in eval mode on ``device``."""
    return load_model_and_record(target, spec, device, allow_outside)[0]


def load_model_and_record(target: Target, spec: ModelSpec | None, device: torch.device,
                          allow_outside: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(model, record)``: the target's model in eval mode on ``device``, and how its weights were
    read (``weights`` and ``strip_prefix`` as asked, the file's format, the wrapper key used, EMA or
    raw, the prefix stripped), to be stored beside the results."""
    check_inside_run(target, allow_outside)
    return restore_model(model_spec_for(target, spec), target.path, device, weights=target.weights,
                         strip_prefix=target.strip_prefix, check_finite=True)


def trajectory_loader(target: Target) -> Callable[[str], tuple[list[dict[str, torch.Tensor]], list[int]]] | None:
    """``kind → (states, steps)``: the checkpoints of ``target``'s run as the tensors a direction of
    that kind perturbs (:func:`landscape.trajectory.run_trajectory`); None outside a RUN_DIR."""
    if target.run_dir is None:
        return None
    run_dir = target.run_dir
    return lambda kind: run_trajectory(run_dir, kind=kind)


def check_data_spec(targets: list[Target], data_spec: DataSpec | None) -> None:
    """Fail before any work (and before a results file is opened) when a foreign target's data
    are not named: the error :func:`load_data_and_loss` would raise for it."""
    foreign = next((t for t in targets if t.run_dir is None), None)
    if foreign is not None and (data_spec is None or not data_spec.named):
        raise ConfigError(_no_dataset_message(foreign))
    if data_spec is not None and data_spec.factory:
        resolve_factory(data_spec.factory, "data factory")


_RUN_DATA_KEYS = ("dataset", "dataset_params", "train_size", "label_noise", "random_labels", "imbalance_ratio",
                  "data_seed", "loss", "loss_params", "z_loss", "flooding")


def data_identity(target: Target, data_spec: DataSpec | None) -> str:
    """A hash of what decides the data and the loss a probe of ``target`` sees: the run's data and
    loss settings (RUN_DIR) or the user's data spec, plus the sha256 of every file a dataset
    parameter names (an npz). Stored results are reused only under the same identity."""
    if target.run_dir is not None:
        config = RunDir(target.run_dir).meta.get("config") or {}
        what: dict[str, Any] = {k: config.get(k) for k in _RUN_DATA_KEYS}
        params = what.get("dataset_params") or {}
    else:
        spec = data_spec or DataSpec()
        what = dataclasses.asdict(spec)
        params = spec.dataset_params
    files = {}
    for key, value in (params.items() if isinstance(params, dict) else ()):
        if isinstance(value, str) and Path(value).is_file():
            files[key] = file_sha256(value)
    what["files"] = files
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _no_dataset_message(target: Target) -> str:
    return (f"{target.path} is not inside a run directory; name its data with --dataset NAME "
            "[--dataset-param path=FILE.npz] (e.g. --dataset npz --dataset-param path=mine.npz; "
            "see `landscape datasets`)")


def load_data_and_loss(target: Target, data_spec: DataSpec | None):
    """``(Dataset, Loss)`` the target was trained with (RUN_DIR) or that ``data_spec`` names."""
    if target.run_dir is not None:
        run = RunDir(target.run_dir)
        cfg = TrainConfig.from_run(run)
        data = load_run_data(cfg.to_dict(), run.meta)  # the data the run saw, as its config.json records it
        return data, task_objective(build_loss(cfg.loss, z_loss=cfg.z_loss, **cfg.loss_params), data)
    if data_spec is None or not data_spec.named:
        raise ConfigError(_no_dataset_message(target))
    spec = data_spec
    task = get_task(spec.task)
    if (task.name != "classification" or spec.target_key != "labels") and not spec.factory:
        raise ConfigError("--task and --target-key describe the data of a --data-factory; a registered "
                          "--dataset brings its own (classification) targets")
    data = factory_data(spec) if spec.factory else load_dataset(spec.dataset, **spec.dataset_params)
    if task.regression:
        if spec.loss not in ("ce", "mse") or spec.loss_params:
            raise ConfigError(f"task 'regression' uses the squared error (nn.MSELoss per sample); --loss "
                              f"{spec.loss!r} is a classification loss")
        return data, TaskLoss(regression_loss(nn.MSELoss(), *_first_pair(data)),
                              {"name": "squared_error", "params": {}, "task": task.name})
    loss = build_loss(spec.loss, **spec.loss_params)
    if task.tokens:
        scale = len(data.train) / data.info["task"]["valid_tokens"]["train"]
        return data, TaskLoss(sequence_loss(loss.per_sample, task, scale),
                              {**loss.spec(), "task": task.name, "token_scale": scale})
    return data, loss


class TaskLoss:
    """A per-sample loss built for a task (token-weighted, or squared error), with the record of it
    (``spec()``), where analyze expects a :class:`~landscape.train.losses.Loss`."""

    def __init__(self, per_sample, spec: dict[str, Any]) -> None:
        self.per_sample = per_sample
        self._spec = spec

    def spec(self) -> dict[str, Any]:
        return dict(self._spec)


def _first_pair(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of the first sample twice (outputs shaped like them), to fit the regression loss."""
    y = data.train.take(torch.arange(1)).y
    return y.clone(), y


def factory_data(spec: DataSpec):
    """The data a user's ``--data-factory`` returns, used as given (tensors in memory; a Dataset or
    DataLoader streamed batch by batch, :mod:`landscape.core.data`)."""
    fn = resolve_factory(spec.factory, "data factory")
    try:
        out = fn(**spec.dataset_params)
    except Exception as exc:
        raise ConfigError(f"data factory {spec.factory!r} failed: {type(exc).__name__}: {exc}") from None
    if isinstance(out, dict):
        if "train" not in out:
            raise ConfigError(f"data factory {spec.factory!r} returned a dict without 'train' "
                              f"(keys: {', '.join(map(str, out))})")
        train, test = out["train"], out.get("test")
    elif isinstance(out, tuple) and len(out) == 2 and not isinstance(out[0], torch.Tensor) \
            and not hasattr(out[0], "shape"):
        train, test = out  # (train, test), each a loader / dataset / (x, y) pair
    else:
        train, test = out, None
    data = as_dataset(train, test, task=spec.task, target_key=spec.target_key)
    data.info["source"] = {**data.info["source"], "factory": spec.factory, "params": dict(spec.dataset_params)}
    return dataclasses.replace(data, name=spec.factory)
