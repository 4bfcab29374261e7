"""Summary tables at 80 columns (a pipe, a small terminal): every number and header whole, never
cut to "…"; a table too wide is split into several, each repeating the checkpoint column."""

import re
from pathlib import Path

import numpy as np
from rich.console import Console

from landscape.analyze.plan import ProbeRecord
from landscape.checkpoints import RunDir
from landscape.probes import PROBES
from landscape.store import Store
from landscape.targets import Target
from landscape_cli.main import main
from landscape_cli.printing import format_values, print_summary

# the measures probe's seven summary values, with the text each must show (4 significant digits)
MEASURES = {"inv_margin2": (5.033e-05, "5.033e-05"), "log_prod_spectral": (79570.0, "7.957e+04"),
            "path_norm": (123.456789, "123.5"), "dist_init_frobenius": (0.000123456, "0.0001235"),
            "gradient_noise": (-3.14159e-7, "-3.142e-07"), "pacbayes_flatness": (1e10, "1e+10"),
            "sharpness_flatness": (42.0, "42")}
NAMES = ["epoch_10", "epoch_20", "epoch_30 (stored)"]


def _render(probe, records, width=80):
    console = Console(width=width, record=True, emoji=False)
    print_summary(probe, records, to=console)
    return console.export_text()


def _measures_records():
    values = {k: v for k, (v, _) in MEASURES.items()}
    return [ProbeRecord(Target(name.split()[0], Path("x")), "g", {"train": values, "test": values},
                        "stored" in name, 0.0) for name in NAMES]


def _tables(text):
    """The rendered tables: (title, the cells of each row)."""
    tables, rows = [], None
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith(("┏", "┡", "└", "│", "┃")):
            rows = []
            tables.append((line.strip(), rows))
        elif line.lstrip().startswith(("│", "┃")):
            rows.append([c.strip() for c in line.strip().strip("│┃").split("│" if "│" in line else "┃")])
    return tables


def test_a_wide_summary_at_80_columns_keeps_every_number_and_header_whole():
    text = _render("measures", _measures_records())
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    tables = _tables(text)
    assert len(tables) > 1 and [t for t, _ in tables] == [f"measures ({i}/{len(tables)})" for i in range(1, len(tables) + 1)]
    seen = {}
    for _, rows in tables:
        header, *body = rows
        assert header[:2] == ["checkpoint", "split"]  # repeated in every table
        assert [r[0] for r in body] == [n for n in NAMES for _ in range(2)] and [r[1] for r in body] == ["train", "test"] * 3
        for i, key in enumerate(header[2:], 2):
            seen[key] = {r[i] for r in body}
    assert list(seen) == list(PROBES["measures"].summary)  # every column once, in order
    assert seen == {k: {shown} for k, (_, shown) in MEASURES.items()}


def test_a_table_that_fits_stays_one_and_vectors_show_their_count():
    eig = [7.957e+04, 5.033e-05, 1.5, -2.25, 3.5, 4.5, 6.0]
    records = [ProbeRecord(Target("step_1", Path("x")), "g", {"eigenvalues": eig, "bottom_eigenvalues": [-5e-06],
                                                             "trace": 1.2345e5, "num_hvps": 300}, False, 0.0)]
    wide = _render("hessian", records, width=200)
    assert len(_tables(wide)) == 1 and "7.957e+04, 5.033e-05, 1.5, -2.25, 3.5 (+2 more)" in wide
    narrow = _render("hessian", records, width=40)  # the eigenvalue column alone is wider: wrapped at ", "
    assert "…" not in narrow and max(len(line) for line in narrow.splitlines()) <= 40
    shown = set(re.findall(r"-?\d[\d.e+-]*", narrow.replace("step_1", "")))
    assert {"7.957e+04", "5.033e-05", "1.5", "-2.25", "3.5", "-5e-06", "1.234e+05", "300"} <= shown


def test_format_values():
    assert format_values(None) == "–"
    assert format_values(np.float32(5.033e-05)) == "5.033e-05"
    assert format_values([1, 2, 3, 4, 5, 6]) == "1, 2, 3, 4, 5 (+1 more)"


def test_the_cli_summary_at_80_columns_shows_the_stored_values_in_full(run_copy, capsys):
    """Through the command (captured output is 80 columns wide): the stored measures, read back
    from the results file and written with 4 significant digits, each appear whole."""
    assert main(["measures", str(run_copy), "--no-progress", "--no-plots", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    arrays, _ = Store(run_copy / "analysis.h5").read(f"{RunDir(run_copy).checkpoints()[-1].name}/measures")
    cells = {cell for _, rows in _tables(out) for row in rows for cell in row}
    keys = PROBES["measures"].summary
    assert set(keys) <= cells
    for key in keys:
        assert f"{float(arrays[key]):.4g}" in cells, key
