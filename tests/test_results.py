"""Tests for landscape.results (load_results, the tidy table), `landscape export`, the documented
HDF5 schema (docs/schema.md) and the per-run table of `landscape correlate --out`."""

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from landscape.errors import LandscapeError
from landscape.results import COLUMNS, load_results
from landscape.store import Store
from landscape_cli.main import main

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "schema.md"

# Two configurations (on two checkpoints of the tiny run) that together switch on the optional
# outputs of every probe: densities, per-layer spectra, eigenvectors, PAC-Bayes, both sharpness
# kinds, 1D/2D and random/PCA surfaces on both splits.
SETTINGS_LAST = {
    "hessian": dict(top_k=2, bottom_k=1, lanczos_steps=8, trace_samples=4, density=True, density_steps=4,
                    density_bins=16, per_layer=True, eigenvectors=True, subset=64),
    "sharpness": dict(rhos=(0.001, 0.002), m=32, subset=64, iters=2, pac_draws=1, pac_steps=2,
                      first_order_iters=2),
    "coherence": dict(subset=32, histogram_bins=8),
    "collapse": dict(samples=64),
    "rankme": dict(samples=64),
    "dse": dict(samples=48, n_random_subsets=1, n_clusters=3),
    "surface": dict(dim=2, x="-1:1:3", y="-1:1:3", splits="train,test", subset=64),
    "measures": dict(grad_subset=64, grad_batch_size=16, pac_draws=1, pac_steps=2, pac_subset=64, pac_m=32,
                     worst_iters=1, worst_steps=2),
}
SETTINGS_FIRST = {
    "hessian": dict(top_k=1, bottom_k=0, trace=False, lanczos_steps=4, subset=32),
    "sharpness": dict(kind="average", norm="l2", adaptive=False, rhos=(0.05,), m=32, subset=32,
                      samples_avg=2, pac_bayes=False, first_order_rho=None),
    "surface": dict(dim=1, x="-1:1:3", direction="pca", subset=32),
}


@pytest.fixture(scope="module")
def results_file(tiny_run, tmp_path_factory):
    """A demo-like analysis.h5 at small size: every probe, at two checkpoints; read-only."""
    from landscape.analyze import analyze

    out = tmp_path_factory.mktemp("results") / "analysis.h5"
    for settings, which in ((SETTINGS_LAST, "last"), (SETTINGS_FIRST, "first")):
        report = analyze(tiny_run, list(settings), settings=settings, checkpoints=which, out=out, device="cpu")
        assert report.failures == {}
    return out


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


# ---- the documented schema ----------------------------------------------------------------------


def _doc_tables() -> dict[str, set[str]]:
    """``{section: names}``: the backticked names in the first column of each table, by the
    ``###`` heading (probe sections, e.g. ``hessian``) or the ``##`` heading above it."""
    tables: dict[str, set[str]] = {}
    section = None
    for line in SCHEMA.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("### "):
            section = line[4:].strip().strip("`")
        elif line.startswith("|") and section and not re.match(r"\|\s*-", line):
            first = line.split("|")[1]
            if first.strip() in ("key", "attribute", "column"):
                continue
            tables.setdefault(section, set()).update(re.findall(r"`([^`]+)`", first))
    return tables


def _stored_keys(group: h5py.Group) -> set[str]:
    """Dataset paths below a probe group, with a per-split subgroup written ``<split>/…``."""
    keys: set[str] = set()

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            keys.add(re.sub(r"^reasons/.*", "reasons/<key>", re.sub(r"^(train|test)/", "<split>/", name)))

    group.visititems(visit)
    return keys


def test_schema_has_a_section_for_every_registered_probe():
    from landscape.probes import PROBES

    tables = _doc_tables()
    for probe in PROBES.names():
        assert probe in tables and len(tables[probe]) >= 5, f"docs/schema.md documents no keys of {probe!r}"


def test_every_stored_dataset_key_is_documented(results_file):
    tables = _doc_tables()
    seen: set[str] = set()
    with h5py.File(results_file, "r") as f:
        for checkpoint in f:
            for probe, group in f[checkpoint].items():
                seen.add(probe)
                missing = _stored_keys(group) - tables.get(probe, set())
                assert not missing, f"{probe} writes keys docs/schema.md does not document: {sorted(missing)}"
    assert seen == {"hessian", "sharpness", "coherence", "collapse", "rankme", "dse", "surface", "measures"}


def test_every_stored_attribute_is_documented(results_file, tmp_path):
    tables = _doc_tables()
    path = tmp_path / "a.h5"
    shutil.copy(results_file, path)
    Store(path).write("failures/rankme", {}, {"error": "boom", "created": "now"})
    with h5py.File(path, "r") as f:
        assert set(f.attrs) <= tables["Root attributes"]
        for checkpoint in (c for c in f if c != "failures"):
            cattrs = f[checkpoint].attrs
            undocumented = {k for k in cattrs if k not in tables["Checkpoint group attributes (`/<checkpoint>/`)"]
                            and not isinstance(cattrs[k], np.floating | np.integer | float | int)}
            assert not undocumented, f"checkpoint attributes not in docs/schema.md: {sorted(undocumented)}"
            for probe, group in f[checkpoint].items():
                missing = set(group.attrs) - tables["Probe group attributes (`/<checkpoint>/<probe>/`)"]
                assert not missing, f"{probe} group attributes not in docs/schema.md: {sorted(missing)}"
        assert set(f["failures/rankme"].attrs) <= tables["Failures (`/failures/`)"]


# ---- load_results and the tidy table -----------------------------------------------------------


def _reference_rows(path: Path, max_vector: int | None = 32) -> dict[tuple, float]:
    """The rows the documented rules give, read with h5py alone: ``{(checkpoint, probe, split,
    measure, index): value}`` (training metrics left out)."""
    out: dict[tuple, float] = {}
    with h5py.File(path, "r") as f:
        for checkpoint in f:
            for probe, group in f[checkpoint].items():
                settings = json.loads(group.attrs["settings"][len("json:"):])
                default = settings.get("split") or settings.get("splits", "").split(",")[0]

                datasets: list[tuple[str, h5py.Dataset]] = []
                group.visititems(lambda n, o, d=datasets: d.append((n, o)) if isinstance(o, h5py.Dataset) else None)
                for name, obj in datasets:
                    if obj.dtype.kind not in "biuf" or ("done" in group and name != "origin_loss"):
                        continue
                    parts = name.split("/")
                    split, measure = (parts[0], "/".join(parts[1:])) if parts[0] in ("train", "test") else (default, name)
                    value = obj[()]
                    if value.ndim == 0:
                        out[(checkpoint, probe, split, measure, None)] = float(value)
                    elif value.ndim == 1 and (max_vector is None or value.size <= max_vector):
                        for k, v in enumerate(value):
                            out[(checkpoint, probe, split, measure, k)] = float(v)
    return out


def test_rows_are_the_stored_values(results_file):
    res = load_results(results_file)
    rows = res.rows()
    probe_rows = [r for r in rows if r["probe"] != "metrics"]
    got = {(r["checkpoint"], r["probe"], r["split"], r["measure"], r["index"]): r["value"] for r in probe_rows}
    assert len(got) == len(probe_rows)  # one row per (checkpoint, probe, split, measure, index)
    ref = _reference_rows(results_file)
    assert got.keys() == ref.keys()
    np.testing.assert_array_equal([got[k] for k in ref], [ref[k] for k in ref])  # exact, NaN == NaN
    assert all(set(r) == set(COLUMNS) for r in rows)
    with h5py.File(results_file, "r") as f:
        last = res.checkpoints[-1]
        lam = f[f"{last}/hessian/eigenvalues"][()]
        assert got[(last, "hessian", "train", "eigenvalues", 0)] == lam.max()
        attrs = f[last].attrs
        hashes = {r["settings_hash"] for r in probe_rows if r["checkpoint"] == last and r["probe"] == "rankme"}
        assert hashes == {f[f"{last}/rankme"].attrs["settings_hash"]}
        metrics = {r["measure"]: r["value"] for r in rows if r["probe"] == "metrics" and r["checkpoint"] == last}
        assert metrics["train_acc"] == attrs["train_acc"] and metrics["test_loss"] == attrs["test_loss"]
        assert "step" not in metrics and not any(m.startswith("checkpoint") for m in metrics)
        assert {r["step"] for r in rows if r["checkpoint"] == last} == {int(attrs["step"])}
        assert {r["epoch"] for r in rows if r["checkpoint"] == last} == {float(attrs["epoch"])}


def test_rows_conventions(results_file):
    res = load_results(results_file)
    rows = res.rows()
    last, first = res.checkpoints[-1], res.checkpoints[0]
    by = {(r["checkpoint"], r["probe"], r["split"], r["measure"], r["index"]): r for r in rows}
    assert by[(last, "sharpness", "train", "delta_loss", 1)]["label"] == "rho=0.002"
    assert by[(last, "sharpness", "train", "pac_bayes/inv_sigma2", None)]["index"] is None
    with h5py.File(results_file, "r") as f:
        names = [n.decode() for n in f[f"{last}/hessian/layers/names"][()]]
    assert [by[(last, "hessian", "train", "layers/top_eigenvalue", k)]["label"] for k in range(len(names))] == names
    assert (last, "collapse", "test", "nc1", None) in by and (last, "rankme", "train", "rankme", None) in by
    # surface: only its scalar summary; grids, directions and coordinates are not rows
    surface = {r["measure"] for r in rows if r["probe"] == "surface"}
    assert surface == {"origin_loss"}
    assert by[(last, "surface", "train", "origin_loss", None)]
    # 2D arrays and text are never rows; long vectors only on request
    measures = {r["measure"] for r in rows}
    assert not measures & {"eigenvectors", "class_means", "esd_nodes", "hvp_method", "method", "layers/names"}
    assert [r["checkpoint"] for r in rows] == sorted((r["checkpoint"] for r in rows), key=res.checkpoints.index)
    everything = res.rows(max_vector=None, metrics=False)
    with h5py.File(results_file, "r") as f:
        n_eig = f[f"{last}/dse/train/eigenvalues"].shape[0]
    assert n_eig > 32 and sum(r["measure"] == "eigenvalues" and r["probe"] == "dse" and r["split"] == "train"
                              for r in everything) == n_eig
    assert all(r["probe"] != "metrics" for r in everything)
    assert (first, "sharpness", "train", "delta_loss_se", 0) in by


def test_results_is_a_mapping_over_groups(results_file):
    res = load_results(results_file)
    assert res.schema_version == 1
    assert len(res) == len(SETTINGS_LAST) + len(SETTINGS_FIRST) and res.probes == sorted(SETTINGS_LAST)
    first, last = res.checkpoints
    assert res.checkpoint_attrs(first)["step"] < res.checkpoint_attrs(last)["step"]
    assert list(res)[:3] == [f"{first}/hessian", f"{first}/sharpness", f"{first}/surface"]
    item = res[f"{last}/hessian"]
    with h5py.File(results_file, "r") as f:
        np.testing.assert_array_equal(item.arrays["eigenvalues"], f[f"{last}/hessian/eigenvalues"][()])
    assert item.settings["top_k"] == 2 and item.complete and item.probe == "hessian"
    with pytest.raises(KeyError):
        res[f"{first}/rankme"]
    assert res.failures == {}
    assert load_results(results_file.parent).path == results_file  # a folder holding analysis.h5


def test_failures_and_partial_groups(results_file, tmp_path):
    path = tmp_path / "a.h5"
    shutil.copy(results_file, path)
    store = Store(path)
    store.write("failures/dse", {}, {"error": "dse failed", "created": "t"})
    store.write("failures/hessian/step_000099", {}, {"error": "cannot load", "created": "t"})
    store.write("step_000099/surface", {"origin_loss": 1.0, "done": np.zeros(3, np.uint8)},
                {"settings": {"splits": "train"}, "settings_hash": "x", "complete": False}, {"step": 99})
    res = load_results(path)
    assert {k: v["error"] for k, v in res.failures.items()} == {"dse": "dse failed",
                                                                "hessian/step_000099": "cannot load"}
    assert not any(r["checkpoint"] == "step_000099" and r["probe"] != "metrics" for r in res.rows())
    partial = [r for r in res.rows(include_partial=True) if r["checkpoint"] == "step_000099"]
    assert [(r["measure"], r["value"]) for r in partial] == [("origin_loss", 1.0)]
    assert res.checkpoints[-1] == "step_000099"  # ordered by step


def test_to_frame_matches_rows(results_file):
    pd = pytest.importorskip("pandas")
    res = load_results(results_file)
    frame = res.to_frame()
    rows = res.rows()
    assert list(frame.columns) == list(COLUMNS) and len(frame) == len(rows)
    np.testing.assert_array_equal(frame["value"].to_numpy(), [r["value"] for r in rows])
    assert frame["index"].dtype == pd.Int64Dtype() and frame["index"].isna().sum() == sum(r["index"] is None for r in rows)


def test_missing_pandas_is_one_line_error_and_csv_needs_none(results_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas → ImportError
    res = load_results(results_file)
    with pytest.raises(LandscapeError, match=r"pip install 'landscape\[pandas\]'"):
        res.to_frame()
    assert res.to_csv(tmp_path / "t.csv") == len(res.rows())


def test_facade_is_lazy():
    import subprocess

    code = "import sys, landscape; assert 'h5py' not in sys.modules; from landscape.results import load_results; " \
           "assert landscape.load_results is load_results"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- landscape export ---------------------------------------------------------------------------


def test_export_csv_reads_back_as_the_hdf5_values(results_file, tmp_path, capsys):
    out = tmp_path / "out" / "table.csv"
    assert main(["export", str(results_file), "--csv", str(out)]) == 0
    assert "rows" in capsys.readouterr().out
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == COLUMNS
    probe_rows = [r for r in table if r["probe"] != "metrics"]
    got = {(r["checkpoint"], r["probe"], r["split"], r["measure"], int(r["index"]) if r["index"] else None):
           float(r["value"]) for r in probe_rows}
    assert len(got) == len(probe_rows)
    ref = _reference_rows(results_file)
    assert got.keys() == ref.keys()
    np.testing.assert_array_equal([got[k] for k in ref], [ref[k] for k in ref])  # the text round-trips exactly
    with h5py.File(results_file, "r") as f:
        for r in table:
            assert int(r["step"]) == f[r["checkpoint"]].attrs["step"]
            if r["probe"] != "metrics":
                assert r["settings_hash"] == f[f"{r['checkpoint']}/{r['probe']}"].attrs["settings_hash"]
    per_probe = {(r["checkpoint"], r["probe"]) for r in probe_rows}
    assert len(per_probe) == len(SETTINGS_LAST) + len(SETTINGS_FIRST)  # every (checkpoint, probe) group has rows
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_export_parquet(results_file, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    out = tmp_path / "t.parquet"
    assert main(["export", str(results_file), "--parquet", str(out), "--max-vector", "0", "--no-metrics"]) == 0
    back = pd.read_parquet(out)
    expected = load_results(results_file).to_frame(max_vector=None, metrics=False)
    pd.testing.assert_frame_equal(back, expected)


def test_export_without_pyarrow_is_one_line(results_file, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    assert main(["export", str(results_file), "--parquet", str(tmp_path / "t.parquet")]) == 2
    assert "landscape[parquet]" in _error_line(capsys)
    assert not (tmp_path / "t.parquet").exists()


def test_export_bad_input_is_one_line_and_writes_nothing(results_file, tmp_path, capsys):
    out = tmp_path / "t.csv"
    out.write_text("kept\n")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = 1
    cases = {
        str(tmp_path / "missing.h5"): "does not exist",
        str(text): "not an HDF5 file",
        str(plain): "not a landscape results file",
        str(tmp_path): "without analysis.h5",
    }
    for path, message in cases.items():
        assert main(["export", path, "--csv", str(out)]) == 2
        assert message in _error_line(capsys)
    assert main(["export", str(results_file)]) == 2
    assert "--csv" in _error_line(capsys)
    assert main(["export", str(results_file), "--csv", str(results_file)]) == 2
    assert "results file itself" in _error_line(capsys)
    assert main(["export", str(results_file), "--csv", str(tmp_path / "notes.h5" / "t.csv")]) == 2
    assert "cannot write" in _error_line(capsys)
    assert out.read_text() == "kept\n"
    assert load_results(results_file).rows()  # the results file is untouched


# ---- correlate --out: the per-run table -----------------------------------------------------------


def test_correlate_out_writes_the_runs_table(tiny_run, tmp_path, capsys):
    from landscape.study import collect_runs
    from landscape.train.config import TrainConfig
    from landscape.train.trainer import train

    runs = [tmp_path / "r0", tmp_path / "r1"]
    shutil.copytree(tiny_run, runs[0])
    train(TrainConfig(model="mlp", model_params={"width": 16, "depth": 1}, train_size=300, epochs=3,
                      batch_size=64, lr=0.03, checkpoints="every:1"), runs[1], progress=False, device="cpu")
    for run in runs:
        assert main(["analyze", str(run), "--probes", "hessian", "--setting", "hessian.subset=64",
                     "--setting", "hessian.trace_samples=4", "--setting", "hessian.lanczos_steps=10",
                     "--no-progress", "--no-plots", "--device", "cpu"]) == 0
    assert main(["correlate", *map(str, runs), "--out", str(tmp_path / "c.csv")]) == 0
    with open(tmp_path / "c_runs.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["run"] for r in table] == [str(r) for r in runs]
    for row, run in zip(table, runs, strict=True):
        with h5py.File(run / "analysis.h5", "r") as f:
            last = sorted(f)[-1]
            assert float(row["lambda_max"]) == f[f"{last}/hessian/eigenvalues"][0]
            attrs = f[last].attrs
            assert float(row["gap_acc"]) == pytest.approx(attrs["train_acc"] - attrs["test_acc"], abs=1e-15)
            assert float(row["gap_loss"]) == pytest.approx(attrs["test_loss"] - attrs["train_loss"], abs=1e-15)
        assert float(row["lr"]) == json.loads((run / "config.json").read_text())["config"]["lr"]
    assert main(["correlate", *map(str, runs), "--out", str(tmp_path / "c.json")]) == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    records = collect_runs(runs)
    assert [r["lambda_max"] for r in doc["runs_table"]] == [r["lambda_max"] for r in records]
    assert {"gap_acc", "gap_loss", "train_acc", "test_acc"} <= set(doc["runs_table"][0])
