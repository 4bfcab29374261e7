"""What every example shares: its command line, runs that resume, probes, figures, the numbers file.

Every example is run as ``python examples/<name>.py [--scale default|full] [--smoke] [--out DIR]
[--device D] [--force]``:

- ``--scale default`` (the default) trains on sklearn's digits or synthetic data and finishes on
  two CPU cores within minutes; ``--scale full`` is the GPU-sized version (ResNet-20 on CIFAR-10
  when its files are under ``data/``, else 3×32×32 synthetic data: :func:`full_dataset`).
- ``--smoke`` keeps the chosen scale's models and data but shrinks epochs and sizes to seconds;
  CI runs every example this way (``tests/test_examples.py``) so none of them rots.
- Runs go to ``OUT/<run>/`` (default ``runs/examples/<example>/<scale>[-smoke]``), figures to
  ``OUT/figures/`` and the measured numbers to ``OUT/numbers.json``. Rerunning reuses finished
  runs and stored probe results and resumes interrupted ones; ``--force`` retrains and recomputes.

An example is a function ``run(opts) -> numbers`` wrapped by :func:`main`, which parses the command
line, times the work, writes ``numbers.json`` and turns a :class:`~landscape.errors.LandscapeError`
into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landscape.errors import DataError, LandscapeError
from landscape.train.config import TrainConfig
from landscape.utils import atomic_write_json, resolve_device, versions


@dataclass(frozen=True)
class Options:
    """One invocation of an example: its scale, where it writes and what it may reuse."""

    name: str
    scale: str = "default"
    smoke: bool = False
    out: Path = Path("runs/examples")
    device: str = "auto"
    force: bool = False
    progress: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    def __getitem__(self, key: str) -> Any:
        """The example's size setting ``key`` at this scale (``opts["epochs"]``)."""
        return self.settings[key]


def parse_options(name: str, doc: str | None, scales: Mapping[str, Mapping[str, Any]],
                  smoke: Mapping[str, Any], argv: list[str] | None = None) -> Options:
    """Parse the command line. ``scales[scale]`` are the example's sizes; ``--smoke`` overrides them
    with ``smoke`` (only the sizes: the scale's models and data stay)."""
    parser = argparse.ArgumentParser(prog=f"examples/{name}.py", description=(doc or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(scales), default="default",
                        help="default: CPU-sized (minutes); full: GPU-sized")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), as CI runs it")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/examples/<example>/<scale>[-smoke])")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, … (default: CUDA when present)")
    parser.add_argument("--force", action="store_true", help="retrain and recompute instead of reusing stored work")
    args = parser.parse_args(argv)
    global _smoke
    _smoke = args.smoke
    settings = {**scales[args.scale], **(smoke if args.smoke else {})}
    out = args.out or Path("runs/examples") / name / (args.scale + ("-smoke" if args.smoke else ""))
    resolve_device(args.device)  # a bad --device fails here, before any work
    return Options(name, args.scale, args.smoke, out, args.device, args.force, sys.stderr.isatty(), settings)


_SMOKE_DATA = {"image_shape": [3, 8, 8], "n_train": 64, "n_test": 64}
_smoke = False  # set by parse_options: a --smoke run shrinks the full scale's data (full_dataset)


def full_dataset(**synthetic: Any) -> tuple[str, dict[str, Any]]:
    """``("cifar10", {})`` when CIFAR-10's python pickles are found (``data/`` or ``$LANDSCAPE_DATA``),
    else a 10-class Gaussian mixture shaped 3×32×32 (``synthetic`` overrides its parameters).

    In a ``--smoke`` run it is always the mixture, shrunk to 64 + 64 samples of 3×8×8 (the full
    scale's models at a size CI can afford: a ResNet-20 HVP on 64 CIFAR-sized images takes seconds
    on one core)."""
    from landscape.datasets import load_dataset

    if _smoke:
        return "gaussian_mixture", {**synthetic, **_SMOKE_DATA}
    try:
        load_dataset("cifar10")
        return "cifar10", {}
    except DataError:
        say("CIFAR-10 files not found: the full scale uses 3×32×32 synthetic data instead")
        return "gaussian_mixture", {"image_shape": [3, 32, 32], "n_train": 5000, "n_test": 2000, **synthetic}


def model_and_data(opts: Options) -> dict[str, Any]:
    """The :class:`TrainConfig` fields of model and data at this scale, from the settings ``width``,
    ``train_size`` (and ``n_train``/``n_test`` for the synthetic stand-in): a two-layer MLP on digits,
    or ResNet-20 on :func:`full_dataset` (``train_size`` applies to CIFAR-10 only)."""
    if opts.scale == "full":
        sizes = {k: opts[k] for k in ("n_train", "n_test") if opts.settings.get(k) is not None}
        dataset, params = full_dataset(**sizes)
        return {"model": "resnet20", "model_params": {"width": opts["width"]}, "dataset": dataset,
                "dataset_params": params, "train_size": opts["train_size"] if dataset == "cifar10" else None}
    return {"model": "mlp", "model_params": {"width": opts["width"], "depth": 2}, "dataset": "digits",
            "train_size": opts["train_size"]}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- training ---------------------------------------------------------------------------------

def train_run(opts: Options, name: str, config: TrainConfig) -> dict[str, Any]:
    """Train ``config`` into ``opts.out/name`` (reusing a finished run, resuming an interrupted one,
    replacing it with ``--force``) and return the metrics logged at its last checkpoint."""
    from landscape.checkpoints import RunDir
    from landscape.errors import ConfigError
    from landscape.sweep import is_finished
    from landscape.targets import resolve_targets
    from landscape.train.trainer import train

    run_dir = opts.out / name
    if (run_dir / "config.json").is_file() and not opts.force:
        changed = TrainConfig.from_run(RunDir(run_dir)).diff(config)
        if changed:
            raise ConfigError(f"{run_dir} holds a run trained with other settings ({', '.join(sorted(changed))}); "
                              "pass --force to retrain it, or --out to write elsewhere")
    if opts.force or not is_finished(run_dir):
        say(f"[{opts.name}] training {name}")
        exists = (run_dir / "config.json").is_file()
        train(config, run_dir, resume=exists and not opts.force, overwrite=exists and opts.force,
              device=opts.device, progress=opts.progress)
    metrics = resolve_targets(run_dir, "last")[0].metrics()
    say(f"[{opts.name}] {name}: " + ", ".join(f"{k} {metrics[k]:.4g}" for k in
                                              ("train_loss", "train_acc", "test_acc") if k in metrics))
    return metrics


def probe(opts: Options, name: str, probe_name: str, checkpoints: str = "last",
          **settings: Any) -> list[dict[str, Any]]:
    """Run ``probe_name`` (default config updated by ``settings``) on the run ``opts.out/name``; the
    result of every selected checkpoint, in step order (with ``"step"`` and ``"epoch"`` added)."""
    from landscape.analyze import run_probe
    from landscape.probes import make_config

    records = run_probe(opts.out / name, probe_name, make_config(probe_name, **settings), checkpoints=checkpoints,
                        device=opts.device, force=opts.force)
    out = []
    for record in records:
        epoch = record.target.metrics().get("epoch", math.nan)
        out.append({**record.result, "step": record.target.step, "epoch": epoch})
    return out


def series(results: list[dict[str, Any]], key: str) -> np.ndarray:
    """One scalar per checkpoint: ``key`` (a path such as ``"train/nc1"``) of each result."""
    values = []
    for r in results:
        value: Any = r
        for part in key.split("/"):
            value = value[part]
        values.append(float(np.asarray(value).reshape(-1)[0]))
    return np.asarray(values)


# ---- outputs ----------------------------------------------------------------------------------

def save(opts: Options, fig: Any, stem: str) -> Path:
    """Write ``fig`` to ``opts.figures/stem.png`` and close it."""
    import matplotlib.pyplot as plt

    from landscape.plots import save_figure

    path = save_figure(fig, opts.figures / stem, ["png"])[0]
    plt.close(fig)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main(run: Callable[[Options], dict[str, Any]], name: str, doc: str | None,
         scales: Mapping[str, Mapping[str, Any]], smoke: Mapping[str, Any],
         argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the example, write ``OUT/numbers.json``; the exit code (2 on a user mistake)."""
    try:
        opts = parse_options(name, doc, scales, smoke, argv)
        start = time.perf_counter()
        numbers = run(opts)
        seconds = time.perf_counter() - start
        figures = sorted(str(p.relative_to(opts.out)) for p in opts.figures.glob("*.png"))
        atomic_write_json(opts.out / "numbers.json", _jsonable({
            "example": name, "scale": opts.scale, "smoke": opts.smoke, "device": str(resolve_device(opts.device)),
            "seconds": round(seconds, 1), "settings": opts.settings, "versions": versions(),
            "figures": figures, "numbers": numbers,
        }))
    except LandscapeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    say(f"[{name}] done in {seconds:.0f} s: {opts.out / 'numbers.json'}, figures in {opts.figures}")
    return 0
