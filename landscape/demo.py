"""The demo: train an MLP with SAM on digits, then measure its Hessian and neural collapse."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from landscape.analyze import ProbeRecord, run_probe
from landscape.figures import probe_figures
from landscape.probes import make_config
from landscape.train.config import TrainConfig
from landscape.train.trainer import TrainResult, train

DEMO_CONFIG = TrainConfig(
    model="mlp", dataset="digits", optimizer="sam", optimizer_params={"rho": 0.05},
    lr=0.05, epochs=30, batch_size=64, checkpoints="every:5",
)  # fmt: skip


@dataclass(frozen=True)
class DemoResult:
    training: TrainResult
    hessian: list[ProbeRecord]
    collapse: list[ProbeRecord]
    figures: list[Path]


def run_demo(out: str | Path = "runs/demo", *, device: str = "auto", epochs: int = 30,
             progress: bool = True) -> DemoResult:
    """Train :data:`DEMO_CONFIG` into ``out`` (replacing an earlier demo run there), then run the
    Hessian probe (top-5, trace, density) on the last checkpoint and the neural-collapse probe on
    every checkpoint; figures go to ``out/plots``."""
    out = Path(out)
    cfg = DEMO_CONFIG.replace(epochs=epochs)
    training = train(cfg, out, overwrite=(out / "config.json").is_file(), device=device, progress=progress)
    hessian = run_probe(out, "hessian", make_config("hessian", density=True, per_layer=True), device=device)
    collapse = run_probe(out, "collapse", None, checkpoints="all", device=device)
    figures = [p for probe in ("hessian", "collapse") for p in probe_figures(out / "analysis.h5", probe, out / "plots")]
    return DemoResult(training, hessian, collapse, figures)
