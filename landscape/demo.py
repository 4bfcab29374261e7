"""The demo: train an MLP with SAM on digits, then run every probe on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from landscape.analyze import ProbeRecord
from landscape.train.config import TrainConfig
from landscape.train.trainer import TrainResult, train

DEMO_CONFIG = TrainConfig(
    model="mlp", dataset="digits", optimizer="sam", optimizer_params={"rho": 0.05},
    lr=0.05, epochs=30, batch_size=64, checkpoints="every:5",
)  # fmt: skip


# Every probe, at sizes that keep the demo to a few minutes on two CPU cores.
DEMO_SETTINGS: dict[str, dict] = {
    "hessian": {"density": True, "per_layer": True},
    "surface": {"x": "-1:1:25", "y": "-1:1:25"},
    "sharpness": {"subset": 512},
    "coherence": {"subset": 512},
    "dse": {"samples": 500},
}
LAST_ONLY = ("hessian", "surface", "sharpness")  # the other probes run on every checkpoint


@dataclass(frozen=True)
class DemoResult:
    training: TrainResult
    results: dict[str, list[ProbeRecord]]
    failures: dict[str, str]
    figures: list[Path]


def _settings_for(probes) -> dict[str, dict]:
    """:data:`DEMO_SETTINGS` of these probes (analyze refuses settings of a probe it does not run)."""
    return {p: DEMO_SETTINGS[p] for p in probes if p in DEMO_SETTINGS}


def run_demo(out: str | Path = "runs/demo", *, device: str = "auto", epochs: int = 30,
             progress: bool = True) -> DemoResult:
    """Train :data:`DEMO_CONFIG` into ``out`` (replacing an earlier demo run there), then run every
    registered probe (:data:`DEMO_SETTINGS`): the expensive ones on the last checkpoint, the
    representation and coherence probes on every checkpoint. Figures go to ``out/plots``."""
    from landscape.analyze import analyze
    from landscape.figures import all_figures
    from landscape.probes import PROBES

    out = Path(out)
    cfg = DEMO_CONFIG.replace(epochs=epochs)
    training = train(cfg, out, overwrite=(out / "config.json").is_file(), device=device, progress=progress)
    others = [p for p in PROBES.names() if p not in LAST_ONLY]
    last = analyze(out, list(LAST_ONLY), settings=_settings_for(LAST_ONLY), device=device)
    over_training = analyze(out, others, settings=_settings_for(others), checkpoints="all", device=device)
    results = {**last.results, **over_training.results}
    figures = all_figures(out / "analysis.h5", out / "plots")
    return DemoResult(training, results, {**last.failures, **over_training.failures}, figures)
