"""The study's outputs (landscape.study): the tables written as CSV/JSON and read back with the
standard library, the per-run gaps against a direct subtraction, the run folders expanded, and the
correlation figures written."""

import csv
import json

import numpy as np
import pytest

from landscape.errors import ConfigError
from landscape.study import (
    correlation_figures,
    correlation_table,
    run_dirs_in,
    runs_table,
    write_csv,
    write_table,
)


def test_write_csv_reads_back_with_the_csv_module(tmp_path):
    rows = [{"measure": "lambda_max", "tau": 0.125, "seeds": [1, 2]},
            {"measure": "sharpness@0.002", "psi(lr)": -1 / 3, "tau": None, "extra": {"a": 1}}]
    path = tmp_path / "t.csv"
    write_csv(path, rows)
    with open(path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0]) == ["measure", "tau", "seeds", "psi(lr)", "extra"]  # the union, first seen first
    assert back[0] == {"measure": "lambda_max", "tau": "0.125", "seeds": "[1, 2]", "psi(lr)": "", "extra": ""}
    assert back[1]["tau"] == "" and json.loads(back[1]["extra"]) == {"a": 1}
    assert float(back[1]["psi(lr)"]) == -1 / 3  # a float survives the round trip exactly
    assert path.read_bytes().count(b"\r") == 0 and len(path.read_text().splitlines()) == 3


def test_write_table_picks_the_format_by_suffix(tmp_path):
    rows = [{"measure": "m", "tau": 0.5}]
    write_table(tmp_path / "a.json", rows, {"rows": rows, "gap": "acc"})
    assert json.loads((tmp_path / "a.json").read_text()) == {"rows": rows, "gap": "acc"}
    write_table(tmp_path / "b.json", rows)  # no document: the rows themselves
    assert json.loads((tmp_path / "b.json").read_text()) == rows
    write_table(tmp_path / "c.csv", rows, {"ignored": True})
    with open(tmp_path / "c.csv", newline="") as fh:
        assert list(csv.DictReader(fh)) == [{"measure": "m", "tau": "0.5"}]


def test_runs_table_adds_the_gaps_where_both_sides_are_numbers():
    records = [{"run": "a", "train_acc": 0.9, "test_acc": 0.75, "train_loss": 0.1, "test_loss": 0.4},
               {"run": "b", "train_acc": 1, "test_acc": "n/a", "test_loss": 0.3}]
    table = runs_table(records)
    assert table[0]["gap_acc"] == 0.9 - 0.75 and table[0]["gap_loss"] == 0.4 - 0.1
    assert "gap_acc" not in table[1] and "gap_loss" not in table[1]
    assert "gap_acc" not in records[0]  # the records are not changed


def test_run_dirs_in_expands_a_folder_of_runs(tmp_path):
    for name in ("r2", "r1"):
        (tmp_path / "sweep" / name).mkdir(parents=True)
        (tmp_path / "sweep" / name / "config.json").write_text("{}")
    (tmp_path / "sweep" / "notes").mkdir()
    single = tmp_path / "sweep" / "r2"
    assert run_dirs_in([tmp_path / "sweep", single]) == [tmp_path / "sweep" / "r1", single, single]
    (tmp_path / "empty").mkdir()
    assert run_dirs_in([str(tmp_path / "empty")]) == [tmp_path / "empty"]  # kept: collect_runs says why
    with pytest.raises(ConfigError, match="is not a directory"):
        run_dirs_in([tmp_path / "nowhere"])


def test_correlation_figures_draw_one_scatter_per_measure_and_the_families(tmp_path):
    rng = np.random.default_rng(0)
    records = [{"run": f"r{i}", "lr": lr, "train_acc": 1.0, "test_acc": float(0.9 - lr),
                "lambda_max": float(10 * lr + rng.random()), "sharpness@0.002": float(rng.random())}
               for i, lr in enumerate((0.01, 0.02, 0.05, 0.1))]
    rows = correlation_table(records, axes=["lr"], n_boot=20)
    written = correlation_figures(records, rows, tmp_path / "plots", gap="acc", color="lr")
    expected = {tmp_path / "plots" / "lambda_max.png", tmp_path / "plots" / "sharpness_at_0.002.png",
                tmp_path / "plots" / "families.png"}
    assert set(written) == expected and all(p.stat().st_size > 0 for p in written)
