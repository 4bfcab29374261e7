"""Hessian-vector products and the Krylov methods built on them.

The loss is the sample-weighted mean over the chosen data,

.. math::  L(θ) = \\frac{1}{N} \\sum_n ℓ(f_θ(x_n), y_n) = \\sum_b \\frac{n_b}{N} L_b(θ),

so a full-data HVP is ``Σ_b (n_b/N) H_b v``. Three ways to compute ``H_b v``:

- ``cached_graph``: build ``∇L_b`` once with ``create_graph=True`` and differentiate it again for
  every ``v`` (what PyHessian does for one batch): the forward and first backward pass are paid
  once; measured ≈ 1.2–1.7 gradients per HVP on CPU. Memory: the batch's double-backward graph.
- ``double_backward``: the same, rebuilt for every ``v`` (≈ 2.2–2.4 gradients per HVP on CPU).
- ``forward_over_reverse``: ``torch.func.jvp(torch.func.grad(L_b), (θ,), (v,))`` (≈ 3.1–3.2 on CPU).

``method="auto"`` (default) caches the graph when the data form one batch and double-backwards
otherwise. (Ratios from ``benchmarks/hessian.py`` on an MLP and a BatchNorm CNN on digits.)

Lanczos with full reorthogonalization gives extremal eigenpairs (Golub & Van Loan §10.1);
Hutchinson (1989) and Hutch++ (Meyer et al. 2021) estimate the trace; stochastic Lanczos
quadrature (Golub & Meurant; Ghorbani et al. 2019; PyHessian) gives the spectral density.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.core.data import is_stream
from landscape.core.kernel import BN_MODES, logits_at
from landscape.errors import ConfigError
from landscape.outputs import OutputFn
from landscape.params import ParamLayout, model_state, second_order, select_parameters

Matvec = Callable[[torch.Tensor], torch.Tensor]
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

HVP_METHODS = ("auto", "cached_graph", "double_backward", "forward_over_reverse")


class HessianOperator:
    """The Hessian of the mean loss over ``(x, y)`` w.r.t. a set of parameters, as a linear operator.

    ``x`` with ``y=None`` is the samples themselves: an in-memory ``Split``, or a
    :class:`~landscape.core.data.Stream` read batch by batch at every HVP (its own batches; one
    batch of inputs in memory at a time; ``batch_size`` is then the stream's).

    ``params`` restricts the operator to a block (the others stay fixed): the result is the
    diagonal block ``H[params, params]`` of the full Hessian. The model is never mutated: its
    parameters and buffers are copied (cast to ``dtype``) and used through ``functional_call``.
    Parameters are as the model owns them (:mod:`landscape.params`): a tied tensor is one
    coordinate block, and the HVP differentiates through every use of it. Every HVP runs under
    :func:`landscape.params.second_order` (math SDPA backend, selected automatically), so
    attention layers with default settings work on CPU and GPU.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: PerSampleLoss,
        x: Any,
        y: torch.Tensor | None = None,
        *,
        params: Sequence[str] | None = None,
        batch_size: int | None = None,
        bn_mode: str = "eval",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        method: str = "auto",
        output_fn: OutputFn | None = None,
    ) -> None:
        if bn_mode not in BN_MODES:
            raise ConfigError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
        if method not in HVP_METHODS:
            raise ConfigError(f"HVP method must be one of {', '.join(HVP_METHODS)}, got {method!r}")
        self.model = model
        self.loss = loss
        self.output_fn = output_fn  # model output → logits (landscape.outputs.logits_of)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype
        self.bn_mode = bn_mode
        self.method = method
        self.layout: ParamLayout = select_parameters(model, params)
        self.state = model_state(model, dtype, self.device)
        self.theta = self.layout.flatten(self.state)
        self.stream = None
        if y is None and is_stream(x):  # streamed batch by batch: never held in memory at once
            self.stream = x.to(self.device, dtype)
            self.n = len(self.stream)
        else:
            if y is None:  # an in-memory Split
                x, y = x.x, x.y
            self.x = x.to(self.device, dtype if x.is_floating_point() else x.dtype)
            self.y = y.to(self.device, dtype if y.is_floating_point() else y.dtype)
            self.n = len(self.x)
        if self.n == 0:
            raise ConfigError("the Hessian needs at least one data point")
        self.batch_size = batch_size or self.n
        if self.method == "auto":
            one_batch = self.stream.num_batches(self.batch_size) == 1 if self.stream is not None else self.batch_size >= self.n
            self.method = "cached_graph" if one_batch else "double_backward"
        if self.method == "forward_over_reverse" and bn_mode == "train":
            self.method = "double_backward"  # running-stat updates have no forward-mode rule
        self.num_matvecs = 0
        self._graphs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def size(self) -> int:
        return self.layout.numel

    def _batch_loss(self, theta: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        state = {**self.state, **self.layout.unflatten(theta)}
        z = logits_at(self.model, state, xb, bn_mode=self.bn_mode, output_fn=self.output_fn, keep=self.layout.names)
        return self.loss(z, yb).mean()

    def _batches(self):
        if self.stream is not None:
            for i, (xb, yb) in enumerate(self.stream.batches(self.batch_size)):
                yield i, xb, yb, len(yb) / self.n
            return
        for i, start in enumerate(range(0, self.n, self.batch_size)):
            xb, yb = self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]
            yield i, xb, yb, len(xb) / self.n

    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """``L(θ)`` and ``∇L(θ)`` over all batches."""
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        grad = torch.zeros_like(self.theta)
        for _, xb, yb, w in self._batches():
            theta = self.theta.detach().requires_grad_(True)
            value = self._batch_loss(theta, xb, yb)
            (g,) = torch.autograd.grad(value, theta)
            total += w * value.detach()
            grad += w * g
        return float(total), grad

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` = Σ_b (n_b/N) H_b v."""
        v = v.to(self.device, self.dtype)
        out = torch.zeros_like(self.theta)
        for i, xb, yb, w in self._batches():
            out += w * self._batch_hvp(i, v, xb, yb)
        self.num_matvecs += 1
        return out

    __call__ = matvec

    def _batch_hvp(self, i: int, v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with second_order():  # the graph (and its forward pass) must use differentiable attention
            return self._batch_hvp_inner(i, v, xb, yb)

    def _batch_hvp_inner(self, i: int, v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if self.method == "cached_graph":
            if i not in self._graphs:
                theta = self.theta.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self._batch_loss(theta, xb, yb), theta, create_graph=True)
                self._graphs[i] = (theta, g)
            theta, g = self._graphs[i]
            (hv,) = torch.autograd.grad(g, theta, grad_outputs=v, retain_graph=True)
            return hv.detach()
        if self.method == "forward_over_reverse":
            try:
                grad_fn = torch.func.grad(lambda t: self._batch_loss(t, xb, yb))
                return torch.func.jvp(grad_fn, (self.theta,), (v,))[1].detach()
            except (RuntimeError, NotImplementedError):
                self.method = "double_backward"  # a layer without a forward-mode rule
        theta = self.theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self._batch_loss(theta, xb, yb), theta, create_graph=True)
        (hv,) = torch.autograd.grad(g, theta, grad_outputs=v)
        return hv.detach()

    def dense(self) -> torch.Tensor:
        """The full matrix, column by column (P HVPs): for tests and tiny models only."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)


# ---- Lanczos ----------------------------------------------------------------------------------


@dataclass
class LanczosResult:
    """Ritz values (ascending), Ritz vectors (columns, optional), residual bounds, and T's pieces.

    ``errors[i]`` is the eigenvalue-error estimate ``min(r_i, r_i²/δ_i)`` of :func:`lanczos`'s
    ``rule="error"`` (``δ_i`` the gap to the nearest other Ritz value, capped by ``gap``)."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor | None
    residuals: torch.Tensor
    alphas: torch.Tensor
    betas: torch.Tensor
    steps: int
    converged: bool
    first_components: torch.Tensor = field(repr=False, default=None)  # S[0, :] — SLQ weights are its squares
    basis_bytes: int = 0
    errors: torch.Tensor | None = None


LANCZOS_RULES = ("residual", "error")


def _tridiagonal_eigh(alphas: Sequence[float], betas: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(alphas, dtype=torch.float64)
    b = torch.as_tensor(betas, dtype=torch.float64)
    t = torch.diag(a)
    if len(b):
        t = t + torch.diag(b, 1) + torch.diag(b, -1)
    return torch.linalg.eigh(t)


def ritz_errors(evals: torch.Tensor, residuals: torch.Tensor, gap: float | None = None) -> torch.Tensor:
    r"""Eigenvalue-error estimates of Ritz pairs: :math:`\min(r_i, r_i^2/\delta_i)`.

    ``δ_i`` is the distance from ``θ_i`` to the nearest other Ritz value, no larger than ``gap``
    (absolute) when given; with neither (one Ritz value, no ``gap``) the estimate is ``r_i``. If ``θ_i`` is the Ritz value nearest to exactly one eigenvalue ``λ``
    and the rest of the spectrum is ``δ_i`` away, :math:`|θ_i - λ| ≤ r_i^2/δ_i` (Kato–Temple;
    Parlett 1980 §11-7); a Ritz gap over-estimates the true gap (the next eigenvalue lies between
    the Ritz values), so this is an estimate, not a bound, while ``r_i`` is one (there is an
    eigenvalue within ``r_i`` of ``θ_i``).
    """
    n = len(evals)
    if n < 2:
        delta = torch.full_like(evals, math.inf)
    else:
        d = torch.diff(evals).abs()
        delta = torch.minimum(torch.cat([d[:1].new_full((1,), math.inf), d]),
                              torch.cat([d, d[:1].new_full((1,), math.inf)]))
    if gap is not None:
        delta = delta.clamp_max(gap)
    known = (delta > 0) & torch.isfinite(delta)  # a single Ritz value without a cap: no gap known
    quad = torch.where(known, residuals**2 / delta.clamp_min(torch.finfo(torch.float64).tiny),
                       torch.full_like(residuals, math.inf))
    return torch.minimum(residuals, quad)


def lanczos(
    matvec: Matvec,
    size: int,
    *,
    max_steps: int = 100,
    top_k: int = 5,
    bottom_k: int = 0,
    tol: float | None = None,
    v0: torch.Tensor | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    basis_device: torch.device | str | None = None,
    eigenvectors: bool = False,
    check_every: int = 1,
    rule: str = "residual",
    gap: float | None = None,
    on_step: Callable[[int], None] | None = None,
) -> LanczosResult:
    """Lanczos with full reorthogonalization for the ``top_k`` largest and ``bottom_k`` smallest eigenpairs.

    Builds the tridiagonal ``T_m = V_mᵀ H V_m`` (``V`` orthonormal, reorthogonalized twice against
    every previous vector). The Ritz pair ``(θ_i, V s_i)`` has residual ``r_i = ‖H V s_i − θ_i V s_i‖
    = |β_m s_{m,i}|``. The Ritz values are checked after every ``check_every`` steps (default: every
    step; the ``m × m`` eigenproblem is tiny next to an HVP). ``rule="residual"`` (default) stops
    when every wanted pair has ``r_i ≤ tol · max|θ|`` (an eigenvalue lies within ``r_i`` of
    ``θ_i``; default ``tol``: 1e-4 in float32, 1e-9 in float64); ``rule="error"`` when every
    wanted pair's error estimate ``min(r_i, r_i²/δ_i) ≤ tol · max|θ|`` (:func:`ritz_errors`;
    ``gap``: a relative cap on ``δ_i / max|θ|``, e.g. a previous measurement's). Iteration also
    ends after ``max_steps`` (capped at ``size``) or at an invariant subspace (``β ≈ 0``: the Ritz
    values are then exact). ``basis_device="cpu"`` keeps the ``m × P`` basis off the GPU.
    """
    if rule not in LANCZOS_RULES:
        raise ConfigError(f"Lanczos rule must be one of {', '.join(LANCZOS_RULES)}, got {rule!r}")
    if check_every < 1:
        raise ConfigError(f"check_every must be ≥ 1, got {check_every}")
    device = torch.device(device)
    basis_device = torch.device(basis_device) if basis_device is not None else device
    if tol is None:
        tol = 1e-9 if dtype == torch.float64 else 1e-4
    m = min(max_steps, size)
    if v0 is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        v0 = torch.randn(size, generator=g, dtype=torch.float64)
    q = (v0 / v0.norm()).to(device, dtype)
    basis = torch.zeros(m, size, dtype=dtype, device=basis_device)
    alphas: list[float] = []
    betas: list[float] = []
    eps = torch.finfo(dtype).eps
    converged = False
    beta = torch.zeros((), dtype=dtype, device=device)
    beta_f, alpha_max = 0.0, 0.0
    evals = evecs = None
    for j in range(m):
        basis[j] = q.to(basis_device)
        w = matvec(q).to(dtype)
        alpha = torch.dot(q, w)
        w = w - alpha * q - (beta * basis[j - 1].to(device) if j > 0 else 0.0)
        for _ in range(2):  # full reorthogonalization, twice ("twice is enough")
            vb = basis[: j + 1]
            w = w - (vb.T @ (vb @ w.to(basis_device))).to(device)
        beta = w.norm()
        ab = torch.stack([alpha, beta]).double().cpu()  # one device sync per step
        alphas.append(float(ab[0]))
        beta_f = float(ab[1])
        alpha_max = max(alpha_max, abs(alphas[-1]))
        if on_step is not None:
            on_step(j + 1)
        last = j == m - 1
        invariant = beta_f <= eps * 100 * alpha_max or beta_f == 0.0
        if invariant or last or (j + 1) % check_every == 0:
            evals, evecs = _tridiagonal_eigh(alphas, betas)
            if invariant:
                converged = True
                break
            if len(evals) >= top_k + bottom_k and _done(evals, beta_f * evecs[-1].abs(), top_k, bottom_k,
                                                        tol, rule, gap):
                converged = True
                break
        if last:
            break
        betas.append(beta_f)
        q = w / beta
    steps = len(alphas)
    if evals is None:
        evals, evecs = _tridiagonal_eigh(alphas, betas[: steps - 1])
    residuals = (beta_f * evecs[-1]).abs()
    if steps == size:
        residuals = torch.zeros_like(residuals)
        converged = True
    vectors = None
    if eigenvectors:
        wanted = _wanted(steps, top_k, bottom_k)
        vectors = (basis[:steps].T.to(device) @ evecs[:, wanted].to(device, dtype))
    scale = float(evals.abs().max()) if len(evals) else 0.0
    return LanczosResult(
        eigenvalues=evals,
        eigenvectors=vectors,
        residuals=residuals,
        alphas=torch.tensor(alphas, dtype=torch.float64),
        betas=torch.tensor(betas[: steps - 1], dtype=torch.float64),
        steps=steps,
        converged=converged,
        first_components=evecs[0].clone(),
        basis_bytes=basis.numel() * basis.element_size(),
        errors=ritz_errors(evals, residuals, None if gap is None else gap * scale),
    )


def _done(evals: torch.Tensor, residuals: torch.Tensor, top_k: int, bottom_k: int, tol: float, rule: str,
          gap: float | None) -> bool:
    """Whether every wanted Ritz pair meets ``rule`` at ``tol`` (relative to ``max|θ|``)."""
    wanted = _wanted(len(evals), top_k, bottom_k)
    scale = float(evals.abs().max().clamp_min(torch.finfo(torch.float64).tiny))
    if rule == "error":
        residuals = ritz_errors(evals, residuals, None if gap is None else gap * scale)
    return bool((residuals[wanted] <= tol * scale).all())


def _wanted(n: int, top_k: int, bottom_k: int) -> torch.Tensor:
    idx = list(range(max(n - top_k, 0), n)) + list(range(min(bottom_k, n)))
    return torch.tensor(sorted(set(idx)), dtype=torch.long)


# ---- trace ------------------------------------------------------------------------------------


def _rademacher(size: int, n: int, generator: torch.Generator, dtype: torch.dtype, device) -> torch.Tensor:
    return (torch.randint(0, 2, (n, size), generator=generator, dtype=torch.int8) * 2 - 1).to(device, dtype)


@dataclass(frozen=True)
class TraceEstimate:
    """An unbiased estimate of ``tr(H)`` with its standard error and the matvecs it used."""

    estimate: float
    standard_error: float
    samples: np.ndarray
    matvecs: int


def hutchinson(matvec: Matvec, size: int, *, samples: int = 100, seed: int = 0,
               dtype: torch.dtype = torch.float32, device="cpu") -> TraceEstimate:
    """Hutchinson: ``tr(H) ≈ (1/n) Σ_i z_iᵀ H z_i``, ``z_i`` Rademacher; SE = std(z_iᵀHz_i)/√n."""
    g = torch.Generator().manual_seed(seed)
    z = _rademacher(size, samples, g, dtype, device)
    values = np.array([float(torch.dot(zi, matvec(zi))) for zi in z])
    se = float(values.std(ddof=1) / math.sqrt(samples)) if samples > 1 else float("nan")
    return TraceEstimate(float(values.mean()), se, values, samples)


def hutch_plus_plus(matvec: Matvec, size: int, *, matvecs: int = 99, seed: int = 0,
                    dtype: torch.dtype = torch.float32, device="cpu") -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with ``matvecs`` = 3k products.

    ``Q = orth(H S)`` for Rademacher ``S ∈ R^{P×k}``; ``tr(H) ≈ tr(QᵀHQ) + (1/k) Σ_i g_iᵀ(I−QQᵀ)H(I−QQᵀ)g_i``.
    The standard error is that of the Hutchinson part (the first term is exact).
    """
    k = max(matvecs // 3, 1)
    g = torch.Generator().manual_seed(seed)
    s = _rademacher(size, k, g, dtype, device)
    hs = torch.stack([matvec(si) for si in s], dim=1)
    q, _ = torch.linalg.qr(hs)
    hq = torch.stack([matvec(qi) for qi in q.T], dim=1)
    exact = float(torch.trace(q.T @ hq))
    gs = _rademacher(size, k, g, dtype, device)
    values = []
    for gi in gs:
        p = gi - q @ (q.T @ gi)
        values.append(float(torch.dot(p, matvec(p))))
    values_np = np.array(values)
    se = float(values_np.std(ddof=1) / math.sqrt(k)) if k > 1 else float("nan")
    return TraceEstimate(exact + float(values_np.mean()), se, values_np + exact, 3 * k)


# ---- spectral density -------------------------------------------------------------------------


@dataclass(frozen=True)
class SpectralDensity:
    """SLQ quadrature: ``nodes[v, j]`` (Ritz values) and ``weights[v, j]`` (squared first components)."""

    nodes: np.ndarray
    weights: np.ndarray

    def moment(self, p: int) -> float:
        """``(1/n_v) Σ_v Σ_j w_vj θ_vj^p`` ≈ ``tr(H^p)/P``."""
        return float(np.mean(np.sum(self.weights * self.nodes**p, axis=1)))


def stochastic_lanczos_quadrature(matvec: Matvec, size: int, *, vectors: int = 1, steps: int = 100,
                                  seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu",
                                  on_step: Callable[[int], None] | None = None) -> SpectralDensity:
    """SLQ (PyHessian ``density``): per Rademacher probe ``v`` (normalized), ``m`` Lanczos steps give
    ``T = S diag(θ) Sᵀ``; the quadrature ``Σ_j S_{0j}² f(θ_j)`` approximates ``vᵀ f(H) v``."""
    g = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(vectors):
        v0 = _rademacher(size, 1, g, torch.float64, "cpu")[0]
        res = lanczos(matvec, size, max_steps=steps, top_k=0, bottom_k=0, tol=0.0, v0=v0,
                      dtype=dtype, device=device, check_every=10**9, on_step=on_step)
        nodes.append(res.eigenvalues.numpy())
        weights.append((res.first_components**2).numpy())
    width = max(len(n) for n in nodes)
    pad = lambda a: np.pad(a, (0, width - len(a)))  # noqa: E731 — zero weight for early-stopped probes
    return SpectralDensity(np.stack([pad(n) for n in nodes]), np.stack([pad(w) for w in weights]))


def smoothed_density(sd: SpectralDensity, *, bins: int = 10_000, sigma_squared: float = 1e-5,
                     overhead: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-broadened density on a grid, PyHessian's convention (``density_generate``).

    Grid ``[mean_v min θ − overhead, mean_v max θ + overhead]``; kernel variance
    ``σ² = sigma_squared · max(1, λmax − λmin)``; the result is normalized to unit mass.
    Returns ``(grid, density)``.
    """
    lam_max = float(np.mean(np.max(sd.nodes, axis=1))) + overhead
    lam_min = float(np.mean(np.min(sd.nodes, axis=1))) - overhead
    grid = np.linspace(lam_min, lam_max, bins)
    var = sigma_squared * max(1.0, lam_max - lam_min)
    density = np.zeros(bins)
    for nodes, weights in zip(sd.nodes, sd.weights, strict=True):
        kern = np.exp(-((grid[:, None] - nodes[None, :]) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
        density += kern @ weights
    density /= len(sd.nodes)
    mass = density.sum() * (grid[1] - grid[0])
    return grid, density / mass if mass > 0 else density
