"""Sharpness probe: worst-case and average-case (adaptive) m-sharpness, first-order flatness, and
PAC-Bayes flatness.

References
----------
* Andriushchenko, Croce, Müller, Hein, Flammarion 2023, "A Modern Look at the Relationship
  between Sharpness and Generalization" (tml-epfl/sharpness-vs-generalization, ``sharpness.py``):
  m-sharpness, adaptive perturbation sets, Auto-PGD on the weights, average-case sharpness.
* Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
  parameter-free attacks" (Auto-PGD: step-size schedule and momentum).
* Kwon et al. 2021 (ASAM): the adaptive set ``T_w = diag|w|``.
* Zhang et al. 2023 (GAM): first-order flatness ``R¹_ρ(θ) = ρ · max_{‖δ‖≤ρ} ‖∇L(θ+δ)‖``.
* Jiang et al. 2019, "Fantastic Generalization Measures"; Dziugaite et al. 2020: PAC-Bayes
  flatness, the largest weight-noise σ that keeps the training accuracy within a target.

Conventions
-----------
Every perturbation is written ``δ = s ⊙ u`` with ``s = |w|`` (``adaptive``) or ``s = 1``; the sets
are ``‖u‖_∞ ≤ ρ`` (``linf``) and ``‖u‖₂ ≤ ρ`` (``l2``, one global norm over all perturbed
parameters; for ``adaptive`` this is the ellipsoid ``‖δ/|w|‖₂ ≤ ρ``). Coordinates with ``w_i = 0``
are never perturbed in adaptive mode. ``L_B`` is the mean of the per-sample loss over a batch ``B``
of ``m`` points; the subset (``cfg.subset`` points of the split, fixed by ``cfg.seed``) is shuffled
with the same seed and cut into ``⌊subset/m⌋`` batches (an incomplete last batch is dropped, so
every batch has exactly ``m`` points). The model is never mutated: every evaluation goes through
:func:`landscape.params.call` with perturbed copies of the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from landscape.core.data import samples_args, select
from landscape.core.kernel import logits_at
from landscape.errors import ConfigError, LandscapeError
from landscape.outputs import OutputFn
from landscape.params import ParamLayout, model_state, second_order, select_parameters
from landscape.probes.base import ProbeContext, fixed_subset, register_probe, setting
from landscape.tasks import Task, correct_count, get_task
from landscape.utils import DTYPES

KINDS = ("worst", "average")
NORMS = ("linf", "l2")
PARAM_SETS = ("all", "no_norm_bias")
ELLIPSOID = ("scaled", "euclidean")
MOMENTUM_FORMS = ("croce_hein", "tml_epfl")
PAC_MAG_FORMS = ("jiang", "linear")
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)

# ρ grids of Andriushchenko et al. 2023 (CIFAR-10 ResNet-18), keyed by (kind, norm, adaptive).
DEFAULT_RHOS: dict[tuple[str, str, bool], tuple[float, ...]] = {
    ("worst", "linf", True): (0.001, 0.002, 0.004, 0.008),
    ("worst", "l2", True): (0.25, 0.5, 1.0, 2.0),
    ("average", "l2", False): (0.05, 0.1, 0.2, 0.4),
}

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SharpnessConfig:
    """Settings of the sharpness probe (all recorded beside its results).

    Results stored before ``pac_eps`` existed were computed with ε = 0 (``ABSENT_MEANS``).

    ``rhos=None`` takes the paper's grid for ``(kind, norm, adaptive)`` (:data:`DEFAULT_RHOS`);
    the resolved grid is stored back in the config. ``ellipsoid`` only matters for adaptive l2
    worst-case: ``"scaled"`` runs projected gradient ascent in ``u = δ/|w|`` (step along
    ``|w| ⊙ g`` in ``u``, projection ``u ← u·min(1, ρ/‖u‖)``), whose fixed points are the KKT
    points of the ellipsoid problem; ``"euclidean"`` is the reference's scheme (step
    ``|w| ⊙ g/‖g‖`` in ``δ``, Euclidean projection onto the ellipsoid by bisection on the
    Lagrange multiplier, ``sharpness.py`` l. 124-145). The default is ``"scaled"`` on evidence:
    it maximizes better — on three MLPs trained on digits (paper's grid ρ = 0.25…2, 20
    iterations, m = 128, 1024 points) it found a 6–40 % larger sharpness than ``"euclidean"`` in
    all 12 (model, ρ) cells, and 6–33 % larger at 100 iterations, where both have stopped
    improving (the reference steps along ``g`` in u, not along the u-gradient ``|w|⊙g``, and
    stalls below the maximum; on a linear objective ``"scaled"`` attains the closed-form
    maximum ``ρ‖|w|⊙g‖``), in a third of the time (no bisection).
    Since worst-case sharpness is a maximum, the larger value is the better estimate of it; a
    user reproducing Andriushchenko et al.'s numbers sets ``ellipsoid="euclidean",
    momentum_form="tml_epfl"`` (their code's update; adaptive l2 values come out lower).

    ``momentum_form``: ``"croce_hein"`` (default, the Auto-PGD paper's update) or
    ``"tml_epfl"`` (the reference code's ``0.75·z + 0.25·δ_{k−1}``; :func:`worst_case_ascent`).
    ``pac_eps`` / ``pac_mag_form``: the magnitude-aware PAC-Bayes noise std
    ``√(σ²w² + ε²)`` with Jiang et al.'s ε = 1e-3 (default), or ``σ(|w| + ε)``
    (:func:`magnitude_aware_std`); ``pac_eps=0`` is the former ``σ|w|``. ``pac_draws``: Monte-Carlo
    draws per σ, 3 by default (the reference code averages 10).
    """

    kind: str = setting("worst", "worst (Auto-PGD ascent) or average (Monte Carlo).")
    norm: str = setting("linf", "linf or l2.")
    adaptive: bool = setting(True, "Scale the perturbation set by |w|.")
    rhos: tuple[float, ...] | None = setting(None, "Radii, comma-separated (default: the paper's "
                                                   "grid for kind/norm/adaptive).")
    m: int = setting(128, "Batch size of m-sharpness.")
    iters: int = setting(20, "Ascent iterations.")
    restarts: int = setting(1, "Restarts of the worst-case ascent (the largest is kept).")
    random_start: bool = setting(False, "Start the ascent from a random point of the perturbation"
                                        " set.")
    momentum: float = setting(0.75, "Auto-PGD momentum.")
    step_mult: float = setting(1.0, "Multiplier of the Auto-PGD initial step size.")
    ellipsoid: str = setting("scaled", "Adaptive l2 worst case: scaled (ascent in δ/|w|) or "
                                       "euclidean (the reference's).")
    samples_avg: int = setting(20, "Monte-Carlo draws of the average-case sharpness.")
    logit_normalize: bool = setting(False, "Normalize the logits before the loss.")
    params: str = setting("all", "Perturbed parameters: all or no_norm_bias.")
    bn_mode: str = setting("eval", "BatchNorm in eval or train mode.")
    subset: int | None = setting(1024, "Fixed subset of training points (None: the whole split).")
    split: str = setting("train", "train or test.")
    dtype: str = setting("float32", "float32 or float64.")
    seed: int = setting(0, "Seed of the subset, random starts and noise draws.")
    # first-order flatness (GAM); None switches it off
    first_order_rho: float | None = setting(0.05, "Radius of the first-order flatness (GAM); None"
                                                  " switches it off.")
    first_order_iters: int = setting(10, "Ascent iterations of the first-order flatness.")
    # Auto-PGD momentum update: Croce & Hein's, or the tml-epfl code's 0.75·z + 0.25·δ_{k−1}
    momentum_form: str = setting("croce_hein", "Auto-PGD momentum update: croce_hein or tml_epfl "
                                               "(0.75·z + 0.25·δ_{k−1}).")
    # PAC-Bayes flatness (Jiang et al. 2019); target = allowed drop of train accuracy
    pac_bayes: bool = setting(True, "PAC-Bayes flatness σ and σ′ (Jiang et al. 2019).")
    pac_target: float = setting(0.1, "PAC-Bayes: allowed drop of train accuracy.")
    pac_draws: int = setting(3, "PAC-Bayes: Monte-Carlo draws per σ.")
    pac_steps: int = setting(12, "PAC-Bayes: bisection steps of the σ search.")
    pac_eps: float = setting(1e-3, "ε of the magnitude-aware noise (Jiang et al.; 0 = noise σ|w| "
                                   "only).")
    pac_mag_form: str = setting("jiang", "Magnitude-aware noise std: jiang √(σ²w² + ε²) or linear"
                                         " σ(|w| + ε).")
    ABSENT_MEANS: ClassVar[dict[str, Any]] = {"pac_eps": 0.0}  # what older stored results were computed with

    def __post_init__(self) -> None:
        checks = [
            (self.kind in KINDS, f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}"),
            (self.norm in NORMS, f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}"),
            (self.params in PARAM_SETS, f"params must be one of {', '.join(PARAM_SETS)}, got {self.params!r}"),
            (self.ellipsoid in ELLIPSOID, f"ellipsoid must be one of {', '.join(ELLIPSOID)}, got {self.ellipsoid!r}"),
            (self.bn_mode in ("eval", "train"), f"bn_mode must be eval or train, got {self.bn_mode!r}"),
            (self.split in ("train", "test"), f"split must be train or test, got {self.split!r}"),
            (self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (self.m >= 1, f"m must be ≥ 1, got {self.m}"),
            (self.subset is None or self.subset >= 1, f"subset must be ≥ 1, got {self.subset}"),
            (self.subset is None or self.m <= self.subset,
             f"m={self.m} is larger than the subset of {self.subset} points; use m ≤ subset"),
            (self.iters >= 1, f"iters must be ≥ 1, got {self.iters}"),
            (self.restarts >= 1, f"restarts must be ≥ 1, got {self.restarts}"),
            (self.restarts == 1 or self.random_start, "restarts > 1 need random_start=True (else they repeat)"),
            (0 < self.momentum <= 1, f"momentum must be in (0, 1], got {self.momentum}"),
            (self.step_mult > 0, f"step_mult must be > 0, got {self.step_mult}"),
            (self.samples_avg >= 2, f"samples_avg must be ≥ 2, got {self.samples_avg}"),
            (self.first_order_rho is None or self.first_order_rho > 0,
             f"first_order_rho must be > 0 or None, got {self.first_order_rho}"),
            (self.first_order_iters >= 1, f"first_order_iters must be ≥ 1, got {self.first_order_iters}"),
            (0 < self.pac_target < 1, f"pac_target must be in (0, 1), got {self.pac_target}"),
            (self.pac_draws >= 1 and self.pac_steps >= 1, "pac_draws and pac_steps must be ≥ 1"),
            (self.momentum_form in MOMENTUM_FORMS,
             f"momentum_form must be one of {', '.join(MOMENTUM_FORMS)}, got {self.momentum_form!r}"),
            (self.pac_eps >= 0 and math.isfinite(self.pac_eps), f"pac_eps must be ≥ 0, got {self.pac_eps}"),
            (self.pac_mag_form in PAC_MAG_FORMS,
             f"pac_mag_form must be one of {', '.join(PAC_MAG_FORMS)}, got {self.pac_mag_form!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.rhos is None:
            key = (self.kind, self.norm, self.adaptive)
            if key not in DEFAULT_RHOS:
                raise ConfigError(f"no default ρ grid for kind={self.kind}, norm={self.norm}, "
                                  f"adaptive={self.adaptive}; pass rhos=(…)")
            object.__setattr__(self, "rhos", DEFAULT_RHOS[key])
        raw = self.rhos
        if isinstance(raw, int | float | str):  # one ρ (rhos=0.05 on the command line)
            raw = [raw]
        try:
            rhos = tuple(float(r) for r in raw)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ConfigError(f"rhos must be a number or a list of numbers > 0, got {self.rhos!r}") from None
        if not rhos or any(not (r > 0 and math.isfinite(r)) for r in rhos):
            raise ConfigError(f"rhos must be a non-empty tuple of finite values > 0, got {self.rhos}")
        object.__setattr__(self, "rhos", rhos)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- geometry


def auto_pgd_checkpoints(iters: int) -> list[int]:
    """Croce & Hein's checkpoints ``⌈p_j·iters⌉``: ``p₀=0, p₁=0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``, without the first (0)."""
    p, w = [0.0, 0.22], [0, math.ceil(0.22 * iters)]
    while w[-1] < iters and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * iters))
    return w[1:]


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


# --------------------------------------------------------------------------- the objective


class _Objective:
    """``L_B(w + δ)`` and its gradient for perturbations of a flat vector of the chosen parameters."""

    def __init__(self, model: nn.Module, loss: PerSampleLoss, layout: ParamLayout, cfg: SharpnessConfig,
                 dtype: torch.dtype, device: torch.device, output_fn: OutputFn | None = None,
                 task: str | Task = "classification") -> None:
        self.model, self.loss, self.layout, self.cfg = model, loss, layout, cfg
        self.task = task
        self.output_fn = output_fn
        self.state = model_state(model, dtype, device)
        self.theta = layout.flatten(self.state).detach()
        self.num_gradients = 0

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        state = {**self.state, **self.layout.unflatten(theta)}
        z = logits_at(self.model, state, x, bn_mode=self.cfg.bn_mode, output_fn=self.output_fn,
                      keep=self.layout.names)
        if self.cfg.logit_normalize:  # z ← (z − mean z)/‖z − mean z‖ per sample (reference option)
            z = z - z.mean(dim=-1, keepdim=True)
            z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return z

    def value(self, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """``(L_B(w+δ), error_B(w+δ))`` without gradient."""
        with torch.no_grad():
            z = self.logits(self.theta + delta, x)
            return float(self.loss(z, y).mean()), _error(z, y, self.task)

    def value_grad(self, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        """``(L_B(w+δ), error, ∇_δ L_B(w+δ))``: one forward and one backward pass."""
        d = delta.detach().requires_grad_(True)
        z = self.logits(self.theta + d, x)
        value = self.loss(z, y).mean()
        (g,) = torch.autograd.grad(value, d)
        self.num_gradients += 1
        return float(value.detach()), _error(z.detach(), y, self.task), g

    def grad_norm_ascent(self, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``(‖∇L_B(w+δ)‖, ∇_δ ½‖∇L_B(w+δ)‖² = H g)`` by double backward, under
        :func:`landscape.params.second_order` (math SDPA backend: attention layers work)."""
        d = delta.detach().requires_grad_(True)
        with second_order():
            value = self.loss(self.logits(self.theta + d, x), y).mean()
            (g,) = torch.autograd.grad(value, d, create_graph=True)
            half_sq = 0.5 * (g * g).sum()
            (hg,) = torch.autograd.grad(half_sq, d)
        self.num_gradients += 2
        return float(g.detach().norm()), hg


def _error(z: torch.Tensor, y: torch.Tensor, task: str | Task = "classification") -> float:
    """``task``'s error on a batch: 1 − accuracy (token accuracy for token tasks), NaN for outputs
    that are not class scores."""
    if z.ndim != (3 if get_task(task).tokens else 2) or y.dtype not in (torch.int64, torch.int32) or z.shape[-1] < 2:
        return float("nan")
    correct, count = correct_count(z, y, task)
    return float(count - int(correct)) / count if count else float("nan")


def _perturbed_layout(model: nn.Module, which: str) -> ParamLayout:
    layout = select_parameters(model)
    if which == "all":
        return layout
    skip = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, NORM_LAYERS):
            skip.update(f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False))
    names = [n for n in layout.names if n not in skip and not n.endswith("bias")]
    if not names:
        raise ConfigError("params='no_norm_bias' leaves no parameter to perturb; use params='all'")
    return select_parameters(model, names)


# --------------------------------------------------------------------------- worst case


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


class _BatchFn:
    """``value_grad`` of one batch, with a gradient-free ``value`` for the last iterate."""

    def __init__(self, obj: _Objective, x: torch.Tensor, y: torch.Tensor, on_grad: Callable[[], None]) -> None:
        self.obj, self.x, self.y, self.on_grad = obj, x, y, on_grad

    def __call__(self, delta: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        out = self.obj.value_grad(delta, self.x, self.y)
        self.on_grad()
        return out

    def value(self, delta: torch.Tensor) -> tuple[float, float]:
        return self.obj.value(delta, self.x, self.y)


def _random_u(s: torch.Tensor, rho: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A random start inside the set: ``ρ·U[−1,1]`` (linf) or a uniform point of the sphere (l2)."""
    if norm == "linf":
        return rho * (2 * torch.rand(s.shape, generator=gen, dtype=s.dtype, device=s.device) - 1)
    return rho * _unit(torch.randn(s.shape, generator=gen, dtype=s.dtype, device=s.device))


# --------------------------------------------------------------------------- first order, PAC-Bayes


def first_order_flatness(
    grad_norm_ascent: Callable[[torch.Tensor], tuple[float, torch.Tensor]],
    size: int,
    rho: float,
    *,
    iters: int,
    gen: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[float, float]:
    """GAM's first-order flatness ``R¹_ρ = ρ · max_{‖δ‖₂≤ρ} ‖∇L(θ+δ)‖`` (Zhang et al. 2023).

    Projected normalized gradient ascent on ``½‖∇L(θ+δ)‖²`` (its gradient ``H(θ+δ)∇L(θ+δ)`` by
    double backward, exact; GAM's code uses finite differences), from a random point of the sphere
    ``‖δ‖ = ρ``, step ``2ρ``, ``iters`` steps; the largest norm seen (``δ = 0`` included) wins.
    Returns ``(R¹_ρ, max ‖∇L‖)``. At a minimum of ``½θᵀAθ``: ``R¹_ρ = ρ·ρλ_max(A)``.
    """
    best, _ = grad_norm_ascent(torch.zeros(size, dtype=dtype, device=device))
    delta = rho * _unit(torch.randn(size, generator=gen, dtype=dtype, device=device))
    for i in range(iters + 1):
        gnorm, hg = grad_norm_ascent(delta)
        best = max(best, gnorm)
        if i == iters:
            break
        delta = project(delta + 2 * rho * _unit(hg), rho, "l2")
    return rho * best, best


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


# --------------------------------------------------------------------------- the probe


def sharpness(
    model: nn.Module,
    loss: PerSampleLoss,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: SharpnessConfig = SharpnessConfig(),
    *,
    device: torch.device | str | None = None,
    on_step: Callable[[int], None] | None = None,
    output_fn: OutputFn | None = None,
    task: str | Task = "classification",
) -> dict[str, Any]:
    r"""Sharpness of ``L(w) = (1/m) Σ_{n∈B} loss(f_w(x_n), y_n)`` per batch B, over a ρ grid.

    Worst case (``kind="worst"``, Andriushchenko et al. 2023, eq. 1, m-sharpness):

    .. math:: S_ρ = \frac{1}{|\mathcal B|}\sum_B \Big[\max_{δ=s⊙u,\ ‖u‖_p ≤ ρ} L_B(w+δ) − L_B(w)\Big]

    with ``s = |w|`` (adaptive) or 1, maximized by :func:`worst_case_ascent` (Auto-PGD).
    Average case (``kind="average"``):

    .. math:: S^{avg}_ρ = \frac{1}{|\mathcal B|}\sum_B \Big[\mathbb E_δ L_B(w+δ) − L_B(w)\Big],
              δ = ρ\, s ⊙ ξ,\ ξ ∼ N(0, I)\ (l2)\ \text{or}\ U[−1,1]^P\ (linf),

    estimated with ``samples_avg`` draws per batch; ``delta_loss_se`` is its Monte-Carlo standard
    error ``sqrt(Σ_B var_B / samples_avg) / |𝓑|``.

    The error (``delta_error``, ``error_clean``, the PAC-Bayes accuracy) is ``task``'s metric,
    :func:`landscape.tasks.correct_count`: 1 − accuracy, token accuracy for token tasks.

    Returns arrays indexed by ρ: ``rhos``, ``delta_loss``, ``delta_error``, ``loss_clean``,
    ``error_clean``, ``loss_perturbed``, ``delta_norm`` (mean over batches of ``‖δ*‖₂``; worst
    case), ``delta_norm_max`` (the reference's number: max over batches), ``delta_norm_set`` (max
    over batches of ``‖δ*/s‖`` in the set's norm, ≤ ρ), ``delta_loss_se`` (average case), and
    ``delta_loss_batches`` (ρ × batch). Scalars: ``first_order_flatness``,
    ``first_order_grad_norm``, and ``pac_bayes`` (subgroup: ``sigma``, ``inv_sigma2``,
    ``sigma_mag``, ``inv_sigma2_mag``, ``accuracy_clean``); counts ``num_batches``, ``num_samples``,
    ``num_params``, ``num_gradients``. ``on_step(n)`` is told the gradient evaluations so far.
    ``f_w(x)`` is :func:`landscape.outputs.logits_of` of the model's output (or ``output_fn``'s).
    """
    subset = cfg.subset if cfg.subset is not None else len(x)
    if cfg.m > min(subset, len(x)):
        raise ConfigError(f"m={cfg.m} is larger than the {min(subset, len(x))} data points available; use a smaller m")
    dtype = DTYPES[cfg.dtype]
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    idx = fixed_subset(len(x), cfg.subset, cfg.seed)
    perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(cfg.seed))
    idx = idx[perm]
    if y is None:  # samples (streamed): gather only the samples the batches of m use
        idx = idx[: (len(idx) // cfg.m) * cfg.m]
    x, y = select(x, y, idx)
    x = x.to(dev, dtype if x.is_floating_point() else x.dtype)
    y = y.to(dev, dtype if y.is_floating_point() else y.dtype)
    was_training = model.training
    model.train(cfg.bn_mode == "train")  # only the flag; restored on the way out
    try:
        return _sharpness(model, loss, x, y, cfg, dev, dtype, on_step, output_fn, task)
    finally:
        model.train(was_training)


def _sharpness(model, loss, x, y, cfg: SharpnessConfig, dev, dtype, on_step, output_fn=None,
               task: str | Task = "classification") -> dict[str, Any]:
    n_batches = len(y) // cfg.m
    batches = [(x[b * cfg.m:(b + 1) * cfg.m], y[b * cfg.m:(b + 1) * cfg.m]) for b in range(n_batches)]
    layout = _perturbed_layout(model, cfg.params)
    obj = _Objective(model, loss, layout, cfg, dtype, dev, output_fn, task)
    s = obj.theta.abs() if cfg.adaptive else torch.ones_like(obj.theta)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    count = {"n": 0}

    def tick() -> None:
        count["n"] = obj.num_gradients
        if on_step is not None:
            on_step(count["n"])

    zero = torch.zeros_like(obj.theta)
    # Auto-PGD from δ = 0 starts with value_grad(0), whose forward pass IS the clean evaluation:
    # for the first ρ the clean loss comes from that pass (no separate forward), batch by batch.
    from_zero = cfg.kind == "worst" and not cfg.random_start
    loss_clean = np.full(n_batches, np.nan)
    err_clean = np.full(n_batches, np.nan)
    if not from_zero:
        for b, (xb, yb) in enumerate(batches):
            loss_clean[b], err_clean[b] = obj.value(zero, xb, yb)
        _check_clean(loss_clean)
    R = len(cfg.rhos)  # type: ignore[arg-type]
    out_loss = np.zeros((R, n_batches))
    out_err = np.zeros((R, n_batches))
    out: dict[str, Any] = {"rhos": np.array(cfg.rhos, dtype=float)}

    if cfg.kind == "worst":
        norms = np.zeros((R, n_batches))
        set_norms = np.zeros((R, n_batches))
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
        out.update(delta_norm=norms.mean(1), delta_norm_max=norms.max(1), delta_norm_set=set_norms.max(1))
    else:
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
        out["delta_loss_se"] = se

    out["delta_loss_batches"] = out_loss - loss_clean[None, :]
    out["delta_loss"] = out["delta_loss_batches"].mean(1)
    out["delta_error"] = (out_err - err_clean[None, :]).mean(1)
    out["loss_clean"] = np.full(R, loss_clean.mean())
    out["error_clean"] = np.full(R, err_clean.mean())
    out["loss_perturbed"] = out_loss.mean(1)

    if cfg.first_order_rho is not None:
        values, gnorms = [], []
        for xb, yb in batches:
            def gna(delta, xb=xb, yb=yb):
                res = obj.grad_norm_ascent(delta, xb, yb)
                tick()
                return res
            v, gn = first_order_flatness(gna, layout.numel, cfg.first_order_rho, iters=cfg.first_order_iters,
                                         gen=gen, dtype=dtype, device=dev)
            values.append(v)
            gnorms.append(gn)
        out["first_order_flatness"] = float(np.mean(values))
        out["first_order_grad_norm"] = float(np.mean(gnorms))

    if cfg.pac_bayes:
        out["pac_bayes"] = _pac_bayes(obj, batches, cfg, dtype, dev)

    out.update(num_batches=n_batches, num_samples=n_batches * cfg.m, num_params=layout.numel,
               num_gradients=obj.num_gradients)
    return out


def _check_clean(loss_clean: np.ndarray) -> None:
    if not np.isfinite(loss_clean).all():
        raise LandscapeError(
            f"the loss is NaN/inf at these weights on {int((~np.isfinite(loss_clean)).sum())} of "
            f"{len(loss_clean)} batches; sharpness is undefined there (check the data and the loss, "
            "or probe another checkpoint)"
        )


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


def _pac_bayes(obj: _Objective, batches, cfg: SharpnessConfig, dtype, dev) -> dict[str, float]:
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


@register_probe(
    "sharpness", SharpnessConfig, summary=("delta_loss", "delta_error", "first_order_flatness", "num_gradients"),
    default=1, measures={"first_order_flatness": "first_order_flatness", "pac_bayes_inv_sigma2": "pac_bayes/inv_sigma2",
                         "pac_bayes_mag_inv_sigma2": "pac_bayes/inv_sigma2_mag"},
    families={"sharpness-based": ("pac_bayes", "sharpness", "first_order_flatness")},  # sharpness@ρ too
    figure="sharpness", unit="gradients", cli_names={"rhos": ("--rho",)},
    cli_help="Adaptive worst/average-case sharpness, first-order flatness and PAC-Bayes flatness "
    "(Andriushchenko et al. 2023).")
def run_sharpness(ctx: ProbeContext, cfg: SharpnessConfig) -> dict[str, Any]:
    """The sharpness probe on the checkpoint's ``cfg.split`` (the training loss, labels as trained)."""
    split = ctx.split(cfg.split)
    x, y = samples_args(split)
    return sharpness(ctx.model, ctx.loss, x, y, cfg, device=ctx.device, on_step=ctx.advance,
                     output_fn=ctx.output_fn, task=getattr(split, "task", "classification"))
