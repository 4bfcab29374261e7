"""Large batches, sharp minima and the generalization gap; filter normalization makes sharpness comparable.

Claim. At an equal number of epochs, large-batch (LB) training converges to sharper minima that
generalize worse than small-batch (SB) ones: on the line through the two solutions the LB end
sits in a narrower basin, and the Hessian's top eigenvalue λ_max is larger at the LB minimum
(Keskar et al. 2017, "On large-batch training for deep learning: generalization gap and sharp
minima", Fig. 3 and Table 2). Li et al. 2018 ("Visualizing the loss landscape of neural nets",
Figs. 2–3) add a caveat: such plots are not scale invariant. With weight decay the SB weights
end up much smaller, and in a BatchNorm net a smaller weight means a larger relative step, so
the linear interpolation can show the *SB* end as the sharper one (their Fig. 2, weight decay
on: the ordering flips). Along random directions rescaled filter by filter to the weights' own norms (filter
normalization), the SB minimum is the wider one with and without weight decay, in line with
its better test accuracy (their Fig. 3).

What it does. Trains a BatchNorm MLP (3 × 256, a small cousin of Keskar's F1 network) on digits
with SGD (momentum 0.9, the same learning rate 0.05 and cosine schedule for both: Keskar used
Adam, Li et al. SGD with step decay; plain SGD keeps the batch size the only difference) with
batch 16 (SB) and the whole train set, 1347 samples (LB: full-batch gradient descent), for the
same 40 epochs, i.e. 3400 against 40 steps. The pair is trained without and with weight decay
λ = 5e-3: λ·Σ lr over the SB run is then ≈ 0.4, the order of Li et al.'s ≈ 3 for 300 CIFAR
epochs at 5e-4 (their 5e-4 would give 0.04 here, too little to matter). For each pair it
probes (1) the linear interpolation θ(α) = θ_SB + α(θ_LB − θ_SB), α ∈ [−0.5, 1.5], train and
test (surface probe, ``direction="interpolate:<LB checkpoint>"``); (2) a 1D filter-normalized
random slice through each model, α ∈ [−1, 1] (the same Gaussian draw for both, rescaled to each
model's filters); (3) λ_max of the train-loss Hessian (Lanczos). Every probe runs BatchNorm in
train mode, i.e. with the statistics of the whole evaluated set — the function full-batch
training optimizes; interpolated running averages would be negative beyond the segment. Widths
are read as loss rises: on the interpolation, the train loss 0.5·‖θ_LB − θ_SB‖ beyond each end
minus the loss at that end; on the slices, the mean of L(±α) − L(0) at |α| = 0.5 and 1.
``batch_size_interpolation.png`` is Keskar's Fig. 3 / Li's Fig. 2 (loss left, accuracy right,
train solid, test dashed); ``batch_size_slices.png`` is Li's Fig. 3 (both slices overlaid).

Finding (default scale, ``numbers.json``; one seed, ~90 s on one core). All four runs fit the
train set (≥ 99.7%); SB tests better than LB with and without weight decay (98.4% / 98.9% against
97.6% / 97.6%: 4–6 of 450 test digits, within what another seed could change). Without weight
decay every view agrees with Keskar: the LB end is the narrow one on the interpolation (loss rise
1.5 nats against ≈ 0), λ_max 1.19 against 0.007, filter-normalized rise at |α| = 1 0.45 against
0.03. With weight decay the interpolation flips, as in Li et al.'s Fig. 2: now the SB end looks
sharp (rise 2.6 against 0.01) — its weights shrank to ‖w‖ ≈ 9 against 16 for LB (40 against 17
without decay), so the same step is relatively larger — while the filter-normalized slices keep
LB the sharper (0.45 against 0.04), matching the test accuracies (Li et al.'s Fig. 3). λ_max is
not scale invariant either, but stayed larger for LB here (1.24 against 0.37). With a constant
learning rate (tried first) the SB run with weight decay stopped at 98.9% train accuracy and
tested worse than LB, which is why both runs anneal. ``claims`` in the JSON records each
ordering as it came out.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from common import Options, full_dataset, main, probe, save, say, train_run
from landscape.train.config import TrainConfig

SCALES = {
    "default": {"epochs": 40, "batch_small": 16, "batch_large": 1347, "weight_decays": [0.0, 5e-3],
                "interp_points": 41, "slice_points": 41, "surface_subset": None, "lanczos_steps": 100,
                "hessian_subset": None, "train_size": None},
    "full": {"epochs": 100, "batch_small": 128, "batch_large": 4096, "weight_decays": [0.0, 5e-4],
             "interp_points": 41, "slice_points": 41, "surface_subset": 10000, "lanczos_steps": 100,
             "hessian_subset": 4096},
}
SMOKE = {"epochs": 2, "train_size": 256, "interp_points": 5, "slice_points": 5, "surface_subset": None,
         "lanczos_steps": 8, "hessian_subset": None}
LABELS = {"sb": "small batch", "lb": "large batch"}
COLORS = {"sb": "C0", "lb": "C3"}


def config(opts: Options, batch_size: int, weight_decay: float) -> TrainConfig:
    """The one config both runs of a pair share, but for the batch size."""
    if opts.scale == "full":
        dataset, params = full_dataset()
        return TrainConfig(model="resnet20", dataset=dataset, dataset_params=params, optimizer="sgd", lr=0.1,
                           weight_decay=weight_decay, schedule="cosine", epochs=opts["epochs"],
                           batch_size=batch_size, checkpoints="none")
    return TrainConfig(model="mlp", model_params={"width": 256, "depth": 3, "norm": "batchnorm"}, dataset="digits",
                       train_size=opts["train_size"],
                       optimizer="sgd", lr=0.05, weight_decay=weight_decay, schedule="cosine", epochs=opts["epochs"],
                       batch_size=batch_size, checkpoints="none")


def probe_into(opts: Options, name: str, store: str, probe_name: str, checkpoints: str = "last",
               **settings: Any) -> list[dict[str, Any]]:
    """As :func:`common.probe`, into ``RUN_DIR/<store>.h5`` instead of ``analysis.h5``: a run's
    file holds one result per (checkpoint, probe), and the interpolation is a second surface."""
    from landscape.analyze import run_probe
    from landscape.probes import make_config

    records = run_probe(opts.out / name, probe_name, make_config(probe_name, **settings), checkpoints=checkpoints,
                        out=opts.out / name / f"{store}.h5", device=opts.device, force=opts.force)
    return [dict(r.result) for r in records]


def last_checkpoint(opts: Options, name: str) -> str:
    from landscape.checkpoints import RunDir

    return str(RunDir(opts.out / name).checkpoint("last").path.resolve())


def weight_norm(path: str) -> float:
    """‖w‖ over the weight matrices and filters (biases and BatchNorm parameters left out)."""
    from landscape.checkpoints import load_state_dict

    state = load_state_dict(path)
    return float(np.sqrt(sum(float((t.double() ** 2).sum()) for k, t in state.items()
                             if k.endswith("weight") and t.ndim > 1)))


def value_at(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    return float(np.interp(x, xs, ys))


def slice_rise(r: dict, radius: float, split: str = "train") -> float:
    """Mean of L(±radius) − L(0) on a 1D slice (linear interpolation between grid points)."""
    xs, ys = np.asarray(r["xcoords"], float), np.asarray(r[f"{split}_loss"], float)
    return 0.5 * (value_at(xs, ys, radius) + value_at(xs, ys, -radius)) - value_at(xs, ys, 0.0)


def wd_label(wd: float) -> str:
    return "no weight decay" if wd == 0 else f"weight decay {wd:g}"


def interpolation_figure(interps: dict[float, dict]):
    """One panel per weight decay: loss (left, log) and accuracy (right) along θ_SB → θ_LB."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(interps), figsize=(5.4 * len(interps), 4.0), layout="constrained", squeeze=False)
    for ax, (wd, r) in zip(axes[0], interps.items(), strict=True):
        xs = np.asarray(r["xcoords"], float)
        acc_ax = ax.twinx()
        for split, ls in (("train", "-"), ("test", "--")):
            ax.semilogy(xs, np.maximum(np.asarray(r[f"{split}_loss"], float), 1e-6), ls, color="C0", lw=1.5,
                        label=f"{split} loss")
            acc_ax.plot(xs, 100 * np.asarray(r[f"{split}_acc"], float), ls, color="C3", lw=1.5,
                        label=f"{split} accuracy")
        for a, text in ((0.0, "small batch"), (1.0, "large batch")):
            ax.axvline(a, color="0.6", lw=0.8, ls=":")
            ax.text(a, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
        ax.set_xlabel("α   (θ = θ_SB + α (θ_LB − θ_SB))")
        ax.set_ylabel("cross-entropy loss", color="C0")
        acc_ax.set_ylabel("accuracy (%)", color="C3")
        acc_ax.set_ylim(0, 102)
        ax.set_title(wd_label(wd), pad=14)
        ax.grid(alpha=0.3)
    lines = axes[0, 0].get_lines()[:2] + fig.axes[-1].get_lines()
    fig.legend(lines, [ln.get_label() for ln in lines], loc="outside lower center", ncols=4, frameon=False,
               fontsize=8)
    fig.suptitle("Linear interpolation between the small-batch and the large-batch solution", fontsize=11)
    return fig


def slices_figure(slices: dict[float, dict[str, dict]]):
    """Rows: loss, accuracy; columns: weight decay; SB and LB filter-normalized slices overlaid."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(slices), figsize=(5.0 * len(slices), 6.4), layout="constrained",
                             squeeze=False, sharex=True)
    for col, (wd, pair) in enumerate(slices.items()):
        for key, r in pair.items():
            xs = np.asarray(r["xcoords"], float)
            for split, ls in (("train", "-"), ("test", "--")):
                axes[0, col].semilogy(xs, np.maximum(np.asarray(r[f"{split}_loss"], float), 1e-6), ls,
                                      color=COLORS[key], lw=1.5, label=f"{LABELS[key]}, {split}")
                axes[1, col].plot(xs, 100 * np.asarray(r[f"{split}_acc"], float), ls, color=COLORS[key], lw=1.5,
                                  label=f"{LABELS[key]}, {split}")
        axes[0, col].set_title(wd_label(wd))
        axes[0, col].set_ylabel("cross-entropy loss")
        axes[1, col].set_ylabel("accuracy (%)")
        axes[1, col].set_xlabel("α   (θ + α d, d filter-normalized)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
        axes[0, col].legend(frameon=False, fontsize=7)
    fig.suptitle("Filter-normalized 1D slices through each minimum (same random draw)", fontsize=11)
    return fig


def run(opts: Options) -> dict:
    # BatchNorm in train mode everywhere: each point is evaluated with the statistics of the set it is
    # evaluated on (what full-batch training optimizes); interpolated running averages would turn
    # negative beyond the segment's ends.
    shared = {"splits": "train,test", "subset": opts["surface_subset"], "bn_mode": "train", "dim": 1}
    interp_settings = {**shared, "x": f"-0.5:1.5:{opts['interp_points']}", "kind": "weights"}
    slice_settings = {**shared, "x": f"-1:1:{opts['slice_points']}", "norm": "filter", "ignore": "biasbn", "seed": 0}
    hessian_settings = {"top_k": 1, "bottom_k": 0, "trace": False, "lanczos_steps": opts["lanczos_steps"],
                        "tol": 1e-4, "subset": opts["hessian_subset"], "bn_mode": "train"}
    numbers: dict[str, Any] = {}
    interps: dict[float, dict] = {}
    slices: dict[float, dict[str, dict]] = {}
    for wd in opts["weight_decays"]:
        tag = f"wd{wd:g}"
        names = {"sb": f"sb-{tag}", "lb": f"lb-{tag}"}
        finals = {key: train_run(opts, names[key], config(opts, opts[f"batch_{'small' if key == 'sb' else 'large'}"], wd))
                  for key in names}
        lb_path = last_checkpoint(opts, names["lb"])
        interp = probe_into(opts, names["sb"], "interpolation", "surface",
                            direction=f"interpolate:{lb_path}", **interp_settings)[0]
        pair = {key: probe(opts, names[key], "surface", **slice_settings)[0] for key in names}
        hess = {key: probe(opts, names[key], "hessian", **hessian_settings)[0] for key in names}
        interps[wd], slices[wd] = interp, pair

        xs, loss = np.asarray(interp["xcoords"], float), np.asarray(interp["train_loss"], float)
        entry: dict[str, Any] = {}
        for key, name in names.items():
            f = finals[key]
            entry[key] = {
                "batch_size": opts["batch_small" if key == "sb" else "batch_large"],
                "train_acc": f.get("train_acc"), "test_acc": f.get("test_acc"),
                "train_loss": f.get("train_loss"), "test_loss": f.get("test_loss"),
                "gap": f["train_acc"] - f["test_acc"],
                "lambda_max": float(np.asarray(hess[key]["eigenvalues"])[0]),
                "weight_norm": weight_norm(last_checkpoint(opts, name)),
                "slice_rise_0.5": slice_rise(pair[key], 0.5), "slice_rise_1": slice_rise(pair[key], 1.0),
                "slice_rise_1_test": slice_rise(pair[key], 1.0, "test"),
            }
        # 0.5·‖θ_LB − θ_SB‖ beyond each end of the segment.
        entry["sb"]["interp_rise_0.5"] = value_at(xs, loss, -0.5) - value_at(xs, loss, 0.0)
        entry["lb"]["interp_rise_0.5"] = value_at(xs, loss, 1.5) - value_at(xs, loss, 1.0)
        entry["interp_max_train_loss_between"] = float(loss[(xs >= 0) & (xs <= 1)].max())
        entry["interp_distance"] = float(np.linalg.norm(np.asarray(interp["directions"]["d0"], float)))
        sb, lb = entry["sb"], entry["lb"]
        entry["claims"] = {
            "lb_generalizes_worse": lb["test_acc"] < sb["test_acc"],
            "lb_sharper_on_interpolation": lb["interp_rise_0.5"] > sb["interp_rise_0.5"],
            "lb_larger_lambda_max": lb["lambda_max"] > sb["lambda_max"],
            "lb_sharper_filter_normalized": lb["slice_rise_1"] > sb["slice_rise_1"],
        }
        numbers[tag] = entry
        say(f"[{opts.name}] {wd_label(wd)}: test acc SB {sb['test_acc']:.4f} / LB {lb['test_acc']:.4f}; "
            f"λ_max {sb['lambda_max']:.3g} / {lb['lambda_max']:.3g}; interpolation rise "
            f"{sb['interp_rise_0.5']:.3g} / {lb['interp_rise_0.5']:.3g}; filter-normalized rise at |α|=1 "
            f"{sb['slice_rise_1']:.3g} / {lb['slice_rise_1']:.3g}")

    claims = [numbers[f"wd{wd:g}"]["claims"] for wd in opts["weight_decays"]]
    if len(claims) == 2:
        numbers["interpolation_ordering_flips_with_weight_decay"] = (
            claims[0]["lb_sharper_on_interpolation"] != claims[1]["lb_sharper_on_interpolation"])
        numbers["filter_normalized_ordering_same_with_and_without_weight_decay"] = (
            claims[0]["lb_sharper_filter_normalized"] == claims[1]["lb_sharper_filter_normalized"])
    save(opts, interpolation_figure(interps), "batch_size_interpolation")
    save(opts, slices_figure(slices), "batch_size_slices")
    return numbers


if __name__ == "__main__":
    sys.exit(main(run, "batch_size_sharpness", __doc__, SCALES, SMOKE))
