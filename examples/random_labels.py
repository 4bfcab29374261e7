"""Real versus random labels: gradient coherence, diffusion spectral entropy / mutual information, RankMe.

Claim. A network can fit random labels as well as real ones (Zhang et al. 2017), but the two
trainings look different from inside. (1) The per-example gradients of real-label examples are
coherent — they point in similar directions, so a step on some examples helps the others — while
those of random-label examples are nearly orthogonal early in training: normalized coherence
m·α ≫ 1 versus m·α ≈ 1 (Chatterjee 2020, "Coherent gradients: an approach to understanding
generalization in gradient descent-based optimization"; Chatterjee & Zielinski 2022, "On the
generalization mystery in deep learning"). (2) The diffusion spectral entropy (DSE) of the
representation rises during training, and its diffusion spectral mutual information with the
true class, DSMI(Z; Y), rises when the network generalizes but stays low when it memorizes
random labels (Liao, Liu et al. 2023, "Assessing neural network representations during training
using noise-resilient diffusion spectral entropy"). (3) RankMe, the effective rank of the
representation, accompanies better downstream performance (Garrido et al. 2023, "RankMe:
assessing the downstream performance of pretrained self-supervised representations by their
rank") — shown there for self-supervised embeddings; here it is asked whether it ranks the
real-label representation above the random-label one.

What it does. Trains the same network twice with the same seed and hyper-parameters, once on
the real labels and once with every training label replaced by a uniformly random class
(``random_labels=True``; test labels are never touched), long enough for the random labels to be
memorized (the JSON records the train accuracy). Default scale: an MLP (2 hidden layers of 256)
on all 1,347 training digits, SGD with momentum 0.9, lr 0.01, 300 epochs; full scale: ResNet-20
on CIFAR-10 (or 3×32×32 synthetic data). Checkpoints are log-spaced in steps and every probe runs
on every checkpoint: ``coherence`` on 512 training examples *with the labels each network is
trained on* (the per-example gradients of its own loss); ``dse`` and ``rankme`` on the
penultimate features of the *test* split, whose labels are the true classes for both networks,
so DSMI(Z; Y) asks the same question of both (on the train split Y would be each network's own
training labels). DSE uses the package default σ = 10; DSMI(Z; X) (inputs clustered into 10
groups) is reported beside DSMI(Z; Y).

Finding (default scale, ``numbers.json``; numbers vary slightly with the machine): the random
labels are memorized (train accuracy ≥ 0.99 after ≈ 160 epochs, test accuracy at chance), the
real ones within ≈ 20 epochs. (1) Coherence: held — m·α ≈ 9–11 for real labels from
initialization to ≈ 1 epoch against ≈ 0.8–1.1 for random labels (orthogonal); it falls to ≈ 1
for real labels once they are fitted, and rises to a few (peak ≈ 7) for random labels while they
are being memorized, around epoch 100. (2) DSE rose during training in both runs (≈ 0.3 → 5–6
bits), and DSMI(Z; Y) on the test set ended ≈ 2.4× higher for real than for random labels
(≈ 1.8 vs 0.8 bits): the ordering held, but DSMI did not stay flat under random labels — it rose
with DSE while they were memorized (≈ 40% of the real-label rise), and DSMI(Z; X) rose alike.
(3) RankMe did *not* rank the real-label representation higher: it fell from ≈ 95 to ≈ 34 for
real labels (the features compress towards the C = 10 class directions, as in neural collapse)
and rose to ≈ 120 for random labels, whose test accuracy is chance — a high rank is no sign of a
useful supervised representation.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from common import Options, main, model_and_data, probe, save, say, train_run
from landscape.checkpoints import RunDir
from landscape.train.config import TrainConfig

SCALES = {
    "default": {"epochs": 300, "checkpoints": 30, "width": 256, "batch_size": 64, "lr": 0.01,
                "coherence_subset": 512, "feature_samples": None,
                "train_size": None, "n_train": None, "n_test": None},
    "full": {"epochs": 200, "checkpoints": 30, "width": 16, "batch_size": 128, "lr": 0.05,
             "coherence_subset": 512, "feature_samples": 2000,
             "train_size": None, "n_train": None, "n_test": None},
}
SMOKE = {"epochs": 1, "checkpoints": 3, "coherence_subset": 32, "feature_samples": 40,
         "train_size": 200, "n_train": 60, "n_test": 40}

RUNS = {"real labels": False, "random labels": True}
COLORS = {"real labels": "C0", "random labels": "C3"}


def config(opts: Options, random_labels: bool) -> TrainConfig:
    common: dict[str, Any] = dict(
        random_labels=random_labels, optimizer="sgd", optimizer_params={"momentum": 0.9}, lr=opts["lr"],
        epochs=opts["epochs"], batch_size=opts["batch_size"], checkpoints=f"log:{opts['checkpoints']}")
    return TrainConfig(**model_and_data(opts), **common)


def nearest_epoch(epochs: np.ndarray, target: float) -> int:
    """Index of the checkpoint nearest ``target`` epochs in log distance (step 0 excluded)."""
    positive = np.flatnonzero(epochs > 0)
    if not len(positive):
        return 0
    return int(positive[np.argmin(np.abs(np.log(epochs[positive] / target)))])


def measure(opts: Options, name: str) -> dict[str, np.ndarray]:
    """Every probe on every checkpoint of run ``name``: one array per quantity, in step order."""
    features = {"splits": "test", "samples": opts["feature_samples"]}
    coh = probe(opts, name, "coherence", "all", subset=opts["coherence_subset"], split="train")
    dse = probe(opts, name, "dse", "all", **features)
    rank = probe(opts, name, "rankme", "all", **features)
    by_step = {int(row["step"]): row for row in RunDir(opts.out / name).metrics() if "event" not in row}
    steps = [r["step"] for r in coh]
    return {
        "step": np.array(steps), "epoch": np.array([r["epoch"] for r in coh], dtype=float),
        "train_acc": np.array([by_step.get(s, {}).get("train_acc", math.nan) for s in steps], dtype=float),
        "test_acc": np.array([by_step.get(s, {}).get("test_acc", math.nan) for s in steps], dtype=float),
        "m_alpha": np.array([r["m_alpha"] for r in coh], dtype=float),
        "dse": np.array([r["test"]["dse"] for r in dse], dtype=float),
        "dsmi_y": np.array([r["test"]["dsmi_y"] for r in dse], dtype=float),
        "dsmi_x": np.array([r["test"].get("dsmi_x", math.nan) for r in dse], dtype=float),
        "rankme": np.array([r["test"]["rankme"] for r in rank], dtype=float),
    }


def summarize(c: dict[str, np.ndarray]) -> dict[str, Any]:
    """The headline numbers of one run: coherence early, DSE / DSMI / RankMe at the start and end."""
    one = nearest_epoch(c["epoch"], 1.0)
    first_epoch = (c["epoch"] > 0) & (c["epoch"] <= 1.0)
    fitted = np.flatnonzero(c["train_acc"] >= 0.99)
    return {
        "train_acc": float(c["train_acc"][-1]), "test_acc": float(c["test_acc"][-1]),
        "epoch_train_acc_0.99": float(c["epoch"][fitted[0]]) if len(fitted) else None,
        "m_alpha_init": float(c["m_alpha"][0]),
        "m_alpha_epoch": float(c["epoch"][one]), "m_alpha_at_epoch_1": float(c["m_alpha"][one]),
        "m_alpha_median_first_epoch": float(np.median(c["m_alpha"][first_epoch])) if first_epoch.any() else None,
        "m_alpha_end": float(c["m_alpha"][-1]),
        "dse_start": float(c["dse"][0]), "dse_end": float(c["dse"][-1]),
        "dsmi_y_start": float(c["dsmi_y"][0]), "dsmi_y_end": float(c["dsmi_y"][-1]),
        "dsmi_x_end": float(c["dsmi_x"][-1]),
        "rankme_start": float(c["rankme"][0]), "rankme_end": float(c["rankme"][-1]),
    }


def figure(curves: dict[str, dict[str, np.ndarray]], coherence_subset: int):
    """Accuracy and the four measures against epochs (log), real vs random labels in each panel."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), layout="constrained")
    panels = [
        ("accuracy", "accuracy (— train, -- test)"),
        ("m_alpha", f"m·α (m = {coherence_subset} train examples)"),
        ("dse", "DSE(Z) [bits]"),
        ("dsmi_y", "DSMI(Z; Y) [bits]"),
        ("dsmi_x", "DSMI(Z; X) [bits]"),
        ("rankme", "RankMe(Z)"),
    ]
    titles = {"accuracy": "train / test accuracy", "m_alpha": "gradient coherence (train, own labels)",
              "dse": "diffusion spectral entropy (test)", "dsmi_y": "DSMI with the true class (test)",
              "dsmi_x": "DSMI with clustered inputs (test)", "rankme": "RankMe of the features (test)"}
    for ax, (key, ylabel) in zip(axes.flat, panels, strict=True):
        for label, c in curves.items():
            keep = c["epoch"] > 0
            x = c["epoch"][keep]
            if key == "accuracy":
                ax.plot(x, c["train_acc"][keep], "-", color=COLORS[label], lw=1.3, label=f"{label}, train")
                ax.plot(x, c["test_acc"][keep], "--", color=COLORS[label], lw=1.3, label=f"{label}, test")
            else:
                ax.plot(x, c[key][keep], "o-", ms=2.5, lw=1.3, color=COLORS[label], label=label)
        if key == "m_alpha":
            ax.set_yscale("log")
            ax.axhline(1.0, color="0.4", ls=":", lw=1, label="orthogonal gradients (m·α = 1)")
        ax.set_xscale("log")
        ax.set(title=titles[key], xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    axes.flat[0].legend(frameon=False, fontsize=7)
    axes.flat[1].legend(frameon=False, fontsize=8)
    fig.suptitle("Real vs random labels, same network and optimizer", fontsize=11)
    return fig


def run(opts: Options) -> dict:
    curves: dict[str, dict[str, np.ndarray]] = {}
    runs: dict[str, Any] = {}
    for label, random_labels in RUNS.items():
        name = "random" if random_labels else "real"
        train_run(opts, name, config(opts, random_labels))
        curves[label] = measure(opts, name)
        runs[label] = summarize(curves[label])
        if random_labels and runs[label]["train_acc"] < 0.99 and not opts.smoke:
            say(f"[{opts.name}] warning: the random labels are not memorized (train acc "
                f"{runs[label]['train_acc']:.3f}); train longer")
    real, rand = runs["real labels"], runs["random labels"]
    held = {
        "coherence_real_above_random_at_epoch_1": real["m_alpha_at_epoch_1"] > rand["m_alpha_at_epoch_1"],
        "dse_rose_real": real["dse_end"] > real["dse_start"],
        "dse_rose_random": rand["dse_end"] > rand["dse_start"],
        "dsmi_y_real_above_random_at_end": real["dsmi_y_end"] > rand["dsmi_y_end"],
        "rankme_real_above_random_at_end": real["rankme_end"] > rand["rankme_end"],
        "random_labels_memorized": rand["train_acc"] >= 0.99,
    }
    rise_real = real["dsmi_y_end"] - real["dsmi_y_start"]
    numbers: dict[str, Any] = {
        "runs": runs,
        "comparisons": {
            "m_alpha_at_epoch_1_real_over_random": real["m_alpha_at_epoch_1"] / rand["m_alpha_at_epoch_1"],
            "dsmi_y_end_real_over_random": real["dsmi_y_end"] / rand["dsmi_y_end"],
            "dsmi_y_rise_random_over_real": ((rand["dsmi_y_end"] - rand["dsmi_y_start"]) / rise_real
                                             if rise_real else None),
            "rankme_end_real_over_random": real["rankme_end"] / rand["rankme_end"],
        },
        "claims_held": held,
        "curves": curves,
    }
    say(f"[{opts.name}] m·α at epoch ≈ {real['m_alpha_epoch']:.2g}: real {real['m_alpha_at_epoch_1']:.3g}, random "
        f"{rand['m_alpha_at_epoch_1']:.3g}; DSMI(Z;Y) end: real {real['dsmi_y_end']:.3g}, random "
        f"{rand['dsmi_y_end']:.3g}; RankMe end: real {real['rankme_end']:.3g}, random {rand['rankme_end']:.3g}")
    save(opts, figure(curves, opts["coherence_subset"]), "random_labels")
    return numbers


if __name__ == "__main__":
    sys.exit(main(run, "random_labels", __doc__, SCALES, SMOKE))
