r"""Average-case m-sharpness: the mean loss increase under random perturbations of the weights,

.. math:: S^{avg}_ρ = \frac{1}{|\mathcal B|}\sum_B \Big[\mathbb E_δ L_B(w+δ) − L_B(w)\Big],
          δ = ρ\, s ⊙ ξ,\ ξ ∼ N(0, I)\ (l2)\ \text{or}\ U[−1,1]^P\ (linf),

estimated with ``samples_avg`` Monte-Carlo draws per batch."""

from __future__ import annotations

import math

import numpy as np
import torch

from landscape.probes.sharpness.config import SharpnessConfig
from landscape.probes.sharpness.objective import Batches, _Objective


def _average_case(obj: _Objective, batches: Batches, s: torch.Tensor, cfg: SharpnessConfig, gen: torch.Generator,
                  dtype: torch.dtype, dev: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean perturbed loss and error per (ρ, batch), and the Monte-Carlo standard error of
    ``S^avg_ρ``, ``sqrt(Σ_B var_B / samples_avg) / |𝓑|`` (``var_B`` with ddof = 1)."""
    R, n_batches = len(cfg.rhos), len(batches)  # type: ignore[arg-type]
    out_loss, out_err = np.zeros((R, n_batches)), np.zeros((R, n_batches))
    se = np.zeros(R)
    for r, rho in enumerate(cfg.rhos):  # type: ignore[arg-type]
        var_sum = 0.0
        for b, (xb, yb) in enumerate(batches):
            vals, errs = [], []
            for _ in range(cfg.samples_avg):
                if cfg.norm == "l2":
                    xi = torch.randn(s.shape, generator=gen, dtype=dtype, device=dev)
                else:
                    xi = 2 * torch.rand(s.shape, generator=gen, dtype=dtype, device=dev) - 1
                f, e = obj.value(rho * s * xi, xb, yb)
                vals.append(f)
                errs.append(e)
            out_loss[r, b], out_err[r, b] = float(np.mean(vals)), float(np.mean(errs))
            var_sum += float(np.var(vals, ddof=1))
        se[r] = math.sqrt(var_sum / cfg.samples_avg) / n_batches
    return out_loss, out_err, se
