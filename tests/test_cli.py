import json
import subprocess
import sys

import pytest

from landscape.checkpoints import RunDir
from landscape.errors import ConfigError
from landscape.train.config import TrainConfig
from landscape_cli.main import main, parse_key_values

FAST = ["--epochs", "1", "--train-size", "200", "--width", "16", "--no-progress", "--device", "cpu"]


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_train_with_flags_writes_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--optimizer", "sam", "--rho", "0.1", "--momentum", "0.9",
               "--loss", "focal", "--loss-param", "gamma=1", "--label-noise", "0.2", "--checkpoints", "none",
               "--model-param", "activation=tanh", *FAST])
    assert rc == 0
    assert f"run directory: {out}" in capsys.readouterr().out.replace("\n", "")
    cfg = TrainConfig.from_run(RunDir(out))
    assert (cfg.optimizer, cfg.optimizer_params, cfg.loss, cfg.loss_params) == ("sam", {"rho": 0.1, "momentum": 0.9}, "focal", {"gamma": 1})
    assert cfg.model_params == {"width": 16, "activation": "tanh"} and cfg.label_noise == 0.2
    assert [c.step for c in RunDir(out).checkpoints()] == [0, 2]  # 200 samples, batch 128


def test_config_file_with_flag_overrides_and_resume(tmp_path, capsys):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"epochs": 1, "train_size": 200, "lr": 0.1, "model_params": {"width": 8}}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(conf), "--lr", "0.2", "--out", str(out), "--no-progress"]) == 0
    cfg = TrainConfig.from_run(RunDir(out))
    assert cfg.lr == 0.2 and cfg.model_params == {"width": 8} and cfg.epochs == 1
    # resume with no flags continues the stored config
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--optimizer", "adamz"], "unknown optimizer 'adamz'; valid optimizer names: "),
        (["--loss", "hinge"], "unknown loss 'hinge'; valid loss names: "),
        (["--model", "vgg"], "unknown model 'vgg'; valid model names: cnn, mlp, resnet20"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'; valid dataset names: "),
        (["--dataset", "mnist", "--dataset-param", "root=/nonexistent"], "/nonexistent"),
        (["--checkpoints", "often"], "bad checkpoint schedule"),
        (["--model-param", "width"], "--model-param takes KEY=VALUE"),
        (["--label-noise", "2"], "label_noise must be in [0, 1]"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *argv, *FAST]) == 2
    assert message in _error_line(capsys)
    assert not out.exists()


def test_malformed_config_files(tmp_path, capsys):
    conf = tmp_path / "c.json"
    conf.write_text('{"epochs": 1, "lr": }')
    assert main(["train", "--config", str(conf), "--out", str(tmp_path / "r")]) == 2
    assert "is not valid JSON" in _error_line(capsys)
    conf.write_text('{"epochz": 1}')
    assert main(["train", "--config", str(conf), "--out", str(tmp_path / "r")]) == 2
    assert "unknown config key(s) epochz" in _error_line(capsys)


def test_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), *FAST]) == 2
    assert "pass --resume to continue it, --overwrite to replace it" in _error_line(capsys)
    assert main(["train", "--out", str(out), "--lr", "0.3", "--resume", *FAST]) == 2
    assert "different config: lr" in _error_line(capsys)


@pytest.mark.parametrize("command, names", [("models", ["mlp", "cnn", "resnet20"]),
                                            ("losses", ["ce", "focal", "sparsemax"]),
                                            ("optimizers", ["sgd", "sam", "asam", "gam"]),
                                            ("datasets", ["digits", "mnist", "cifar10"])])
def test_registry_listings(capsys, command, names):
    assert main([command]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in names)


def test_demo_runs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "2", "--device", "cpu"]) == 0
    assert "run directory" in capsys.readouterr().out
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--device", "cpu"]) == 0


def test_console_script_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "landscape_cli.main", "train", "--out", str(tmp_path / "r"), "--optimizer", "nope"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "unknown optimizer 'nope'" in proc.stderr


def test_parse_key_values():
    assert parse_key_values(["a=1", "b=0.5", "c=true", "d=relu", "e=[1,2]"], "--x") == {
        "a": 1, "b": 0.5, "c": True, "d": "relu", "e": [1, 2]}
    with pytest.raises(ConfigError):
        parse_key_values(["=3"], "--x")


HESS = ["--top-k", "2", "--trace-samples", "10", "--subset", "100", "--lanczos-steps", "30", "--no-progress", "--device", "cpu"]


def test_hessian_command_writes_results_and_figures(run_copy, capsys):
    assert main(["hessian", str(run_copy), *HESS, "--density", "--density-steps", "20", "--per-layer"]) == 0
    out = capsys.readouterr().out
    assert "eigenvalues" in out and f"results: {run_copy / 'analysis.h5'}" in out.replace("\n", "")
    from landscape.store import Store

    last = RunDir(run_copy).checkpoints()[-1].name
    arrays, attrs = Store(run_copy / "analysis.h5").read(f"{last}/hessian")
    assert len(arrays["eigenvalues"]) == 2 and attrs["settings"]["subset"] == 100
    assert (run_copy / "plots" / "hessian" / f"{last}_esd.png").is_file()
    # stored results are reused, not recomputed
    assert main(["hessian", str(run_copy), *HESS, "--density", "--density-steps", "20", "--per-layer"]) == 0
    assert "(stored)" in capsys.readouterr().out


@pytest.mark.parametrize("probe, extra", [("collapse", []), ("rankme", ["--split", "test"]),
                                          ("dse", ["--setting", "n_random_subsets=1", "--setting", "sigma=median"])])
def test_representation_commands(run_copy, capsys, probe, extra):
    assert main([probe, str(run_copy), "--samples", "100", "--no-progress", "--device", "cpu", *extra]) == 0
    assert (run_copy / "plots" / f"{probe}.png").is_file()
    assert "step_000000" in capsys.readouterr().out


def test_foreign_checkpoint_needs_a_spec_and_an_output(run_copy, tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(RunDir(run_copy).checkpoints()[-1].path.read_bytes())
    assert main(["hessian", str(weights), *HESS]) == 2
    assert "name the results file with --out" in _error_line(capsys)
    assert main(["hessian", str(weights), *HESS, "--out", str(tmp_path / "r.h5")]) == 2
    assert "give a model spec" in _error_line(capsys)
    mlp = ["--model", "mlp", "--model-param", "depth=1"]
    assert main(["hessian", str(weights), *HESS, "--out", str(tmp_path / "r.h5"), *mlp,
                 "--model-param", "width=16"]) == 2
    assert "not inside a run directory; name its data with --dataset NAME" in _error_line(capsys)
    assert main(["hessian", str(weights), *HESS, "--out", str(tmp_path / "r.h5"), *mlp,
                 "--model-param", "width=32", "--dataset", "digits"]) == 2
    assert "shape mismatch: features.1.weight (16, 64) vs model (32, 64)" in _error_line(capsys)
    assert main(["hessian", str(weights), *HESS, "--out", str(tmp_path / "r.h5"), *mlp,
                 "--model-param", "width=16", "--dataset", "digits"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["hessian", "{run}", "--top-k", "0"], "top_k must be ≥ 1"),
    (["hessian", "{run}", "--engine", "magic"], "engine must be one of lanczos, pyhessian"),
    (["hessian", "{run}", "--checkpoints", "99"], "no checkpoint at step(s) 99"),
    (["collapse", "{run}", "--split", "validation"], "splits must be train, test"),
    (["dse", "{run}", "--setting", "sigma=-1"], "sigma must be a positive number"),
    (["rankme", "{run}", "--layer", "nope"], "nope"),
    (["hessian", "{run}", "--out", "{file}/x.h5"], "cannot write results to"),
])
def test_probe_bad_input_is_one_line(run_copy, tmp_path, capsys, argv, message):
    (tmp_path / "afile").write_text("x")
    argv = [a.format(run=run_copy, file=tmp_path / "afile") for a in argv]
    assert main([*argv, "--no-progress", "--device", "cpu"]) == 2
    assert message in _error_line(capsys)
    assert not (run_copy / "analysis.h5").exists() or "--layer" in argv


@pytest.mark.parametrize("argv, message", [
    (["--subset", "100000"], "subset of 100000 samples asked for, but the data hold 300"),
    (["--top-k", "5000"], "exceed the 1210 parameters"),
])
def test_hessian_bad_sizes(run_copy, capsys, argv, message):
    assert main(["hessian", str(run_copy), "--no-progress", "--device", "cpu", *argv]) == 2
    assert message in _error_line(capsys)


def test_hessian_of_a_model_without_trainable_parameters():
    import torch

    from landscape.models import build_model
    from landscape.probes.hessian import HessianConfig, hessian

    model = build_model("mlp", (4,), 3, width=4, depth=1)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        hessian(model, lambda z, y: z.sum(1), torch.randn(5, 4), torch.zeros(5, dtype=torch.long), HessianConfig())


def test_surface_and_plot_commands(run_copy, tmp_path, capsys):
    assert main(["surface", str(run_copy), "--x", "-1:1:5", "--y", "-1:1:3", "--split", "both",
                 "--no-progress", "--device", "cpu"]) == 0
    last = RunDir(run_copy).checkpoints()[-1].name
    assert (run_copy / "plots" / "surface" / f"{last}_test_contour.png").is_file()
    assert main(["surface", str(run_copy), "--dim", "1", "--x", "0:1:3", "--direction", "interpolate:0",
                 "--out", str(tmp_path / "line.h5"), "--no-progress", "--device", "cpu"]) == 0
    assert (tmp_path / "plots" / "line" / "surface" / f"{last}_1d.png").is_file()  # plots/<stem>/ beside line.h5
    # other settings into the same file: refused, and the stored values survive
    assert main(["surface", str(run_copy), "--x", "-2:2:5", "--y", "-1:1:3", "--no-progress"]) == 2
    assert "other settings" in _error_line(capsys)
    out = tmp_path / "figs"
    assert main(["plot", str(run_copy / "analysis.h5"), "--out", str(out), "--pdf", "--vtp"]) == 0
    assert (out / "surface" / f"{last}_train_heatmap.pdf").is_file()
    assert (out / "surface" / f"{last}_train_loss.vtp").is_file()
    assert main(["surface", str(run_copy), "--x", "-1:1"]) == 2
    assert "bad grid '-1:1'" in _error_line(capsys)
    (tmp_path / "junk.h5").write_text("not hdf5")
    assert main(["plot", str(tmp_path / "junk.h5")]) == 2
    assert "cannot open results file" in _error_line(capsys)


def test_usage_errors_are_typers_own_without_traceback(capsys):
    assert main(["train", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert "No such option: --bogus" in err and "Traceback" not in err
    assert main(["no-such-command"]) == 2


def test_sharpness_command(run_copy, capsys):
    assert main(["sharpness", str(run_copy), "--rho", "0.001,0.004", "--m", "64", "--iters", "3", "--subset", "128",
                 "--setting", "pac_bayes=false", "--setting", "first_order_iters=2", "--no-progress", "--device", "cpu"]) == 0
    assert "delta_loss" in capsys.readouterr().out
    assert (run_copy / "plots" / "sharpness.png").is_file()
    assert main(["sharpness", str(run_copy), "--rho", "-0.1", "--no-progress"]) == 2
    assert "rho" in _error_line(capsys)
    assert main(["sharpness", str(run_copy), "--m", "5000", "--no-progress"]) == 2
    assert "m" in _error_line(capsys)
    assert main(["sharpness", str(run_copy), "--norm", "l3", "--no-progress"]) == 2
    assert "l3" in _error_line(capsys)


def test_coherence_command(run_copy, capsys):
    assert main(["coherence", str(run_copy), "--subset", "64", "--no-progress", "--device", "cpu"]) == 0
    assert "m_alpha" in capsys.readouterr().out
    assert (run_copy / "plots" / "coherence.png").is_file()
    assert (run_copy / "plots" / "coherence_gsnr_hist.png").is_file()
    assert main(["coherence", str(run_copy), "--method", "magic", "--no-progress"]) == 2
    assert "magic" in _error_line(capsys)
    assert main(["coherence", str(run_copy), "--subset", "1", "--no-progress"]) == 2
    assert "subset" in _error_line(capsys)


def test_analyze_and_correlate_commands(tiny_run, tmp_path, capsys):
    import shutil

    runs = []
    for i in range(2):
        dst = tmp_path / f"r{i}"
        shutil.copytree(tiny_run, dst)
        assert main(["analyze", str(dst), "--probes", "rankme,hessian", "--setting", "hessian.subset=100",
                     "--setting", "hessian.trace_samples=5", "--no-progress", "--device", "cpu"]) == 0
        runs.append(str(dst))
    assert "rankme" in capsys.readouterr().out
    assert main(["correlate", *runs, "--out", str(tmp_path / "c.json")]) == 0
    assert "lambda_max" in capsys.readouterr().out and (tmp_path / "c.json").is_file()
    assert (tmp_path / "c_plots" / "lambda_max.png").is_file()
    assert main(["correlate", str(tmp_path), "--cmi", "--out", str(tmp_path / "c.csv")]) == 0  # a folder of runs
    assert (tmp_path / "c.csv").read_text().startswith("measure,n,tau,tau_low,tau_high,spearman")
    assert main(["correlate", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in _error_line(capsys)
    assert main(["analyze", runs[0], "--setting", "top_k=3"]) == 2
    assert "PROBE.KEY=VALUE" in _error_line(capsys)
    assert main(["analyze", runs[0], "--probes", "nope"]) == 2
    assert "unknown probe 'nope'" in _error_line(capsys)
