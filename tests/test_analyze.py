import numpy as np
import pytest
import torch

from landscape.analyze import collect_series, default_output, run_probe
from landscape.checkpoints import ModelSpec, RunDir, file_sha256
from landscape.errors import CheckpointError, ConfigError
from landscape.features import extract_features
from landscape.figures import probe_figures
from landscape.probes import PROBES, make_config
from landscape.probes.collapse import neural_collapse
from landscape.probes.rankme import rankme
from landscape.store import Store
from landscape.targets import DataSpec
from landscape.train.trainer import load_data

FAST_HESSIAN = dict(top_k=2, bottom_k=1, trace_samples=10, subset=100, lanczos_steps=30)


def test_every_probe_is_registered_with_a_frozen_config():
    assert set(PROBES.names()) >= {"hessian", "collapse", "rankme", "dse"}
    for name in PROBES.names():
        cfg = PROBES[name].config()
        with pytest.raises(AttributeError):
            cfg.seed = 1
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) topk for probe 'hessian'"):
        make_config("hessian", topk=3)


def test_run_probe_stores_results_with_provenance_and_skips_stored_work(run_copy):
    cfg = make_config("hessian", **FAST_HESSIAN)
    first = run_probe(run_copy, "hessian", cfg, checkpoints="all", device="cpu")
    run = RunDir(run_copy)
    assert [r.target.step for r in first] == [c.step for c in run.checkpoints()]
    assert not any(r.skipped for r in first)
    store = Store(default_output(run_copy))
    assert store.path == run_copy / "analysis.h5"
    arrays, attrs = store.read(first[-1].group)
    np.testing.assert_allclose(arrays["eigenvalues"], first[-1].result["eigenvalues"])
    assert attrs["settings"]["top_k"] == 2 and attrs["probe"] == "hessian" and "torch" in attrs["versions"]
    assert attrs["data"]["dataset"] == "digits" and attrs["loss"]["name"] == "ce"
    parent = store.attrs(first[-1].target.name)
    last = run.checkpoints()[-1]
    assert parent["step"] == last.step and parent["checkpoint_sha256"] == file_sha256(last.path)
    assert parent["test_acc"] == run.metrics()[-1]["test_acc"]
    # again: everything is found stored; with other settings it is computed anew
    again = run_probe(run_copy, "hessian", cfg, checkpoints="all", device="cpu")
    assert all(r.skipped for r in again)
    np.testing.assert_array_equal(again[-1].result["eigenvalues"], arrays["eigenvalues"])
    # results stored with other settings are never replaced silently
    other = make_config("hessian", **{**FAST_HESSIAN, "top_k": 3})
    with pytest.raises(ConfigError, match="already holds hessian results for step_000000 with other settings "
                                          "\\(top_k 2 → 3\\); pass --force"):
        run_probe(run_copy, "hessian", other, checkpoints="all", device="cpu")
    np.testing.assert_array_equal(store.read(first[-1].group)[0]["eigenvalues"], arrays["eigenvalues"])
    forced = run_probe(run_copy, "hessian", other, device="cpu", force=True)
    assert not forced[0].skipped and len(forced[0].result["eigenvalues"]) == 3
    series = collect_series(store.path, "hessian", ["eigenvalues", "trace"])
    assert list(series["step"]) == [c.step for c in run.checkpoints()]
    assert list(series["epoch"]) == [0.0, 1.0, 2.0, 3.0]


def test_results_are_the_same_whichever_way_the_checkpoint_is_named(run_copy, tmp_path):
    cfg = make_config("hessian", **FAST_HESSIAN)
    by_run = run_probe(run_copy, "hessian", cfg, device="cpu")[0].result
    last = RunDir(run_copy).checkpoints()[-1]
    by_file = run_probe(last.path, "hessian", cfg, device="cpu", out=tmp_path / "b.h5")[0].result
    foreign = tmp_path / "w.safetensors"
    foreign.write_bytes(last.path.read_bytes())
    spec = ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10, params={"width": 16, "depth": 1})
    by_foreign = run_probe(foreign, "hessian", cfg, device="cpu", out=tmp_path / "c.h5", model_spec=spec,
                           data_spec=DataSpec(dataset="digits", dataset_params={"train_size": 300}))[0].result
    for r in (by_file, by_foreign):
        np.testing.assert_array_equal(r["eigenvalues"], by_run["eigenvalues"])


def test_representation_probes_match_direct_calls(run_copy):
    results = {p: run_probe(run_copy, p, make_config(p, samples=200), device="cpu")[0].result
               for p in ("collapse", "rankme")}
    run = RunDir(run_copy)
    model, data = run.load_model(), load_data(run.config)
    idx = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(0))[:200].sort().values
    feats, logits = extract_features(model, data.test.x[idx])
    direct = neural_collapse(feats, data.test.y[idx], model.classifier.weight.detach(),
                             predictions=logits.argmax(1), num_classes=10)
    assert results["collapse"]["test"]["nc1"] == pytest.approx(direct["nc1"], rel=1e-12)
    assert results["collapse"]["test"]["ncc_mismatch"] == direct["ncc_mismatch"]
    assert results["rankme"]["test"]["rankme"] == pytest.approx(rankme(feats)["rankme"], rel=1e-12)
    assert set(results["collapse"]) == {"train", "test"}


def test_dse_probe_and_curve_figures(run_copy):
    cfg = make_config("dse", samples=120, splits="train", n_random_subsets=2)
    records = run_probe(run_copy, "dse", cfg, checkpoints="all", device="cpu")
    assert all({"dse", "dsmi_y", "dsmi_x"} <= set(r.result["train"]) for r in records)
    for p in ("collapse", "rankme"):
        run_probe(run_copy, p, make_config(p, samples=100), checkpoints="all", device="cpu")
    run_probe(run_copy, "hessian", make_config("hessian", **FAST_HESSIAN, density=True, per_layer=True,
                                               density_steps=20, density_bins=200), device="cpu")
    plots = run_copy / "plots"
    written = {p.name for probe in ("collapse", "rankme", "dse", "hessian")
               for p in probe_figures(run_copy / "analysis.h5", probe, plots)}
    last = RunDir(run_copy).checkpoints()[-1].name
    assert {"collapse.png", "rankme.png", "dse.png", f"{last}_top.png", f"{last}_esd.png", f"{last}_layers.png"} <= written


def test_bad_targets_fail_before_anything_is_written(run_copy, tmp_path):
    cfg = make_config("hessian", **FAST_HESSIAN)
    with pytest.raises(ConfigError, match="w.pt does not exist; give a RUN_DIR or a checkpoint file"):
        run_probe(tmp_path / "w.pt", "hessian", cfg, device="cpu")
    (tmp_path / "w.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="name the results file with --out"):
        run_probe(tmp_path / "w.pt", "hessian", cfg, device="cpu")
    with pytest.raises(CheckpointError, match="cannot be read"):
        run_probe(tmp_path / "w.pt", "hessian", cfg, device="cpu", out=tmp_path / "x.h5",
                  model_spec=ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10),
                  data_spec=DataSpec(dataset="digits"))
    # a corrupt checkpoint inside a run: a clear error, and the stored results survive
    run_probe(run_copy, "hessian", cfg, device="cpu")
    before = Store(run_copy / "analysis.h5").read(f"{RunDir(run_copy).checkpoints()[-1].name}/hessian")[0]
    first = RunDir(run_copy).checkpoints()[0].path
    first.write_bytes(first.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        run_probe(run_copy, "hessian", cfg, checkpoints="all", device="cpu")
    after = Store(run_copy / "analysis.h5").read(f"{RunDir(run_copy).checkpoints()[-1].name}/hessian")[0]
    np.testing.assert_array_equal(before["eigenvalues"], after["eigenvalues"])


def test_analyze_runs_several_probes_and_records_failures(run_copy):
    from landscape.analyze import analyze

    report = analyze(run_copy, "rankme,coherence", settings={"coherence": {"subset": 5000}}, device="cpu")
    assert set(report.results) == {"rankme"} and set(report.failures) == {"coherence"}
    assert "subset of 5000 samples asked for" in report.failures["coherence"]
    _, attrs = Store(run_copy / "analysis.h5").read("failures/coherence")
    assert "subset of 5000" in attrs["error"]
    with pytest.raises(Exception, match="unknown probe 'nope'"):
        analyze(run_copy, "rankme,nope", device="cpu")


def test_collect_runs_and_correlation_table(tiny_run, tmp_path):
    import shutil

    from landscape.analyze import analyze
    from landscape.correlate import kendall_tau
    from landscape.study import collect_runs, correlation_table

    runs = []
    for i in range(3):  # three copies of a run, analyzed, with made-up hyper-parameters and accuracies
        dst = tmp_path / f"r{i}"
        shutil.copytree(tiny_run, dst)
        analyze(dst, "rankme,collapse", device="cpu", settings={p: {"samples": 100} for p in ("rankme", "collapse")})
        runs.append(dst)
    records = collect_runs(runs)
    assert {"lr", "model_params.width", "train_acc", "test_acc", "rankme_train", "nc1_train"} <= set(records[0])
    for i, r in enumerate(records):  # different gaps, and a measure that follows them
        r["train_acc"], r["test_acc"], r["rankme_train"] = 1.0, 0.9 - 0.1 * i, float(i)
    rows = {row["measure"]: row for row in correlation_table(records, n_boot=50)}
    assert rows["rankme_train"]["tau"] == pytest.approx(kendall_tau([0, 1, 2], [0.1, 0.2, 0.3]))
    assert rows["rankme_train"]["tau"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="at least 2 runs"):
        correlation_table(records[:1])


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_executors_give_the_results_of_the_local_one(tiny_run, tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    from landscape.analyze import analyze

    settings = {"hessian": dict(FAST_HESSIAN), "rankme": {"samples": 100}}
    local = analyze(tiny_run, "hessian,rankme", settings=settings, checkpoints="all", device="cpu",
                    out=tmp_path / "local.h5")
    other = analyze(tiny_run, "hessian,rankme", settings=settings, checkpoints="all", device="cpu",
                    out=tmp_path / f"{executor}.h5", executor=executor, workers=2)
    assert not local.failures and not other.failures
    a, b = Store(tmp_path / "local.h5"), Store(tmp_path / f"{executor}.h5")
    assert a.groups() == b.groups()

    def same(x, y):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                same(x[k], y[k])
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    for group in a.groups():
        same(a.read(group)[0], b.read(group)[0])


def _analyze_cmd(run_dir, *args):
    import sys

    return [sys.executable, "-m", "landscape_cli.main", "analyze", str(run_dir), "--no-progress", "--no-plots",
            "--device", "cpu", *args]


def test_two_concurrent_analyze_processes_leave_every_result(run_copy):
    import subprocess

    procs = [subprocess.Popen(_analyze_cmd(run_copy, "--probes", p, "--checkpoints", "all",
                                           "--setting", f"{p}.samples=100"), stdout=subprocess.DEVNULL)
             for p in ("rankme", "collapse")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    groups = Store(run_copy / "analysis.h5").groups()
    names = [c.name for c in RunDir(run_copy).checkpoints()]
    assert groups == sorted(f"{n}/{p}" for n in names for p in ("collapse", "rankme"))


def test_a_killed_analyze_finishes_when_rerun(run_copy):
    import signal
    import subprocess
    import time

    args = ["--probes", "hessian", "--checkpoints", "all", "--setting", "hessian.subset=200",
            "--setting", "hessian.lanczos_steps=60", "--setting", "hessian.trace_samples=60"]
    proc = subprocess.Popen(_analyze_cmd(run_copy, *args), stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if Store(run_copy / "analysis.h5").groups():
                break
        except Exception:  # the writer holds the file; look again
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(Store(run_copy / "analysis.h5").groups())
    rerun = subprocess.run(_analyze_cmd(run_copy, *args), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert len(Store(run_copy / "analysis.h5").groups()) == len(RunDir(run_copy).checkpoints())
    stored = {line.split()[1] for line in rerun.stdout.splitlines() if "(stored)" in line}  # each table repeats it
    assert len(stored) == done_before


def test_a_corrupt_results_file_is_left_as_it_is(run_copy):
    import subprocess

    (run_copy / "analysis.h5").write_bytes(b"definitely not HDF5")
    proc = subprocess.run(_analyze_cmd(run_copy, "--probes", "rankme"), capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "corrupt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (run_copy / "analysis.h5").read_bytes() == b"definitely not HDF5"


def test_bad_targets_for_analyze(tmp_path):
    import subprocess

    (tmp_path / "empty").mkdir()
    for target, message in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "no .safetensors")):
        proc = subprocess.run(_analyze_cmd(target), capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_results_stored_before_a_setting_existed_are_served(run_copy):
    """A setting added later (rankme's ``pool``) counts as its default for results stored without it."""
    import h5py

    from landscape.analyze import run_probe
    from landscape.errors import LandscapeError
    from landscape.probes import make_config
    from landscape.store import _decode_attr, _encode_attr, settings_hash

    cfg = make_config("rankme", samples=64, splits="train")
    first = run_probe(run_copy, "rankme", cfg, device="cpu")
    out = run_copy / "analysis.h5"
    group = first[0].group
    with h5py.File(out, "r+") as f:  # as an older version wrote it: no "pool" in the settings
        old = _decode_attr(f[group].attrs["settings"])
        old.pop("pool")
        f[group].attrs["settings"] = _encode_attr(old)
        f[group].attrs["settings_hash"] = settings_hash(old)
    again = run_probe(run_copy, "rankme", cfg, device="cpu")
    assert again[0].skipped  # served, not recomputed and not refused
    with pytest.raises(LandscapeError, match="other settings"):
        run_probe(run_copy, "rankme", make_config("rankme", samples=64, splits="train", pool="mean"), device="cpu")


def test_sharpness_stored_before_pac_eps_is_not_served_as_the_new_default(run_copy):
    """Sharpness results stored without ``pac_eps`` were computed with ε = 0 (the former form): they
    match ``pac_eps=0`` and are refused for the new default ε = 1e-3 (Jiang et al.)."""
    import h5py

    from landscape.analyze import run_probe
    from landscape.errors import LandscapeError
    from landscape.probes import make_config
    from landscape.store import _decode_attr, _encode_attr, settings_hash

    small = dict(m=32, rhos=0.01, iters=2, subset=64, pac_steps=3)
    first = run_probe(run_copy, "sharpness", make_config("sharpness", pac_eps=0.0, **small), device="cpu")
    group = first[0].group
    with h5py.File(run_copy / "analysis.h5", "r+") as f:
        old = _decode_attr(f[group].attrs["settings"])
        for key in ("pac_eps", "pac_mag_form", "pac_draws", "momentum_form"):
            old.pop(key, None)
        f[group].attrs["settings"] = _encode_attr(old)
        f[group].attrs["settings_hash"] = settings_hash(old)
    assert run_probe(run_copy, "sharpness", make_config("sharpness", pac_eps=0.0, **small), device="cpu")[0].skipped
    with pytest.raises(LandscapeError, match="other settings"):
        run_probe(run_copy, "sharpness", make_config("sharpness", **small), device="cpu")


def test_a_probe_leaves_the_callers_global_rng_as_it_was(tiny_run, tmp_path):
    """The probes seed their own draws (a random surface direction, Hutchinson's probes) inside a
    forked RNG: the caller's global torch RNG state is unchanged, and the results do not depend on it."""
    from landscape.analyze import analyze

    settings = {"hessian": FAST_HESSIAN, "surface": {"dim": 1, "x": "-1:1:3"}}
    torch.manual_seed(1234)
    torch.rand(3)
    before = torch.get_rng_state()
    first = analyze(tiny_run, "hessian,surface", settings=settings, device="cpu", out=tmp_path / "a.h5")
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)  # another caller state: the same results
    second = analyze(tiny_run, "hessian,surface", settings=settings, device="cpu", out=tmp_path / "b.h5")
    for probe in ("hessian", "surface"):
        a, b = first.results[probe][0].result, second.results[probe][0].result
        np.testing.assert_array_equal(a["train_loss" if probe == "surface" else "eigenvalues"],
                                      b["train_loss" if probe == "surface" else "eigenvalues"])
    np.testing.assert_array_equal(first.results["surface"][0].result["directions"]["d0"],
                                  second.results["surface"][0].result["directions"]["d0"])
