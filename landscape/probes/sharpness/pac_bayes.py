"""PAC-Bayes flatness (Jiang et al. 2019, §C; Dziugaite et al. 2020): the largest weight-noise σ
that keeps the accuracy drop on the subset within a target, for isotropic and magnitude-aware noise."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from landscape.probes.sharpness.config import SharpnessConfig
from landscape.probes.sharpness.objective import Batches, _Objective


def largest_sigma(
    drop: Callable[[float], float],
    target: float,
    *,
    sigma0: float = 1.0,
    steps: int = 12,
    max_doublings: int = 60,
) -> tuple[float, float]:
    """The largest σ with ``drop(σ) ≤ target`` for a nondecreasing ``drop``, by geometric bisection.

    A bracket ``lo < hi`` with ``drop(lo) ≤ target < drop(hi)`` is found by doubling / halving from
    ``sigma0``; then ``steps`` bisections at the geometric mean. Returns ``(lo, hi)``: ``lo`` is
    the answer (a σ known to satisfy the target), ``hi/lo`` its resolution. ``(inf, inf)`` when
    no σ up to ``sigma0·2^max_doublings`` breaks the target, ``(0, σ_min)`` when none satisfies it.
    """
    lo, hi = None, None
    sigma = sigma0
    if drop(sigma) <= target:
        lo = sigma
        for _ in range(max_doublings):
            sigma *= 2
            if drop(sigma) > target:
                hi = sigma
                break
            lo = sigma
        if hi is None:
            return math.inf, math.inf
    else:
        hi = sigma
        for _ in range(max_doublings):
            sigma /= 2
            if drop(sigma) <= target:
                lo = sigma
                break
            hi = sigma
        if lo is None:
            return 0.0, hi
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if drop(mid) <= target:
            lo = mid
        else:
            hi = mid
    return lo, hi


def magnitude_aware_std(theta: torch.Tensor, sigma: float, eps: float, form: str = "jiang") -> torch.Tensor:
    r"""Per-coordinate noise std of the magnitude-aware PAC-Bayes perturbation.

    ``"jiang"``: :math:`\sqrt{σ^2 w_i^2 + ε^2}` — Jiang et al. 2020, App. C, the noise
    :math:`u_i ∼ N(0, σ'^2|w_i|^2 + ε^2)` behind their magnitude-aware bound, ε = 1e-3.
    ``"linear"``: :math:`σ(|w_i| + ε)`. Both are exactly :math:`σ|w_i|` for ε = 0 (the noise of
    this probe before ε was added, bit for bit)."""
    if eps == 0:
        return sigma * theta.abs()
    if form == "linear":
        return sigma * (theta.abs() + eps)
    return torch.sqrt(sigma**2 * theta * theta + eps**2)


def _pac_bayes(obj: _Objective, batches: Batches, cfg: SharpnessConfig, dtype: torch.dtype,
               dev: torch.device) -> dict[str, float]:
    """PAC-Bayes flatness (Jiang et al. 2019, §C; Dziugaite et al. 2020): the largest σ such that
    ``acc(w) − E_δ acc(w+δ) ≤ pac_target`` on the subset, for ``δ ~ N(0, σ²I)`` and the
    magnitude-aware ``δ_i ~ N(0, σ²w_i² + ε²)`` (:func:`magnitude_aware_std`, ε = ``pac_eps``,
    ``pac_mag_form``); the expectation is the mean over ``pac_draws`` draws, the same draws ``ξ``
    for every σ (``δ = std(σ)⊙ξ``), so the drop is a deterministic function of σ.

    Conventions against the references: ε = 1e-3 is Jiang et al.'s (``pac_eps=0`` gives the
    noise ``σ|w|`` of this probe before ε was added: zero weights unperturbed). ``pac_draws=3``
    draws per σ here; the robust-generalization-measures code (Dziugaite et al. 2020) averages 10
    and bisects σ on [0, 2] for 15 steps — ``pac_draws=10`` is that count, at 3.3× the forward
    passes. All three settings are stored with the results (the group's ``settings``)."""

    def accuracy(delta: torch.Tensor) -> float:
        errs = [obj.value(delta, xb, yb)[1] for xb, yb in batches]
        return 1.0 - float(np.mean(errs))

    gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    xis = [torch.randn(obj.theta.shape, generator=gen, dtype=dtype, device=dev) for _ in range(cfg.pac_draws)]
    acc0 = accuracy(torch.zeros_like(obj.theta))
    out: dict[str, float] = {"accuracy_clean": acc0, "target": cfg.pac_target}
    if not math.isfinite(acc0):
        return out
    if acc0 <= cfg.pac_target:  # the drop acc0 − acc(w+δ) ≤ acc0 never exceeds the target: σ = ∞, no search
        out.update(sigma=math.inf, inv_sigma2=0.0, sigma_mag=math.inf, inv_sigma2_mag=0.0)
        return out

    def plain(sigma: float) -> torch.Tensor:
        return torch.full_like(obj.theta, sigma)

    def mag(sigma: float) -> torch.Tensor:
        return magnitude_aware_std(obj.theta, sigma, cfg.pac_eps, cfg.pac_mag_form)

    for suffix, std in (("", plain), ("_mag", mag)):
        def drop(sigma: float, std=std) -> float:
            return acc0 - float(np.mean([accuracy(std(sigma) * xi) for xi in xis]))

        sigma, _ = largest_sigma(drop, cfg.pac_target, sigma0=0.01 if suffix == "" else 0.1, steps=cfg.pac_steps)
        out["sigma" + suffix] = sigma
        out["inv_sigma2" + suffix] = 1.0 / sigma**2 if sigma > 0 else math.inf
    return out
