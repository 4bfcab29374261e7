"""Skip connections and the shape of the loss surface: without them, deep ResNets get chaotic landscapes.

Claim. Removing the skip connections of a ResNet makes its loss surface non-convex and chaotic,
and the effect grows with depth: ResNet-20 and ResNet-20-noshort look alike (a convex-looking
basin), while ResNet-56-noshort and ResNet-110-noshort show a chaotic surface with many local
minima and regions of large negative curvature, where the ResNets with shortcuts stay smooth
(Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the loss landscape of neural nets",
Figs. 5–6; Fig. 7 maps |λ_min/λ_max| of the Hessian over the surface: near zero where it is
convex, large where it is not).

What it does. Trains CIFAR-style ResNets (``model="resnet20"`` with BatchNorm; ``blocks`` 3 =
ResNet-20 and 9 = ResNet-56) with and without shortcuts on digits (inputs 1×8×8, so the three
stages see 8×8, 4×4 and 2×2 maps) at width 8 (half the standard 16, for the CPU budget), all four
with one recipe: SGD, momentum 0.9, lr 0.05, batch 64, cosine schedule, weight decay 5e-4 (Li et
al.'s), 20 epochs. For each it computes a 2D train-loss surface along two filter-normalized
random directions (the same seed for every model; a fixed subset of 256 training digits; a 21 ×
21 grid on [−1, 1]²; BatchNorm in eval mode, as in the reference code) and the Hessian's extreme
eigenvalues at the trained point (Lanczos on 256 digits, ``top_k``/``bottom_k`` 1:
``lambda_ratio`` = |λ_min/λ_max|). Mapping the full Hessian's ratio over the plane, as Li et
al.'s Fig. 7 does, costs a Lanczos run per grid point; instead the in-plane Hessian (the 2×2
matrix of second differences of the stored surface, Dᵀ∇²L D for D = [d₀ d₁]) is mapped at every
interior grid point, its non-convexity read as max(−λ₁, 0)/max|λᵢ| (0 where the plane curves
upwards, 1 where it curves down as much as up). Per surface the JSON gives the mean of that map,
the share of points above 0.1, the strict local minima of the grid (8 neighbours) and the share
of the plane within 1 nat of the centre's loss. ``--scale full`` is ResNet-20/56 at the standard
width 16 on CIFAR-10 (or its synthetic stand-in), 100 epochs, a 51 × 51 grid.

Figures: ``skip_connections_surfaces.png`` (rows: depth; columns: with / without shortcuts; one
shared log colour scale and the same contour levels) and ``skip_connections_curvature.png``
(the in-plane non-convexity maps, same layout and colour scale).

Finding (default scale, ``numbers.json``; one seed, ~4.5 min on one busy core). Only partly
reproduced. ResNet-20 and ResNet-20-noshort both train (100% / 99.6% train, 98.9% / 98.0% test)
and their surfaces look alike, a single basin, the noshort one with less regular contours and a
flatter rim; its in-plane map is non-convex on 32% of the grid against 3% — but mostly on that
rim, where the loss levels off, not as the scattered chaos of Li et al.'s deep nets — and the
full Hessian at the minimum is no less convex (|λ_min/λ_max| 0.015 against 0.030 with shortcuts).
ResNet-56 with shortcuts trains (99.5% train) to a smooth basin like ResNet-20's; ResNet-56-noshort
does not train at all in this budget (21% train accuracy; lr 0.02–0.1, batch 16–128, 20–30 epochs
and a warm-up were tried, all ≤ 45%), which is the far end of the transition Li et al. describe
("from nearly convex to chaotic … ultimately to a lack of trainability") but makes the depth-56
comparison one between a minimum and a point SGD is stuck at: a high plateau (loss 2.3, λ_max ≈
7500) walled by loss that explodes to 6.5e9 within the grid, two grid minima. By the in-plane
measure the excess non-convexity without shortcuts is smaller at depth 56 (0.17) than at 20
(0.28), so ``noshort_effect_grows_with_depth`` came out false; the surfaces figure shows the
qualitative difference better than that number. ``claims`` records every ordering as computed.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from common import Options, full_dataset, main, probe, save, say, train_run
from landscape.train.config import TrainConfig

SCALES = {
    "default": {"width": 8, "blocks": [3, 9], "epochs": 20, "batch_size": 64, "lr": 0.05, "train_size": None,
                "grid": 21, "surface_subset": 256, "hessian_subset": 256, "lanczos_steps": 60},
    "full": {"width": 16, "blocks": [3, 9], "epochs": 100, "batch_size": 128, "lr": 0.1,
             "grid": 51, "surface_subset": 10000, "hessian_subset": 4096, "lanczos_steps": 100},
}
SMOKE = {"epochs": 1, "train_size": 128, "grid": 3, "surface_subset": 64, "hessian_subset": 64, "lanczos_steps": 4}
NONCONVEX = 0.1  # in-plane ratio above which a grid point counts as non-convex
BASIN = 1.0  # nats above the centre's loss


def depth(blocks: int) -> int:
    return 6 * blocks + 2


def run_name(blocks: int, skip: bool) -> str:
    return f"resnet{depth(blocks)}" + ("" if skip else "-noshort")


def config(opts: Options, blocks: int, skip: bool) -> TrainConfig:
    params = {"width": opts["width"], "blocks": blocks, "skip": skip}
    if opts.scale == "full":  # (a --smoke run gets small synthetic data from full_dataset)
        dataset, dataset_params, train_size = *full_dataset(), None
    else:
        dataset, dataset_params, train_size = "digits", {}, opts["train_size"]
    return TrainConfig(model="resnet20", model_params=params, dataset=dataset, dataset_params=dataset_params,
                       train_size=train_size, optimizer="sgd", lr=opts["lr"], weight_decay=5e-4,
                       schedule="cosine", epochs=opts["epochs"], batch_size=opts["batch_size"], checkpoints="none")


def inplane_nonconvexity(xs: np.ndarray, ys: np.ndarray, z: np.ndarray) -> np.ndarray:
    """max(−λ₁, 0)/max(|λ₁|, |λ₂|) of the 2×2 second-difference Hessian at each interior grid point
    (``z[ix, iy]``; NaN at the border and wherever a neighbour is not finite)."""
    hx, hy = xs[1] - xs[0], ys[1] - ys[0]
    out = np.full(z.shape, np.nan)
    c = z[1:-1, 1:-1]
    fxx = (z[2:, 1:-1] - 2 * c + z[:-2, 1:-1]) / hx**2
    fyy = (z[1:-1, 2:] - 2 * c + z[1:-1, :-2]) / hy**2
    fxy = (z[2:, 2:] - z[2:, :-2] - z[:-2, 2:] + z[:-2, :-2]) / (4 * hx * hy)
    mean, dev = (fxx + fyy) / 2, np.sqrt(((fxx - fyy) / 2) ** 2 + fxy**2)
    lo, hi = mean - dev, mean + dev
    big = np.maximum(np.abs(lo), np.abs(hi))
    with np.errstate(invalid="ignore", divide="ignore"):
        out[1:-1, 1:-1] = np.where(big > 0, np.maximum(-lo, 0) / big, 0.0)
    return out


def local_minima(z: np.ndarray) -> int:
    """Interior grid points strictly below all 8 neighbours."""
    c = z[1:-1, 1:-1]
    lower = np.ones(c.shape, dtype=bool)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx or dy:
                lower &= c < z[1 + dx : z.shape[0] - 1 + dx, 1 + dy : z.shape[1] - 1 + dy]
    return int(lower.sum())


def surfaces_figure(models: dict[str, dict[str, Any]], blocks: list[int]):
    """Rows: depth; columns: with / without shortcuts; train-loss contours on one log scale."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    values = np.concatenate([m["z"][np.isfinite(m["z"])].ravel() for m in models.values()])
    vmin = max(float(values.min()), 1e-4)
    vmax = min(max(float(values.max()), vmin * 10), 1e3)
    levels = np.geomspace(vmin, vmax, 20)
    norm = LogNorm(vmin=vmin, vmax=vmax)
    fig, axes = plt.subplots(len(blocks), 2, figsize=(8.2, 3.7 * len(blocks)), layout="constrained", squeeze=False,
                             sharex=True, sharey=True)
    mappable = None
    for i, b in enumerate(blocks):
        for j, skip in enumerate((True, False)):
            ax, m = axes[i, j], models[run_name(b, skip)]
            zz = np.clip(np.where(np.isfinite(m["z"]), m["z"], vmax), vmin, vmax).T  # stored [ix, iy]
            mappable = ax.contourf(m["x"], m["y"], zz, levels=levels, norm=norm, cmap="viridis", extend="both")
            ax.contour(m["x"], m["y"], zz, levels=levels, colors="white", linewidths=0.4, alpha=0.7)
            ax.plot(0, 0, "w+", ms=8)
            ax.set_title(f"ResNet-{depth(b)}{'' if skip else '-noshort'}: train {100 * m['train_acc']:.1f}%, "
                         f"test {100 * m['test_acc']:.1f}%\nlocal minima on the grid: {m['local_minima']}", fontsize=9)
            ax.set_aspect("equal")
            if i == len(blocks) - 1:
                ax.set_xlabel("filter-normalized direction 1")
            if j == 0:
                ax.set_ylabel("direction 2")
    bar = fig.colorbar(mappable, ax=axes, label="training loss (shared log scale)", shrink=0.85)
    decades = 10.0 ** np.arange(np.ceil(np.log10(vmin)), np.floor(np.log10(vmax)) + 1)
    bar.set_ticks(decades, labels=[f"$10^{{{int(np.log10(d))}}}$" for d in decades])
    fig.suptitle("Loss surfaces with and without skip connections (same random directions)", fontsize=10)
    return fig


def curvature_figure(models: dict[str, dict[str, Any]], blocks: list[int]):
    """The in-plane non-convexity map of each surface, loss contours on top."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(blocks), 2, figsize=(8.2, 3.7 * len(blocks)), layout="constrained", squeeze=False,
                             sharex=True, sharey=True)
    mesh = None
    for i, b in enumerate(blocks):
        for j, skip in enumerate((True, False)):
            ax, m = axes[i, j], models[run_name(b, skip)]
            ratio = np.ma.masked_invalid(m["ratio"])
            mesh = ax.pcolormesh(m["x"], m["y"], ratio.T, shading="nearest", cmap="magma", vmin=0, vmax=1)
            z = m["z"]
            if np.isfinite(z).any():
                finite = z[np.isfinite(z)]
                lv = np.geomspace(max(finite.min(), 1e-4), max(finite.max(), finite.min() * 10 + 1e-4), 8)
                ax.contour(m["x"], m["y"], np.where(np.isfinite(z), z, finite.max()).T, levels=lv, colors="white",
                           linewidths=0.5, alpha=0.6)
            ax.set_title(f"ResNet-{depth(b)}{'' if skip else '-noshort'}: mean {m['ratio_mean']:.2f}, "
                         f"{100 * m['nonconvex_fraction']:.0f}% > {NONCONVEX:g}\n"
                         f"full Hessian at the centre: |λ_min/λ_max| = {m['lambda_ratio']:.3f}", fontsize=9)
            ax.set_aspect("equal")
            if i == len(blocks) - 1:
                ax.set_xlabel("filter-normalized direction 1")
            if j == 0:
                ax.set_ylabel("direction 2")
    fig.colorbar(mesh, ax=axes, label="in-plane max(−λ₁, 0) / max|λᵢ|", shrink=0.85)
    fig.suptitle("Non-convexity of the in-plane Hessian (second differences of each surface)", fontsize=10)
    return fig


def run(opts: Options) -> dict:
    n = opts["grid"]
    surface_settings = {"dim": 2, "x": f"-1:1:{n}", "y": f"-1:1:{n}", "norm": "filter", "ignore": "biasbn",
                        "seed": 0, "splits": "train", "subset": opts["surface_subset"]}
    hessian_settings = {"top_k": 1, "bottom_k": 1, "trace": False, "lanczos_steps": opts["lanczos_steps"],
                        "tol": 1e-3, "subset": opts["hessian_subset"]}
    models: dict[str, dict[str, Any]] = {}
    numbers: dict[str, Any] = {"width": opts["width"]}
    for b in opts["blocks"]:
        for skip in (True, False):
            name = run_name(b, skip)
            final = train_run(opts, name, config(opts, b, skip))
            s = probe(opts, name, "surface", **surface_settings)[0]
            h = probe(opts, name, "hessian", **hessian_settings)[0]
            x, y, z = (np.asarray(s[k], float) for k in ("xcoords", "ycoords", "train_loss"))
            ratio = inplane_nonconvexity(x, y, z)
            centre = float(s["origin_loss"])
            inner = ratio[1:-1, 1:-1]
            m = {"x": x, "y": y, "z": z, "ratio": ratio, "test_acc": final["test_acc"], "train_acc": final["train_acc"],
                 "lambda_ratio": float(h["lambda_ratio"]),
                 "ratio_mean": float(np.nanmean(inner)) if np.isfinite(inner).any() else float("nan"),
                 "nonconvex_fraction": float(np.mean(np.nan_to_num(inner, nan=1.0) > NONCONVEX)),
                 "local_minima": local_minima(np.where(np.isfinite(z), z, np.inf))}
            models[name] = m
            lam_max = float(np.asarray(h["eigenvalues"])[0])
            lam_min = float(np.asarray(h["bottom_eigenvalues"])[0])
            numbers[name] = {
                "depth": depth(b), "skip": skip, "train_acc": final.get("train_acc"), "test_acc": final.get("test_acc"),
                "train_loss": final.get("train_loss"), "centre_loss": centre,
                "lambda_max": lam_max, "lambda_min": lam_min, "lambda_ratio": float(h["lambda_ratio"]),
                "hessian_converged": bool(h.get("converged", False)),
                "inplane_ratio_mean": m["ratio_mean"], "nonconvex_fraction": m["nonconvex_fraction"],
                "local_minima": m["local_minima"],
                "basin_fraction": float(np.mean(z < centre + BASIN)),
                "max_loss_on_grid": float(np.nanmax(np.where(np.isfinite(z), z, np.nan))),
            }
            say(f"[{opts.name}] {name}: test acc {final['test_acc']:.4f}, |λ_min/λ_max| {h['lambda_ratio']:.3g}, "
                f"in-plane non-convex {100 * m['nonconvex_fraction']:.0f}% of the grid, {m['local_minima']} grid minima")

    claims: dict[str, Any] = {}
    excess = {}
    for b in opts["blocks"]:
        short, noshort = numbers[run_name(b, True)], numbers[run_name(b, False)]
        excess[b] = noshort["nonconvex_fraction"] - short["nonconvex_fraction"]
        claims[f"resnet{depth(b)}_noshort_more_nonconvex_in_plane"] = excess[b] > 0
        claims[f"resnet{depth(b)}_noshort_larger_hessian_ratio"] = noshort["lambda_ratio"] > short["lambda_ratio"]
        claims[f"resnet{depth(b)}_noshort_more_grid_minima"] = noshort["local_minima"] > short["local_minima"]
    if len(opts["blocks"]) > 1:
        lo, hi = min(opts["blocks"]), max(opts["blocks"])
        claims["noshort_effect_grows_with_depth"] = excess[hi] > excess[lo]
    numbers["nonconvex_excess_without_shortcuts"] = {f"resnet{depth(b)}": v for b, v in excess.items()}
    numbers["claims"] = claims
    save(opts, surfaces_figure(models, opts["blocks"]), "skip_connections_surfaces")
    save(opts, curvature_figure(models, opts["blocks"]), "skip_connections_curvature")
    return numbers


if __name__ == "__main__":
    sys.exit(main(run, "skip_connections", __doc__, SCALES, SMOKE))
