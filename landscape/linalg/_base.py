"""What the Krylov methods share: the operator signatures and the Rademacher probe vectors."""

from __future__ import annotations

from collections.abc import Callable

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]  # v → H v
Matmat = Callable[[torch.Tensor], torch.Tensor]  # rows v_i of a (k, P) block → rows H v_i
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) → per-sample loss


def _rademacher(size: int, n: int, generator: torch.Generator, dtype: torch.dtype, device) -> torch.Tensor:
    """``n × size`` independent ±1 entries (drawn on the CPU from ``generator``), on ``device``."""
    return (torch.randint(0, 2, (n, size), generator=generator, dtype=torch.int8) * 2 - 1).to(device, dtype)
