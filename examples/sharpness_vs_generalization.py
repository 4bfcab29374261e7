"""Do sharpness and flatness measures rank a sweep of trained networks by their generalization gap?

Claim. Over a sweep of training hyper-parameters, the measures based on sharpness and flatness
(PAC-Bayes flatness, worst-case sharpness) correlate with the generalization gap better than
most of the ~40 complexity measures Jiang et al. compared (Kendall τ, their granulated Ψ, which
averages τ over groups of runs that differ along one hyper-parameter only, and the conditional
mutual information score, CMI), while norm-based measures such as the log-product of spectral
norms correlate negatively (Jiang et al. 2020, "Fantastic generalization measures and where to find
them"; they stop every run at the same cross-entropy, 0.01, to take the loss level out of the
comparison). Andriushchenko et al. 2023 ("A modern look at the relationship between sharpness and
generalization") find that adaptive worst-case sharpness correlates weakly, often negatively, with
generalization once the setup is modern: it tracks hyper-parameters such as the learning rate more
than the gap, so the correlation depends on the setup.

What it does. Trains the grid lr × batch size × optimizer (SGD, SAM ρ=0.05) × weight decay
(``OUT/grid.json``, the format of ``landscape sweep``; default: an MLP on 500 digits, lr 0.01/0.1,
batch 32/128, weight decay 0/0.005, constant lr, 60 epochs, a checkpoint every epoch, 16 runs) into
``OUT/runs/``, and compares the runs under two protocols, each a checkpoint rule of
``landscape.analyze.collect_runs``: ``last`` (a fixed budget of 60 epochs) and
``stop_at_train_loss=0.1`` (Jiang et al.'s equal-loss protocol: each run's first checkpoint whose
training loss is ≤ 0.1; their 0.01 is out of reach for most runs here, weight decay 0.005 holding
the loss near 0.02). The rule rather than the trainer's ``stop_at_train_loss``: with a constant lr
the stopped run is exactly the first epochs of the fixed one, so one sweep serves both protocols
(no retraining), the hyper-parameters stay the grid's, and the protocol is one flag of
``landscape correlate``. On the checkpoint(s) each rule selects, ``landscape.analyze.analyze`` runs
the probes ``measures`` (Jiang et al.'s Appendix C: output margin, spectral / Frobenius norm
products and sums and their margin-normalized forms, distance from initialization, parameter and
path norms, PAC-Bayes and worst-case sharpness bounds and flatness, steps to CE 0.1, gradient
noise), ``sharpness`` (adaptive worst-case ℓ∞ sharpness by Auto-PGD at ρ = 0.001, 0.002, 0.004,
first-order flatness; its PAC-Bayes search off, the measures probe has it), ``hessian`` (λ_max,
trace) and ``coherence``, ``collapse`` (NC1), ``rankme``. ``collect_runs`` + ``correlation_table``
rank every measure the library stores: Kendall τ with the gap (bootstrap 95% interval), Ψ with its
value per axis, and the PGDL CMI score, for the accuracy gap (train − test accuracy, Jiang et al.'s)
and the loss gap (test − train loss). No measure is computed here; the one number beside them, the
final training loss as a control, is a logged metric. The same tables from the command line:
``landscape correlate OUT/runs --axes lr,batch_size,optimizer,weight_decay --cmi`` and the same with
``--checkpoint stop_at_train_loss=0.1`` (after ``landscape analyze RUN --probes
measures,sharpness,hessian --checkpoints last,step:S``, S the stop step listed in ``numbers.json``).
Figures: ``correlation_panels_fixed.png`` and ``correlation_panels_equal_loss.png`` (one panel per
measure family, τ bars with CI whiskers and Ψ markers, accuracy gap; ``landscape.plots.plot_correlation_panels``)
and ``gap_vs_measures.png`` (gap against a few measures, one point per run); every row is in
``OUT/correlation_table.csv`` and ``numbers.json``.

Finding (default scale, ``numbers.json``). TODO
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from common import Options, full_dataset, main, save, say, train_run

SCALES = {
    "default": {"model": "mlp", "train_size": 500, "n_test": None, "epochs": 60, "lrs": [0.01, 0.1],
                "batch_sizes": [32, 128], "optimizers": ["sgd", "sam"], "weight_decays": [0.0, 0.005],
                "hessian_subset": None, "lanczos_steps": 40, "trace_samples": 50, "sharpness_subset": None,
                "m": 128, "iters": 20, "rhos": [0.001, 0.002, 0.004], "first_order_iters": 10, "pac_draws": 3,
                "pac_steps": 12, "worst_iters": 5, "worst_steps": 8, "grad_subset": None,
                "coherence_subset": None, "stop_loss": 0.1, "n_boot": 1000},
    "full": {"model": "resnet20", "train_size": 10000, "n_test": 2000, "epochs": 40, "lrs": [0.02, 0.1],
             "batch_sizes": [64, 256], "optimizers": ["sgd", "sam"], "weight_decays": [5e-4],
             "hessian_subset": 2048, "lanczos_steps": 40, "trace_samples": 50, "sharpness_subset": 1024,
             "m": 128, "iters": 20, "rhos": [0.001, 0.002, 0.004, 0.008], "first_order_iters": 10, "pac_draws": 3,
             "pac_steps": 12, "worst_iters": 5, "worst_steps": 8, "grad_subset": 2048,
             "coherence_subset": 512, "stop_loss": 0.1, "n_boot": 1000},
}
SMOKE = {"train_size": 64, "n_test": 32, "epochs": 2, "lrs": [0.1], "batch_sizes": [32], "optimizers": ["sgd", "sam"],
         "weight_decays": [0.0], "hessian_subset": 32, "lanczos_steps": 3, "trace_samples": 2, "sharpness_subset": 32,
         "m": 32, "iters": 1, "rhos": [0.002], "first_order_iters": 1, "pac_draws": 1, "pac_steps": 1,
         "worst_iters": 1, "worst_steps": 1, "grad_subset": 64, "coherence_subset": 16, "stop_loss": 2.28,
         "n_boot": 50}

PROTOCOLS = {"fixed": "last", "equal_loss": "stop_at_train_loss={stop_loss:g}"}
TITLES = {"fixed": "fixed budget ({epochs} epochs)", "equal_loss": "stopped at train loss ≤ {stop_loss:g}"}
GAPS = ("acc", "loss")
SCATTER = ("lambda_max", "sharpness@{rho}", "pacbayes_mag_flatness", "log_prod_spectral", "dist_init_frobenius")


def label(measure: str) -> str:
    return measure


def grid_spec(opts: Options) -> dict[str, Any]:
    """The sweep as a ``landscape sweep`` grid: TrainConfig keys in ``base``, the axes in ``grid``. The
    learning rate is constant (the default schedule) and a checkpoint is written every epoch, so the
    equal-loss checkpoint of a run is where the same run stopped early would end."""
    base: dict[str, Any] = {"model": opts["model"], "epochs": opts["epochs"], "checkpoints": "every:1"}
    if opts.scale == "full":
        dataset, params = full_dataset(n_train=opts["train_size"], n_test=opts["n_test"])
        base.update(dataset=dataset, dataset_params=params,
                    train_size=opts["train_size"] if dataset == "cifar10" else None)
    else:
        base.update(dataset="digits", train_size=opts["train_size"])
    return {"base": base, "grid": {"lr": opts["lrs"], "batch_size": opts["batch_sizes"],
                                   "optimizer": opts["optimizers"], "weight_decay": opts["weight_decays"]}}


def probe_settings(opts: Options) -> dict[str, dict[str, Any]]:
    """The probes' settings (``analyze``'s ``settings``): the library's defaults but for the sizes."""
    return {
        "measures": dict(grad_subset=opts["grad_subset"], pac_subset=opts["sharpness_subset"], pac_m=opts["m"],
                         pac_draws=opts["pac_draws"], pac_steps=opts["pac_steps"], worst_iters=opts["worst_iters"],
                         worst_steps=opts["worst_steps"]),
        "sharpness": dict(kind="worst", norm="linf", adaptive=True, rhos=tuple(float(r) for r in opts["rhos"]),
                          m=opts["m"], iters=opts["iters"], subset=opts["sharpness_subset"],
                          first_order_iters=opts["first_order_iters"], pac_bayes=False),
        "hessian": dict(top_k=1, bottom_k=0, lanczos_steps=opts["lanczos_steps"], trace_samples=opts["trace_samples"],
                        subset=opts["hessian_subset"]),
        "coherence": dict(subset=opts["coherence_subset"], per_layer=False),
        "collapse": {}, "rankme": {},
    }


def analyze_run(opts: Options, run_dir: Path, rules: list[str]) -> dict[str, str | None]:
    """Run every probe on the checkpoints the ``rules`` select in ``run_dir``; ``{rule: checkpoint name}``
    (None: the run never meets the rule)."""
    from landscape.analyze import analyze
    from landscape.errors import LandscapeError
    from landscape.run_selection import NotReached, select_run_checkpoint

    chosen: dict[str, str | None] = {}
    for rule in rules:
        try:
            chosen[rule] = select_run_checkpoint(run_dir, rule).name
        except NotReached:
            chosen[rule] = None
    steps = sorted({f"step:{select_run_checkpoint(run_dir, r).step}" for r, name in chosen.items() if name})
    settings = probe_settings(opts)
    report = analyze(run_dir, list(settings), settings=settings, checkpoints=",".join(steps), device=opts.device,
                     force=opts.force)
    if report.failures:
        key, error = next(iter(report.failures.items()))
        raise LandscapeError(f"{run_dir}: probe {key} failed: {error.splitlines()[0]}")
    return chosen


def control_row(records: list[dict[str, Any]], gap: np.ndarray, n_boot: int) -> dict[str, float]:
    """τ (bootstrap 95% interval) of the final training loss, a logged metric, with the gap: how much
    of a measure's τ the loss level alone would give."""
    from landscape.correlate import bootstrap_ci, kendall_tau

    loss = np.array([r["train_loss"] for r in records], dtype=float)
    lo, hi = bootstrap_ci(loss, gap, n_boot=n_boot, seed=0)
    return {"tau": kendall_tau(loss, gap), "tau_low": lo, "tau_high": hi}


def write_csv(path: Path, tables: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    from landscape.utils import atomic_write

    rows = [{"protocol": protocol, "gap": gap, **row} for protocol, by_gap in tables.items()
            for gap, rows in by_gap.items() for row in rows]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = ",".join(columns) + "\n" + "".join(",".join(str(row.get(c, "")) for c in columns) + "\n" for row in rows)
    atomic_write(path, lambda fh: fh.write(text))


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


def summary(records: list[dict[str, Any]], tables: dict[str, list[dict[str, Any]]], n_boot: int,
            scatter: list[str]) -> dict[str, Any]:
    """The numbers of one protocol: gap, loss and epoch ranges, the tables (τ, CI, Ψ per axis, CMI),
    the mean τ of each family, the train-loss control and the runs."""
    from landscape.analyze import measure_family
    from landscape.correlate import generalization_gap

    gaps = {k: generalization_gap(records, kind=k) for k in GAPS}
    loss = np.array([r["train_loss"] for r in records])
    out: dict[str, Any] = {
        "n_runs": len(records),
        **{f"gap_{k}": {"min": g.min(), "max": g.max(), "mean": g.mean()} for k, g in gaps.items()},
        "train_loss": {"min": loss.min(), "max": loss.max()},
        "train_acc_min": min(r["train_acc"] for r in records),
        "test_acc": {"min": min(r["test_acc"] for r in records), "max": max(r["test_acc"] for r in records)},
        "epoch": {"min": min(r["epoch"] for r in records), "max": max(r["epoch"] for r in records)},
    }
    for gap in GAPS:
        rows = tables[gap]
        out[f"n_measures_{gap}_gap"] = len(rows)
        out[f"table_{gap}_gap"] = rows
        by_family: dict[str, list[float]] = {}
        for r in rows:
            if np.isfinite(r["tau"]):
                by_family.setdefault(measure_family(r["measure"]), []).append(r["tau"])
        out[f"family_mean_tau_{gap}_gap"] = {f: float(np.mean(t)) for f, t in by_family.items()}
        out[f"control_train_loss_{gap}_gap"] = control_row(records, gaps[gap], n_boot)
    out["runs"] = [{"name": Path(r["run"]).name, "checkpoint": r["checkpoint"], "step": r["step"], "epoch": r["epoch"],
                    "gap_acc": ga, "gap_loss": gl, "train_loss": r["train_loss"], "train_acc": r["train_acc"],
                    "test_acc": r["test_acc"], **{m: r.get(m) for m in scatter}}
                   for r, ga, gl in zip(records, gaps["acc"], gaps["loss"], strict=True)]
    return out


def run(opts: Options) -> dict:
    from landscape.analyze import collect_runs, correlation_table, measure_family
    from landscape.errors import ConfigError
    from landscape.plots import plot_correlation_panels
    from landscape.sweep import expand_grid
    from landscape.utils import atomic_write_json

    spec = grid_spec(opts)
    axes = list(spec["grid"])
    atomic_write_json(opts.out / "grid.json", spec)  # `landscape sweep OUT/grid.json --out OUT/runs` trains the same
    rules = {p: rule.format(stop_loss=opts["stop_loss"]) for p, rule in PROTOCOLS.items()}
    titles = {p: t.format(stop_loss=opts["stop_loss"], epochs=opts["epochs"]) for p, t in TITLES.items()}
    names, chosen = [], {}
    for name, cfg in expand_grid(spec):
        names.append(name)
        train_run(opts, f"runs/{name}", cfg)
        chosen[name] = analyze_run(opts, opts.out / "runs" / name, list(rules.values()))

    run_dirs = sorted(opts.out / "runs" / name for name in names)  # as `landscape correlate OUT/runs` orders them
    records_by, tables_by, skipped = {}, {}, {}
    for protocol, rule in rules.items():
        skipped[protocol] = []
        records = collect_runs(run_dirs, checkpoint=rule, on_skip=lambda run, why, p=protocol: skipped[p].append(
            {"run": Path(run).name, "reason": why}))
        if len(records) < 2:
            raise ConfigError(f"only {len(records)} of {len(run_dirs)} runs reach {rule}; raise stop_loss")
        records_by[protocol] = records
        tables_by[protocol] = {gap: correlation_table(records, gap=gap, axes=axes, n_boot=opts["n_boot"], cmi=True)
                               for gap in GAPS}
    write_csv(opts.out / "correlation_table.csv", tables_by)

    for protocol, tables in tables_by.items():
        rows = tables["acc"]
        fig = plot_correlation_panels(rows, {r["measure"]: measure_family(r["measure"]) for r in rows},
                                      title=f"{titles[protocol]}: Kendall τ (95% CI) and Ψ with train − test accuracy, "
                                            f"{len(records_by[protocol])} runs")
        save(opts, fig, f"correlation_panels_{protocol}")
    mid = f"{float(opts['rhos'][len(opts['rhos']) // 2]):g}"
    present = {r["measure"] for t in tables_by.values() for r in t["acc"]}
    scatter = [m for m in (s.format(rho=mid) for s in SCATTER) if m in present]
    if scatter:
        save(opts, scatter_figure(records_by, tables_by, scatter, titles), "gap_vs_measures")

    numbers: dict[str, Any] = {"axes": axes, "rules": rules, "stop_loss": opts["stop_loss"], "skipped": skipped,
                               "checkpoints": chosen, "scatter_measures": scatter}
    for protocol, records in records_by.items():
        numbers[protocol] = summary(records, tables_by[protocol], opts["n_boot"], scatter)
        t = {r["measure"]: r for r in tables_by[protocol]["acc"]}
        say(f"[{opts.name}] {titles[protocol]}: {len(records)} runs, {len(t)} measures, accuracy gap "
            f"{numbers[protocol]['gap_acc']['min']:.3f}–{numbers[protocol]['gap_acc']['max']:.3f}; τ: "
            + ", ".join(f"{m} {t[m]['tau']:+.2f}" for m in scatter if m in t))
    return numbers


if __name__ == "__main__":
    sys.exit(main(run, "sharpness_vs_generalization", __doc__, SCALES, SMOKE))
