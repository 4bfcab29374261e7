"""Sweeps: train the cartesian product of hyper-parameters, one RUN_DIR each, skipping finished runs.

A grid file (JSON or YAML)::

    {"base": {"model": "mlp", "epochs": 20, "checkpoints": "every:5"},
     "grid": {"lr": [0.01, 0.1], "batch_size": [32, 256], "optimizer": ["sgd", "sam"],
              "optimizer_params.rho": [0.05], "seed": [0, 1]}}

``base`` holds :class:`~landscape.train.config.TrainConfig` keys; ``grid`` maps keys to the values
to combine (``*_params.name`` sets one entry of a params dict). Each run is named after its grid
values, e.g. ``lr=0.01,batch_size=32,optimizer=sgd,rho=0.05,seed=0``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape.errors import ConfigError
from landscape.executors import map_tasks
from landscape.train.config import TrainConfig


@dataclass(frozen=True)
class SweepRun:
    name: str
    run_dir: Path
    status: str  # "trained" or "finished" (already complete, skipped)
    test_acc: float | None = None


def read_grid(path: str | Path) -> dict[str, Any]:
    """A grid file as a dict: JSON by default, YAML for ``.yaml``/``.yml``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read grid file {path}: {exc.strerror}") from exc
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError("YAML grids need PyYAML (pip install pyyaml); or write the grid as JSON") from exc
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"grid file {path} is not valid YAML ({exc})".replace("\n", " ")) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"grid file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc


def expand_grid(spec: dict[str, Any]) -> list[tuple[str, TrainConfig]]:
    """``(name, config)`` for every combination of the grid's values, in a fixed order."""
    if not isinstance(spec, dict) or set(spec) - {"base", "grid"}:
        raise ConfigError("a sweep grid is an object with keys 'base' (TrainConfig keys) and 'grid' (key → list)")
    base, grid = dict(spec.get("base") or {}), dict(spec.get("grid") or {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid entry {key!r} must be a non-empty list of values, got {values!r}")
    keys = list(grid)
    runs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        config = json.loads(json.dumps(base))  # a deep copy
        for key, value in zip(keys, combo, strict=True):
            head, dot, tail = key.partition(".")
            if dot:
                if not head.endswith("_params"):
                    raise ConfigError(f"grid key {key!r}: dotted keys set one entry of a *_params dict, e.g. optimizer_params.rho")
                config.setdefault(head, {})[tail] = value
            else:
                config[key] = value
        name = ",".join(f"{k.rpartition('.')[2]}={v}" for k, v in zip(keys, combo, strict=True)) or "run"
        runs.append((name.replace("/", "_"), TrainConfig.from_dict(config)))
    return runs


def is_finished(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a run whose final checkpoint is written."""
    from landscape.checkpoints import RunDir

    if not (Path(run_dir) / "config.json").is_file():
        return False
    run = RunDir(run_dir)
    cps = run.checkpoints()
    return bool(cps) and cps[-1].step == run.meta.get("total_steps")


def _train_task(task: tuple[dict[str, Any], str, str]) -> float | None:
    from landscape.train.trainer import train

    config, run_dir, device = task
    result = train(TrainConfig.from_dict(config), run_dir, resume=True, device=device, progress=False)
    return result.final.get("test_acc")


def sweep(grid: str | Path | dict[str, Any], out: str | Path, *, device: str = "auto", executor: str = "local",
          workers: int | None = None, address: str | None = None) -> list[SweepRun]:
    """Train every run of ``grid`` into ``out/<name>/``; finished runs are skipped, interrupted ones resume."""
    spec = read_grid(grid) if not isinstance(grid, dict) else grid
    runs = expand_grid(spec)
    out = Path(out)
    todo = [(name, cfg) for name, cfg in runs if not is_finished(out / name)]
    tasks = [(cfg.to_dict(), str(out / name), device) for name, cfg in todo]
    accs = dict(zip([n for n, _ in todo], map_tasks(_train_task, tasks, executor=executor, workers=workers,
                                                      address=address), strict=True))
    return [SweepRun(name, out / name, "trained" if name in accs else "finished", accs.get(name)) for name, _ in runs]
