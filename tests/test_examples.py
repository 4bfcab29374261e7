"""Every example runs at its smoke size (both scales) and writes its numbers and figures.

The examples are scripts, not package modules: they are loaded from ``examples/`` by path and their
``run`` called through :func:`common.main`, as ``python examples/<name>.py --smoke`` would.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(p.stem for p in EXAMPLES_DIR.glob("*.py") if p.stem != "common")


def load_example(name: str):
    if str(EXAMPLES_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLES_DIR))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(name: str, *args: str) -> tuple[int, dict]:
    module = load_example(name)
    common = sys.modules["common"]
    code = common.main(module.run, name, module.__doc__, module.SCALES, module.SMOKE, list(args))
    out = Path(args[args.index("--out") + 1])
    numbers = json.loads((out / "numbers.json").read_text()) if (out / "numbers.json").is_file() else {}
    return code, numbers


def _finite_leaves(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _finite_leaves(v, f"{path}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _finite_leaves(v, f"{path}[{i}]")
    elif isinstance(value, float):
        yield path, math.isfinite(value)


def test_the_examples_are_the_seven_of_the_issue():
    assert set(EXAMPLES) >= {"sam_vs_sgd", "batch_size_sharpness", "skip_connections", "neural_collapse",
                             "random_labels", "sharpness_vs_generalization", "hessian_spectrum"}


def test_the_training_dynamics_examples_are_there():
    assert "edge_of_stability" in EXAMPLES
    assert "grokking" in EXAMPLES
    assert "transformer_instability" in EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_docstring_states_claim_paper_and_finding(name):
    doc = load_example(name).__doc__
    for part in ("Claim.", "What it does.", "Finding"):
        assert part in doc, f"{name}: docstring lacks {part!r}"


@pytest.mark.parametrize("scale", ["default", "full"])
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_smoke_run_writes_numbers_and_figures(name, scale, tmp_path):
    out = tmp_path / name
    code, numbers = run_example(name, "--smoke", "--scale", scale, "--out", str(out), "--device", "cpu")
    assert code == 0
    assert numbers["example"] == name and numbers["smoke"] is True and numbers["scale"] == scale
    assert numbers["figures"], "no figure written"
    for fig in numbers["figures"]:
        assert (out / fig).stat().st_size > 5_000
    assert numbers["numbers"]


def test_rerun_reuses_finished_runs_and_stored_results(tmp_path):
    out = tmp_path / "hs"
    args = ("--smoke", "--out", str(out), "--device", "cpu")
    _, first = run_example("hessian_spectrum", *args)
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix in (".h5", ".safetensors")}
    assert any(p.suffix == ".h5" for p in written) and any(p.suffix == ".safetensors" for p in written)
    _, second = run_example("hessian_spectrum", *args)
    assert second["numbers"] == first["numbers"]
    # nothing was trained or computed again: no checkpoint and no results file was rewritten
    assert {p: p.stat().st_mtime_ns for p in written} == written


def test_bad_device_is_one_line_and_exit_2(tmp_path, capsys):
    code, _ = run_example("hessian_spectrum", "--smoke", "--out", str(tmp_path / "x"), "--device", "tpu")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not (tmp_path / "x").exists()


def test_lr_sensitivity_is_wortsmans_formula():
    # mean_η min(L(η), L₀) − min_η L(η): unfinished (None) and above-L₀ runs count as L₀
    module = load_example("transformer_instability")
    out = module.sensitivity([2.0, None, 5.0, 3.0], [4.0, 4.0, 4.0, 4.0])
    assert out["capped_losses"] == [2.0, 4.0, 4.0, 3.0]
    assert out["min_loss"] == 2.0
    assert out["lr_sensitivity"] == pytest.approx((2 + 4 + 4 + 3) / 4 - 2)


def test_diverged_run_counts_as_initial_loss_and_is_not_retrained(tmp_path):
    module = load_example("transformer_instability")
    common = sys.modules["common"]
    smoke = {**module.SMOKE, "lrs": [1e-2, 1e6], "warmup": 0.0}  # Adam at lr 1e6: NaN at the first step
    out = tmp_path / "ti"
    args = ["--smoke", "--out", str(out), "--device", "cpu"]
    assert common.main(module.run, "transformer_instability", module.__doc__, module.SCALES, smoke, args) == 0
    first = json.loads((out / "numbers.json").read_text())["numbers"]["baseline"]
    run = first["runs"]["lr1e+06"]
    assert run["diverged"] and run["final_test_ce"] is None
    assert first["capped_losses"][1] == run["initial_test_ce"]
    metrics = out / "baseline-lr1e+06" / "metrics.jsonl"
    assert any(json.loads(line).get("event") == "diverged" for line in metrics.read_text().splitlines())
    written = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")}
    assert common.main(module.run, "transformer_instability", module.__doc__, module.SCALES, smoke, args) == 0
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert json.loads((out / "numbers.json").read_text())["numbers"]["baseline"] == first
