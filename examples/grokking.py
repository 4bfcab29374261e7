"""Grokking on modular addition: weight decay, StableMax and ⊥AdamW against Softmax Collapse.

Claim. A network trained on part of the table ``a + b mod p`` fits its training pairs early and
generalizes to the held-out pairs only much later ("grokking", Power, Burda, Edwards, Babuschkin &
Misra 2022; MLPs on embedded pairs grok too, Liu et al. 2022). Without weight decay it does not
grok: the logits grow along the naïve-loss-minimization (NLM) direction (scaling the weights),
the float32 softmax of the correct class rounds to 1, those samples' gradients become exactly 0
("Softmax Collapse") and learning stops. StableMax cross-entropy and the ⊥Grad optimizer (here
⊥AdamW: the gradient's component along each weight tensor removed) prevent this and grok
without weight decay (Prieto, Barsbey, Mediano & Birdal 2025, "Grokking at the edge of numerical
stability").

What it does. The ``modular`` dataset with ``op=add``: all p² pairs, a random ``train_fraction``
of them for training, the rest the test set (p = 97 and 40% at default scale, Power et al.'s p;
``--scale full`` is p = 97 at 30%, 20000 steps, a wider MLP). The
model is an MLP on the embedded pair (``format=pairs``, ``vocab=p``, embedding 64 per token, one
hidden ReLU layer of 128), trained full-batch (one step = one epoch) with Adam-style β = (0.9, 0.98) at
lr 1e-2, constant, from the same initialization, in four variants: AdamW with weight decay 1;
AdamW without weight decay; StableMax cross-entropy with AdamW without weight decay; ⊥AdamW
(``perp_adamw``) without weight decay. Train and test accuracy are evaluated at every step;
the ``weight_norm``, ``softmax_collapse`` (fraction of training samples whose float32 loss is
exactly 0) and ``nlm_cosine`` (cos(∇L, −θ)) monitors run on the training set every ``every``
steps. ``grokking.png`` shows the four quantities over steps per variant; ``numbers.json``
holds, per variant, the first step at which training accuracy reached 95% and the first step at
which test accuracy did (null if never), the delay between them, and the final and largest
weight norm, SC fraction and NLM cosine.

Finding (default scale, ``numbers.json``; one seed, 3000 steps per variant, 154 s for all four on
two busy CPU cores). All four variants fit the training set within 40–71 steps. With weight decay
the model groks: 95% training accuracy at step 48, 95% test accuracy at step 547 (a delay of 499
steps; test accuracy is below chance, 1/97, until step 250), while the weight norm falls from 79 to 61.
Without weight decay AdamW never generalizes (test accuracy ≤ 1% for all 3000 steps); its weight
norm grows to 194, the NLM cosine rises to 0.65 (step 725) and then Softmax Collapse sets in:
from step ~925 a growing fraction of training samples has float32 loss exactly 0 (7.5% at step
1000, 44% at 2000, peak 76%, 60% at the end), and as the collapsed samples stop contributing the
NLM cosine falls back in bursts to 0.02 (with brief dips of training accuracy, to 73% at
step ~2700) — so the NLM cosine rises before collapse, not with it.
⊥AdamW without weight decay groks, and faster than AdamW with it: 95% train at 68, 95% test at
220; its weight norm stays near 90 and SC stays ≤ 2%. StableMax without weight decay does NOT
grok here (test accuracy ≤ 1%): SC never occurs (StableMax's loss is not 0 in float32), but its
weight norm keeps growing (79 → 700) and the NLM cosine climbs to 0.95 — it memorizes
along the NLM direction instead of collapsing; Prieto et al.'s grokking with StableMax did not
reproduce with this MLP, lr and step budget (their code also evaluates it in float64). Not a
diagnostic on its own: with weight decay the NLM cosine also reaches 0.98, because at the
weight-decay equilibrium ∇L balances λθ and so points along −θ. One seed; ``--scale full`` was
not run here.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from common import Options, main, save, say, train_run
from landscape.train.config import TrainConfig

SCALES = {
    "default": {"p": 97, "train_fraction": 0.4, "steps": 3000, "width": 128, "embed_dim": 64, "every": 25},
    # p = 97 at 30% train (less data groks later: Power et al. Fig. 1); an MLP still, not their transformer.
    "full": {"p": 97, "train_fraction": 0.3, "steps": 20000, "width": 256, "embed_dim": 128, "every": 50},
}
SMOKE = {"p": 7, "steps": 20, "width": 16, "embed_dim": 8, "every": 5}
LR = 1e-2
BETAS = [0.9, 0.98]
LEVEL = 0.95  # "reached": accuracy ≥ 95%
VARIANTS = {  # name: (optimizer, weight decay, loss, label)
    "adamw_wd1": ("adamw", 1.0, "ce", "AdamW, weight decay 1"),
    "adamw_wd0": ("adamw", 0.0, "ce", "AdamW, no weight decay"),
    "stablemax_wd0": ("adamw", 0.0, "stablemax", "StableMax CE, AdamW, no weight decay"),
    "perp_adamw_wd0": ("perp_adamw", 0.0, "ce", "⊥AdamW, no weight decay"),
}


def config(opts: Options, optimizer: str, weight_decay: float, loss: str) -> TrainConfig:
    p = opts["p"]
    n_train = min(max(int(round(opts["train_fraction"] * p * p)), 1), p * p - 1)  # as the dataset splits
    every = opts["every"]
    return TrainConfig(
        model="mlp", model_params={"width": opts["width"], "depth": 1, "vocab": p, "embed_dim": opts["embed_dim"]},
        dataset="modular", dataset_params={"p": p, "op": "add", "train_fraction": opts["train_fraction"],
                                           "format": "pairs"},
        loss=loss, optimizer=optimizer, optimizer_params={"betas": BETAS}, lr=LR, weight_decay=weight_decay,
        schedule="constant", epochs=opts["steps"], batch_size=n_train, eval_batch_size=p * p,
        checkpoints="none",
        monitors={"weight_norm": {"every": every}, "softmax_collapse": {"every": every},
                  "nlm_cosine": {"every": every}})


def records(opts: Options, name: str) -> list[dict[str, Any]]:
    from landscape.checkpoints import RunDir

    by_step = {r["step"]: r for r in RunDir(opts.out / name).metrics() if "event" not in r and "step" in r}
    return [by_step[s] for s in sorted(by_step)]


def column(recs: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of the records holding a finite ``key``."""
    kept = [r for r in recs if isinstance(r.get(key), int | float) and np.isfinite(r[key])]
    return np.array([r["step"] for r in kept], float), np.array([r[key] for r in kept], float)


def first_step(recs: list[dict[str, Any]], key: str) -> int | None:
    s, v = column(recs, key)
    hit = np.flatnonzero(v >= LEVEL)
    return int(s[hit[0]]) if hit.size else None


def summarize(recs: list[dict[str, Any]]) -> dict[str, Any]:
    train95, test95 = first_step(recs, "train_acc"), first_step(recs, "test_acc")
    entry: dict[str, Any] = {
        "step_train_acc_95": train95, "step_test_acc_95": test95,
        "grokking_delay_steps": test95 - train95 if train95 is not None and test95 is not None else None,
        "train_acc_final": float(recs[-1]["train_acc"]), "test_acc_final": float(recs[-1]["test_acc"]),
        "test_acc_max": float(column(recs, "test_acc")[1].max()),
    }
    for key in ("weight_norm", "softmax_collapse", "nlm_cosine"):
        _, v = column(recs, key)
        entry[f"{key}_initial"] = float(v[0]) if v.size else None
        entry[f"{key}_final"] = float(v[-1]) if v.size else None
        entry[f"{key}_max"] = float(v.max()) if v.size else None
    return entry


def figure(runs: dict[str, list[dict[str, Any]]], title: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17.0, 4.0), layout="constrained")
    for j, (name, recs) in enumerate(runs.items()):
        color, label = f"C{j}", VARIANTS[name][3]
        s, test = column(recs, "test_acc")
        axes[0].plot(s, test, color=color, lw=1.4, label=f"{label}: test")
        s, train = column(recs, "train_acc")
        axes[0].plot(s, train, color=color, lw=1.0, ls="--", label=f"{label}: train")
        for ax, key in zip(axes[1:], ("weight_norm", "softmax_collapse", "nlm_cosine"), strict=True):
            s, v = column(recs, key)
            ax.plot(s, v, color=color, lw=1.2, label=label)
    axes[0].set(xlabel="step", ylabel="accuracy", title="test (solid) and train (dashed) accuracy")
    axes[1].set(xlabel="step", ylabel="‖θ‖₂", title="weight norm")
    axes[2].set(xlabel="step", ylabel="fraction of training samples", title="Softmax Collapse (float32 loss = 0)")
    axes[3].set(xlabel="step", ylabel="cos(∇L, −θ)", title="NLM cosine")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False, fontsize=6.5)
    axes[1].legend(frameon=False, fontsize=7)
    fig.suptitle(title, fontsize=11)
    return fig


def run(opts: Options) -> dict:
    numbers: dict[str, Any] = {"p": opts["p"], "train_fraction": opts["train_fraction"], "lr": LR,
                               "betas": BETAS, "steps": opts["steps"]}
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, (optimizer, wd, loss, _) in VARIANTS.items():
        train_run(opts, name, config(opts, optimizer, wd, loss))
        runs[name] = records(opts, name)
        entry = numbers[name] = summarize(runs[name])
        say(f"[{opts.name}] {name}: 95% train at step {entry['step_train_acc_95']}, 95% test at step "
            f"{entry['step_test_acc_95']}; final test acc {entry['test_acc_final']:.3f}, ‖θ‖ "
            f"{entry['weight_norm_final']:.3g}, SC {entry['softmax_collapse_final']:.3g} "
            f"(max {entry['softmax_collapse_max']:.3g}), NLM cos {entry['nlm_cosine_final']:.3g}")
    title = (f"Grokking on a + b mod {opts['p']} ({opts['train_fraction']:.0%} of pairs for training; "
             "MLP on embedded pairs, full batch)")
    save(opts, figure(runs, title), "grokking")
    return numbers


if __name__ == "__main__":
    sys.exit(main(run, "grokking", __doc__, SCALES, SMOKE))
