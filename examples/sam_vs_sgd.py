"""SAM and ASAM against SGD: flatter minima, and better generalization under label noise?

Claim. Sharpness-aware minimization finds flatter minima than SGD (a smaller top Hessian eigenvalue,
a smaller adaptive sharpness, a wider basin in a filter-normalized 2D slice of the loss) and
generalizes as well or better, with the largest gain when part of the training labels are wrong:
SAM is robust to label noise (Foret, Kleiner, Mobahi, Neyshabur 2021, "Sharpness-Aware
Minimization for Efficiently Improving Generalization"; Kwon, Kim, Park, Choi 2021, "ASAM:
Adaptive Sharpness-Aware Minimization"). Andriushchenko, Croce, Müller, Hein, Flammarion 2023 ("A
Modern Look at the Relationship between Sharpness and Generalization") add that adaptive sharpness
does not reliably track generalization across models — lower sharpness need not mean lower test
error.

What it does. Trains one network per optimizer {SGD, SAM ρ=0.05, ASAM ρ=0.5} (all on SGD with
momentum 0.9, one learning rate, cosine schedule and epoch budget, chosen so that SGD fits the
clean training set to 100%) × label noise {0, 0.2} (symmetric, the same flipped labels for every
run) × seeds (initialization and batch order). On each final checkpoint, on the (noisy) training
set it was trained on: the Hessian probe (λ_max by Lanczos, trace by Hutchinson), the sharpness
probe (worst-case adaptive l∞ sharpness by Auto-PGD at the default ρ grid of Andriushchenko et
al., m=128 on 1,024 points), and a 2D loss surface along two filter-normalized random directions
(Li et al. 2018; the same seed for every run). The basin area is the fraction of that 2D grid where
the training loss stays within ``basin_delta`` (nats) of its value at the minimum. It also counts
how many of the flipped training labels each network fits (memorization). The orderings the papers
claim are computed on the seed means (and per seed) and written to ``numbers.json``, with Kendall
τ of each measure against the test error across runs of the same noise level. ``--scale full``
is the same comparison with a ResNet-20 (batch norm, weight decay 5e-4, lr 0.1, 100 epochs, batch
128) on CIFAR-10 (else 3×32×32 synthetic data), the Hessian and surface on 4,096 training points.

Figures: ``sam_vs_sgd_surfaces.png`` (one contour panel per optimizer and noise level, one shared
log colour scale and the same contour levels, the basin boundary dashed) and
``sam_vs_sgd_measures.png`` (λ_max, trace, sharpness over ρ, test accuracy, basin area and the
rank correlations with test error).

Finding (default scale: MLP on digits, 60 epochs, 2 seeds; ``numbers.json``). Flatter: yes, on every
Hessian and sharpness measure, in both seeds. Clean labels: λ_max 0.37 (SGD) → 0.10 (SAM) → 0.050
(ASAM), trace 2.6 → 0.88 → 0.50, adaptive sharpness 2.5–3.1× (SAM) and 3.9–5.3× (ASAM) lower at
every ρ; test accuracy about equal (97.1 / 97.6 / 97.4%, ASAM below SGD in seed 0; one test point is
0.22%). The 2D basin is not clearly wider on clean labels (74 / 75 / 81% of the grid within 0.5 nats
of the centre on the seed means, and in seed 1 SGD's was larger than SAM's and ASAM's). Label noise
0.2: λ_max 4.7 → 3.1 → 2.3, trace 102 → 75 → 65, adaptive sharpness only 8–23% lower, basin 14 → 20
→ 23%, and test accuracy 89.9 → 92.4 → 93.2%, better in both seeds, so the gain is larger than on
clean labels, as claimed. It comes with less memorization at a higher training loss: of the 269
flipped training labels SGD fits 74 / 64% (seeds 0 / 1), SAM 55 / 42%, ASAM 50 / 36%; whether the
gain survives training until every optimizer has memorized the noise was not tested here. Sharpness
vs generalization (Andriushchenko et al.): among the six clean runs the Kendall τ of every measure
with test error is weak (0.2–0.47); among the six noisy runs it is 0.87 for every measure (−0.87 for
basin area) because there the optimizer drives both. Six runs per level are too few to confirm or
refute "sharpness does not track generalization".
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from common import Options, full_dataset, main, probe, save, say, train_run
from landscape.train.config import TrainConfig

OPTIMIZERS = {"sgd": {}, "sam": {"rho": 0.05}, "asam": {"rho": 0.5}}
LABELS = {"sgd": "SGD", "sam": "SAM ρ=0.05", "asam": "ASAM ρ=0.5"}
COLORS = {"sgd": "C7", "sam": "C0", "asam": "C3"}

SCALES = {
    "default": {"model": "mlp", "epochs": 60, "lr": 0.05, "batch_size": 64, "noise": 0.2, "seeds": 2,
                "n_train": None, "n_test": None, "hessian_subset": None, "lanczos_steps": 100,
                "trace_samples": 100, "sharpness_subset": 1024, "sharpness_m": 128, "sharpness_iters": 20,
                "surface_grid": "-1:1:21", "surface_subset": None, "basin_delta": 0.5},
    "full": {"model": "resnet20", "epochs": 100, "lr": 0.1, "batch_size": 128, "noise": 0.2, "seeds": 2,
             "hessian_subset": 4096, "lanczos_steps": 100,
             "trace_samples": 100, "sharpness_subset": 1024, "sharpness_m": 128, "sharpness_iters": 20,
             "surface_grid": "-1:1:25", "surface_subset": 4096, "basin_delta": 0.5},
}
SMOKE = {"epochs": 1, "seeds": 1, "n_train": 128, "n_test": 64, "hessian_subset": 32, "lanczos_steps": 4,
         "trace_samples": 2, "sharpness_subset": 32, "sharpness_m": 32, "sharpness_iters": 2,
         "surface_grid": "-1:1:3", "surface_subset": 32}


# ---- training ---------------------------------------------------------------------------------

def config(opts: Options, optimizer: str, noise: float, seed: int) -> TrainConfig:
    """The run of ``optimizer`` at label noise ``noise``; everything else is shared by all runs."""
    common: dict[str, Any] = {"optimizer": optimizer, "optimizer_params": {"momentum": 0.9, **OPTIMIZERS[optimizer]},
                              "lr": opts["lr"], "schedule": "cosine", "epochs": opts["epochs"],
                              "batch_size": opts["batch_size"], "label_noise": noise, "seed": seed,
                              "checkpoints": "none"}
    if opts.scale == "full":
        dataset, params = full_dataset()  # CIFAR-10, else synthetic (shrunk by itself when --smoke)
        return TrainConfig(model="resnet20", dataset=dataset, dataset_params=params, weight_decay=5e-4, **common)
    params = {}
    if opts["n_test"] is not None:
        params["test_size"] = opts["n_test"]
    return TrainConfig(model="mlp", dataset="digits", dataset_params=params, train_size=opts["n_train"], **common)


def memorization(opts: Options, name: str) -> dict[str, float]:
    """On the training points whose label was flipped: the share predicted as the (wrong) training
    label and as the true label. Empty without label noise."""
    import torch

    from landscape.targets import load_data_and_loss, load_model, resolve_targets
    from landscape.utils import resolve_device

    target = resolve_targets(opts.out / name, "last")[0]
    data, _ = load_data_and_loss(target, None)
    if data.clean_train_y is None:
        return {}
    device = resolve_device(opts.device)
    model = load_model(target, None, device)
    noisy, clean = data.train.y.cpu(), torch.as_tensor(data.clean_train_y).cpu()
    flipped = noisy != clean
    with torch.no_grad():
        pred = torch.cat([model(xb.to(device)).argmax(1).cpu() for xb in data.train.x.split(1024)])
    return {"flipped": int(flipped.sum()), "fit_noisy_label": float((pred[flipped] == noisy[flipped]).float().mean()),
            "predict_true_label": float((pred[flipped] == clean[flipped]).float().mean())}


def basin_area(x: np.ndarray, y: np.ndarray, loss: np.ndarray, delta: float) -> float:
    """Share of the grid where the loss (stored ``[ix, iy]``) is within ``delta`` of the loss at the
    grid point nearest the trained weights (0, 0)."""
    loss = np.asarray(loss, dtype=float)
    centre = loss[np.argmin(np.abs(x)), np.argmin(np.abs(y))]
    finite = np.where(np.isfinite(loss), loss, np.inf)
    return float(np.mean(finite <= centre + delta))


def analyze(opts: Options, name: str) -> dict[str, Any]:
    """Hessian, sharpness and surface on the run's last checkpoint, as plain numbers and arrays."""
    hess = probe(opts, name, "hessian", "last", top_k=1, bottom_k=0, trace=True, lanczos_steps=opts["lanczos_steps"],
                 trace_samples=opts["trace_samples"], subset=opts["hessian_subset"])[0]
    sharp = probe(opts, name, "sharpness", "last", kind="worst", norm="linf", adaptive=True,
                  subset=opts["sharpness_subset"], m=opts["sharpness_m"], iters=opts["sharpness_iters"],
                  first_order_rho=None, pac_bayes=False)[0]
    surf = probe(opts, name, "surface", "last", dim=2, x=opts["surface_grid"], y=opts["surface_grid"],
                 norm="filter", ignore="biasbn", subset=opts["surface_subset"], seed=0)[0]
    rhos = np.asarray(sharp["rhos"], dtype=float)
    return {
        "lambda_max": float(np.asarray(hess["eigenvalues"])[0]), "trace": float(hess["trace"]),
        "sharpness": {f"{r:g}": float(v) for r, v in zip(rhos, np.asarray(sharp["delta_loss"]), strict=True)},
        "sharpness_error": {f"{r:g}": float(v) for r, v in zip(rhos, np.asarray(sharp["delta_error"]), strict=True)},
        "surface_origin_loss": float(surf["origin_loss"]),
        "basin_area": basin_area(np.asarray(surf["xcoords"]), np.asarray(surf["ycoords"]), surf["train_loss"],
                                 opts["basin_delta"]),
        "_surface": (np.asarray(surf["xcoords"]), np.asarray(surf["ycoords"]), np.asarray(surf["train_loss"])),
    }


# ---- comparisons ------------------------------------------------------------------------------

def scalar_measures(run: dict[str, Any]) -> dict[str, float]:
    """The run's measures as one flat dict (sharpness per ρ as ``sharpness@ρ``)."""
    out = {k: run[k] for k in ("test_acc", "train_acc", "lambda_max", "trace", "basin_area")}
    out.update({f"sharpness@{r}": v for r, v in run["sharpness"].items()})
    return out


def orderings(runs: dict[tuple[str, float, int], dict[str, Any]], noises: list[float],
              seeds: list[int]) -> tuple[dict[str, bool], dict[str, bool]]:
    """Each claimed ordering on the seed means, and whether it held in every seed separately."""
    def value(opt: str, noise: float, key: str, seed: int | None = None) -> float:
        chosen = seeds if seed is None else [seed]
        return float(np.mean([scalar_measures(runs[opt, noise, s])[key] for s in chosen]))

    keys = list(scalar_measures(runs["sgd", noises[0], seeds[0]]))
    checks: dict[str, Any] = {}
    for noise in noises:
        for opt in ("sam", "asam"):
            for key in keys:
                if key in ("lambda_max", "trace") or key.startswith("sharpness@"):
                    checks[f"{key}: {opt} < sgd at noise {noise:g}"] = (
                        lambda s, o=opt, n=noise, k=key: value(o, n, k, s) < value("sgd", n, k, s))
            checks[f"basin_area: {opt} > sgd at noise {noise:g}"] = (
                lambda s, o=opt, n=noise: value(o, n, "basin_area", s) > value("sgd", n, "basin_area", s))
            checks[f"test_acc: {opt} >= sgd at noise {noise:g}"] = (
                lambda s, o=opt, n=noise: value(o, n, "test_acc", s) >= value("sgd", n, "test_acc", s))
    if len(noises) > 1:
        lo, hi = noises[0], noises[-1]
        for opt in ("sam", "asam"):
            checks[f"test_acc gain of {opt} over sgd: larger at noise {hi:g} than at noise {lo:g}"] = (
                lambda s, o=opt: value(o, hi, "test_acc", s) - value("sgd", hi, "test_acc", s)
                > value(o, lo, "test_acc", s) - value("sgd", lo, "test_acc", s))
    on_means = {name: bool(check(None)) for name, check in checks.items()}
    every_seed = {name: all(bool(check(s)) for s in seeds) for name, check in checks.items()}
    return on_means, every_seed


def rank_correlations(runs: dict[tuple[str, float, int], dict[str, Any]], noises: list[float]) -> dict[str, Any]:
    """Kendall τ (Jiang et al.'s tau-a) of each measure against the test error, over the runs of each
    noise level (a positive τ: the flatter run is the better one; for basin_area, negative)."""
    from landscape.correlate import kendall_tau

    out: dict[str, Any] = {}
    for noise in noises:
        chosen = [r for (o, n, s), r in runs.items() if n == noise]
        err = np.array([1.0 - r["test_acc"] for r in chosen])
        measures = {k: np.array([scalar_measures(r)[k] for r in chosen])
                    for k in scalar_measures(chosen[0]) if k not in ("test_acc", "train_acc")}
        if len(chosen) < 3 or np.ptp(err) == 0:
            out[f"noise {noise:g}"] = {k: None for k in measures}
            continue
        out[f"noise {noise:g}"] = {k: (kendall_tau(v, err) if np.ptp(v) > 0 else None) for k, v in measures.items()}
    return out


# ---- figures ----------------------------------------------------------------------------------

def surface_figure(runs: dict[tuple[str, float, int], dict[str, Any]], noises: list[float], seed: int,
                   delta: float):
    """One panel per (noise, optimizer): the training-loss surface on one shared log colour scale."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    surfaces = {(o, n): runs[o, n, seed]["_surface"] for o in OPTIMIZERS for n in noises}
    values = np.concatenate([z[np.isfinite(z)].ravel() for _, _, z in surfaces.values()])
    vmin = max(float(values.min()), 1e-4)
    vmax = max(float(values.max()), vmin * 10)
    levels = np.geomspace(vmin, vmax, 16)
    norm = LogNorm(vmin=vmin, vmax=vmax)
    fig, axes = plt.subplots(len(noises), len(OPTIMIZERS), figsize=(3.6 * len(OPTIMIZERS) + 0.8, 3.3 * len(noises)),
                             layout="constrained", squeeze=False, sharex=True, sharey=True)
    mappable = None
    for i, noise in enumerate(noises):
        for j, opt in enumerate(OPTIMIZERS):
            ax = axes[i, j]
            x, y, z = surfaces[opt, noise]
            zz = np.clip(np.where(np.isfinite(z), z, vmax), vmin, vmax).T  # values are stored [ix, iy]
            mappable = ax.contourf(x, y, zz, levels=levels, norm=norm, cmap="viridis", extend="both")
            ax.contour(x, y, zz, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
            centre = z[np.argmin(np.abs(x)), np.argmin(np.abs(y))]
            if np.isfinite(centre):
                ax.contour(x, y, zz, levels=[centre + delta], colors="red", linewidths=1.2, linestyles="--")
            ax.plot(0, 0, "w+", ms=8)
            r = runs[opt, noise, seed]
            ax.set_title(f"{LABELS[opt]}, noise {noise:g}\ntest {100 * r['test_acc']:.1f}%, "
                         f"basin {100 * r['basin_area']:.0f}% of grid", fontsize=9)
            if i == len(noises) - 1:
                ax.set_xlabel("filter-normalized direction 1")
            if j == 0:
                ax.set_ylabel("direction 2")
            ax.set_aspect("equal")
    cbar = fig.colorbar(mappable, ax=axes, label="training loss (shared log scale)", shrink=0.9)
    decades = [10.0**k for k in range(int(np.ceil(np.log10(vmin))), int(np.floor(np.log10(vmax))) + 1)]
    cbar.set_ticks(decades, labels=[f"{d:g}" for d in decades])
    fig.suptitle(f"Training-loss surfaces, same random directions (seed {seed}); "
                 f"red dashed: loss = centre + {delta:g}", fontsize=10)
    return fig


def measures_figure(runs: dict[tuple[str, float, int], dict[str, Any]], noises: list[float], seeds: list[int],
                    taus: dict[str, Any]):
    """λ_max, trace, sharpness over ρ, test accuracy, basin area (bars: seed means, dots: seeds) and
    the rank correlation of every measure with the test error."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), layout="constrained")
    opts = list(OPTIMIZERS)
    width = 0.8 / len(opts)
    for ax, key, title in ((axes[0, 0], "lambda_max", "λ_max of the training-loss Hessian"),
                           (axes[0, 1], "trace", "Hessian trace (Hutchinson)")):  # points on a log scale
        for k, opt in enumerate(opts):
            pos = np.arange(len(noises)) + (k - (len(opts) - 1) / 2) * width
            vals = np.array([[runs[opt, n, s][key] for s in seeds] for n in noises])
            ax.plot(pos, vals.mean(1), "D", ms=8, color=COLORS[opt], label=LABELS[opt])
            for si in range(len(seeds)):
                ax.plot(pos, vals[:, si], "o", mfc="none", mec="k", ms=4)
        if all(runs[o, n, s][key] > 0 for o in opts for n in noises for s in seeds):
            ax.set_yscale("log")  # (a tiny smoke run can estimate a negative trace)
        ax.set_title(title + " (◆ seed mean, ○ seeds)", fontsize=10)
    for ax, key, title in ((axes[1, 0], "test_acc", "test accuracy"),
                           (axes[1, 1], "basin_area", "basin area (share of 2D grid within Δ of the centre)")):
        for k, opt in enumerate(opts):
            pos = np.arange(len(noises)) + (k - (len(opts) - 1) / 2) * width
            vals = np.array([[runs[opt, n, s][key] for s in seeds] for n in noises])
            ax.bar(pos, vals.mean(1), width * 0.9, color=COLORS[opt], alpha=0.75, label=LABELS[opt])
            for si in range(len(seeds)):
                ax.plot(pos, vals[:, si], "o", color="k", ms=3)
        ax.set_title(title, fontsize=10)
        if key == "test_acc":
            lo = min(runs[o, n, s][key] for o in opts for n in noises for s in seeds)
            ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    for ax in (axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]):
        ax.set_xticks(np.arange(len(noises)), [f"label noise {n:g}" for n in noises])
        ax.set_xlim(-0.6, len(noises) - 0.4)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].legend(frameon=False, fontsize=8)

    ax = axes[0, 2]
    styles = ["-", "--", ":", "-."]
    for opt in opts:
        for i, noise in enumerate(noises):
            rhos = [float(r) for r in runs[opt, noise, seeds[0]]["sharpness"]]
            vals = np.array([[runs[opt, noise, s]["sharpness"][f"{r:g}"] for r in rhos] for s in seeds])
            ax.plot(rhos, np.maximum(vals.mean(0), 1e-8), styles[i % 4], marker="o", ms=3, color=COLORS[opt],
                    label=f"{LABELS[opt]}, noise {noise:g}")
    ax.set(xscale="log", yscale="log", xlabel="ρ (adaptive l∞ radius)", ylabel="L(w+δ*) − L(w)")
    ax.set_xticks(rhos, [f"{r:g}" for r in rhos])
    ax.minorticks_off()
    ax.set_title("worst-case adaptive sharpness (seed mean)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7)

    ax = axes[1, 2]
    names = list(next(iter(taus.values())))
    ypos = np.arange(len(names))
    h = 0.8 / len(taus)
    for i, (level, by_measure) in enumerate(taus.items()):
        vals = [np.nan if by_measure[m] is None else by_measure[m] for m in names]
        ax.barh(ypos + (i - (len(taus) - 1) / 2) * h, vals, h * 0.9, label=level, color=f"C{i + 4}")
    ax.set_yticks(ypos, names, fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlim(-1, 1)
    ax.set(xlabel="Kendall τ with test error (runs of one noise level)\n"
                  "τ > 0: flatter ranks better (basin_area: τ < 0)")
    ax.set_title("does the measure rank the runs' test error?", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return fig


# ---- the example ------------------------------------------------------------------------------

def run(opts: Options) -> dict:
    noises = [0.0, float(opts["noise"])]
    seeds = list(range(opts["seeds"]))
    runs: dict[tuple[str, float, int], dict[str, Any]] = {}
    for seed in seeds:
        for noise in noises:
            for opt in OPTIMIZERS:
                name = f"{opt}-noise{noise:g}-seed{seed}"
                final = train_run(opts, name, config(opts, opt, noise, seed))
                r = {"test_acc": float(final["test_acc"]), "train_acc": float(final["train_acc"]),
                     "train_loss": float(final["train_loss"]), **analyze(opts, name)}
                r["memorization"] = memorization(opts, name)
                runs[opt, noise, seed] = r
                say(f"[{opts.name}] {name}: test {r['test_acc']:.3f}, λ_max {r['lambda_max']:.3g}, "
                    f"trace {r['trace']:.3g}, basin {r['basin_area']:.2f}")

    on_means, every_seed = orderings(runs, noises, seeds)
    taus = rank_correlations(runs, noises)
    save(opts, surface_figure(runs, noises, seeds[0], opts["basin_delta"]), "sam_vs_sgd_surfaces")
    save(opts, measures_figure(runs, noises, seeds, taus), "sam_vs_sgd_measures")

    public = {f"{o}/noise{n:g}/seed{s}": {k: v for k, v in r.items() if not k.startswith("_")}
              for (o, n, s), r in runs.items()}
    means: dict[str, Any] = {}
    for opt in OPTIMIZERS:
        for noise in noises:
            flat = [scalar_measures(runs[opt, noise, s]) for s in seeds]
            means[f"{opt}/noise{noise:g}"] = {k: float(np.mean([f[k] for f in flat])) for k in flat[0]}
    held = sum(on_means.values())
    say(f"[{opts.name}] {held} of {len(on_means)} claimed orderings held on the seed means")
    return {"optimizers": OPTIMIZERS, "noise_levels": noises, "seeds": seeds, "runs": public, "means": means,
            "orderings": on_means, "orderings_in_every_seed": every_seed,
            "kendall_tau_with_test_error": taus}


if __name__ == "__main__":
    sys.exit(main(run, "sam_vs_sgd", __doc__, SCALES, SMOKE))
