"""Lanczos with full reorthogonalization (Golub & Van Loan §10.1): extremal eigenpairs of a
symmetric operator, the Ritz values' residuals and error estimates, the stopping rules, and
independent recurrences run in lockstep (one k-vector product per step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from landscape.errors import ConfigError
from landscape.linalg._base import Matmat, Matvec


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


class _Recurrence:
    """One Lanczos recurrence from a start vector, advanced one product at a time: :meth:`step`
    takes ``H q_j`` and computes ``α_j``, ``β_j`` and ``w`` (reorthogonalized twice against every
    previous basis vector, "twice is enough"), :meth:`advance` makes ``q_{j+1} = w/β_j``."""

    def __init__(self, v0: torch.Tensor, m: int, size: int, dtype: torch.dtype, device: torch.device,
                 basis_device: torch.device) -> None:
        self.dtype, self.device, self.basis_device = dtype, device, basis_device
        self.q = (v0 / v0.norm()).to(device, dtype)
        self.basis = torch.zeros(m, size, dtype=dtype, device=basis_device)
        self.basis[0] = self.q.to(basis_device)
        self.basis_bytes = self.basis.numel() * self.basis.element_size()
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.beta = torch.zeros((), dtype=dtype, device=device)
        self.beta_f, self.alpha_max = 0.0, 0.0
        self.eps = torch.finfo(dtype).eps
        self.w: torch.Tensor | None = None
        self.evals: torch.Tensor | None = None
        self.evecs: torch.Tensor | None = None
        self.converged = False

    def step(self, hq: torch.Tensor) -> bool:
        """Take ``H q_j``; return whether the Krylov space is invariant (``β_j ≈ 0``)."""
        j = len(self.alphas)
        q, basis = self.q, self.basis
        w = hq.to(self.dtype)
        alpha = torch.dot(q, w)
        w = w - alpha * q - (self.beta * basis[j - 1].to(self.device) if j > 0 else 0.0)
        for _ in range(2):  # full reorthogonalization, twice ("twice is enough")
            vb = basis[: j + 1]
            w = w - (vb.T @ (vb @ w.to(self.basis_device))).to(self.device)
        self.beta = w.norm()
        ab = torch.stack([alpha, self.beta]).double().cpu()  # one device sync per step
        self.alphas.append(float(ab[0]))
        self.beta_f = float(ab[1])
        self.alpha_max = max(self.alpha_max, abs(self.alphas[-1]))
        self.w = w
        return self.beta_f <= self.eps * 100 * self.alpha_max or self.beta_f == 0.0

    def advance(self) -> None:
        self.betas.append(self.beta_f)
        self.q = self.w / self.beta
        self.basis[len(self.alphas)] = self.q.to(self.basis_device)

    def result(self, size: int, top_k: int, bottom_k: int, gap: float | None, eigenvectors: bool) -> LanczosResult:
        """The result once the recurrence has stopped (its basis is then freed)."""
        steps = len(self.alphas)
        evals, evecs, converged = self.evals, self.evecs, self.converged  # computed at the last step
        residuals = (self.beta_f * evecs[-1]).abs()
        if steps == size:
            residuals = torch.zeros_like(residuals)
            converged = True
        vectors = None
        if eigenvectors:
            wanted = _wanted(steps, top_k, bottom_k)
            vectors = (self.basis[:steps].T.to(self.device) @ evecs[:, wanted].to(self.device, self.dtype))
        self.basis = self.w = None
        scale = float(evals.abs().max()) if len(evals) else 0.0
        return LanczosResult(
            eigenvalues=evals,
            eigenvectors=vectors,
            residuals=residuals,
            alphas=torch.tensor(self.alphas, dtype=torch.float64),
            betas=torch.tensor(self.betas[: steps - 1], dtype=torch.float64),
            steps=steps,
            converged=converged,
            first_components=evecs[0].clone(),
            basis_bytes=self.basis_bytes,
            errors=ritz_errors(evals, residuals, None if gap is None else gap * scale),
        )


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
    ``v0``: the start vector (default: Gaussian, from ``seed``); ``on_step(j)`` after step ``j``.
    """
    if v0 is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        v0 = torch.randn(size, generator=g, dtype=torch.float64)
    (res,) = _run(lambda qs: [matvec(qs[0])], [v0], size, max_steps=max_steps, top_k=top_k, bottom_k=bottom_k,
                  tol=tol, dtype=dtype, device=device, basis_device=basis_device, eigenvectors=eigenvectors,
                  check_every=check_every, rule=rule, gap=gap, on_step=on_step)
    return res


def lanczos_lockstep(
    matmat: Matmat,
    size: int,
    starts: Sequence[torch.Tensor],
    *,
    max_steps: int = 100,
    top_k: int = 5,
    bottom_k: int = 0,
    tol: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    basis_device: torch.device | str | None = None,
    eigenvectors: bool = False,
    check_every: int = 1,
    rule: str = "residual",
    gap: float | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[LanczosResult]:
    """Independent :func:`lanczos` recurrences, one from each of ``starts``, run in lockstep.

    Each step is ONE ``matmat`` (e.g. :meth:`HessianOperator.matmat`: one pass over the batches)
    on the current vectors of the recurrences still running; each recurrence keeps its own basis
    (reorthogonalized in full), Ritz values and stopping rule (the keywords are :func:`lanczos`'s),
    and leaves the block when it stops. The results equal :func:`lanczos` from each start to the
    rounding of the products (identical where ``matmat``'s rows are bit-equal to ``matvec``'s).
    Memory: the bases of all recurrences at once (``k × m × P``). ``on_step(j)`` after step ``j``
    of each recurrence.
    """

    def product(qs: list[torch.Tensor]) -> list[torch.Tensor]:
        # each row copied to its own storage: a BLAS dot on a row view (other alignment) may round
        # differently, and so the recurrences stay bit-equal to lanczos's where the products are
        return [row.clone() for row in matmat(torch.stack(qs))]

    return _run(product, list(starts), size, max_steps=max_steps, top_k=top_k, bottom_k=bottom_k, tol=tol,
                dtype=dtype, device=device, basis_device=basis_device, eigenvectors=eigenvectors,
                check_every=check_every, rule=rule, gap=gap, on_step=on_step)


def _run(product: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]], starts: list[torch.Tensor], size: int, *,
         max_steps: int, top_k: int, bottom_k: int, tol: float | None, dtype: torch.dtype, device,
         basis_device, eigenvectors: bool, check_every: int, rule: str, gap: float | None,
         on_step: Callable[[int], None] | None) -> list[LanczosResult]:
    """The recurrences from ``starts``, ``product(qs)`` giving ``H q`` for the current vectors of
    those still running; each stops by its own rule."""
    if rule not in LANCZOS_RULES:
        raise ConfigError(f"Lanczos rule must be one of {', '.join(LANCZOS_RULES)}, got {rule!r}")
    if check_every < 1:
        raise ConfigError(f"check_every must be ≥ 1, got {check_every}")
    if max_steps < 1:
        raise ConfigError(f"Lanczos needs max_steps ≥ 1, got {max_steps}")
    device = torch.device(device)
    basis_device = torch.device(basis_device) if basis_device is not None else device
    if tol is None:
        tol = 1e-9 if dtype == torch.float64 else 1e-4
    m = min(max_steps, size)
    recs = [_Recurrence(v0, m, size, dtype, device, basis_device) for v0 in starts]
    results: list[LanczosResult | None] = [None] * len(recs)
    active = list(range(len(recs)))
    for j in range(m):
        if not active:
            break
        running = []
        for i, hq in zip(active, product([recs[i].q for i in active]), strict=True):
            rec = recs[i]
            invariant = rec.step(hq)
            if on_step is not None:
                on_step(j + 1)
            stop = j == m - 1
            if invariant or stop or (j + 1) % check_every == 0:
                rec.evals, rec.evecs = _tridiagonal_eigh(rec.alphas, rec.betas)
                if invariant or (len(rec.evals) >= top_k + bottom_k and _done(
                        rec.evals, rec.beta_f * rec.evecs[-1].abs(), top_k, bottom_k, tol, rule, gap)):
                    rec.converged = stop = True
            if stop:
                results[i] = rec.result(size, top_k, bottom_k, gap, eigenvectors)
            else:
                rec.advance()
                running.append(i)
        active = running
    return results  # type: ignore[return-value]  (every recurrence stops by step m)


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


