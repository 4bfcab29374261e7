"""The commands on results files: ``export`` (the tidy table, :mod:`landscape.results`), ``plot``
(every figure a file or a RUN_DIR supports, :mod:`landscape.figures`) and ``repack`` (compact an
``analysis.h5``, :class:`landscape.store.Store`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from landscape.errors import ConfigError
from landscape.figures import all_figures, monitor_figures, plots_dir_for, surface_vtps
from landscape.results import load_results
from landscape.store import Store
from landscape_cli.app import console, lit


def export(
    results: Path = typer.Argument(..., help="A results file (analysis.h5)."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the tidy table here as CSV (needs no pandas)."),
    parquet: Optional[Path] = typer.Option(None, "--parquet", help="Write it here as Parquet (needs pandas and pyarrow)."),
    max_vector: int = typer.Option(32, "--max-vector", help="1-D arrays up to this length become rows (0: all)."),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="Include the training metrics of each checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """One row per checkpoint × probe × measure (× split, × index): step, epoch, value, settings hash (docs/schema.md)."""
    if csv is None and parquet is None:
        raise ConfigError("name the output: --csv OUT.csv and/or --parquet OUT.parquet")

    if max_vector < 0:
        raise ConfigError(f"--max-vector must be ≥ 0, got {max_vector}")
    res = load_results(results)
    for path in (csv, parquet):
        if path is not None and path.exists() and not overwrite and path.resolve() != results.resolve():
            raise ConfigError(f"{path} already exists; pass --overwrite to replace it, or name another file")
    options = {"max_vector": max_vector or None, "metrics": metrics}
    for path, write in ((csv, res.to_csv), (parquet, res.to_parquet)):
        if path is not None:
            n = write(path, **options)
            console.print(f"table: [bold]{lit(path)}[/] ({n} rows)")


def plot(
    results: Path = typer.Argument(..., help="A results file (analysis.h5), or a RUN_DIR (its analysis.h5, "
                                   "and its monitors over training)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the figures (default: plots/ beside the file)."),
    pdf: bool = typer.Option(False, "--pdf", help="Also write PDF."),
    vtp: bool = typer.Option(False, "--vtp", help="Also export 2D loss surfaces for ParaView (.vtp)."),
) -> None:
    """Draw every figure a results file (or a run directory) supports, from the files alone."""
    formats = ("png", "pdf") if pdf else ("png",)
    if results.is_dir() and not (results / "analysis.h5").is_file():  # a RUN_DIR not analyzed yet
        if not (results / "metrics.jsonl").is_file():
            raise ConfigError(f"{results} holds neither analysis.h5 nor metrics.jsonl; give a results file or a RUN_DIR")
        folder = out if out is not None else results / "plots"
        written = monitor_figures(results, folder, formats)
        if not written:
            raise ConfigError(f"{results} has no results file and logged no monitor values (train with --monitor "
                              "lambda_max, …), so there is nothing to draw; run `landscape analyze` first")
        console.print(f"figures: [bold]{lit(folder)}[/] ({len(written)} files)")
        return
    if results.is_dir():
        results = results / "analysis.h5"
    if not results.is_file():
        raise ConfigError(f"results file {results} does not exist")
    Store(results).groups()  # a clear error for a file that is not HDF5
    folder = out if out is not None else plots_dir_for(results)
    written = all_figures(results, folder, formats)
    if vtp:
        written += surface_vtps(results, folder)
    console.print(f"figures: [bold]{lit(folder)}[/] ({len(written)} files)")


def repack(
    results: Path = typer.Argument(..., help="A results file (analysis.h5)."),
    allow_symlink: bool = typer.Option(False, "--allow-symlink", help="Compact the file a symlink points to."),
) -> None:
    """Compact a results file: rewrite it without the space earlier writes left unused (same contents)."""
    before, after = Store(results, allow_symlink=allow_symlink).repack()
    console.print(f"repacked [bold]{lit(results)}[/]: {before:,} → {after:,} bytes")
