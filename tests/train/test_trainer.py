import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from landscape.checkpoints import RunDir, load_state_dict
from landscape.errors import ConfigError, TrainingDiverged
from landscape.train.config import TrainConfig
from landscape.train.trainer import steps_per_epoch, train

SMALL = TrainConfig(model="mlp", model_params={"width": 32, "depth": 1}, optimizer_params={"momentum": 0.9},
                    epochs=3, batch_size=64, checkpoints="every:1", train_size=400)


def _weights(run_dir, which="last"):
    return load_state_dict(RunDir(run_dir).checkpoint(which).path)


def _assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_dir_layout_and_metrics(tmp_path):
    result = train(SMALL, tmp_path / "run", progress=False, device="cpu")
    run = RunDir(result.run_dir)
    meta = json.loads((result.run_dir / "config.json").read_text())
    assert TrainConfig.from_dict(meta["config"]) == SMALL
    assert meta["model_spec"] == {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10,
                                  "params": {"width": 32, "depth": 1}, "factory": None}
    spe = steps_per_epoch(400, 64)
    assert meta["steps_per_epoch"] == spe == 7 and meta["total_steps"] == 3 * spe
    assert [c.step for c in run.checkpoints()] == [0, spe, 2 * spe, 3 * spe]
    assert all(c.state_path.is_file() for c in run.checkpoints())
    rows = run.metrics()
    assert [r["step"] for r in rows] == [0, spe, 2 * spe, 3 * spe]
    for key in ("train_loss", "train_ce", "train_acc", "test_loss", "test_ce", "test_acc", "lr", "epoch"):
        assert key in rows[-1]
    assert rows[-1]["epoch"] == 3.0 and result.steps == 3 * spe
    # the recorded test accuracy is the accuracy of the saved weights
    model = run.load_model("last")
    from landscape.train.trainer import load_data

    data = load_data(SMALL)
    with torch.no_grad():
        acc = int((model(data.test.x).argmax(1) == data.test.y).sum()) / len(data.test)
    assert acc == pytest.approx(rows[-1]["test_acc"], abs=1e-9)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    train(SMALL, tmp_path / "a", progress=False, device="cpu")
    train(SMALL, tmp_path / "b", progress=False, device="cpu")
    train(SMALL.replace(seed=1), tmp_path / "c", progress=False, device="cpu")
    _assert_bit_identical(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert not torch.equal(_weights(tmp_path / "a")["classifier.weight"], _weights(tmp_path / "c")["classifier.weight"])


@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_resume_mid_epoch_is_bit_identical(tmp_path, optimizer):
    cfg = SMALL.replace(optimizer=optimizer, checkpoints="steps:5,9,12", schedule="cosine",
                        model_params={"width": 32, "depth": 1, "norm": "batchnorm"})
    train(cfg, tmp_path / "full", progress=False, device="cpu")
    partial = train(cfg, tmp_path / "cut", progress=False, device="cpu", stop_after=11)
    assert partial.steps == 11
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False, device="cpu")
    assert resumed.resumed_from == 9
    _assert_bit_identical(_weights(tmp_path / "full"), _weights(tmp_path / "cut"))
    full_rows = [{k: v for k, v in r.items() if k != "time"} for r in RunDir(tmp_path / "full").metrics()]
    cut_rows = [{k: v for k, v in r.items() if k != "time"} for r in RunDir(tmp_path / "cut").metrics()]
    assert full_rows == cut_rows


_KILL_SCRIPT = """
import sys
from landscape.train.config import TrainConfig
from landscape.train.trainer import train
cfg = TrainConfig.from_json(sys.argv[1])
train(cfg, sys.argv[2], resume=len(sys.argv) > 3, progress=False, device="cpu")
"""


def test_resume_after_kill_is_bit_identical(tmp_path):
    """A subprocess killed (SIGKILL) mid-run, resumed, ends with the weights of an uninterrupted run."""
    cfg = SMALL.replace(epochs=12, batch_size=8, train_size=None, checkpoints="every:1")
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, str(script), str(tmp_path / "cfg.json")]

    proc = subprocess.Popen([*cmd, str(tmp_path / "killed")], env=env)
    ckpt = tmp_path / "killed" / "checkpoints" / "step_000338.safetensors"  # end of epoch 2 (169 steps/epoch)
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = RunDir(tmp_path / "killed").checkpoints()
    assert done[-1].step < 12 * 169

    subprocess.run([*cmd, str(tmp_path / "killed"), "--resume"], env=env, check=True)
    subprocess.run([*cmd, str(tmp_path / "full")], env=env, check=True)
    _assert_bit_identical(_weights(tmp_path / "full"), _weights(tmp_path / "killed"))
    steps = [r["step"] for r in RunDir(tmp_path / "killed").metrics()]
    assert steps == sorted(set(steps))  # no duplicated records after the resume


def test_divergence_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    cfg = SMALL.replace(loss="mse", lr=50.0, optimizer_params={"momentum": 0.9}, epochs=20)
    with pytest.raises(TrainingDiverged, match=r"became NaN/inf at step \d+ .*last good checkpoint: .*step_\d+\.safetensors"):
        train(cfg, tmp_path / "run", progress=False, device="cpu")
    run = RunDir(tmp_path / "run")
    last = run.checkpoints()[-1]
    assert all(torch.isfinite(v).all() for v in load_state_dict(last.path).values())
    assert run.metrics()[-1]["event"] == "diverged"


def test_existing_run_dir_is_protected(tmp_path):
    out = tmp_path / "run"
    train(SMALL.replace(epochs=1), out, progress=False, device="cpu")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="already exists and is not empty; pass --resume .* --overwrite"):
        train(SMALL.replace(epochs=1), out, progress=False, device="cpu")
    with pytest.raises(ConfigError, match=r"different config: lr \(stored 0.05, given 0.1\)"):
        train(SMALL.replace(epochs=1, lr=0.1), out, resume=True, progress=False, device="cpu")
    # a bad config is rejected before anything on disk is touched, even with --overwrite
    with pytest.raises(Exception, match="unknown loss"):
        train(SMALL.replace(loss="nope"), out, overwrite=True, progress=False, device="cpu")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after
    # overwrite replaces a run
    train(SMALL.replace(epochs=1, lr=0.1), out, overwrite=True, progress=False, device="cpu")
    assert TrainConfig.from_run(RunDir(out)).lr == 0.1
    # but never a folder that is not a run
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not a landscape run directory"):
        train(SMALL, other, overwrite=True, progress=False, device="cpu")
    assert (other / "thesis.tex").read_text() == "precious"


def test_resume_of_finished_run_changes_nothing(tmp_path):
    out = tmp_path / "run"
    train(SMALL.replace(epochs=1), out, progress=False, device="cpu")
    w = _weights(out)
    result = train(SMALL.replace(epochs=1), out, resume=True, progress=False, device="cpu")
    assert result.resumed_from == result.steps
    _assert_bit_identical(w, _weights(out))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(ConfigError, match="cannot write to"):
        train(SMALL, locked / "run", progress=False, device="cpu")


def test_output_below_a_file_is_unwritable(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="cannot write to"):
        train(SMALL, tmp_path / "f" / "run", progress=False, device="cpu")


def test_output_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        train(SMALL, tmp_path / "f", progress=False, device="cpu")
    assert (tmp_path / "f").read_text() == "x"


def test_accuracy_targets_on_digits(tmp_path):
    """MLP on digits: SGD reaches ≥ 95% test accuracy; SAM and ASAM land within 1 point of it."""
    base = TrainConfig(model="mlp", optimizer_params={"momentum": 0.9}, lr=0.05, epochs=30,
                       batch_size=64, checkpoints="none")
    acc = {}
    for name, params in (("sgd", {}), ("sam", {"rho": 0.05}), ("asam", {"rho": 0.5})):
        cfg = base.replace(optimizer=name, optimizer_params={"momentum": 0.9, **params})
        acc[name] = train(cfg, tmp_path / name, progress=False, device="cpu").final["test_acc"]
    assert acc["sgd"] >= 0.95, acc
    assert acc["sam"] >= acc["sgd"] - 0.01, acc
    assert acc["asam"] >= acc["sgd"] - 0.01, acc
