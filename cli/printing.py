"""What the commands print around the library's work: the summary table of a probe's records,
the data descriptions, the failures, and the progress bars (on stderr, so stdout holds results)."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.measure import Measurement
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

SHOWN = 5
"""Values of a vector summary (eigenvalues, …) shown in a cell; the count of the rest follows."""


def format_values(value) -> str:
    """A summary value as text: 4 significant digits, never cut (``5.033e-05``), a vector's first
    :data:`SHOWN` values and how many more there are, ``–`` for none."""
    if value is None:
        return "–"
    arr = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    text = ", ".join(f"{a:.4g}" for a in arr[:SHOWN])
    return text + (f" (+{arr.size - SHOWN} more)" if arr.size > SHOWN else "")


def print_summary(probe: str, records, *, to: Console | None = None) -> None:
    """One row per (checkpoint, split) with the probe's summary values, on ``to`` (the console).

    Rich would cut cells that do not fit ("5.03…" for 5.033e-05), so when the table is wider than
    the console its value columns are split over several tables, each repeating the checkpoint (and
    split) columns: every checkpoint stays one row and every number whole. (Transposing would
    not help: its width grows with the number of checkpoints.)"""
    out = to if to is not None else console
    keys = list(PROBES[probe].summary)
    has_splits = any(isinstance(r.result.get("train"), dict) or isinstance(r.result.get("test"), dict) for r in records)
    lead = ["checkpoint", *(["split"] if has_splits else [])]
    rows: list[tuple[list[str], list[str]]] = []  # (the checkpoint [and split], the values)
    for r in records:
        splits = {k: v for k, v in r.result.items() if k in ("train", "test") and isinstance(v, dict)}
        for split, values in (splits or {"": r.result}).items():
            name = lit(r.target.name + (" (stored)" if r.skipped else ""))
            rows.append(([name, *([split] if has_splits else [])], [format_values(values.get(k)) for k in keys]))
    groups = _column_groups(out, lead, keys, rows)
    for n, group in enumerate(groups, 1):
        title = lit(probe) + (f" ({n}/{len(groups)})" if len(groups) > 1 else "")
        out.print(_summary_table(title, lead, [(keys[i], [values[i] for _, values in rows]) for i in group],
                                 [first for first, _ in rows]))


def _summary_table(title: str, lead: list[str], columns: list[tuple[str, list[str]]],
                   leads: list[list[str]]) -> Table:
    """The lead columns (never wrapped) and value columns (wrapped at ", " only if one alone is
    too wide for the console, so never inside a number)."""
    table = Table(title=title)
    table.add_column(lead[0], style="bold", no_wrap=True)
    for name in lead[1:]:
        table.add_column(name, no_wrap=True)
    for name, _ in columns:
        table.add_column(name, justify="right", overflow="fold")
    for i, first in enumerate(leads):
        table.add_row(*first, *(cells[i] for _, cells in columns))
    return table


def _column_groups(out: Console, lead: list[str], keys: list[str],
                   rows: list[tuple[list[str], list[str]]]) -> list[list[int]]:
    """The value columns (indices into ``keys``), in order, split into runs whose table fits the
    console at its natural width; a column too wide even alone gets a table of its own."""
    def width(group: list[int]) -> int:
        table = _summary_table("", lead, [(keys[i], [values[i] for _, values in rows]) for i in group],
                               [first for first, _ in rows])
        return Measurement.get(out, out.options.update_width(10**6), table).maximum

    groups: list[list[int]] = []
    for i in range(len(keys)):
        if groups and width([*groups[-1], i]) <= out.width:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups or [[]]


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


def failed_tasks(failures: dict[str, str], n_probes: int, n_tasks: int | None) -> str:
    """``"1 of 3 probes and 2 of 8 checkpoint tasks failed"``: a failure keyed by a probe's name is
    the whole probe, one keyed ``"PROBE CHECKPOINT"`` one (probe × checkpoint) task."""
    whole = sum(" " not in key for key in failures)
    tasks = len(failures) - whole
    parts = [f"{whole} of {n_probes} probe{'s' * (n_probes != 1)}"] if whole else []
    if tasks:
        parts.append(f"{tasks}{f' of {n_tasks}' if n_tasks else ''} checkpoint task{'s' * ((n_tasks or tasks) != 1)}")
    return " and ".join(parts) + " failed"


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
