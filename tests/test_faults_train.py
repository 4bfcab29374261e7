"""Faults while training: a full disk (a real small tmpfs where one can be mounted, and a
monkeypatched ENOSPC that always runs) ends in one line and exit 2, leaves a run that resumes to
exactly the weights of an uninterrupted run; damaged metrics.jsonl lines on resume."""

import errno
import json
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from landscape.checkpoints import RunDir
from landscape.errors import CheckpointError, LandscapeError
from landscape.train.config import TrainConfig
from landscape.train.trainer import train
from landscape.utils import is_disk_full
from landscape_cli.main import main

# 300 digits, batch 100: 3 steps an epoch, a checkpoint every epoch (~0.35 MB weights + state each)
CFG = TrainConfig(model="mlp", model_params={"width": 256}, train_size=300, epochs=4,
                  batch_size=100, lr=0.1, checkpoints="every:1")
ARGV = ["--model", "mlp", "--width", "256", "--train-size", "300", "--epochs", "4",
        "--batch-size", "100", "--lr", "0.1", "--checkpoints", "every:1", "--no-progress", "--device", "cpu"]


def _weights(run):
    return {cp.step: load_file(str(cp.path)) for cp in RunDir(run).checkpoints()}


def _metrics(run):
    return [{k: v for k, v in r.items() if k != "time"} for r in RunDir(run).metrics()]


def _assert_same_run(a, b):
    wa, wb = _weights(a), _weights(b)
    assert sorted(wa) == sorted(wb) == [0, 3, 6, 9, 12]
    for step in wa:
        assert wa[step].keys() == wb[step].keys()
        assert all(torch.equal(wa[step][k], wb[step][k]) for k in wa[step]), step
    assert _metrics(a) == _metrics(b)


def _assert_clean(run):
    """What a disk-full failure may leave: complete checkpoints only, whole metrics lines only."""
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert not [f for f in files if f.endswith(".tmp") or f.startswith(".")], files
    for f in files:  # every trainer state has its weights (weights are the mark of a checkpoint)
        if f.endswith(".state.pt"):
            assert f.replace(".state.pt", ".safetensors") in files, files
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    assert all(isinstance(json.loads(line), dict) for line in text.splitlines())
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    json.loads((run / "config.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(CFG, out, progress=False, device="cpu")
    return out


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (room for about one checkpoint of CFG); remount(size) grows it."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8); the monkeypatched ENOSPC test covers the logic")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")

    def remount(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    try:
        yield mnt, remount
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def _cli(argv, capsys):
    """The CLI in this process (the same torch threads as the reference run): (exit code, stderr)."""
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_train_on_a_full_disk_is_one_line_and_resumes_to_the_same_weights(small_disk, reference, capsys):
    mnt, remount = small_disk
    out = mnt / "run"
    rc, err = _cli(["train", "--out", str(out), *ARGV], capsys)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: disk full writing {out}") and "free space and rerun with --resume" in lines[0]
    _assert_clean(out)
    done = [cp.step for cp in RunDir(out).checkpoints()]
    assert done and done[-1] < 12  # it really stopped early

    # --resume on the still-full disk: the same one line, and nothing changes
    before = {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    rc, err = _cli(["train", "--out", str(out), "--resume", *ARGV], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "disk full writing" in err and "Traceback" not in err
    _assert_clean(out)
    assert {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}.keys() == before.keys()

    remount("32m")
    rc, err = _cli(["train", "--out", str(out), "--resume", *ARGV], capsys)
    assert rc == 0, err
    _assert_same_run(out, reference)


def test_disk_full_error_is_recognised_through_wrappers():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None
    except RuntimeError as exc:  # torch.save's report: the OSError is only the context
        wrapped = exc
    assert wrapped.__cause__ is None and is_disk_full(wrapped)
    assert is_disk_full(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("shape mismatch"))


class _HalfWriter:
    """A file opened for appending whose writes stop half-way with ENOSPC, as on a full disk."""

    def __init__(self, path, mode):
        self.fh = open(path, mode)  # noqa: SIM115

    def write(self, text):
        self.fh.write(text[: len(text) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


@pytest.mark.parametrize("where", ["weights", "state", "metrics"])
def test_enospc_mid_run_cleans_up_and_resumes_identically(tmp_path, reference, monkeypatch, where):
    import landscape.train.loop as T  # the loop saves the checkpoints

    out = tmp_path / "run"
    calls = {"n": 0}

    def failing(real, at: int, error: Exception):
        def f(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == at:
                raise error
            return real(*args, **kwargs)
        return f

    if where == "weights":  # safetensors reports a full disk as its own error type, in text only
        error = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(T, "save_weights", failing(T.save_weights, 3, error))
        named = "step_000006.safetensors"
    elif where == "state":
        monkeypatch.setattr(T, "save_state", failing(T.save_state, 2, OSError(errno.ENOSPC, "No space")))
        named = "step_000003.state.pt"
    else:  # the third metrics record is half-written
        def fake_open(path, mode="r", *a, **k):
            if mode == "a":
                calls["n"] += 1
                if calls["n"] == 3:
                    return _HalfWriter(path, mode)
            return open(path, mode, *a, **k)

        import landscape.run_dir as C  # RunDir appends the records

        monkeypatch.setattr(C, "open", fake_open, raising=False)
        named = "metrics.jsonl"
    with pytest.raises(LandscapeError, match=f"^disk full writing .*{named}: free space and rerun with --resume$"):
        train(CFG, out, progress=False, device="cpu")
    monkeypatch.undo()
    _assert_clean(out)
    assert [c.step for c in RunDir(out).checkpoints()] == {"weights": [0, 3], "state": [0], "metrics": [0, 3]}[where]
    train(CFG, out, resume=True, progress=False, device="cpu")
    _assert_same_run(out, reference)


def test_state_without_weights_is_removed_after_a_full_disk(tmp_path, monkeypatch):
    import landscape.train.loop as T  # the loop saves the checkpoints

    real = T.save_weights
    calls = {"n": 0}

    def fail_second(path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(T, "save_weights", fail_second)
    out = tmp_path / "run"
    with pytest.raises(LandscapeError, match="step_000003.safetensors"):
        train(CFG, out, progress=False, device="cpu")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000000.safetensors",
                                                                       "step_000000.state.pt"]


def test_full_disk_before_config_leaves_a_directory_a_rerun_can_use(tmp_path, monkeypatch):
    import landscape.run_dir as C  # RunDir.create writes config.json

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "atomic_write_json", no_space)
    out = tmp_path / "run"
    with pytest.raises(LandscapeError, match=f"disk full writing {out / 'config.json'}"):
        train(CFG, out, progress=False, device="cpu")
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    train(CFG.replace(epochs=1), out, resume=True, progress=False, device="cpu")  # an empty --out: a new run
    assert [c.step for c in RunDir(out).checkpoints()] == [0, 3]


def test_resume_tolerates_a_half_written_last_metrics_line_and_refuses_a_damaged_middle_one(tmp_path, reference):
    out = tmp_path / "run"
    train(CFG, out, progress=False, device="cpu", stop_after=5)
    path = out / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 5, "train_lo')  # a kill in the middle of a write
    assert [r["step"] for r in RunDir(out).metrics()] == [0, 3]
    train(CFG, out, resume=True, progress=False, device="cpu")
    _assert_same_run(out, reference)

    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:20], *lines[2:]]) + "\n")
    with pytest.raises(CheckpointError, match=r"metrics.jsonl line 2 is not valid JSON"):
        RunDir(out).metrics()
    with pytest.raises(CheckpointError, match=r"metrics.jsonl line 2 is not valid JSON"):
        train(CFG, out, resume=True, progress=False, device="cpu")
    assert path.read_text().splitlines()[1] == lines[1][:20]  # the user's file is left as it was


def test_save_figure_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import matplotlib.figure

    from landscape.plots import save_figure

    fig = matplotlib.figure.Figure()
    fig.add_subplot(1, 1, 1).plot([0, 1])

    def no_space(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", no_space)
    with pytest.raises(LandscapeError, match=r"^disk full writing .*f\.png: free space and rerun"):
        save_figure(fig, tmp_path / "plots" / "f")
    assert list((tmp_path / "plots").iterdir()) == []


def test_save_figure_on_a_real_full_disk(small_disk):
    import matplotlib.figure

    from landscape.plots import save_figure

    mnt, _ = small_disk
    (mnt / "fill").write_bytes(b"\0" * (1024 * 1024 - 8192))  # leave less than a figure
    fig = matplotlib.figure.Figure(figsize=(8, 8))
    fig.add_subplot(1, 1, 1).imshow(torch.rand(200, 200).numpy())
    with pytest.raises(LandscapeError, match="^disk full writing"):
        save_figure(fig, mnt / "f.png")
    assert sorted(p.name for p in mnt.iterdir()) == ["fill"]


def test_resuming_a_finished_run_whose_last_metrics_line_was_cut_restores_it(tmp_path):
    """The final record lost to a half-written last line is evaluated again, not replaced silently
    by an earlier epoch's numbers."""
    import shutil

    from landscape.checkpoints import RunDir
    from landscape.train.config import TrainConfig
    from landscape.train.trainer import train

    cfg = TrainConfig(model="mlp", model_params={"width": 8, "depth": 1}, train_size=100, epochs=2,
                      batch_size=50, checkpoints="every:1")
    whole = train(cfg, tmp_path / "r", progress=False, device="cpu")
    shutil.copytree(tmp_path / "r", tmp_path / "t")
    path = tmp_path / "t" / "metrics.jsonl"
    path.write_bytes(path.read_bytes()[:-37])
    resumed = train(cfg, tmp_path / "t", resume=True, progress=False, device="cpu")
    for key in ("step", "train_loss", "train_acc", "test_loss", "test_acc"):
        assert resumed.final[key] == whole.final[key], key
    last = [r for r in RunDir(tmp_path / "t").metrics() if "event" not in r][-1]
    assert last["step"] == whole.final["step"] and last["test_acc"] == whole.final["test_acc"]
