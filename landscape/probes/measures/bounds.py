r"""The closed forms of the flatness measures: the PAC-Bayes bounds (48, 49), the magnitude-aware
ones (56, 57) and the worst-case sharpness bounds (50, 51) from σ, σ′, α (the package docstring,
"Flatness")."""

from __future__ import annotations

import math

import torch

from landscape.probes.measures.weights import F64


def pac_bayes_bound(norm2: float, sigma: float, m: int) -> float:
    """(48, 49) :math:`\\lVert v\\rVert^2/(4\\sigma^2) + \\log(m/\\sigma) + 10`, ``norm2`` :math:`=\\lVert v\\rVert^2`
    (:math:`v = w - w^0` or :math:`w`); ``inf`` for σ = 0, NaN for σ = ∞ (no σ breaks the target)."""
    if sigma == 0:
        return math.inf
    if not math.isfinite(sigma):
        return math.nan
    return norm2 / (4 * sigma**2) + math.log(m / sigma) + 10


def pac_bayes_mag_bound(ref: torch.Tensor, dist: torch.Tensor, sigma: float, eps: float, m: int) -> float:
    r"""(56, 57) as the reference code writes them, with ``ref`` :math:`= v` (:math:`w - w^0` or
    :math:`w`), ``dist`` :math:`= w - w^0`, :math:`\omega` = ``ref.numel()``:
    :math:`\frac14\sum_i\log\frac{\epsilon^2 + (\sigma'^2+1)\lVert v\rVert^2/\omega}
Vert^2/\omega}
    {\epsilon^2 + \sigma'^2 (w_i - w^0_i)^2} + \log(m/\sigma') + 10` (the denominator uses
    :math:`w - w^0` in both forms). ``inf`` for σ′ = 0, NaN for σ′ = ∞."""
    if sigma == 0:
        return math.inf
    if not math.isfinite(sigma):
        return math.nan
    ref, dist = ref.to(F64), dist.to(F64)
    num = eps**2 + (sigma**2 + 1) * float(ref @ ref) / ref.numel()
    den = eps**2 + sigma**2 * dist**2
    return 0.25 * float(torch.log(num / den).sum()) + math.log(m / sigma) + 10


def sharpness_bound(norm2: float, alpha: float, omega: int, m: int) -> float:
    """(50, 51) :math:`\\lVert v\\rVert^2\\log(2\\omega)/(4\\alpha^2) + \\log(m/\\alpha) + 10`; ``inf`` for
    α = 0, NaN for α = ∞."""
    if alpha == 0:
        return math.inf
    if not math.isfinite(alpha):
        return math.nan
    return norm2 * math.log(2 * omega) / (4 * alpha**2) + math.log(m / alpha) + 10
