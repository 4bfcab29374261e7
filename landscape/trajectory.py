"""A run's training trajectory: its checkpoints as the tensors a direction perturbs.

The reader of RUN_DIRs for :func:`landscape.trajectory_pca.pca_directions` (which stays pure math):
``analyze`` hands it to a probe as :attr:`~landscape.probes.base.ProbeContext.load_trajectory`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from landscape.checkpoints import RunDir, load_state_dict
from landscape.directions import KINDS, check_choice, target_tensors
from landscape.errors import CheckpointError


def run_trajectory(
    run_dir: str | Path | RunDir,
    *,
    kind: str = "weights",
    steps: Sequence[int | str] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[list[dict[str, Tensor]], list[int]]:
    """The checkpoints of a RUN_DIR (all, or those of ``steps``) as dicts of the tensors a
    direction of ``kind`` perturbs (the keys of :func:`~landscape.directions.target_tensors` for the
    run's model), sorted as given (by step when ``steps`` is None), with their steps."""
    check_choice("direction kind", kind, KINDS)
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    like = target_tensors(run.model_spec.build(), kind)
    checkpoints = run.checkpoints() if steps is None else [run.checkpoint(s) for s in steps]
    if not checkpoints:
        raise CheckpointError(f"run {run.path} has no checkpoints yet")
    states = []
    for cp in checkpoints:
        state = load_state_dict(cp.path)
        missing = [k for k in like if k not in state]
        shapes = [k for k in like if k in state and state[k].shape != like[k].shape]
        if missing or shapes:
            bad = ", ".join((missing or shapes)[:5])
            raise CheckpointError(f"checkpoint {cp.path} does not fit the run's model "
                                  f"({'missing' if missing else 'shape mismatch'}: {bad})")
        states.append({k: state[k].to(device=device, dtype=like[k].dtype) for k in like})
    return states, [cp.step for cp in checkpoints]
