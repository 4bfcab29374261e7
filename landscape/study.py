"""The cross-run study: one record per run (hyper-parameters, metrics, stored measures) and the
correlation of every measure with the generalization gap (Kendall τ, granulated Ψ, CMI; Jiang et
al. 2020). Reads run directories and their ``analysis.h5``; the statistics are
:mod:`landscape.correlate`'s. Writes the study's outputs: the tables as CSV or JSON
(:func:`write_table`, :func:`runs_table`) and its figures (:func:`correlation_figures`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from landscape.checkpoints import RunDir
from landscape.correlate import (
    CMI_VARIANTS,
    bootstrap_ci,
    conditional_mutual_information,
    generalization_gap,
    granulated_kendall,
    kendall_tau,
    seed_groups,
    spearman,
)
from landscape.errors import ConfigError
from landscape.plots import plot_correlation_panels, plot_measure_scatter, save_figure
from landscape.probes.base import measure_families, measure_table
from landscape.run_selection import NotReached, select_run_checkpoint
from landscape.store import Store, group_name
from landscape.train.config import TrainConfig
from landscape.utils import atomic_write, atomic_write_json


def measure_family(name: str) -> str:
    """The family of a measure of :data:`MEASURES` (``sharpness@0.002`` is sharpness-based), for
    the per-family figure of ``landscape correlate``: the first family whose declared prefixes
    (each probe's ``families``; Jiang et al. 2020's grouping) match, else ``other``."""
    for family, prefixes in measure_families():
        if name.startswith(prefixes):
            return family
    return "other"


def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items() if not isinstance(v, dict | list)})
        else:
            out[key] = value
    return out


def run_dirs_in(paths: list[str | Path]) -> list[Path]:
    """The RUN_DIRs ``paths`` name: each a RUN_DIR, or a folder of them (a sweep's ``--out``, which
    stands for every RUN_DIR inside it, in name order)."""
    run_dirs: list[Path] = []
    for r in map(Path, paths):
        if not r.is_dir():
            raise ConfigError(f"{r} is not a directory; give RUN_DIRs (or folders of them)")
        inner = sorted(p for p in r.iterdir() if (p / "config.json").is_file())
        run_dirs += [r] if (r / "config.json").is_file() or not inner else inner
    return run_dirs


def collect_runs(run_dirs: list[str | Path], checkpoint: str = "last",
                 on_skip: Callable[[str, str], None] | None = None) -> list[dict[str, Any]]:
    """One record per run: its hyper-parameters (``lr``, ``optimizer_params.rho``, …), the metrics
    logged at the checkpoint (``train_acc``, ``test_acc``, …) and every measure of :data:`MEASURES`
    stored for it in ``RUN_DIR/analysis.h5`` (sharpness once per radius: ``sharpness@0.002``).

    ``checkpoint`` is one rule for every run (:func:`landscape.run_selection.select_run_checkpoint`):
    ``last``, ``epoch=K``, ``step=S``, ``stop_at_train_loss=X`` (each run's first checkpoint whose
    logged train loss is ≤ X), …; the record names the checkpoint chosen (``checkpoint``). A run
    that never meets a ``stop_at_…`` rule is left out and told to ``on_skip(run, reason)``; without
    ``on_skip`` it is a :class:`~landscape.errors.ConfigError` naming every such run."""

    records = []
    missed: list[NotReached] = []
    for run_dir in run_dirs:
        run = RunDir(run_dir)
        try:
            target = select_run_checkpoint(run_dir, checkpoint)
        except NotReached as exc:
            missed.append(exc)
            if on_skip is not None:
                on_skip(exc.run, exc.reason)
            continue
        record: dict[str, Any] = {"run": str(run_dir), "step": target.step, "checkpoint": target.name,
                                  **_flat_config(run.meta["config"])}
        record.update({k: v for k, v in target.metrics().items() if isinstance(v, int | float)})
        store = Store(Path(run_dir) / "analysis.h5")
        stored = set(store.groups())
        for name, (probe, key) in measure_table().items():
            group = f"{group_name(target.name)}/{probe}"
            if group in stored:
                value: Any = store.read(group)[0]
                for part in key.split("/"):
                    value = value.get(part) if isinstance(value, dict) else None
                if value is not None:
                    record[name] = float(np.asarray(value).reshape(-1)[0])
        if f"{group_name(target.name)}/sharpness" in stored:
            r = store.read(f"{group_name(target.name)}/sharpness")[0]
            for rho, delta in zip(np.atleast_1d(r["rhos"]), np.atleast_1d(r["delta_loss"]), strict=True):
                record[f"sharpness@{rho:g}"] = float(delta)
        records.append(record)
    if missed and on_skip is None:
        shown = "; ".join(str(e) for e in missed[:3]) + (f"; and {len(missed) - 3} more" if len(missed) > 3 else "")
        raise ConfigError(f"{len(missed)} of {len(run_dirs)} runs have no checkpoint under {checkpoint!r} ({shown}); "
                          "train them further, or choose another rule")
    return records


HYPERPARAMETERS = ("lr", "batch_size", "optimizer", "optimizer_params.rho", "weight_decay", "loss", "label_noise",
                   "model_params.width", "model_params.depth", "epochs", "schedule")


NOT_AXES = ("seed", "data_seed", "checkpoints", "eval_batch_size")  # training settings that are not hyper-parameters


def _config_keys(records: list[dict[str, Any]]) -> list[str]:
    """The training-config keys of the records (``lr``, ``optimizer_params.momentum``, …): those whose
    first part is a :class:`~landscape.train.config.TrainConfig` field."""

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    keys = dict.fromkeys(k for r in records for k in r if k.split(".", 1)[0] in fields)
    return list(keys)


def varying_axes(records: list[dict[str, Any]], *, seed: bool = False) -> list[str]:
    """The hyper-parameters that take more than one value across the runs: those of
    :data:`HYPERPARAMETERS` first, in that order, then any other training-config key that varies
    (``optimizer_params.momentum``, ``loss_params.smoothing``, …). ``seed`` is not an axis unless
    ``seed=True`` (Jiang et al. train one run per configuration; :func:`correlation_table` averages
    the seeds of a configuration instead)."""
    others = [k for k in _config_keys(records) if k not in HYPERPARAMETERS and k not in NOT_AXES]
    keys = [*HYPERPARAMETERS, *others, *(("seed",) if seed else ())]
    return [k for k in keys if len({json.dumps(r.get(k), sort_keys=True) for r in records}) > 1]


def correlation_table(records: list[dict[str, Any]], *, gap: str = "acc", axes: list[str] | None = None,
                      n_boot: int = 1000, seed: int = 0, cmi: bool = False, cmi_variant: str = "pgdl",
                      average_seeds: bool = True) -> list[dict[str, Any]]:
    """For every measure present in all records: Kendall τ with the generalization gap, its bootstrap
    95% interval, Spearman ρ, the granulated Kendall Ψ over ``axes`` (default: the hyper-parameters
    that vary, seed excepted; Jiang et al. 2019) with its per-axis values, and optionally the CMI
    score (``cmi_variant``: "pgdl", the PGDL 2020 scorer, or "landscape"; see
    :func:`landscape.correlate.conditional_mutual_information`; NaN where it is undefined, e.g. the
    PGDL form with fewer than 2 axes). Rows are ranked by |τ|.

    Unless ``seed`` is one of ``axes`` (or ``average_seeds=False``), runs that differ only in their
    seed (every training-config key equal but ``seed``) are one configuration: its measure and gap
    are the means over its seeds, and τ, Ψ, CMI and the bootstrap run over configurations. Each row
    says so: ``n`` configurations from ``runs`` runs, ``seeds_per_config`` (a number, or "min-max")."""

    if cmi_variant not in CMI_VARIANTS:
        raise ConfigError(f"unknown CMI variant {cmi_variant!r}; use one of {', '.join(CMI_VARIANTS)}")
    axes = varying_axes(records) if axes is None else list(axes)
    if len(records) < 2:
        raise ConfigError(f"correlating needs at least 2 runs, got {len(records)}")
    g_runs = generalization_gap(records, kind=gap)
    if average_seeds and "seed" not in axes:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        config_keys = [k for k in dict.fromkeys(k for r in records for k in r) if k.split(".")[0] in fields]
        groups = seed_groups(records, [*config_keys, *axes])
    else:
        groups = [[k] for k in range(len(records))]
    if len(groups) < 2:
        raise ConfigError(f"the {len(records)} runs are {len(groups)} configuration once seeds are averaged; "
                          "correlating needs at least 2 (or name seed in the axes)")
    sizes = sorted({len(grp) for grp in groups})
    seeds_per_config: int | str = sizes[0] if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    configs = [records[grp[0]] for grp in groups]
    g = np.array([g_runs[grp].mean() for grp in groups])
    rows = []
    measures = measure_table()
    names = [k for k in records[0] if k in measures or k.startswith("sharpness@")]
    for name in names:
        values = [r.get(name) for r in records]
        if any(v is None or not np.isfinite(v) for v in values):
            continue
        per_run = np.array(values, dtype=float)
        mu = np.array([per_run[grp].mean() for grp in groups])
        lo, hi = bootstrap_ci(mu, g, n_boot=n_boot, seed=seed)
        row = {"measure": name, "n": len(mu), "tau": kendall_tau(mu, g), "tau_low": lo, "tau_high": hi,
               "spearman": spearman(mu, g), "runs": len(records), "seeds_per_config": seeds_per_config}
        with_gap = [{**{a: json.dumps(r.get(a)) for a in axes}, "_gap": gi, "_measure": m}
                    for r, gi, m in zip(configs, g, mu, strict=True)]
        if axes:
            try:
                psi = granulated_kendall(with_gap, "_measure", "_gap", axes)
                row["psi"] = psi["psi"]
                row.update({f"psi({a})": v for a, v in psi["per_axis"].items()})
            except ConfigError:  # no axis has a group of ≥ 2 runs that agree on the other axes
                row["psi"] = float("nan")
        if cmi:
            try:
                row["cmi"] = conditional_mutual_information(with_gap, "_measure", "_gap", axes,
                                                            variant=cmi_variant)["score"] if axes else float("nan")
            except ConfigError:  # PGDL needs ≥ 2 axes; a constant gap has no ordering to explain
                row["cmi"] = float("nan")
        rows.append(row)
    return sorted(rows, key=lambda r: -abs(r["tau"]))


# ---- the study's outputs: tables and figures -----------------------------------------------------

def runs_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: what :func:`collect_runs` found (hyper-parameters, metrics, measures) plus
    ``gap_acc`` = train − test accuracy and ``gap_loss`` = test − train loss where both are numbers."""
    table = []
    for r in records:
        row = dict(r)
        for name, (a, b) in {"gap_acc": ("train_acc", "test_acc"), "gap_loss": ("test_loss", "train_loss")}.items():
            if isinstance(r.get(a), int | float) and isinstance(r.get(b), int | float):
                row[name] = float(r[a]) - float(r[b])
        table.append(row)
    return table


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows (dicts) as CSV at ``path``, atomically: the union of their keys as columns (first seen
    first), empty cells where a row has none, lists and dicts as JSON."""

    def write(fh) -> None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            cells = (row.get(c) for c in columns)
            writer.writerow(["" if v is None else json.dumps(v) if isinstance(v, list | dict) else v for v in cells])

    atomic_write(path, write)


def write_table(path: str | Path, rows: list[dict[str, Any]], document: Any = None) -> None:
    """``rows`` as CSV for a ``.csv`` path (:func:`write_csv`), else ``document`` (default: the
    rows) as JSON; atomically either way."""
    if Path(path).suffix == ".csv":
        write_csv(path, rows)
    else:
        atomic_write_json(path, rows if document is None else document)


def correlation_figures(records: list[dict[str, Any]], rows: list[dict[str, Any]], folder: str | Path, *,
                        gap: str = "acc", color: str | None = None) -> list[Path]:
    """``folder/<measure>.png``: the gap against each measure of ``rows``
    (:func:`correlation_table`'s), one point per run, coloured by the hyper-parameter ``color``;
    and ``folder/families.png``: τ and Ψ per measure family (:func:`measure_family`)."""
    folder = Path(folder)
    g = generalization_gap(records, kind=gap)
    written = []
    for row in rows:
        fig = plot_measure_scatter([r[row["measure"]] for r in records], g,
                                   [r.get(color) for r in records] if color else None, xlabel=row["measure"],
                                   ylabel=f"gap ({gap})", group_label=color or "", title=f"τ = {row['tau']:+.2f}")
        written += save_figure(fig, folder / row["measure"].replace("@", "_at_"))
    families = {row["measure"]: measure_family(row["measure"]) for row in rows}
    written += save_figure(plot_correlation_panels(rows, families, title=f"Kendall τ and Ψ with the {gap} gap, "
                                                   f"{rows[0]['n']} configurations"), folder / "families")
    return written
