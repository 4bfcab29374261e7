"""Full-batch gradient descent trains at the edge of stability: λ_max rises to 2/η and hovers there.

Claim. Under full-batch gradient descent with step size η the sharpness λ_max (the top
eigenvalue of the training-loss Hessian) first rises ("progressive sharpening") until it
reaches the stability threshold 2/η of GD on a quadratic, then stops rising and hovers just
above 2/η for the rest of training, while the training loss keeps decreasing over long times
but non-monotonically, with short-term spikes (Cohen, Kaur, Li, Kolter & Talwalkar 2021,
"Gradient descent on neural networks typically occurs at the edge of stability", Figs. 1–2:
tanh/ReLU MLPs and CNNs on a 5k subset of CIFAR-10 with MSE and cross-entropy).

What it does. Trains a tanh MLP (2 hidden layers × 128) on 500 of the digits training images
with the square loss (``mse``: sum over the 10 classes of (z_k − [k = y])², mean over samples;
Cohen et al. halve it, which halves λ_max at the same η), full-batch (``batch_size`` = 500, one
step per epoch), plain SGD without momentum (``momentum=0``: with momentum β the threshold is
(2 + 2β)/η instead), constant step size η ∈ {0.02, 0.035, 0.05} (2/η = 100, 57, 40), 5000 steps
each, from the same initialization. λ_max of the full training loss is tracked by the
``lambda_max`` monitor every 10 steps (Lanczos warm-started from the previous eigenvector, at
most 20 HVPs, 1e-3 relative eigenvalue-error estimate; its residual ‖Hv − λv‖, within which an
eigenvalue lies, is in metrics.jsonl and bounds the error reported below). The training loss
is the full training set's, logged at every step. ``edge_of_stability.png`` is Cohen et al.'s
Fig. 1: training loss (left), λ_max against 2/η (second, dashed), the loss over the last 20%
of steps (third, linear axis, where the spikes show) and, right, full-batch Adam's
preconditioned sharpness against 38/η (Cohen et al. 2022, Fig. 1). ``numbers.json`` holds, per η, λ_max /
(2/η) over the last 20% of steps (mean, min, max), the step λ_max first came within 5% of 2/η,
and whether the loss was non-monotone (the number of steps at which it rose).

Finding (default scale, ``numbers.json``; one seed, 78 s on one core for GD). Both phases appear at
every η. From the same start (λ_max = 32.0) λ_max rises steadily while the loss falls
monotonically (not one rise of the loss before λ_max first came within 5% of 2/η): progressive
sharpening, reaching 2/η at step 150 (η = 0.05, 2/η = 40), 520 (η = 0.035, 57) and 2810
(η = 0.02, 100). It overshoots to 46.5 / 63.1 / 104.3, falls back and then hovers just above
2/η, as Cohen et al. report: over the last 20% of steps λ_max·η/2 has mean 1.018 [min 1.000, max
1.034], 1.012 [0.994, 1.030] and 1.003 [0.975, 1.028] (101 measurements each; the Lanczos
residual, which bounds each value's error, is at most 2.2%, 0.16% and 0.62% of it). At the edge
the loss turns non-monotone — it rose at 2155, 1818 and 311 of the 5000 steps, in spikes of a
few tens of steps (the largest a 18%, 12% and 5% rise in one step) — yet keeps falling over long
times (1.13 → 0.014, 0.021, 0.055; the larger η ends lower). All three fit the training set;
test accuracy 97.8 / 97.3 / 95.8%.

Adam (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"). The same net and
data trained by full-batch Adam (η = 0.002, β = (0.9, 0.999), 1000 steps; 9 s) with the
``adam_sharpness`` monitor every 20 steps: the top eigenvalue of the preconditioned Hessian
P⁻¹ᐟ² H P⁻¹ᐟ², P = diag(√v̂ + ε), rises from 4170 (step 20) to its threshold (2 + 2β₁)/((1 − β₁)η)
= 38/η = 19000 at step 140, peaks at 20000 and then hovers there: over the last 20% of steps its
ratio to 38/η has mean 0.984 [min 0.906, max 1.031] (11 measurements; residual ≤ 0.25%). As for
GD, the loss turns non-monotone (it rose at 274 of the 1000 steps, 14 of them before the
threshold was reached; the largest a 2.8-fold jump in one step) yet falls over long times
(1.13 → 0.0066; test accuracy 97.6%). ``--scale full`` (CIFAR-10 5k, width 200, 20000 GD steps,
Adam at η = 0.001 and 0.002 for 10000 steps) was not run here.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from common import Options, full_dataset, main, save, say, train_run
from landscape.train.config import TrainConfig

SCALES = {
    "default": {"lrs": [0.02, 0.035, 0.05], "steps": 5000, "train_size": 500, "width": 128, "every": 10,
                "lanczos_steps": 20, "adam_lrs": [0.002], "adam_steps": 1000, "adam_every": 20},
    # Cohen et al.'s CIFAR-10 5k subset (or its 3×32×32 synthetic stand-in), width 200; for a GPU.
    "full": {"lrs": [0.01, 0.02, 0.04], "steps": 20000, "train_size": 5000, "width": 200, "every": 50,
             "lanczos_steps": 30, "adam_lrs": [0.001, 0.002], "adam_steps": 10000, "adam_every": 50},
}
SMOKE = {"steps": 40, "train_size": 64, "every": 10, "lanczos_steps": 10, "adam_steps": 40, "adam_every": 10}
ADAM_BETAS = (0.9, 0.999)  # Adam's threshold is (2 + 2β₁)/((1 − β₁)η) = 38/η at β₁ = 0.9
TAIL = 0.2  # the last fraction of steps over which λ_max / (2/η) is summarized
NEAR = 0.95  # λ_max has "reached" 2/η when it is within 5% of it


def data(opts: Options) -> tuple[dict[str, Any], int]:
    """The config's dataset fields and the number of training samples (= the batch size)."""
    if opts.scale == "full":
        dataset, params = full_dataset(n_train=opts["train_size"])
        if dataset == "cifar10":
            return {"dataset": dataset, "train_size": opts["train_size"]}, opts["train_size"]
        return {"dataset": dataset, "dataset_params": params}, int(params["n_train"])
    return {"dataset": "digits", "train_size": opts["train_size"]}, opts["train_size"]


def config(opts: Options, lr: float) -> TrainConfig:
    fields, n = data(opts)
    return TrainConfig(model="mlp", model_params={"width": opts["width"], "depth": 2, "activation": "tanh"},
                       **fields, loss="mse", optimizer="sgd", optimizer_params={"momentum": 0.0}, lr=lr,
                       schedule="constant", epochs=opts["steps"], batch_size=n, eval_batch_size=max(n, 1024),
                       checkpoints="none",
                       monitors={"lambda_max": {"every": opts["every"], "steps": opts["lanczos_steps"]}})


def adam_config(opts: Options, lr: float) -> TrainConfig:
    """Full-batch Adam on the same net and data; its preconditioned sharpness monitored."""
    fields, n = data(opts)
    return TrainConfig(model="mlp", model_params={"width": opts["width"], "depth": 2, "activation": "tanh"},
                       **fields, loss="mse", optimizer="adam", optimizer_params={"betas": list(ADAM_BETAS)},
                       lr=lr, schedule="constant", epochs=opts["adam_steps"], batch_size=n,
                       eval_batch_size=max(n, 1024), checkpoints="none",
                       monitors={"adam_sharpness": {"every": opts["adam_every"], "steps": opts["lanczos_steps"]}})


def records(opts: Options, name: str) -> list[dict[str, Any]]:
    from landscape.checkpoints import RunDir

    by_step = {r["step"]: r for r in RunDir(opts.out / name).metrics() if "event" not in r and "step" in r}
    return [by_step[s] for s in sorted(by_step)]


def column(recs: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of the records holding ``key``."""
    kept = [r for r in recs if isinstance(r.get(key), int | float)]
    return np.array([r["step"] for r in kept], float), np.array([r[key] for r in kept], float)


def summarize(recs: list[dict[str, Any]], lr: float, steps: int, key: str = "lambda_max",
              threshold: float | None = None) -> dict[str, Any]:
    s, lam = column(recs, key)
    _, res = column(recs, f"{key}_residual")
    ls, loss = column(recs, "train_loss")
    threshold = 2.0 / lr if threshold is None else threshold
    ratio = lam / threshold
    tail = s >= (1 - TAIL) * steps
    reached = np.flatnonzero(ratio >= NEAR)
    rises = np.diff(loss) > 0
    first = int(s[reached[0]]) if reached.size else None
    before = lam[: reached[0] + 1] if reached.size else lam
    return {
        "lr": lr, "two_over_eta": threshold, "steps": steps,
        "lambda_max_over_two_over_eta_last20": {"mean": float(ratio[tail].mean()), "min": float(ratio[tail].min()),
                                                "max": float(ratio[tail].max()), "measurements": int(tail.sum())},
        "lambda_max_initial": float(lam[0]), "lambda_max_peak": float(lam.max()),
        "first_step_within_5pct_of_two_over_eta": first,
        "sharpened_before_reaching": bool(before.max() > 1.1 * lam[0]),
        "max_relative_residual_last20": float((res[tail] / np.abs(lam[tail])).max()),
        "train_loss_initial": float(loss[0]), "train_loss_final": float(loss[-1]),
        "loss_non_monotone": bool(rises.any()), "loss_rises": int(rises.sum()),
        "loss_rises_before_reaching": int(rises[ls[1:] <= first].sum()) if first is not None else int(rises.sum()),
        "largest_loss_rise_relative": float(np.max(np.diff(loss) / loss[:-1])) if len(loss) > 1 else 0.0,
        "train_acc_final": float(recs[-1].get("train_acc", np.nan)),
        "test_acc_final": float(recs[-1].get("test_acc", np.nan)),
    }


def figure(runs: dict[float, list[dict[str, Any]]], steps: int, adam: dict[float, list[dict[str, Any]]],
           adam_steps: int):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18.0, 4.0), layout="constrained")
    for j, (lr, recs) in enumerate(runs.items()):
        color = f"C{j}"
        ls, loss = column(recs, "train_loss")
        s, lam = column(recs, "lambda_max")
        axes[0].semilogy(ls, loss, color=color, lw=1.2, label=f"η = {lr:g}")
        axes[1].plot(s, lam, color=color, lw=1.2, label=f"η = {lr:g}")
        axes[1].hlines(2.0 / lr, 0, steps, color=color, ls="--", lw=1.0)
        axes[1].text(steps, 2.0 / lr, f" 2/η = {2.0 / lr:.0f}", color=color, va="center", fontsize=8)
        tail = ls >= (1 - TAIL) * steps
        axes[2].plot(ls[tail], loss[tail], color=color, lw=1.0)
    axes[1].set_xlim(-0.02 * steps, 1.16 * steps)  # room for the 2/η labels right of the curves
    axes[0].set(xlabel="step", ylabel="training loss (square loss)", title="training loss")
    axes[1].set(xlabel="step", ylabel="λ_max of the training-loss Hessian", title="sharpness against 2/η (dashed)")
    axes[2].set(xlabel="step", ylabel="training loss", title=f"training loss, last {TAIL:.0%} of steps")
    for ax in axes:
        ax.grid(alpha=0.3)
    for j, (lr, recs) in enumerate(adam.items()):
        s, lam = column(recs, "adam_sharpness")
        _, limit = column(recs, "adam_sharpness_threshold")
        axes[3].plot(s, lam, color=f"C{j + 3}", lw=1.2, label=f"Adam η = {lr:g}")
        axes[3].hlines(limit[-1], 0, adam_steps, color=f"C{j + 3}", ls="--", lw=1.0)
        axes[3].text(adam_steps, limit[-1], f" 38/η = {limit[-1]:.0f}", color=f"C{j + 3}", va="center", fontsize=8)
    axes[3].set_xlim(-0.02 * adam_steps, 1.22 * adam_steps)
    axes[3].set(xlabel="step", ylabel="λ_max(P⁻¹ᐟ² H P⁻¹ᐟ²)", title="full-batch Adam: preconditioned sharpness")
    axes[3].legend(frameon=False, fontsize=8)
    axes[0].legend(frameon=False, fontsize=8)
    fig.suptitle("Full-batch gradient descent (left three) and Adam (right) at the edge of stability "
                 "(tanh MLP, square loss)", fontsize=11)
    return fig


def run(opts: Options) -> dict:
    numbers: dict[str, Any] = {}
    runs: dict[float, list[dict[str, Any]]] = {}
    for lr in opts["lrs"]:
        name = f"gd-lr{lr:g}"
        train_run(opts, name, config(opts, lr))
        runs[lr] = records(opts, name)
        entry = summarize(runs[lr], lr, opts["steps"])
        numbers[f"lr{lr:g}"] = entry
        tail = entry["lambda_max_over_two_over_eta_last20"]
        say(f"[{opts.name}] η {lr:g}: λ_max {entry['lambda_max_initial']:.3g} → peak {entry['lambda_max_peak']:.3g}"
            f" (2/η = {2 / lr:.3g}, reached at step {entry['first_step_within_5pct_of_two_over_eta']}); "
            f"last 20%: λ_max·η/2 mean {tail['mean']:.3f} [{tail['min']:.3f}, {tail['max']:.3f}]; "
            f"loss rose at {entry['loss_rises']} steps")
    adam: dict[float, list[dict[str, Any]]] = {}
    for lr in opts["adam_lrs"]:
        name = f"adam-lr{lr:g}"
        train_run(opts, name, adam_config(opts, lr))
        adam[lr] = records(opts, name)
        beta1 = ADAM_BETAS[0]
        limit = (2 + 2 * beta1) / ((1 - beta1) * lr)
        entry = summarize(adam[lr], lr, opts["adam_steps"], key="adam_sharpness", threshold=limit)
        entry = {("sharpness_over_threshold_last20" if k == "lambda_max_over_two_over_eta_last20" else
                  k.replace("lambda_max", "sharpness").replace("two_over_eta", "threshold")): v
                 for k, v in entry.items()}
        numbers[f"adam-lr{lr:g}"] = entry
        tail = entry["sharpness_over_threshold_last20"]
        say(f"[{opts.name}] Adam η {lr:g}: preconditioned sharpness {entry['sharpness_initial']:.3g} → peak "
            f"{entry['sharpness_peak']:.3g} (38/η = {limit:.3g}, reached at step "
            f"{entry['first_step_within_5pct_of_threshold']}); last 20%: ratio mean {tail['mean']:.3f} "
            f"[{tail['min']:.3f}, {tail['max']:.3f}]")
    save(opts, figure(runs, opts["steps"], adam, opts["adam_steps"]), "edge_of_stability")
    return numbers


if __name__ == "__main__":
    sys.exit(main(run, "edge_of_stability", __doc__, SCALES, SMOKE))
