"""The perturbation sets' geometry: projections onto the ``linf`` / ``l2`` balls and onto the
ellipsoid ``‖δ/s‖₂ ≤ ρ``, unit vectors, and a random start inside a set."""

from __future__ import annotations

import torch


def project(u: torch.Tensor, rho: float, norm: str) -> torch.Tensor:
    """Euclidean projection of ``u`` onto ``{‖u‖_∞ ≤ ρ}`` or ``{‖u‖₂ ≤ ρ}``."""
    if norm == "linf":
        return u.clamp(-rho, rho)
    n = float(u.norm())
    return u * (rho / n) if n > rho else u


def project_ellipsoid(delta: torch.Tensor, s: torch.Tensor, rho: float, tol: float = 1e-12) -> torch.Tensor:
    """Euclidean projection of ``δ`` onto ``{δ : ‖δ/s‖₂ ≤ ρ}`` (``δ_i = 0`` where ``s_i = 0``).

    KKT: ``x_i = δ_i s_i² / (s_i² + μ)`` with ``μ ≥ 0`` such that ``‖x/s‖ = ρ``; ``‖x(μ)/s‖``
    decreases in μ and ``μ_hi = ‖δ⊙s‖/ρ`` is feasible, so bisection on ``[0, μ_hi]`` (returning
    the feasible end) converges. The reference bisects the same multiplier from a fixed bracket
    [0, 10], doubled when needed, to ``|‖x/s‖ − ρ| ≤ 1e-5``.
    """
    s2 = s * s
    safe = torch.where(s2 > 0, s2, torch.ones_like(s2))

    def scaled_norm(mu: float) -> tuple[torch.Tensor, float]:
        x = torch.where(s2 > 0, delta * s2 / (s2 + mu), torch.zeros_like(delta))
        return x, float(torch.sqrt((x * x / safe).sum()))

    x, n = scaled_norm(0.0)
    if n <= rho:
        return x
    lo, hi = 0.0, float((delta * s).norm()) / rho
    x_hi, _ = scaled_norm(hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        x_mid, n_mid = scaled_norm(mid)
        if n_mid <= rho:
            hi, x_hi = mid, x_mid
        else:
            lo = mid
        if hi - lo <= tol * hi:
            break
    return x_hi


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = v.norm()
    return v / n if n > 0 else v


def _random_u(s: torch.Tensor, rho: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A random start inside the set: ``ρ·U[−1,1]`` (linf) or a uniform point of the sphere (l2)."""
    if norm == "linf":
        return rho * (2 * torch.rand(s.shape, generator=gen, dtype=s.dtype, device=s.device) - 1)
    return rho * _unit(torch.randn(s.shape, generator=gen, dtype=s.dtype, device=s.device))
