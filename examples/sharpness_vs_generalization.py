"""Do sharpness and flatness measures rank a sweep of trained networks by their generalization gap?

Claim. Over a sweep of training hyper-parameters, the measures based on sharpness and flatness
(PAC-Bayes flatness, worst-case sharpness) correlate with the generalization gap better than
most of the ~40 complexity measures Jiang et al. compared (Kendall τ, and their granulated Ψ, which
averages τ over groups of runs that differ along one hyper-parameter only), while norm-based
measures such as the log-product of spectral norms correlate negatively (Jiang et al. 2020,
"Fantastic generalization measures and where to find them"; they train every run to the same
cross-entropy, 0.01, to take the loss level out of the comparison). Andriushchenko et al. 2023 ("A
modern look at the relationship between sharpness and generalization") find that adaptive
worst-case sharpness correlates weakly, often negatively, with generalization once the setup is
modern: it tracks hyper-parameters such as the learning rate more than the gap, so the correlation
depends on the setup. First-order flatness (Zhang et al. 2023, GAM) is a measure of the same kind.

What it does. Trains the grid lr × batch size × optimizer (SGD, SAM ρ=0.05) × weight decay
(written to ``OUT/grid.json`` in the format of ``landscape sweep``; default: an MLP on 500 digits,
lr 0.01/0.1, batch 32/128, weight decay 0/0.005, constant lr, 16 runs) under two protocols:
``OUT/fixed/`` a fixed budget of 60 epochs, and ``OUT/stopped/`` Jiang et al.'s stopping rule, each
run cut at the first epoch whose training loss is ≤ 0.1 (their 0.01 is out of reach for 10 of
the 16 runs: weight decay 0.005 holds the loss near 0.02, and lr 0.01 with batch 128 is still at
0.07–0.09 after 60 epochs; with a constant lr the cut run is exactly the first epochs of the fixed
one). On each run's last checkpoint it runs the probes ``hessian`` (λ_max, trace), ``sharpness``
(adaptive worst-case ℓ∞ sharpness by Auto-PGD at ρ = 0.001, 0.002, 0.004 with m = 128,
first-order flatness, isotropic and magnitude-aware PAC-Bayes 1/σ²) and, as measures of another
kind, ``coherence`` (m·α), ``collapse`` (NC1) and ``rankme``; ``landscape.analyze.collect_runs`` +
``correlation_table`` give Kendall τ with the gap (bootstrap 95% interval), Spearman ρ and Ψ with
its value per axis, for the accuracy gap (train − test accuracy, Jiang et al.'s) and the loss gap
(test − train loss). Ranked beside them (computed here, not by the library): three norm-based
measures of Jiang et al. from the weights (log-product of squared spectral norms, squared
parameter norm, distance from initialization) and, as a control, the final training loss itself.
``landscape correlate OUT/fixed`` and ``landscape correlate OUT/stopped --axes
lr,batch_size,optimizer,weight_decay`` (the epochs vary there; ``--gap loss`` for the loss gap)
print the same rows for the probe measures, bootstrap intervals included (checked on the
default-scale runs: identical to the last digit). Figures: ``correlation_table.png`` (τ bars with CI
whiskers, Ψ and per-axis Ψ markers; protocols × gaps) and ``gap_vs_measures.png`` (gap against
λ_max, sharpness at the middle ρ, first-order flatness and magnitude-aware PAC-Bayes, one point per
run); every row is also in ``OUT/correlation_table.csv``.

Finding (default scale, ``numbers.json``). Fixed budget (accuracy gap 0.036–0.056, train accuracy
≥ 0.988, final train loss 2e-5 to 0.09): every sharpness, flatness and curvature measure has τ =
+0.52 to +0.62 with the accuracy gap (magnitude-aware PAC-Bayes +0.62 [0.27, 0.82], λ_max +0.58,
sharpness +0.52 to +0.55, first-order flatness +0.53; Ψ +0.47 to +0.66), above the norm-based
measures (distance from initialization −0.58, log-product of spectral norms −0.35), as Jiang et al.
report; but NC1 does as well (+0.62) and the final training loss alone nearly so (+0.48, Ψ +0.59):
the runs still far from a minimum (lr 0.01, batch 128: loss 0.07–0.09, λ_max 8–11 against 0.003–5
for the others) are both the sharpest and the worst generalizers. With the loss gap the signs flip
(sharpness, λ_max, trace, first-order flatness −0.55 to −0.63; log-product of spectral norms +0.73).
Stopped at equal training loss (0.057–0.100, epochs 5–56, accuracy gap 0.033–0.076), the
correlation with the accuracy gap mostly goes: τ +0.21 to +0.26 for sharpness, +0.19 for λ_max and
first-order flatness, +0.14 / +0.06 for PAC-Bayes, every 95% interval containing 0 (16 runs).
Within one learning rate the sharper runs still tend to have the larger gap (τ among the 8 runs of
one lr: λ_max +0.96 and +0.29, magnitude-aware PAC-Bayes +0.61 and +0.71 for lr 0.01 and 0.1), but
across learning rates the order breaks (λ_max's Ψ along lr −0.5: the lr 0.1 runs, stopped after
5–10 epochs, are flatter yet generalize worse) — the learning-rate-driven, setup-dependent picture
of Andriushchenko et al. Sharpness does rank the loss gap there (τ +0.45 to +0.52). So Jiang et
al.'s ranking appeared under a fixed budget, where the loss level explains most of it, and did not
survive their own equal-loss protocol at this scale.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common import Options, full_dataset, main, probe, save, say, train_run

SCALES = {
    "default": {"model": "mlp", "train_size": 500, "n_test": None, "epochs": 60, "lrs": [0.01, 0.1],
                "batch_sizes": [32, 128], "optimizers": ["sgd", "sam"], "weight_decays": [0.0, 0.005],
                "hessian_subset": None, "lanczos_steps": 40, "trace_samples": 50, "sharpness_subset": None,
                "m": 128, "iters": 20, "rhos": [0.001, 0.002, 0.004], "first_order_iters": 10, "pac_draws": 3,
                "pac_steps": 12, "coherence_subset": None, "stop_loss": 0.1, "n_boot": 1000},
    "full": {"model": "resnet20", "train_size": 10000, "n_test": 2000, "epochs": 40, "lrs": [0.02, 0.1],
             "batch_sizes": [64, 256], "optimizers": ["sgd", "sam"], "weight_decays": [5e-4],
             "hessian_subset": 2048, "lanczos_steps": 40, "trace_samples": 50, "sharpness_subset": 1024,
             "m": 128, "iters": 20, "rhos": [0.001, 0.002, 0.004, 0.008], "first_order_iters": 10, "pac_draws": 3,
             "pac_steps": 12, "coherence_subset": 512, "stop_loss": 0.1, "n_boot": 1000},
}
SMOKE = {"train_size": 64, "n_test": 32, "epochs": 1, "lrs": [0.1], "batch_sizes": [32], "optimizers": ["sgd", "sam"],
         "weight_decays": [0.0], "hessian_subset": 32, "lanczos_steps": 3, "trace_samples": 2, "sharpness_subset": 32,
         "m": 32, "iters": 1, "rhos": [0.002], "first_order_iters": 1, "pac_draws": 1, "pac_steps": 1,
         "coherence_subset": 16, "n_boot": 50}

MAIN_MEASURES = ("lambda_max", "sharpness@{rho}", "first_order_flatness", "pac_bayes_mag_inv_sigma2")
WEIGHT_MEASURES = ("log_prod_spec", "param_norm", "dist_from_init")
LABELS = {"lambda_max": "λ_max (Hessian)", "hessian_trace": "Hessian trace",
          "first_order_flatness": "first-order flatness", "pac_bayes_inv_sigma2": "PAC-Bayes 1/σ²",
          "pac_bayes_mag_inv_sigma2": "PAC-Bayes mag. 1/σ²", "coherence_m_alpha": "coherence m·α",
          "nc1_train": "NC1 (train)", "rankme_train": "RankMe (train)", "log_prod_spec": "log Π‖W‖₂²",
          "param_norm": "‖w‖²", "dist_from_init": "‖w − w₀‖",
          "train_loss": "final train loss (control)"}


def family(measure: str) -> str:
    """The kind of measure: sharpness/flatness, curvature (Hessian), weight norms or other."""
    if measure.startswith("sharpness@") or measure.startswith("pac_bayes") or measure == "first_order_flatness":
        return "sharpness / flatness"
    if measure in ("lambda_max", "hessian_trace"):
        return "curvature"
    if measure == "train_loss":
        return "control: train loss"
    return "norm" if measure in WEIGHT_MEASURES else "other"


def label(measure: str) -> str:
    if measure.startswith("sharpness@"):
        return f"adaptive ℓ∞ sharpness ρ={measure.partition('@')[2]}"
    return LABELS.get(measure, measure)


def grid_spec(opts: Options) -> dict[str, Any]:
    """The sweep as a ``landscape sweep`` grid: TrainConfig keys in ``base``, the axes in ``grid``. The
    learning rate is constant (the default schedule), so that a run stopped at epoch e is exactly the
    first e epochs of the fixed-budget run."""
    base: dict[str, Any] = {"model": opts["model"], "epochs": opts["epochs"], "checkpoints": "none"}
    if opts.scale == "full":
        dataset, params = full_dataset(n_train=opts["train_size"], n_test=opts["n_test"])
        base.update(dataset=dataset, dataset_params=params,
                    train_size=opts["train_size"] if dataset == "cifar10" else None)
    else:
        base.update(dataset="digits", train_size=opts["train_size"])
    return {"base": base, "grid": {"lr": opts["lrs"], "batch_size": opts["batch_sizes"],
                                   "optimizer": opts["optimizers"], "weight_decay": opts["weight_decays"]}}


def weight_measures(run_dir: Path) -> dict[str, float]:
    """Norm-based measures of Jiang et al. from the first (step 0) and last checkpoints: the
    log-product of squared spectral norms of the weight matrices (conv kernels reshaped to
    out × in·k·k), the squared parameter norm and the distance from initialization."""
    import torch

    from landscape.checkpoints import RunDir, load_state_dict

    cps = RunDir(run_dir).checkpoints()
    w0, w = load_state_dict(cps[0].path), load_state_dict(cps[-1].path)
    keys = [k for k, v in w.items() if v.is_floating_point() and "running_" not in k]
    log_spec = sum(2 * math.log(float(torch.linalg.matrix_norm(w[k].double().reshape(w[k].shape[0], -1), ord=2)))
                   for k in keys if w[k].ndim >= 2)
    norm = sum(float(w[k].double().pow(2).sum()) for k in keys)
    dist = math.sqrt(sum(float((w[k].double() - w0[k].double()).pow(2).sum()) for k in keys))
    return {"log_prod_spec": log_spec, "param_norm": norm, "dist_from_init": dist}


def extra_row(records: list[dict[str, Any]], name: str, gap: np.ndarray, axes: list[str],
              n_boot: int) -> dict[str, Any]:
    """A table row for a measure the library does not collect, computed as ``correlation_table`` does."""
    from landscape.correlate import bootstrap_ci, granulated_kendall, kendall_tau, spearman
    from landscape.errors import ConfigError

    mu = np.array([r[name] for r in records], dtype=float)
    lo, hi = bootstrap_ci(mu, gap, n_boot=n_boot, seed=0)
    row = {"measure": name, "n": len(mu), "tau": kendall_tau(mu, gap), "tau_low": lo, "tau_high": hi,
           "spearman": spearman(mu, gap)}
    if axes:
        with_gap = [{**{a: json.dumps(r.get(a)) for a in axes}, "_gap": g, "_measure": m}
                    for r, g, m in zip(records, gap, mu, strict=True)]
        try:
            psi = granulated_kendall(with_gap, "_measure", "_gap", axes)
            row["psi"] = psi["psi"]
            row.update({f"psi({a})": v for a, v in psi["per_axis"].items()})
        except ConfigError:
            row["psi"] = float("nan")
    return row


def tables(records: list[dict[str, Any]], axes: list[str], n_boot: int) -> dict[str, list[dict[str, Any]]]:
    """``{"acc": rows, "loss": rows}``: the library's table (``source: probes``) plus the weight-norm
    rows (``source: weights``) and the final training loss as a control (``source: metrics``),
    ranked by |τ|."""
    from landscape.analyze import correlation_table
    from landscape.correlate import generalization_gap

    out = {}
    for gap in ("acc", "loss"):
        rows = [{**r, "source": "probes"} for r in correlation_table(records, gap=gap, axes=axes, n_boot=n_boot)]
        g = generalization_gap(records, kind=gap)
        rows += [{**extra_row(records, name, g, axes, n_boot), "source": "weights"} for name in WEIGHT_MEASURES]
        rows.append({**extra_row(records, "train_loss", g, axes, n_boot), "source": "metrics"})
        out[gap] = sorted(rows, key=lambda r: -abs(r["tau"]))
    return out


def stop_epoch(run_dir: Path, stop_loss: float) -> int | None:
    """The first epoch whose end-of-epoch training loss is ≤ ``stop_loss`` (None: never)."""
    from landscape.checkpoints import RunDir

    for row in RunDir(run_dir).metrics():
        if row.get("epoch", 0) >= 1 and row.get("train_loss", math.inf) <= stop_loss:
            return int(round(row["epoch"]))
    return None


def write_csv(path: Path, tables_by_protocol: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    from landscape.utils import atomic_write

    rows = [{"protocol": protocol, "gap": gap, **row} for protocol, table in tables_by_protocol.items()
            for gap, rows in table.items() for row in rows]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = ",".join(columns) + "\n" + "".join(",".join(str(row.get(c, "")) for c in columns) + "\n" for row in rows)
    atomic_write(path, lambda fh: fh.write(text))


FAMILY_COLORS = {"sharpness / flatness": "C0", "curvature": "C2", "other": "C7", "norm": "C3",
                 "control: train loss": "C1"}
AXIS_MARKERS = {"lr": "v", "batch_size": "s", "optimizer": "^", "weight_decay": "P"}
PROTOCOLS = {"fixed": "fixed epoch budget", "stopped": "stopped at train loss ≤ {stop_loss:g}"}
GAPS = {"acc": "gap = train acc − test acc", "loss": "gap = test loss − train loss"}


def table_figure(tables_by_protocol: dict[str, dict[str, list[dict[str, Any]]]], axes: list[str],
                 titles: dict[str, str]):
    """τ (bars, 95% bootstrap whiskers), Ψ (black diamonds) and per-axis Ψ (small markers); rows:
    training protocols, columns: gaps; measures in the order of the fixed protocol's accuracy-gap τ."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    first = next(iter(tables_by_protocol.values()))["acc"]
    order = [r["measure"] for r in sorted(first, key=lambda r: r["tau"])]
    n_rows = len(tables_by_protocol)
    fig, panels = plt.subplots(n_rows, 2, figsize=(12, n_rows * (0.3 * len(order) + 1.3) + 0.6), sharey=True,
                               sharex=True, layout="constrained", squeeze=False)
    y = np.arange(len(order))
    for (protocol, table), row_panels in zip(tables_by_protocol.items(), panels, strict=True):
        for ax, gap in zip(row_panels, ("acc", "loss"), strict=True):
            rows = {r["measure"]: r for r in table[gap]}
            tau = np.array([rows[m]["tau"] if m in rows else np.nan for m in order])
            err = np.array([[rows[m]["tau"] - rows[m]["tau_low"] if m in rows else 0 for m in order],
                            [rows[m]["tau_high"] - rows[m]["tau"] if m in rows else 0 for m in order]])
            ax.barh(y, np.nan_to_num(tau), color=[FAMILY_COLORS[family(m)] for m in order], alpha=0.75, height=0.65)
            ax.errorbar(tau, y, xerr=np.clip(err, 0, None), fmt="none", ecolor="0.25", elinewidth=1, capsize=2.5)
            for i, a in enumerate(axes):
                vals = [rows[m].get(f"psi({a})", np.nan) if m in rows else np.nan for m in order]
                ax.scatter(vals, y + 0.22 * (i - (len(axes) - 1) / 2) / max(len(axes) - 1, 1), s=14,
                           marker=AXIS_MARKERS.get(a, "o"), color=f"C{4 + i}", zorder=3, alpha=0.85)
            ax.scatter([rows[m].get("psi", np.nan) if m in rows else np.nan for m in order], y, marker="D", s=30,
                       color="k", zorder=4)
            ax.axvline(0, color="0.3", lw=0.8)
            ax.set_xlim(-1.05, 1.05)
            ax.set_title(f"{titles[protocol]} · {GAPS[gap]}", fontsize=10)
            ax.grid(axis="x", alpha=0.3)
        row_panels[0].set_yticks(y, [label(m) for m in order], fontsize=8.5)
    for ax in panels[-1]:
        ax.set_xlabel("Kendall τ with the gap (bars, 95% CI) · Ψ (markers)")
    handles = [Patch(color=c, alpha=0.75, label=f) for f, c in FAMILY_COLORS.items()]
    handles += [Line2D([], [], marker="D", color="k", ls="", label="Ψ (granulated τ)")]
    handles += [Line2D([], [], marker=AXIS_MARKERS.get(a, "o"), color=f"C{4 + i}", ls="", label=f"Ψ along {a}")
                for i, a in enumerate(axes)]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=min(len(handles), 6), frameon=False)
    return fig


def scatter_figure(records_by_protocol: dict[str, list[dict[str, Any]]],
                   tables_by_protocol: dict[str, dict[str, list[dict[str, Any]]]], measures: list[str],
                   titles: dict[str, str]):
    """Gap against each measure, one point per run; rows: (protocol, gap); colour = lr, marker =
    batch size, hollow = SAM."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from landscape.correlate import generalization_gap

    cells = [(p, g) for p in records_by_protocol for g in ("acc", "loss")]
    fig, grid = plt.subplots(len(cells), len(measures), figsize=(3.3 * len(measures), 2.6 * len(cells) + 0.4),
                             layout="constrained", squeeze=False)
    every = [r for records in records_by_protocol.values() for r in records]
    lrs, sizes = sorted({r["lr"] for r in every}), sorted({r["batch_size"] for r in every})
    markers = ["o", "s", "^", "D", "v"]
    for (protocol, gap), row in zip(cells, grid, strict=True):
        records = records_by_protocol[protocol]
        g = generalization_gap(records, kind=gap)
        rows = {r["measure"]: r for r in tables_by_protocol[protocol][gap]}
        for ax, m in zip(row, measures, strict=True):
            x = np.array([r.get(m, np.nan) for r in records], dtype=float)
            for r, xi, gi in zip(records, x, g, strict=True):
                color = f"C{lrs.index(r['lr'])}"
                ax.scatter(xi, gi, s=34, marker=markers[sizes.index(r["batch_size"]) % len(markers)],
                           facecolors="none" if r["optimizer"] != "sgd" else color, edgecolors=color, linewidths=1.3)
            finite = x[np.isfinite(x)]
            if finite.size and np.all(finite > 0) and finite.max() > 30 * finite.min():  # spans decades
                ax.set_xscale("log")
            r = rows.get(m, {})
            ax.set_title(f"τ = {r.get('tau', np.nan):+.2f}  Ψ = {r.get('psi', np.nan):+.2f}", fontsize=9)
            ax.grid(alpha=0.3)
        row[0].set_ylabel(f"{titles[protocol]}\n{'train − test acc' if gap == 'acc' else 'test − train loss'}",
                          fontsize=8.5)
    for ax, m in zip(grid[-1], measures, strict=True):
        ax.set_xlabel(label(m), fontsize=9)
    handles = [Line2D([], [], marker="o", color=f"C{i}", ls="", label=f"lr = {v:g}") for i, v in enumerate(lrs)]
    handles += [Line2D([], [], marker=markers[i % len(markers)], color="0.4", ls="", label=f"batch = {v}")
                for i, v in enumerate(sizes)]
    handles += [Line2D([], [], marker="o", color="0.4", ls="", label="SGD (filled)"),
                Line2D([], [], marker="o", color="0.4", markerfacecolor="none", ls="", label="SAM (hollow)")]
    grid[0][-1].legend(handles=handles, fontsize=7, frameon=True, framealpha=0.9)
    return fig


def summary(records: list[dict[str, Any]], table: dict[str, list[dict[str, Any]]],
            main_measures: list[str]) -> dict[str, Any]:
    """The numbers of one protocol: gap and loss ranges, the two tables, family means, the runs."""
    from landscape.correlate import generalization_gap, kendall_tau

    gaps = {k: generalization_gap(records, kind=k) for k in ("acc", "loss")}
    train_loss = np.array([r["train_loss"] for r in records])
    out: dict[str, Any] = {
        "n_runs": len(records),
        "gap_acc": {"min": gaps["acc"].min(), "max": gaps["acc"].max(), "mean": gaps["acc"].mean()},
        "gap_loss": {"min": gaps["loss"].min(), "max": gaps["loss"].max(), "mean": gaps["loss"].mean()},
        "train_loss": {"min": train_loss.min(), "max": train_loss.max()},
        "train_acc_min": min(r["train_acc"] for r in records),
        "test_acc": {"min": min(r["test_acc"] for r in records), "max": max(r["test_acc"] for r in records)},
        "epochs": {"min": min(r["epochs"] for r in records), "max": max(r["epochs"] for r in records)},
        "table_acc_gap": table["acc"], "table_loss_gap": table["loss"],
    }
    for gap in ("acc", "loss"):
        by_family: dict[str, list[dict[str, Any]]] = {}
        for r in table[gap]:
            by_family.setdefault(family(r["measure"]), []).append(r)
        out[f"ranking_{gap}_gap"] = [r["measure"] for r in table[gap]]
        out[f"family_mean_tau_{gap}_gap"] = {f: float(np.mean([r["tau"] for r in rs])) for f, rs in by_family.items()}
    out["tau_within_lr_acc_gap"] = {  # Kendall τ among the runs of one learning rate
        m: {f"{lr:g}": kendall_tau([r[m] for r in rs], [r["train_acc"] - r["test_acc"] for r in rs])
            for lr in sorted({r["lr"] for r in records})
            if len(rs := [r for r in records if r["lr"] == lr and np.isfinite(r.get(m, np.nan))]) >= 2}
        for m in main_measures}
    out["runs"] = [{"name": Path(r["run"]).name, "epochs": r["epochs"], "gap_acc": ga, "gap_loss": gl,
                    "train_loss": r["train_loss"], "train_acc": r["train_acc"], "test_acc": r["test_acc"],
                    **{m: r.get(m) for m in main_measures}}
                   for r, ga, gl in zip(records, gaps["acc"], gaps["loss"], strict=True)]
    return out


def run(opts: Options) -> dict:
    import shutil

    from landscape.analyze import collect_runs
    from landscape.sweep import expand_grid, is_finished
    from landscape.utils import atomic_write_json

    spec = grid_spec(opts)
    axes = list(spec["grid"])
    atomic_write_json(opts.out / "grid.json", spec)  # `landscape sweep OUT/grid.json --out OUT/fixed` trains the same
    rhos = tuple(float(r) for r in opts["rhos"])
    settings = {
        "hessian": dict(top_k=1, bottom_k=0, lanczos_steps=opts["lanczos_steps"], trace_samples=opts["trace_samples"],
                        subset=opts["hessian_subset"]),
        "sharpness": dict(kind="worst", norm="linf", adaptive=True, rhos=rhos, m=opts["m"], iters=opts["iters"],
                          subset=opts["sharpness_subset"], first_order_iters=opts["first_order_iters"],
                          pac_draws=opts["pac_draws"], pac_steps=opts["pac_steps"]),
        "coherence": dict(subset=opts["coherence_subset"], per_layer=False),
        "collapse": {}, "rankme": {},
    }
    names, not_reached = [], []
    for name, cfg in expand_grid(spec):
        names.append(name)
        train_run(opts, f"fixed/{name}", cfg)
        for probe_name, kw in settings.items():
            probe(opts, f"fixed/{name}", probe_name, **kw)
        # Jiang et al.'s protocol: stop at a training loss; the same run, cut at the first epoch that reaches it
        stop = stop_epoch(opts.out / "fixed" / name, opts["stop_loss"])
        if stop is None or stop >= cfg.epochs:  # never reached (or only at the end): the fixed run itself
            not_reached += [name] if stop is None else []
            target = opts.out / "stopped" / name
            if opts.force or not is_finished(target):
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(opts.out / "fixed" / name, target, ignore=shutil.ignore_patterns("*.lock"))
        else:
            train_run(opts, f"stopped/{name}", cfg.replace(epochs=stop))
        for probe_name, kw in settings.items():
            probe(opts, f"stopped/{name}", probe_name, **kw)

    titles = {p: t.format(stop_loss=opts["stop_loss"]) for p, t in PROTOCOLS.items()}
    records_by, tables_by = {}, {}
    for protocol in PROTOCOLS:
        run_dirs = sorted(opts.out / protocol / name for name in names)  # as `landscape correlate` orders a folder
        records = collect_runs(run_dirs)
        for record, run_dir in zip(records, run_dirs, strict=True):
            record.update(weight_measures(run_dir))
        records_by[protocol], tables_by[protocol] = records, tables(records, axes, opts["n_boot"])
    write_csv(opts.out / "correlation_table.csv", tables_by)

    present = {r["measure"] for t in tables_by.values() for r in t["acc"]}
    mid = f"sharpness@{rhos[len(rhos) // 2]:g}"
    main_measures = [m for m in (m.format(rho=mid.partition("@")[2]) for m in MAIN_MEASURES) if m in present]
    save(opts, table_figure(tables_by, axes, titles), "correlation_table")
    save(opts, scatter_figure(records_by, tables_by, main_measures, titles), "gap_vs_measures")

    numbers: dict[str, Any] = {"axes": axes, "stop_loss": opts["stop_loss"], "not_reaching_stop_loss": not_reached,
                               "main_measures": main_measures}
    for protocol in PROTOCOLS:
        numbers[protocol] = summary(records_by[protocol], tables_by[protocol], main_measures)
        t = tables_by[protocol]["acc"]
        say(f"[{opts.name}] {titles[protocol]}: {len(records_by[protocol])} runs, accuracy gap "
            f"{numbers[protocol]['gap_acc']['min']:.3f}–{numbers[protocol]['gap_acc']['max']:.3f}; τ: "
            + ", ".join(f"{m} {next(r['tau'] for r in t if r['measure'] == m):+.2f}" for m in main_measures))
    return numbers


if __name__ == "__main__":
    sys.exit(main(run, "sharpness_vs_generalization", __doc__, SCALES, SMOKE))
