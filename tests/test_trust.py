"""The trust boundary (nothing read runs code), results bound to their checkpoint, model factories
as people write them, and files that honour the umask."""

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from landscape.analyze import analyze, run_probe
from landscape.checkpoints import (
    ModelSpec,
    RunDir,
    checkpoint_matches,
    file_sha256,
    resolve_factory,
)
from landscape.errors import ConfigError
from landscape.models import build_model
from landscape.probes import make_config
from landscape.store import Store
from landscape.targets import DataSpec

FAST_RANKME = dict(samples=64)
DIGITS = DataSpec(dataset="digits")


def _poison(run, marker):
    """Make the run's config.json name a factory that would create ``marker`` if it ever ran."""
    meta = json.loads((run / "config.json").read_text())
    meta["model_spec"]["factory"] = "os:system"
    meta["model_spec"]["params"] = {"command": f"touch {marker}"}
    (run / "config.json").write_text(json.dumps(meta))


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": ""}
    return subprocess.run([sys.executable, "-m", "landscape_cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_a_factory_named_in_config_json_never_runs(run_copy, tmp_path):
    marker = tmp_path / "pwned"
    _poison(run_copy, marker)
    spec = RunDir(run_copy).model_spec
    assert spec.factory == "os:system" and not spec.trusted
    with pytest.raises(ConfigError, match="names the model factory 'os:system'.*--model-factory os:system"):
        spec.build()
    with pytest.raises(ConfigError, match="landscape runs no code named in a file"):
        run_probe(run_copy, "rankme", make_config("rankme", **FAST_RANKME), device="cpu")
    with pytest.raises(ConfigError, match="names the model factory"):
        analyze(run_copy, "rankme,hessian", device="cpu")
    assert not marker.exists()
    assert not (run_copy / "analysis.h5").exists()  # refused before anything was written
    for args in (["rankme", run_copy, "--device", "cpu"], ["analyze", run_copy, "--probes", "rankme"],
                 ["train", "--out", run_copy, "--resume"], ["plot", tmp_path / "none.h5"]):
        proc = _cli(*args)
        assert not marker.exists(), args
        if args[0] in ("rankme", "analyze"):  # resuming builds the registry model; plots read HDF5 only
            assert proc.returncode == 2, (args, proc.stderr)
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            assert len(lines) == 1 and "--model-factory os:system" in lines[0], proc.stderr
            assert "Traceback" not in proc.stderr


def test_a_factory_the_user_names_again_is_used_with_the_runs_parameters(run_copy, tmp_path, monkeypatch):
    cfg = make_config("rankme", **FAST_RANKME)
    reference = run_probe(run_copy, "rankme", cfg, device="cpu", out=tmp_path / "ref.h5")  # registry model
    meta = json.loads((run_copy / "config.json").read_text())
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""
        from landscape.models import build_model

        def build(width, depth, input_shape, num_classes):
            return build_model("mlp", input_shape, num_classes, width=width, depth=depth)
    """))
    meta["model_spec"]["factory"] = "mynets:build"
    (run_copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="names the model factory 'mynets:build'"):
        run_probe(run_copy, "rankme", cfg, device="cpu")
    monkeypatch.chdir(tmp_path)  # `mod:fn` is found from the current directory, without PYTHONPATH
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    named = run_probe(run_copy, "rankme", cfg, device="cpu", model_spec=ModelSpec(factory="mynets:build"))
    np.testing.assert_allclose(named[0].result["train"]["rankme"], reference[0].result["train"]["rankme"],
                               rtol=1e-12)


def test_factories_as_people_write_them(tmp_path, monkeypatch):
    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "helpers.py").write_text("WIDTH = 7\n")
    (pkg / "nets.py").write_text(textwrap.dedent("""
        import torch
        from helpers import WIDTH  # a sibling import, as in a user's own folder

        def build(num_classes=3):
            return torch.nn.Linear(WIDTH, num_classes)

        NOT_CALLABLE = 3

        def broken():
            raise RuntimeError("no GPU [bold]here[/]")
    """))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(pkg))])
    by_path = ModelSpec(factory=f"{pkg}/nets.py:build", num_classes=5).build()
    assert isinstance(by_path, torch.nn.Linear) and by_path.weight.shape == (5, 7)
    monkeypatch.chdir(pkg)
    assert ModelSpec(factory="./nets.py:build").build().weight.shape == (3, 7)
    assert ModelSpec(factory="nets:build").build().weight.shape == (3, 7)
    assert str(pkg) not in sys.path  # the search path is left as it was
    assert resolve_factory("landscape.models:build_model") is build_model
    for spec, message in [
        ("nets", "must look like 'package.module:function'"),
        ("missing_mod:build", "cannot import model factory 'missing_mod:build'.*path/to/file.py:function"),
        ("./nope.py:build", "file './nope.py' does not exist"),
        ("nets:nothing", "module 'nets' has no 'nothing'"),
        ("nets:NOT_CALLABLE", "is a int, not a function"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ModelSpec(factory=spec).build()
    with pytest.raises(ConfigError, match=r"failed: RuntimeError: no GPU \[bold\]here\[/\]"):
        ModelSpec(factory="nets:broken").build()


def test_results_are_bound_to_the_checkpoint_they_came_from(tiny_run, tmp_path):
    cfg = make_config("rankme", **FAST_RANKME)
    run_a = tmp_path / "a"
    shutil.copytree(tiny_run, run_a)
    first = run_probe(run_a, "rankme", cfg, device="cpu")
    attrs = Store(run_a / "analysis.h5").read(first[0].group)[1]
    assert attrs["checkpoint_sha256"] == file_sha256(first[0].target.path)
    # another run with other weights under the same checkpoint names, and the results file copied in
    run_b = tmp_path / "b"
    shutil.copytree(tiny_run, run_b)
    last = RunDir(run_b).checkpoints()[-1]
    model = RunDir(run_b).load_model("last")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    from landscape.checkpoints import save_weights

    save_weights(last.path, model, {})
    shutil.copy(run_a / "analysis.h5", run_b / "analysis.h5")
    with pytest.raises(ConfigError, match="computed from another checkpoint file .*pass --force"):
        run_probe(run_b, "rankme", cfg, device="cpu")
    assert not checkpoint_matches(last.path, attrs)
    forced = run_probe(run_b, "rankme", cfg, device="cpu", force=True)
    assert not forced[0].skipped
    assert forced[0].result["train"]["rankme"] != first[0].result["train"]["rankme"]
    again = run_probe(run_b, "rankme", cfg, device="cpu")
    assert again[0].skipped  # now bound to run b's file
    # a touched but identical file is still recognised (hash, not only size and mtime)
    os.utime(last.path, ns=(1, 1))
    assert run_probe(run_b, "rankme", cfg, device="cpu")[0].skipped


def test_two_foreign_files_of_one_name_never_share_results(tiny_run, tmp_path):
    spec = ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10, params={"width": 16, "depth": 1})
    cps = RunDir(tiny_run).checkpoints()
    for folder, cp in (("x", cps[0]), ("y", cps[-1])):
        (tmp_path / folder).mkdir()
        torch.save(RunDir(tiny_run).load_model(cp.name).state_dict(), tmp_path / folder / "model.pth")
    cfg = make_config("rankme", **FAST_RANKME)
    out = tmp_path / "both.h5"
    run_probe(tmp_path / "x" / "model.pth", "rankme", cfg, out=out, device="cpu", model_spec=spec, data_spec=DIGITS)
    with pytest.raises(ConfigError, match="computed from another checkpoint file"):
        run_probe(tmp_path / "y" / "model.pth", "rankme", cfg, out=out, device="cpu", model_spec=spec,
                  data_spec=DIGITS)


def test_an_unreadable_checkpoint_in_a_folder_is_a_failure_and_the_rest_are_analyzed(tiny_run, tmp_path):
    spec = ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10, params={"width": 16, "depth": 1})
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for cp in RunDir(tiny_run).checkpoints()[:2]:
        shutil.copy(cp.path, folder / cp.path.name)
    (folder / "zz_broken.safetensors").write_bytes(b"not a checkpoint")
    report = analyze(folder, "rankme", settings={"rankme": FAST_RANKME}, checkpoints="all",
                     out=tmp_path / "r.h5", device="cpu", model_spec=spec, data_spec=DIGITS)
    assert len(report.results["rankme"]) == 2
    (key, error), = report.failures.items()
    assert key == "rankme zz_broken" and "not a readable safetensors file" in error
    assert Store(tmp_path / "r.h5").attrs("failures/rankme/zz_broken")["error"] == error


def test_checkpoint_links_outside_the_run_are_refused(run_copy, tmp_path):
    last = RunDir(run_copy).checkpoints()[-1]
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.move(last.path, elsewhere)
    last.path.symlink_to(elsewhere)
    cfg = make_config("rankme", **FAST_RANKME)
    with pytest.raises(ConfigError, match="outside the run directory.*--allow-outside-links"):
        run_probe(run_copy, "rankme", cfg, device="cpu")
    assert run_probe(run_copy, "rankme", cfg, device="cpu", allow_outside_links=True)[0].result


def test_written_files_honour_the_umask(tmp_path):
    from landscape.train.config import TrainConfig
    from landscape.train.trainer import train

    old = os.umask(0o022)
    try:
        cfg = TrainConfig(model="mlp", model_params={"width": 8, "depth": 1}, train_size=100, epochs=1,
                          batch_size=50, checkpoints="every:1")
        run = tmp_path / "run"
        train(cfg, run, progress=False, device="cpu")
        import matplotlib.pyplot as plt

        from landscape.plots import save_figure

        fig = plt.figure()
        written = save_figure(fig, run / "plots" / "fig")
        plt.close(fig)
        files = [run / "config.json", RunDir(run).checkpoints()[-1].path, *written]
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in files), [oct(f.stat().st_mode) for f in files]
        os.umask(0o077)
        from landscape.utils import atomic_write_json

        atomic_write_json(tmp_path / "private.json", {})
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_surface_towards_another_checkpoint_is_bound_to_that_file_too(run_copy):
    cps = RunDir(run_copy).checkpoints()
    cfg = make_config("surface", dim=1, x="-0.5:1.5:5", direction=f"interpolate:{cps[0].name}")
    first = run_probe(run_copy, "surface", cfg, device="cpu")
    other = Store(run_copy / "analysis.h5").read(first[0].group)[1]["other_checkpoints"][cps[0].name]
    assert other["checkpoint_sha256"] == file_sha256(cps[0].path)
    assert run_probe(run_copy, "surface", cfg, device="cpu")[0].skipped
    from landscape.checkpoints import save_weights

    model = RunDir(run_copy).load_model(cps[0].name)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_weights(cps[0].path, model, {})
    with pytest.raises(ConfigError, match="computed with checkpoint 'step_000000'.*has changed or is gone"):
        run_probe(run_copy, "surface", cfg, device="cpu")


def test_results_are_bound_to_the_data_and_loss_they_came_from(tiny_run, tmp_path):
    spec = ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10, params={"width": 16, "depth": 1})
    data = load_dataset_arrays(tmp_path / "d.npz")
    weights = tmp_path / "model.safetensors"  # a foreign checkpoint: its data are the user's to name
    shutil.copy(RunDir(tiny_run).checkpoints()[-1].path, weights)
    cfg = make_config("rankme", **FAST_RANKME)
    out = tmp_path / "r.h5"
    npz = DataSpec(dataset="npz", dataset_params={"path": str(data)})
    first = run_probe(weights, "rankme", cfg, out=out, device="cpu", model_spec=spec, data_spec=npz)
    assert run_probe(weights, "rankme", cfg, out=out, device="cpu", model_spec=spec, data_spec=npz)[0].skipped
    for other in (DataSpec(dataset="npz", dataset_params={"path": str(data)}, loss="label_smoothing"),
                  DataSpec(dataset="npz", dataset_params={"path": str(data), "normalize": "standardize"})):
        with pytest.raises(ConfigError, match="computed with other data or another loss"):
            run_probe(weights, "rankme", cfg, out=out, device="cpu", model_spec=spec, data_spec=other)
    arrays = dict(np.load(data))
    np.savez(data, **{**arrays, "x_train": arrays["x_train"] * 16})  # the same file name, other contents
    with pytest.raises(ConfigError, match="computed with other data"):
        run_probe(weights, "rankme", cfg, out=out, device="cpu", model_spec=spec, data_spec=npz)
    again = run_probe(weights, "rankme", cfg, out=out, device="cpu", model_spec=spec, data_spec=npz, force=True)
    assert again[0].result["train"]["rankme"] != first[0].result["train"]["rankme"]


def test_an_edited_run_config_is_not_served_old_results(run_copy):
    cfg = make_config("rankme", **FAST_RANKME)
    run_probe(run_copy, "rankme", cfg, device="cpu")
    meta = json.loads((run_copy / "config.json").read_text())
    meta["config"]["label_noise"] = 0.5
    (run_copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="computed with other data or another loss"):
        run_probe(run_copy, "rankme", cfg, device="cpu")


def load_dataset_arrays(path):
    from landscape.datasets import load_dataset

    d = load_dataset("digits", normalize="none")
    np.savez(path, x_train=d.train.x.numpy(), y_train=d.train.y.numpy(), x_test=d.test.x.numpy(),
             y_test=d.test.y.numpy())
    return path


@pytest.mark.parametrize("content", [b"junk\n", b"\x80\x02}q\x00.", b"\x80\x04K\x01h\xff\xff\xff\x0f.", b""])
def test_any_unreadable_pt_file_is_one_checkpoint_error(tmp_path, content):
    from landscape.checkpoints import CheckpointReadError, load_state_dict
    from landscape.errors import CheckpointError

    path = tmp_path / "epoch_3.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:  # unreadable, or readable without a state dict
        load_state_dict(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    if content == b"junk\n":
        assert isinstance(info.value, CheckpointReadError)


def test_a_grid_of_weeks_of_work_is_refused_before_anything_is_written(run_copy):
    from landscape.probes.surface import MAX_POINTS

    with pytest.raises(ConfigError, match="51,000,000 points is more than 1,000,000"):
        make_config("surface", x="-1:1:1000000", y="-1:1:51")
    assert make_config("surface", dim=1, x=f"-1:1:{MAX_POINTS}").x  # the largest accepted grid
    assert not (run_copy / "analysis.h5").exists()


def test_export_never_replaces_a_file_unasked(run_copy, tmp_path):
    from landscape_cli.main import main

    run_probe(run_copy, "rankme", make_config("rankme", **FAST_RANKME), device="cpu")
    mine = tmp_path / "nets.py"
    mine.write_text("my code\n")
    assert main(["export", str(run_copy / "analysis.h5"), "--csv", str(mine)]) == 2
    assert mine.read_text() == "my code\n"
    assert main(["export", str(run_copy / "analysis.h5"), "--csv", str(mine), "--overwrite"]) == 0
    assert mine.read_text().startswith("checkpoint,step,epoch,probe")
