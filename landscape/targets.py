"""What a probe runs against: checkpoints, resolved from a RUN_DIR or a foreign file, and loaded
with their model, loss and data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from landscape.checkpoints import (
    CHECKPOINT_DIR,
    Checkpoint,
    ModelSpec,
    RunDir,
    load_state_dict,
    load_weights,
)
from landscape.errors import ConfigError


@dataclass(frozen=True)
class DataSpec:
    """Data and loss for checkpoints from outside a RUN_DIR (a RUN_DIR brings its own)."""

    dataset: str = "digits"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    loss: str = "ce"
    loss_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """One checkpoint to probe; ``name`` is its HDF5 group."""

    name: str
    path: Path
    step: int | None = None
    run_dir: Path | None = None

    def metrics(self) -> dict[str, Any]:
        """The training metrics logged at this checkpoint's step (empty outside a RUN_DIR)."""
        if self.run_dir is None or self.step is None:
            return {}
        rows = [r for r in RunDir(self.run_dir).metrics() if r.get("step") == self.step and "event" not in r]
        return {k: v for k, v in rows[-1].items() if k != "time"} if rows else {}


def select_checkpoints(checkpoints: list[Checkpoint], which: str) -> list[Checkpoint]:
    """``last``, ``first``, ``all``, ``every:N`` (every N-th, always the last) or ``S1,S2,…`` (steps)."""
    if not checkpoints:
        return []
    which = str(which).strip()
    if which == "last":
        return checkpoints[-1:]
    if which == "first":
        return checkpoints[:1]
    if which == "all":
        return checkpoints
    if which.startswith("every:"):
        try:
            n = int(which.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"bad checkpoint selection {which!r}; every:N needs N ≥ 1")
        chosen = checkpoints[::n]
        return chosen if chosen[-1] is checkpoints[-1] else [*chosen, checkpoints[-1]]
    try:
        steps = [int(s) for s in which.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(
            f"bad checkpoint selection {which!r}; use last, first, all, every:N or a list of steps"
        ) from None
    by_step = {c.step: c for c in checkpoints}
    missing = [s for s in steps if s not in by_step]
    if missing:
        raise ConfigError(
            f"no checkpoint at step(s) {', '.join(map(str, missing))}; available: "
            + ", ".join(str(c.step) for c in checkpoints)
        )
    return [by_step[s] for s in steps]


def resolve_targets(path: str | Path, checkpoints: str = "last") -> list[Target]:
    """The checkpoints named by ``path``: a RUN_DIR (selected by ``checkpoints``), one of its
    checkpoint files, a directory of foreign ``.safetensors``/``.pt``/``.pth`` files, or one such file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist; give a RUN_DIR or a checkpoint file")
    if path.is_dir() and (path / "config.json").is_file():
        run = RunDir(path)
        chosen = select_checkpoints(run.checkpoints(), checkpoints)
        if not chosen:
            raise ConfigError(f"run {path} has no checkpoints yet")
        return [Target(c.name, c.path, c.step, path) for c in chosen]
    if path.is_file() and path.parent.name == CHECKPOINT_DIR and (path.parent.parent / "config.json").is_file():
        cp = RunDir(path.parent.parent).checkpoint(path.name.removesuffix(".safetensors"))
        return [Target(cp.name, cp.path, cp.step, path.parent.parent)]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".pt", ".pth", ".bin"))
        if not files:
            raise ConfigError(f"{path} holds no config.json and no .safetensors/.pt/.pth checkpoint files")
        cps = [Checkpoint(p, i) for i, p in enumerate(files)]
        return [Target(c.name, c.path, None, None) for c in select_checkpoints(cps, checkpoints)]
    return [Target(Checkpoint(path).name, path, None, None)]


def load_model(target: Target, spec: ModelSpec | None, device: torch.device) -> torch.nn.Module:
    """The target's model with its weights, in eval mode on ``device``."""
    if target.run_dir is not None:
        spec = RunDir(target.run_dir).model_spec
    elif spec is None:
        raise ConfigError(
            f"{target.path} is not inside a run directory; give a model spec "
            "(--model NAME --num-classes C --input-shape C,H,W, or --model-factory pkg.module:fn)"
        )
    model = spec.build()
    load_weights(model, load_state_dict(target.path), source=f"checkpoint {target.path}")
    return model.to(device).eval()


def load_data_and_loss(target: Target, data_spec: DataSpec | None):
    """``(Dataset, Loss)`` the target was trained with (RUN_DIR) or that ``data_spec`` names."""
    from landscape.datasets import load_dataset
    from landscape.train.losses import build_loss
    from landscape.train.trainer import load_data

    if target.run_dir is not None:
        cfg = RunDir(target.run_dir).config
        return load_data(cfg), build_loss(cfg.loss, z_loss=cfg.z_loss, **cfg.loss_params)
    spec = data_spec or DataSpec()
    return load_dataset(spec.dataset, **spec.dataset_params), build_loss(spec.loss, **spec.loss_params)
