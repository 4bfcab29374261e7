"""Neural collapse in the terminal phase of training, under cross-entropy, label smoothing, MaxSup and MSE.

Claim. Trained past zero training error (the "terminal phase of training", TPT), the penultimate
features of a classifier collapse: the within-class variability vanishes relative to the
between-class one (NC1 = Tr(Σ_W Σ_B⁺)/C → 0), the centred class means approach a simplex
equiangular tight frame (NC2: equal norms, pairwise cosines −1/(C−1)), the classifier's rows
align with the class means (NC3, self-duality) and the network's decision becomes the
nearest-class-centre rule (NC4) (Papyan, Han & Donoho 2020, "Prevalence of neural collapse during
the terminal phase of deep learning training", PNAS; with cross-entropy, SGD, weight decay 5e-4
and the learning rate divided by 10 at 1/3 and 2/3 of training). The same holds under the square
loss (Han, Papyan & Donoho 2022, "Neural collapse under MSE loss: proximity to and dynamics on
the central path"). Label smoothing collapses the features more tightly than cross-entropy, and
MaxSup, which penalizes the top-1 logit instead of the target logit, is proposed to avoid that
collapse (Zhou et al. 2025, "MaxSup: Overcoming Representation Collapse in Label Smoothing").

What it does. Trains the same network four times, changing only the loss: cross-entropy,
label smoothing (s = 0.1), MaxSup (α = 0.1) and MSE on one-hot targets; SGD with momentum 0.9,
weight decay 5e-4 (Papyan et al.'s value, used for every loss; not tuned here) and the step
schedule of Papyan et al. (learning rate × 0.1 at 1/3 and 2/3 of the epochs). Default scale: an
MLP (2 hidden layers of 128) on all 1,347 training digits for 300 epochs, learning rate 0.1 for
every loss; full scale: ResNet-20 on CIFAR-10 (or 3×32×32 synthetic data) for 200 epochs, learning
rate 0.1 and 0.02 for MSE (at 0.1, with or without warm-up, ResNet-20's MSE diverged within the
first epochs of a short CPU check on the synthetic data; the full scale was not run here). Checkpoints are log-spaced in steps, and
the ``collapse`` probe runs on every checkpoint (penultimate features of the training set, the
authors' conventions: NC4 compares with the network's prediction). The figure draws the train
error and NC1–NC4 against epochs on log axes, one line per loss; the JSON holds, per loss, the
measures at the first checkpoint with zero training error and at the end, and NC1's ratio
between the two (and between ≈ epoch 1 and the end).

Finding (default scale, ``numbers.json``; numbers vary slightly with the machine): all four
losses reach zero training error at ≈ 11–15 epochs, and NC4 ends at 0 (for CE at 0.2%, 3 of
1,347 samples). With MSE the claim appears: through the terminal phase NC1 falls ≈ 10× (≈ 180×
from epoch 1, to ≈ 1.5e-3), and NC2 and NC3 fall with it. Label smoothing and MaxSup also keep
collapsing (NC1 ≈ 3× lower at the end than at zero error, ≈ 20× below epoch 1; NC2, NC3 fall).
With plain cross-entropy it does *not* appear at this scale: NC1 is ≈ 0.14 at zero error and
drifts back up to ≈ 0.19 (only ≈ 3× below epoch 1), and the equiangularity gap grows too; only the
equinorm gap, NC3 and NC4 keep improving (weight decay 0 or 5e-3 instead of 5e-4 did not change this in
development runs). Label smoothing's tighter collapse than CE appears (NC1 ≈ 8× lower at the
end), but MaxSup ends where label smoothing does (within a few %): once every training sample is
classified correctly the two losses are the same function (the top-1 logit *is* the target
logit), so MaxSup can differ only through the epochs before.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from common import Options, main, model_and_data, probe, save, say, train_run
from landscape.checkpoints import RunDir
from landscape.train.config import TrainConfig
from landscape.train.losses import LOSSES

SCALES = {
    "default": {"epochs": 300, "checkpoints": 30, "width": 128, "batch_size": 64, "lr": 0.1, "lr_mse": 0.1,
                "train_size": None, "n_train": None, "n_test": None},
    "full": {"epochs": 200, "checkpoints": 30, "width": 16, "batch_size": 128, "lr": 0.1, "lr_mse": 0.02,
             "train_size": None, "n_train": None, "n_test": None},
}
SMOKE = {"epochs": 1, "checkpoints": 3, "train_size": 200, "n_train": 60, "n_test": 40}

WEIGHT_DECAY = 5e-4  # Papyan, Han & Donoho 2020
MILESTONES = [1 / 3, 2 / 3]  # learning rate × 0.1 there (Papyan et al.)
CANDIDATE_LOSSES: dict[str, tuple[str, dict[str, Any]]] = {
    "CE": ("ce", {}),
    "label smoothing 0.1": ("label_smoothing", {"smoothing": 0.1}),
    "MaxSup 0.1": ("maxsup", {"alpha": 0.1}),
    "MSE": ("mse", {}),
}
COLORS = {"CE": "C0", "label smoothing 0.1": "C2", "MaxSup 0.1": "C1", "MSE": "C3"}
# what the figure and the JSON report per checkpoint: result key → (short name, axis label)
MEASURES = {
    "nc1": ("NC1", "NC1 = Tr(Σ_W Σ_B⁺)/C"),
    "equinorm_means": ("NC2 equinorm", "std/mean of ‖μ_c − μ_G‖"),
    "equiangular_means": ("NC2 equiangular", "mean |cos(μ_c, μ_c') + 1/(C−1)|"),
    "self_duality": ("NC3", "‖W/‖W‖ − M/‖M‖‖²_F"),
    "ncc_mismatch": ("NC4", "P(NCC ≠ network prediction)"),
}


def losses() -> dict[str, tuple[str, dict[str, Any]]]:
    """The compared losses that the loss registry holds (MaxSup is left out if it is not registered)."""
    return {label: spec for label, spec in CANDIDATE_LOSSES.items() if spec[0] in LOSSES}


def run_name(loss: str) -> str:
    return loss.replace("_", "-")


def config(opts: Options, loss: str, loss_params: dict[str, Any]) -> TrainConfig:
    common: dict[str, Any] = dict(
        loss=loss, loss_params=loss_params, optimizer="sgd", optimizer_params={"momentum": 0.9},
        lr=opts["lr_mse"] if loss == "mse" else opts["lr"], weight_decay=WEIGHT_DECAY, schedule="step",
        schedule_params={"milestones": MILESTONES, "gamma": 0.1}, epochs=opts["epochs"],
        batch_size=opts["batch_size"], checkpoints=f"log:{opts['checkpoints']}")
    return TrainConfig(**model_and_data(opts), **common)


def train_curve(run_dir) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, train error) of every logged evaluation of a run (each epoch and checkpoint)."""
    by_step: dict[int, dict] = {}
    for row in RunDir(run_dir).metrics():
        if "event" not in row and "train_acc" in row:
            by_step[int(row["step"])] = row
    rows = [by_step[s] for s in sorted(by_step)]
    return (np.array([r["epoch"] for r in rows], dtype=float),
            np.array([1.0 - r["train_acc"] for r in rows], dtype=float))


def nearest_epoch(epochs: np.ndarray, target: float) -> int:
    """Index of the checkpoint nearest ``target`` epochs in log distance (step 0 excluded)."""
    positive = np.flatnonzero(epochs > 0)
    return int(positive[np.argmin(np.abs(np.log(epochs[positive] / target)))])


def summarize(results: list[dict], train_acc: np.ndarray, test_acc: float) -> dict[str, Any]:
    """The per-loss numbers: measures at the first zero-error checkpoint and at the end, NC1 ratios."""
    epochs = np.array([r["epoch"] for r in results], dtype=float)
    curves = {key: np.array([r["train"][key] for r in results], dtype=float) for key in MEASURES}
    zero = np.flatnonzero(train_acc >= 1.0)
    first = int(zero[0]) if len(zero) else None
    early = nearest_epoch(epochs, 1.0) if len(epochs) > 1 else 0
    out: dict[str, Any] = {
        "test_acc": test_acc, "train_acc": float(train_acc[-1]),
        "first_zero_error_epoch": None if first is None else float(epochs[first]),
        "end": {MEASURES[k][0]: float(v[-1]) for k, v in curves.items()},
        "at_first_zero_error": None if first is None else {MEASURES[k][0]: float(v[first]) for k, v in curves.items()},
        "nc1_test_end": float(results[-1]["test"]["nc1"]) if "test" in results[-1] else None,
        "early_epoch": float(epochs[early]), "nc1_early": float(curves["nc1"][early]),
        "nc1_ratio_early_to_end": float(curves["nc1"][early] / curves["nc1"][-1]),
        "nc1_ratio_first_zero_error_to_end": (None if first is None
                                              else float(curves["nc1"][first] / curves["nc1"][-1])),
    }
    if first is not None:  # did each measure fall during the terminal phase?
        out["fell_during_terminal_phase"] = {MEASURES[k][0]: bool(v[-1] < v[first]) for k, v in curves.items()
                                             if k != "ncc_mismatch"}
        out["fell_during_terminal_phase"]["NC4"] = bool(curves["ncc_mismatch"][-1] <= curves["ncc_mismatch"][first])
    out["curves"] = {"epoch": epochs, "train_acc": train_acc,
                     **{MEASURES[k][0]: v for k, v in curves.items()}}
    return out


def figure(curves: dict[str, dict], train_curves: dict[str, tuple], n_train: int, epochs: int):
    """Train error and NC1–NC4 (train features) against epochs, log–log, one line per loss."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), layout="constrained")
    panels = [("train error", "1 − train accuracy"), *[(v[0], v[1]) for v in MEASURES.values()]]
    for ax, (name, ylabel) in zip(axes.flat, panels, strict=True):
        for label, c in curves.items():
            if name == "train error":
                x, y = train_curves[label]
            else:
                x, y = np.asarray(c["epoch"]), np.asarray(c[name])
            keep = x > 0
            ax.plot(x[keep], y[keep], "-" if name == "train error" else "o-", ms=2.5, lw=1.3,
                    color=COLORS[label], label=label)
        ax.set_xscale("log")
        if name in ("train error", "NC4"):  # these reach exactly 0: linear below one sample
            ax.set_yscale("symlog", linthresh=1.0 / n_train, linscale=0.5)
            ax.set_yticks([0.0, *(10.0**k for k in range(math.ceil(math.log10(1.0 / n_train)), 1))])
            ax.set_ylim(0, 1.2)
        else:
            ax.set_yscale("log")
        for m in MILESTONES:
            ax.axvline(m * epochs, color="0.6", ls=":", lw=0.8)
        ax.set(title=name, xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    axes.flat[0].legend(frameon=False, fontsize=8)
    fig.suptitle("Neural collapse over training (train set; dotted: learning rate ÷ 10)", fontsize=11)
    return fig


def run(opts: Options) -> dict:
    chosen = losses()
    numbers: dict[str, Any] = {"weight_decay": WEIGHT_DECAY, "lr_milestones": MILESTONES,
                               "losses": {label: {"loss": name, "loss_params": params}
                                          for label, (name, params) in chosen.items()},
                               "not_registered": [k for k in CANDIDATE_LOSSES if k not in chosen]}
    per_loss: dict[str, Any] = {}
    train_curves: dict[str, tuple] = {}
    n_train = 0
    for label, (name, params) in chosen.items():
        run_id = run_name(name)
        final = train_run(opts, run_id, config(opts, name, params))
        results = probe(opts, run_id, "collapse", "all")
        steps = [r["step"] for r in results]
        by_step = {int(row["step"]): row for row in RunDir(opts.out / run_id).metrics() if "event" not in row}
        train_acc = np.array([by_step[s]["train_acc"] if s in by_step else math.nan for s in steps])
        per_loss[label] = summarize(results, train_acc, float(final.get("test_acc", math.nan)))
        train_curves[label] = train_curve(opts.out / run_id)
        n_train = int(np.sum(results[-1]["train"]["num_samples_per_class"]))
        s = per_loss[label]
        say(f"[{opts.name}] {label}: NC1 {s['nc1_early']:.3g} (epoch {s['early_epoch']:.2g}) → "
            f"{s['end']['NC1']:.3g}; first zero train error at epoch {s['first_zero_error_epoch']}; "
            f"test acc {s['test_acc']:.3f}")
    numbers["per_loss"] = per_loss
    nc1_end = {label: s["end"]["NC1"] for label, s in per_loss.items()}
    numbers["nc1_end_ranking"] = sorted(nc1_end, key=nc1_end.get)
    if "CE" in nc1_end and "label smoothing 0.1" in nc1_end:
        numbers["ls_tighter_than_ce"] = bool(nc1_end["label smoothing 0.1"] < nc1_end["CE"])
    if "MaxSup 0.1" in nc1_end and "label smoothing 0.1" in nc1_end:
        numbers["maxsup_over_ls_nc1_end"] = nc1_end["MaxSup 0.1"] / nc1_end["label smoothing 0.1"]
    save(opts, figure({k: v["curves"] for k, v in per_loss.items()}, train_curves, n_train, opts["epochs"]),
         "neural_collapse")
    return numbers


if __name__ == "__main__":
    sys.exit(main(run, "neural_collapse", __doc__, SCALES, SMOKE))
