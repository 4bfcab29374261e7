"""The run directory a training writes into: checked before it is touched (resume, overwrite, or
refuse), the newest checkpoint a run resumes from, and the cleanup after a full disk."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from landscape.checkpoints import Checkpoint, RunDir
from landscape.errors import CheckpointError, ConfigError
from landscape.train.config import TrainConfig
from landscape.utils import disk_full_error, is_disk_full

RESUME_HINT = "free space and rerun with --resume"


def _prepare_run_dir(out: Path, config: TrainConfig, resume: bool, overwrite: bool) -> bool:
    """Check what is in ``out``; returns True when there is a run to resume."""
    if resume and overwrite:
        raise ConfigError("choose one of --resume and --overwrite")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory; choose another --out")
    has_config = (out / "config.json").is_file()
    if resume:
        if not has_config:
            raise ConfigError(
                f"{out} is not empty and holds no landscape run (no config.json); nothing to resume there"
            )
        stored = TrainConfig.from_run(RunDir(out))
        diff = stored.diff(config)
        if diff:
            shown = ", ".join(f"{k} (stored {a!r}, given {b!r})" for k, a, b in ((k, *v) for k, v in diff.items()))
            raise ConfigError(
                f"cannot resume {out}: the run was started with a different config: {shown}; "
                "resume without changing settings, or train into a new --out"
            )
        return True
    if overwrite:
        if not has_config:
            raise ConfigError(
                f"{out} is not empty and is not a landscape run directory (no config.json); "
                "refusing to overwrite it — choose another --out"
            )
        shutil.rmtree(out)
        return False
    raise ConfigError(
        f"run directory {out} already exists and is not empty; pass --resume to continue it, "
        "--overwrite to replace it, or choose another --out"
    )


def _latest_resumable(run: RunDir) -> Checkpoint | None:
    for cp in reversed(run.checkpoints()):
        if cp.state_path.is_file():
            return cp
    return None


_STATE_RE = re.compile(r"^(step_\d+)\.state\.pt$")


def _clean_after_disk_full(out: Path) -> None:
    """Leave ``out`` as a kill would, minus the debris: a trainer state whose weights were never
    written is removed, and a half-written last line of metrics.jsonl is cut off (truncating
    needs no free space). The run then resumes from its newest complete checkpoint."""
    ckpt_dir = out / "checkpoints"
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            m = _STATE_RE.match(p.name)
            if m and not (ckpt_dir / f"{m.group(1)}.safetensors").exists():
                p.unlink(missing_ok=True)
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        with open(metrics, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)


def _recorded_meta(out: Path) -> dict[str, Any] | None:
    """The ``config.json`` of the run to resume in ``out``; None when there is none or it cannot be
    read (:func:`open_run_dir` reports a damaged one)."""
    try:
        return RunDir(out).meta
    except CheckpointError:
        return None


def open_run_dir(out: Path, config: TrainConfig, resume: bool, overwrite: bool) -> bool:
    """Make ``out`` ready to be written (:func:`_prepare_run_dir`, then create it and check that a
    file can be made there); True when there is a run to resume."""
    try:
        resuming = _prepare_run_dir(out, config, resume, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(out, "free space and rerun") from exc
        raise ConfigError(f"cannot write to {out} ({exc.strerror}); choose another --out") from exc
    return resuming
