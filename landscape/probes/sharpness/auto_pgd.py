"""Worst-case m-sharpness: Auto-PGD ascent (Croce & Hein 2020) on the weights inside the
perturbation set, its step-size checkpoints, and the loop over (ρ, batch) of the probe."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from landscape.probes.sharpness.config import SharpnessConfig
from landscape.probes.sharpness.objective import Batches, _BatchFn, _check_clean, _Objective
from landscape.probes.sharpness.projections import _random_u, _unit, project, project_ellipsoid


def auto_pgd_checkpoints(iters: int) -> list[int]:
    """Croce & Hein's checkpoints ``⌈p_j·iters⌉``: ``p₀=0, p₁=0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``, without the first (0)."""
    p, w = [0.0, 0.22], [0, math.ceil(0.22 * iters)]
    while w[-1] < iters and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * iters))
    return w[1:]


def worst_case_ascent(
    value_grad: Callable[[torch.Tensor], tuple[float, float, torch.Tensor]],
    s: torch.Tensor,
    rho: float,
    *,
    norm: str,
    iters: int,
    momentum: float = 0.75,
    step_mult: float = 1.0,
    u0: torch.Tensor | None = None,
    ellipsoid: str = "scaled",
    clean: tuple[float, float] | None = None,
    on_iterate: Callable[[torch.Tensor], None] | None = None,
    momentum_form: str = "croce_hein",
    first: tuple[float, float, torch.Tensor] | None = None,
) -> tuple[float, float, torch.Tensor]:
    """Auto-PGD (Croce & Hein 2020) for ``max_{δ = s⊙u, ‖u‖ ≤ ρ} F(δ)``; returns ``(F*, err*, δ*)``.

    ``value_grad(δ) -> (F(δ), err(δ), ∇F(δ))``. Steps in ``u`` (initial size ``2ρ·step_mult``):
    linf ``u + η·sign(s⊙g)``, l2 ``u + η·(s⊙g)/‖s⊙g‖``, then ``z = P(·)`` and the momentum
    update ``u_{k+1} = P(u_k + α(z − u_k) + (1−α)(u_k − u_{k−1}))`` (α = ``momentum``; ``u₁ = z``).
    At each checkpoint (:func:`auto_pgd_checkpoints`) the step is halved and the iterate restarts
    from the best point when fewer than 75 % of the steps since the last checkpoint improved the
    best value, or when neither the step nor the best value changed. ``F`` is evaluated at every
    iterate (``iters`` gradients, one final forward pass); the best iterate wins, and the clean
    point ``δ = 0`` (``clean = (F(0), err(0))``) is a candidate too, as in the reference.
    A NaN ``F`` (a perturbation where the loss overflows) is never the maximum; if every
    candidate is NaN the result is ``(nan, nan, δ)``.

    ``ellipsoid="euclidean"`` (adaptive l2 only) reproduces the reference's update instead: a step
    ``η·s⊙g/‖g‖`` in δ and the Euclidean projection onto the ellipsoid (:func:`project_ellipsoid`).

    ``momentum_form="tml_epfl"`` takes the reference code's update (``weight_ascent_step_momentum``)
    instead of Croce & Hein's: ``u_{k+1} = α·z + (1−α)·u_{k−1}`` (a convex combination of two
    feasible points, no projection; ``u_{−1} = u₀``, so ``u₁ = α·z + (1−α)·u₀``). The two agree
    only for α = 1. From ``u₀ = 0`` on a linear ``F`` the reference form repeats ``u₂ = u₁`` (its
    code starts from a random point by default). The reference's restart reloads the best weights
    for the next gradient but keeps its δ iterates; here both forms restart from the best point.

    ``first``: ``value_grad`` at the starting point (``δ = s⊙u₀``, or ``0``), when the caller has
    it already (the probe's clean pass at ``δ = 0`` is that evaluation); it replaces the first call.
    """
    euclid = norm == "l2" and ellipsoid == "euclidean"
    active = s > 0
    safe_s = torch.where(active, s, torch.ones_like(s))

    def to_delta(u: torch.Tensor) -> torch.Tensor:
        return s * u

    def proj(u: torch.Tensor) -> torch.Tensor:
        if euclid:  # u-space view of the Euclidean δ-projection
            return torch.where(active, project_ellipsoid(s * u, s, rho) / safe_s, torch.zeros_like(u))
        return project(u, rho, norm)

    def step_dir(g: torch.Tensor) -> torch.Tensor:
        gu = s * g  # ∇_u F
        if norm == "linf":
            return gu.sign()
        if euclid:  # δ-step s⊙g/‖g‖ written in u = δ/s
            n = g.norm()
            return torch.where(active, g / n, torch.zeros_like(g)) if n > 0 else torch.zeros_like(g)
        return _unit(gu)

    u = torch.zeros_like(s) if u0 is None else proj(u0.to(s))
    u_prev = u
    eta = 2.0 * rho * step_mult
    checkpoints = set(auto_pgd_checkpoints(iters))
    best_f, best_err, best_u, best_g = -math.inf, float("nan"), u, None
    prev_cp, n_updates, prev_eta, prev_best = 0, 0, eta, -math.inf
    for i in range(iters + 1):
        if i == 0 and first is not None:
            f, err, g = first
        elif i < iters:
            f, err, g = value_grad(to_delta(u))
        else:
            (f, err), g = _value_only(value_grad, to_delta(u)), None
        if f > best_f:
            best_f, best_err, best_u, best_g = f, err, u, g
            n_updates += i > 0
        if i == 0:
            prev_best = best_f
        if i == iters:
            break
        if i in checkpoints:
            stalled = n_updates < 0.75 * (i - prev_cp)
            unchanged = prev_eta == eta and prev_best == best_f
            prev_cp, prev_eta, prev_best, n_updates = i, eta, best_f, 0
            if stalled or unchanged:
                eta *= 0.5
                if best_g is not None:  # None: every iterate so far was NaN; go on from where we are
                    u, u_prev, g = best_u, best_u, best_g  # restart from the best point (gradient stored)
        z = proj(u + eta * step_dir(g))
        if momentum_form == "tml_epfl":
            u_new = momentum * z + (1 - momentum) * u_prev
        elif i == 0:
            u_new = z
        else:
            u_new = proj(u + momentum * (z - u) + (1 - momentum) * (u - u_prev))
        u_prev, u = u, u_new
        if on_iterate is not None:
            on_iterate(to_delta(u))
    if clean is not None and clean[0] >= best_f:  # δ = 0 is feasible (the reference starts from it)
        return clean[0], clean[1], torch.zeros_like(s)
    if best_f == -math.inf:  # every iterate NaN (a NaN F is never a maximum): the maximum is unknown
        return math.nan, math.nan, to_delta(u)
    return best_f, best_err, to_delta(best_u)


def _value_only(value_grad, delta):
    fn = getattr(value_grad, "value", None)
    if fn is not None:
        return fn(delta)
    f, err, _ = value_grad(delta)
    return f, err


def _worst_case(obj: _Objective, batches: Batches, s: torch.Tensor, cfg: SharpnessConfig, gen: torch.Generator,
                tick: Callable[[], None], loss_clean: np.ndarray,
                err_clean: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The maximized loss and error per (ρ, batch), and the ``delta_norm*`` results.

    From δ = 0 (no ``random_start``) the first ascent's first gradient pass IS the clean
    evaluation: for the first ρ it fills ``loss_clean`` / ``err_clean`` (in place, batch by batch),
    so no separate clean forward pass is made."""
    from_zero = not cfg.random_start
    zero = torch.zeros_like(obj.theta)
    R, n_batches = len(cfg.rhos), len(batches)  # type: ignore[arg-type]
    out_loss, out_err = np.zeros((R, n_batches)), np.zeros((R, n_batches))
    norms, set_norms = np.zeros((R, n_batches)), np.zeros((R, n_batches))
    for r, rho in enumerate(cfg.rhos):  # type: ignore[arg-type]
        for b, (xb, yb) in enumerate(batches):
            fn = _BatchFn(obj, xb, yb, tick)
            first = None
            if from_zero and r == 0:
                first = fn(zero)
                loss_clean[b], err_clean[b] = first[0], first[1]
                if not math.isfinite(first[0]):  # count every bad batch for the message, then stop
                    for c in range(b + 1, n_batches):
                        loss_clean[c] = obj.value(zero, *batches[c])[0]
                    _check_clean(loss_clean)
            best = (loss_clean[b], err_clean[b], torch.zeros_like(obj.theta))
            for _ in range(cfg.restarts):
                u0 = _random_u(s, rho, cfg.norm, gen) if cfg.random_start else None
                res = worst_case_ascent(fn, s, rho, norm=cfg.norm, iters=cfg.iters, momentum=cfg.momentum,
                                        step_mult=cfg.step_mult, u0=u0, ellipsoid=cfg.ellipsoid,
                                        clean=(loss_clean[b], err_clean[b]), momentum_form=cfg.momentum_form,
                                        first=first)
                if res[0] > best[0]:
                    best = res
            out_loss[r, b], out_err[r, b] = best[0], best[1]
            d = best[2]
            norms[r, b] = float(d.norm())
            u = torch.where(s > 0, d / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(d))
            set_norms[r, b] = float(u.abs().max() if cfg.norm == "linf" else u.norm())
    extra = dict(delta_norm=norms.mean(1), delta_norm_max=norms.max(1), delta_norm_set=set_norms.max(1))
    return out_loss, out_err, extra
