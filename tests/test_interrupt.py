"""Ctrl-C: one line, exit 130, only complete (or resumable partial) results, and a rerun resumes."""

import signal
import subprocess
import sys
import time

import numpy as np

from landscape.store import Store


def test_ctrl_c_prints_one_line_and_the_rerun_resumes(run_copy):
    cmd = [sys.executable, "-m", "landscape_cli.main", "surface", str(run_copy), "--x", "-1:1:61", "--y",
           "-1:1:61", "--no-progress", "--no-plots", "--device", "cpu", "--chunk", "16"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store, deadline = Store(run_copy / "analysis.h5"), time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait for the first saved chunk
        if store.groups():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # finished before the signal arrived: nothing to check
        return
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["interrupted: rerun the same command to resume (`landscape train`: add --resume)"]
    (group,) = store.groups()
    arrays, attrs = store.read(group)
    assert attrs["complete"] is False and 0 < arrays["done"].sum() < 61 * 61
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    arrays, attrs = store.read(group)
    assert attrs["complete"] is True and arrays["done"].all() and np.isfinite(arrays["train_loss"]).all()
