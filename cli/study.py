"""``landscape correlate``: the cross-run study of :mod:`landscape.study` on analyzed runs — the
ranked table of every measure against the generalization gap, printed, and optionally written
(CSV or JSON) with the per-run table and the scatter plots beside it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from landscape.errors import ConfigError
from landscape_cli.app import console, lit


def correlate(
    runs: list[Path] = typer.Argument(..., help="RUN_DIRs already analyzed (landscape analyze), or folders holding them."),
    axes: Optional[str] = typer.Option(None, "--axes", help="Hyper-parameter axes of Ψ (default: those that vary across the runs)."),
    gap: str = typer.Option("acc", "--gap", help="acc (train − test accuracy) or loss (test − train loss)."),
    cmi: bool = typer.Option(False, "--cmi", help="Also the conditional-mutual-information score (PGDL)."),
    cmi_variant: str = typer.Option("pgdl", "--cmi-variant", help="pgdl: the PGDL 2020 scorer (pairs of axes, "
                                    "self-pairs, cells averaged uniformly); landscape: sets of 0–2 axes, distinct "
                                    "pairs, cells weighted by their pairs."),
    checkpoint: str = typer.Option("last", "--checkpoint", help="Which checkpoint of each run: last, epoch=K, "
                                   "step=S, or stop_at_train_loss=X (each run's first checkpoint whose logged "
                                   "train loss is ≤ X: Jiang et al.'s equal-loss protocol; runs that never reach "
                                   "it are skipped and listed)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the table here (.json or .csv) and scatter plots beside it."),
    runs_table_out: Optional[Path] = typer.Option(None, "--runs-table", help="Write the per-run table (one row per run: "
                                                  "hyper-parameters, gaps, every measure) here, .csv or .json "
                                                  "(default with a .csv --out: OUT_runs.csv beside it)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Kendall τ (bootstrap 95% CI), Spearman, granulated Ψ (and CMI) of every stored measure against the generalization gap, ranked.

    Seeds are not an axis unless named in --axes: runs that differ only in their seed are averaged into one configuration."""
    # scipy and matplotlib load here, when the command runs, so that every other command starts without them
    from landscape.study import (
        collect_runs,
        correlation_figures,
        correlation_table,
        run_dirs_in,
        runs_table,
        varying_axes,
        write_table,
    )

    if runs_table_out is not None and runs_table_out.suffix not in (".csv", ".json"):
        raise ConfigError(f"--runs-table {runs_table_out} must end in .csv or .json")
    runs_out = runs_table_out or (out.with_name(f"{out.stem}_runs.csv") if out is not None and out.suffix == ".csv" else None)
    if out is not None and runs_out is not None and out.resolve() == runs_out.resolve():
        raise ConfigError(f"--out and --runs-table are both {out}; name two files")
    for path in (out, runs_out):
        if path is not None and path.exists() and not overwrite:
            raise ConfigError(f"{path} already exists; pass --overwrite to replace it, or name another file")
    run_dirs = run_dirs_in(runs)
    records = collect_runs(run_dirs, checkpoint,
                           on_skip=lambda run, why: console.print(f"skipped {lit(run)}: {lit(why)}"))
    axis_list = [a.strip() for a in axes.split(",")] if axes else varying_axes(records)
    rows = correlation_table(records, gap=gap, axes=axis_list, cmi=cmi, cmi_variant=cmi_variant)
    if not rows:
        raise ConfigError("no measure is stored for every run; run `landscape analyze` on each RUN_DIR first")
    n_configs, seeds = rows[0]["n"], rows[0]["seeds_per_config"]
    console.print(f"axes: {lit(', '.join(axis_list) or '–')}")
    if seeds != 1:
        console.print(f"{lit(seeds)} seeds averaged per configuration ({len(records)} runs → {n_configs} configurations)")
    if cmi:
        note = " (needs ≥ 2 axes)" if cmi_variant == "pgdl" and len(axis_list) < 2 else ""
        if not note and all(math.isnan(row["cmi"]) for row in rows):
            note = " (undefined here: the conditioning axes fix the gap's order in every cell)"
        console.print(f"CMI: {lit(cmi_variant)} variant{note}")
    table = Table(title=f"measures vs generalization gap ({lit(gap)}), {n_configs} configurations of {len(records)} runs, "
                        f"axes: {lit(', '.join(axis_list) or '–')}")
    extra = [c for c in rows[0] if c.startswith("psi") or c == "cmi"]
    for c in ["measure", "τ", "τ 95% CI", "Spearman", *extra]:
        table.add_column(c.replace("psi", "Ψ"), justify="left" if c == "measure" else "right", overflow="fold")
    for row in rows:
        table.add_row(lit(row["measure"]), f"{row['tau']:+.2f}", lit(f"[{row['tau_low']:+.2f}, {row['tau_high']:+.2f}]"),
                      f"{row['spearman']:+.2f}", *(f"{row[c]:+.2f}" for c in extra))
    console.print(table)
    per_run = runs_table(records)
    report = {"gap": gap, "axes": axis_list, "cmi_variant": cmi_variant if cmi else None, "configurations": n_configs,
              "seeds_per_config": seeds, "runs": [str(r) for r in run_dirs], "rows": rows, "runs_table": per_run}
    for path, table_rows, document, flag in ((out, rows, report, "--out"), (runs_out, per_run, None, "--runs-table")):
        if path is None:
            continue
        try:  # the correlations (with what they were computed from), and the per-run measures and gaps
            write_table(path, table_rows, document)
        except OSError as exc:
            raise ConfigError(f"cannot write {path} ({exc.strerror}); choose another {flag}") from exc
    if runs_out is not None and out is None:
        console.print(f"per-run table: [bold]{lit(runs_out)}[/]")
    if out is not None:
        folder = out.parent / f"{out.stem}_plots"
        correlation_figures(records, rows, folder, gap=gap, color=axis_list[0] if axis_list else None)
        beside = f"  per-run table: [bold]{lit(runs_out)}[/]" if runs_out is not None else ""
        console.print(f"table: [bold]{lit(out)}[/]{beside}  scatter plots and families.png: [bold]{lit(folder)}[/]")
