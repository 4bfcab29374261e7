"""`landscape correlate`: seeds averaged per configuration, the axes printed, and the ranked and
per-run tables written as CSV / JSON without overwriting anything."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from landscape.correlate import generalization_gap, kendall_tau
from landscape_cli.main import main


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory):
    """2 learning rates × 2 seeds of a tiny MLP, each analyzed with rankme."""
    from landscape.analyze import analyze
    from landscape.train.config import TrainConfig
    from landscape.train.trainer import train

    root = tmp_path_factory.mktemp("seeded")
    for lr in (0.03, 0.3):
        for seed in (0, 1):
            run = root / f"lr{lr}_s{seed}"
            train(TrainConfig(model="mlp", model_params={"width": 8, "depth": 1}, train_size=200, epochs=1,
                              batch_size=64, lr=lr, seed=seed, checkpoints="every:1"), run, progress=False,
                  device="cpu")
            analyze(run, "rankme", device="cpu", settings={"rankme": {"samples": 100}})
    return root


def test_correlate_averages_seeds_and_writes_both_tables(seeded_runs, tmp_path, capsys):
    from landscape.study import collect_runs

    out, runs_json = tmp_path / "table.csv", tmp_path / "runs.json"
    assert main(["correlate", str(seeded_runs), "--out", str(out), "--runs-table", str(runs_json)]) == 0
    printed = capsys.readouterr().out
    assert "axes: lr" in printed and "seed" not in printed.split("axes:")[1].splitlines()[0]
    assert "2 seeds averaged per configuration (4 runs → 2 configurations)" in printed
    with open(out, newline="") as fh:
        rows = {r["measure"]: r for r in csv.DictReader(fh)}
    assert (rows["rankme_train"]["n"], rows["rankme_train"]["runs"], rows["rankme_train"]["seeds_per_config"]) == (
        "2", "4", "2")
    records = collect_runs(sorted(p for p in seeded_runs.iterdir()))
    g = generalization_gap(records)
    by_lr = {lr: [k for k, r in enumerate(records) if r["lr"] == lr] for lr in (0.03, 0.3)}
    mu = [np.mean([records[k]["rankme_train"] for k in idx]) for idx in by_lr.values()]
    gg = [np.mean(g[idx]) for idx in by_lr.values()]
    assert float(rows["rankme_train"]["tau"]) == pytest.approx(kendall_tau(mu, gg), abs=1e-12)
    table = json.loads(runs_json.read_text())  # one row per run, not per configuration
    assert len(table) == 4 and sorted(r["seed"] for r in table) == [0, 0, 1, 1]
    for row, rec in zip(table, records, strict=True):
        assert row["rankme_train"] == rec["rankme_train"]
        assert row["gap_acc"] == pytest.approx(rec["train_acc"] - rec["test_acc"], abs=1e-15)
    assert not (tmp_path / "table_runs.csv").exists()  # --runs-table replaces the default beside --out


def test_correlate_refuses_to_overwrite(seeded_runs, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["correlate", str(seeded_runs), "--out", str(out), "--cmi", "--cmi-variant", "landscape"]) == 0
    doc = json.loads(out.read_text())
    assert doc["axes"] == ["lr"] and doc["seeds_per_config"] == 2 and doc["configurations"] == 2
    assert doc["cmi_variant"] == "landscape" and "cmi" in doc["rows"][0] and len(doc["runs_table"]) == 4
    capsys.readouterr()
    before = out.read_text()
    assert main(["correlate", str(seeded_runs), "--out", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == before
    runs_csv = tmp_path / "r.csv"
    runs_csv.write_text("kept\n")
    assert main(["correlate", str(seeded_runs), "--runs-table", str(runs_csv)]) == 2
    assert runs_csv.read_text() == "kept\n"
    assert main(["correlate", str(seeded_runs), "--runs-table", str(runs_csv), "--overwrite"]) == 0
    with open(runs_csv, newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    assert main(["correlate", str(seeded_runs), "--runs-table", str(tmp_path / "r.txt")]) == 2
    assert "must end in .csv or .json" in capsys.readouterr().err
    assert main(["correlate", str(seeded_runs), "--out", str(runs_csv), "--runs-table", str(runs_csv),
                 "--overwrite"]) == 2
    assert main(["correlate", str(seeded_runs), "--cmi", "--cmi-variant", "nope"]) == 2


def test_correlate_seed_as_an_axis(seeded_runs, capsys):
    assert main(["correlate", str(seeded_runs), "--axes", "lr,seed", "--cmi"]) == 0
    printed = capsys.readouterr().out
    assert "axes: lr, seed" in printed and "seeds averaged" not in printed
    assert "CMI: pgdl variant" in printed
