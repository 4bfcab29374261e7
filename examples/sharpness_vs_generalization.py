"""Do sharpness and flatness measures rank a sweep of trained networks by their generalization gap?

Claim. Over a sweep of training hyper-parameters, the measures based on sharpness and flatness
(PAC-Bayes flatness, worst-case sharpness) correlate with the generalization gap better than most of
the ~40 complexity measures Jiang et al. compared (Kendall τ, their granulated Ψ, which averages τ
over groups of runs that differ along one hyper-parameter only, and the conditional mutual
information score, CMI), while norm-based measures such as the log-product of spectral norms
correlate negatively (Jiang et al. 2020, "Fantastic generalization measures and where to find them";
they stop every run at the same cross-entropy, 0.01, to take the loss level out of the comparison).
Andriushchenko et al. 2023 ("A modern look at the relationship between sharpness and
generalization") find that adaptive worst-case sharpness correlates weakly, often negatively, with
generalization once the setup is modern: it tracks hyper-parameters such as the learning rate more
than the gap, so the correlation depends on the setup.

What it does. Trains the grid lr × batch size × optimizer (SGD, SAM ρ=0.05) × weight decay
(``OUT/grid.json``, the format of ``landscape sweep``; default: an MLP on 500 digits, lr 0.01/0.1,
batch 32/128, weight decay 0/0.005, constant lr, 60 epochs, a checkpoint every epoch, 16 runs) into
``OUT/runs/``, and compares the runs under two protocols, each a checkpoint rule of
``landscape.study.collect_runs``: ``last`` (a fixed budget of 60 epochs) and
``stop_at_train_loss=0.1`` (Jiang et al.'s equal-loss protocol: each run's first checkpoint whose
training loss is ≤ 0.1; their 0.01 is out of reach for 10 of the 16 runs here, weight decay 0.005
holding the loss near 0.02). The rule rather than the trainer's ``stop_at_train_loss``: with a
constant lr the stopped run is exactly the first epochs of the fixed one, so one sweep serves both
protocols (no retraining), the hyper-parameters stay the grid's, and the protocol is one flag of
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
training loss at the checkpoint as a control, is a logged metric. The same tables from the command
line: ``landscape correlate OUT/runs --axes lr,batch_size,optimizer,weight_decay --cmi`` and the
same with ``--checkpoint stop_at_train_loss=0.1`` (after ``landscape analyze RUN --probes
measures,sharpness,hessian --checkpoints last,step:S``, S the stop step listed in ``numbers.json``).
Figures: ``correlation_panels_fixed.png`` and ``correlation_panels_equal_loss.png`` (one panel per
measure family, τ bars with CI whiskers and Ψ markers, accuracy gap;
``landscape.plots.plot_correlation_panels``) and ``gap_vs_measures.png`` (gap against a few
measures, one point per run); every row is in ``OUT/correlation_table.csv`` and ``numbers.json``.

Finding (default scale, ``numbers.json``: 38 measures, 16 runs, 3–6.5 minutes on 2 shared CPU
cores). Fixed budget (accuracy gap 0.033–0.056, train accuracy ≥ 0.988, final train loss 2e-5 to
0.09): Jiang et al.'s ranking appears. The sharpness-based measures lead — magnitude-aware PAC-Bayes
flatness τ = +0.68 [0.34, 0.85] (Ψ +0.62), the worst-case sharpness bound ``sharpness_orig`` +0.68,
adaptive sharpness +0.59 to +0.62 and first-order flatness +0.62 (both Ψ +0.81 and the largest CMI,
0.29–0.32), λ_max +0.61 (Ψ +0.69); family means: sharpness-based +0.46, curvature +0.57 — while the
norm-based family averages +0.03: distance from initialization is negative (Frobenius −0.61 [−0.82,
−0.22], spectral −0.44), the log-product of spectral norms −0.28 with an interval containing 0
([−0.61, +0.18]), path norm −0.09, and the margin-normalized forms positive (+0.26 to +0.33). But
the control says what drives it: the final training loss alone has τ +0.54 [0.11, 0.79] (the runs
still far from a minimum, lr 0.01 with batch 128 at loss 0.07–0.09, are both the sharpest and the
worst generalizers), and NC1 (+0.66), gradient noise (+0.54) and the inverse margin (+0.51) rank
about as well; Ψ along weight decay is 0 to +0.25 for the leaders. With the loss gap the signs flip
(sharpness and λ_max −0.57 to −0.63; log-product of spectral norms +0.70, spectral distance from
init +0.72 with the largest CMI, 0.36; train-loss control −0.67).

Stopped at equal training loss (0.058–0.100, epochs 5–56, accuracy gap 0.033–0.076; train-loss
control −0.09): no measure's 95% interval excludes 0 for the accuracy gap, and every CMI is ≤ 0.14
(≤ 0.32 under the fixed budget). The sharpness-based measures stay positive but weak (family mean
+0.22: adaptive sharpness +0.21 to +0.26, the magnitude-aware PAC-Bayes and worst-case sharpness
bounds from the initialization +0.38, magnitude-aware PAC-Bayes flatness +0.14, PAC-Bayes flatness
+0.06), λ_max +0.19, the norm-based measures near 0 (−0.03 to +0.16; log-product of spectral norms
+0.09). Within one learning rate the sharper runs still have the larger gap (τ among the 8 runs of
one lr, ``tau_within_lr_acc_gap``: λ_max +0.96 and +0.29, magnitude-aware PAC-Bayes flatness +0.61
and +0.71 for lr 0.01 and 0.1), but across learning rates the order breaks (Ψ along lr −0.5 for
both: the lr 0.1 runs, stopped after 5–10 epochs, are flatter yet generalize worse) — the
learning-rate-driven, setup-dependent picture of Andriushchenko et al. With the loss gap, adaptive
sharpness does rank (+0.45 to +0.52, CMI 0.21–0.22, the largest), but so, positively and against
Jiang et al.'s sign, do most norm-based measures (+0.40 to +0.48; ``fro_over_spectral`` −0.43). So
Jiang et al.'s signs (sharpness and PAC-Bayes flatness positive, norms negative) appeared under a
fixed budget, where the loss level explains much of them, and did not survive their own equal-loss
protocol at this scale (16 runs of one architecture: the parameter count is the same for every run,
τ 0, and left out of the figures; ``steps_ce_0.1_to_0.01`` is missing from the tables, as 10 runs
never reach 0.01).
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

    targets = {}
    for rule in rules:
        try:
            targets[rule] = select_run_checkpoint(run_dir, rule)
        except NotReached:
            targets[rule] = None
    steps = sorted({t.step for t in targets.values() if t is not None})
    settings = probe_settings(opts)
    report = analyze(run_dir, list(settings), settings=settings, checkpoints=",".join(f"step:{s}" for s in steps),
                     device=opts.device, force=opts.force)
    if report.failures:
        key, error = next(iter(report.failures.items()))
        raise LandscapeError(f"{run_dir}: probe {key} failed: {error.splitlines()[0]}")
    return {rule: t.name if t is not None else None for rule, t in targets.items()}


def control_row(records: list[dict[str, Any]], gap: np.ndarray, n_boot: int) -> dict[str, float]:
    """τ (bootstrap 95% interval) of the training loss logged at the checkpoint with the gap: how
    much of a measure's τ the loss level alone would give."""
    from landscape.correlate import bootstrap_ci, kendall_tau

    loss = np.array([r["train_loss"] for r in records], dtype=float)
    lo, hi = bootstrap_ci(loss, gap, n_boot=n_boot, seed=0)
    return {"tau": kendall_tau(loss, gap), "tau_low": lo, "tau_high": hi}


def within_lr(records: list[dict[str, Any]], measures: list[str], n_boot: int) -> dict[str, dict[str, float]]:
    """``{measure: {lr: τ}}``: ``correlation_table`` on the runs of one learning rate (accuracy gap),
    to tell an order that holds within a learning rate from one that only separates them."""
    from landscape.study import correlation_table

    lrs = sorted({r["lr"] for r in records})
    tables = {}
    for lr in lrs:
        subset = [r for r in records if r["lr"] == lr]
        if len(subset) >= 2:
            tables[f"{lr:g}"] = {row["measure"]: row["tau"] for row in
                                 correlation_table(subset, gap="acc", axes=[], n_boot=n_boot)}
    return {m: {lr: t[m] for lr, t in tables.items() if m in t} for m in measures}


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
        ax.set_xlabel(m, fontsize=9)
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
    from landscape.correlate import generalization_gap
    from landscape.study import measure_family

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
    out["tau_within_lr_acc_gap"] = within_lr(records, scatter, n_boot)
    out["runs"] = [{"name": Path(r["run"]).name, "checkpoint": r["checkpoint"], "step": r["step"], "epoch": r["epoch"],
                    "gap_acc": ga, "gap_loss": gl, "train_loss": r["train_loss"], "train_acc": r["train_acc"],
                    "test_acc": r["test_acc"], **{m: r.get(m) for m in scatter}}
                   for r, ga, gl in zip(records, gaps["acc"], gaps["loss"], strict=True)]
    return out


def run(opts: Options) -> dict:
    from landscape.errors import ConfigError
    from landscape.plots import plot_correlation_panels
    from landscape.study import collect_runs, correlation_table, measure_family
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

    for protocol, tables in tables_by.items():  # a measure equal for every run (num_params here) has no panel
        records = records_by[protocol]
        rows = [r for r in tables["acc"] if len({rec[r["measure"]] for rec in records}) > 1]
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
