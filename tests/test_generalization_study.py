"""The generalization-measures study from the command line alone (issue 16's acceptance):
``landscape sweep`` of 16 runs → ``landscape analyze --probes measures,sharpness,hessian`` on each →
``landscape correlate`` → the ranked table (≥ 20 measures) and the per-run table, with numbers
checked against direct computations (a norm from the checkpoint file, τ by its definition)."""

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from landscape.checkpoints import RunDir
from landscape_cli.main import main

GRID = {"base": {"model": "mlp", "model_params": {"width": 8, "depth": 1}, "epochs": 2, "train_size": 150,
                 "checkpoints": "every:1"},
        "grid": {"lr": [0.05, 0.2], "batch_size": [25, 50], "weight_decay": [0.0, 0.01],
                 "optimizer_params.momentum": [0.0, 0.9]}}
SETTINGS = ["--setting", "hessian.top_k=1", "--setting", "hessian.trace_samples=3", "--setting",
            "hessian.density=false", "--setting", "hessian.lanczos_steps=10", "--setting", "sharpness.m=50",
            "--setting", "sharpness.iters=2", "--setting", "sharpness.rhos=0.002", "--setting",
            "sharpness.pac_steps=4", "--setting", "measures.grad_subset=150", "--setting", "measures.pac_steps=4",
            "--setting", "measures.worst_iters=1", "--setting", "measures.worst_steps=3"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "grid.json").write_text(json.dumps(GRID))
    assert main(["sweep", str(root / "grid.json"), "--out", str(root / "runs"), "--device", "cpu", "--no-progress"]) == 0
    runs = sorted(p for p in (root / "runs").iterdir() if (p / "config.json").is_file())
    assert len(runs) == 16
    for run in runs:
        assert main(["analyze", str(run), "--probes", "measures,sharpness,hessian", *SETTINGS, "--device", "cpu",
                     "--no-progress", "--no-plots"]) == 0
    assert main(["correlate", str(root / "runs"), "--out", str(root / "table.csv"), "--runs-table",
                 str(root / "per_run.csv"), "--cmi"]) == 0
    return root, runs


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_ranked_table_has_every_family(study):
    root, _ = study
    rows = _rows(root / "table.csv")
    names = {r["measure"] for r in rows}
    assert len(names) >= 20, sorted(names)
    for wanted in ("log_prod_spectral", "path_norm", "dist_init_frobenius", "inv_margin2", "pacbayes_mag_flatness",
                   "lambda_max", "sharpness@0.002", "gradient_noise"):
        assert wanted in names, wanted
    assert all(-1 <= float(r["tau"]) <= 1 and float(r["tau_low"]) <= float(r["tau_high"]) for r in rows)
    assert (root / "table_plots" / "families.png").is_file()


def test_the_per_run_table_holds_what_the_runs_hold(study):
    root, runs = study
    table = {r["run"]: r for r in _rows(root / "per_run.csv")}
    assert len(table) == 16
    run = runs[5]
    row = table[str(run)]
    weights = load_file(str(RunDir(run).checkpoint("last").path))
    param_norm = sum(float((w.double() ** 2).sum()) for k, w in weights.items() if k.endswith("weight"))
    assert abs(float(row["param_norm"]) - param_norm) < 1e-9 * param_norm
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if "test_acc" in m][-1]
    assert abs(float(row["gap_acc"]) - (last["train_acc"] - last["test_acc"])) < 1e-12


def test_tau_is_kendalls_definition(study):
    root, _ = study
    per_run = _rows(root / "per_run.csv")
    row = next(r for r in _rows(root / "table.csv") if r["measure"] == "path_norm")
    mu = np.array([float(r["path_norm"]) for r in per_run])
    g = np.array([float(r["gap_acc"]) for r in per_run])
    n = len(mu)
    tau = sum(np.sign(mu[i] - mu[j]) * np.sign(g[i] - g[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    assert abs(float(row["tau"]) - tau) < 1e-12
    assert torch.isfinite(torch.tensor(mu)).all()


def test_every_varying_hyper_parameter_is_an_axis(study):
    from landscape.study import collect_runs, varying_axes

    _, runs = study
    assert varying_axes(collect_runs(runs)) == ["lr", "batch_size", "weight_decay", "optimizer_params.momentum"]
