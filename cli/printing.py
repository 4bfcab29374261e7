"""What the commands print around the library's work: the summary table of a probe's records,
the data descriptions, the failures, and the progress bars (on stderr, so stdout holds results)."""

from __future__ import annotations

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from landscape.probes import PROBES
from landscape_cli.app import console, err_console, lit


def print_summary(probe: str, records) -> None:
    """One row per (checkpoint, split) with the probe's summary values."""
    keys = PROBES[probe].summary
    table = Table(title=lit(probe))
    table.add_column("checkpoint", style="bold", no_wrap=True)
    has_splits = any(isinstance(r.result.get("train"), dict) or isinstance(r.result.get("test"), dict) for r in records)
    if has_splits:
        table.add_column("split")
    for k in keys:
        table.add_column(k, justify="right")
    for r in records:
        splits = {k: v for k, v in r.result.items() if k in ("train", "test") and isinstance(v, dict)}
        for split, values in (splits or {"": r.result}).items():
            cells = []
            for k in keys:
                v = values.get(k)
                arr = None if v is None else np.atleast_1d(np.asarray(v, dtype=float))
                cells.append("–" if arr is None else ", ".join(f"{a:.4g}" for a in arr[:5]))
            name = r.target.name + (" (stored)" if r.skipped else "")
            table.add_row(lit(name), *([split] if has_splits else []), *cells)
    console.print(table)


def print_data(lines: list[str]) -> None:
    """Each data description once (what the data are and what was done to them), after the work, so
    that a run ending in an error prints that one line only."""
    for line in dict.fromkeys(lines):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_failures(failures: dict[str, str]) -> None:
    """One line per failure; the same error for several checkpoints is printed once, with their names."""
    by_error: dict[str, list[str]] = {}
    for what, error in failures.items():
        by_error.setdefault(error, []).append(what)
    for error, whats in by_error.items():
        shown = ", ".join(whats[:3]) + (f" and {len(whats) - 3} more" if len(whats) > 3 else "")
        err_console.print(f"[bold red]{lit(shown)} failed:[/] {lit(error)}", highlight=False, soft_wrap=True)


def analysis_progress(enabled: bool) -> Progress:
    """A bar over units of work ((probe × checkpoint) tasks, or grid points): what runs now (probe,
    checkpoint), its work, elapsed time and the ETA. User text is shown literally."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                    MofNCompleteColumn(), TextColumn("{task.fields[work]}", markup=False), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=err_console, disable=not enabled)


def progress_bar(enabled: bool) -> Progress:
    """A spinner with the task's description, its work and the elapsed time (no total known)."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False),
                    TextColumn("{task.fields[work]}", markup=False), TimeElapsedColumn(), console=err_console,
                    disable=not enabled)
