"""Stochastic trace estimators of a symmetric operator, each with a standard error: Hutchinson
(1989), Hutch++ (Meyer, Musco, Musco & Woodruff 2021) and Hutch++ with a Lanczos sketch
(krylov++, cf. Chen & Hallman 2023); :func:`estimate_trace` picks one by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from landscape.errors import ConfigError
from landscape.linalg._base import Matmat, Matvec, _rademacher
from landscape.linalg.krylov import lanczos

TRACE_BLOCK = 16  # rows per matmat call: k vectors' products in one pass over the batches

def _products(matvec: Matvec, rows: torch.Tensor, matmat: Matmat | None, block: int):
    """``(i, H r_i)`` for the rows ``r_i``: one ``matvec`` each, or ``matmat`` on blocks of ``block`` rows."""
    if matmat is None:
        for i, r in enumerate(rows):
            yield i, matvec(r)
        return
    for start in range(0, len(rows), block):
        for j, hr in enumerate(matmat(rows[start : start + block])):
            yield start + j, hr


def _quadratic_forms(matvec: Matvec, rows: torch.Tensor, matmat: Matmat | None, block: int) -> np.ndarray:
    """``r_iᵀ H r_i`` for every row (float64 on the host)."""
    return np.array([float(torch.dot(rows[i], hr)) for i, hr in _products(matvec, rows, matmat, block)])


def _standard_error(values: np.ndarray) -> float:
    """``std(values, ddof=1) / √n``: the standard error of their mean (NaN for fewer than 2)."""
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


@dataclass(frozen=True)
class TraceEstimate:
    """An unbiased estimate of ``tr(H)`` with its standard error and the matvecs it used.

    ``samples`` are the per-probe terms whose mean is the estimate (for the deflated estimators,
    the exact part plus each remainder term), so ``standard_error = std(samples)/√len(samples)``.
    """

    estimate: float
    standard_error: float
    samples: np.ndarray
    matvecs: int


def hutchinson(matvec: Matvec, size: int, *, samples: int = 100, seed: int = 0,
               dtype: torch.dtype = torch.float32, device="cpu", matmat: Matmat | None = None,
               block: int = TRACE_BLOCK) -> TraceEstimate:
    r"""Hutchinson (1989): :math:`\mathrm{tr}(H) ≈ \frac1n \sum_i z_i^T H z_i`, ``z_i`` Rademacher.

    Standard error: :math:`s/\sqrt n`, ``s`` the sample standard deviation (ddof 1) of the
    :math:`z_i^T H z_i` (its expectation is :math:`\sqrt{2(\|H\|_F^2 - \sum_i H_{ii}^2)/n}`).
    ``matmat`` (e.g. :meth:`HessianOperator.matmat`): the products ``block`` vectors at a time,
    the same vectors and values as one ``matvec`` each.
    """
    g = torch.Generator().manual_seed(seed)
    z = _rademacher(size, samples, g, dtype, device)
    values = _quadratic_forms(matvec, z, matmat, block)
    return TraceEstimate(float(values.mean()), _standard_error(values), values, samples)


def hutch_plus_plus(matvec: Matvec, size: int, *, matvecs: int = 99, seed: int = 0,
                    dtype: torch.dtype = torch.float32, device="cpu", matmat: Matmat | None = None,
                    block: int = TRACE_BLOCK) -> TraceEstimate:
    r"""Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with ``matvecs`` = 3k products.

    ``Q = orth(H S)`` for Rademacher ``S ∈ R^{P×k}``;
    :math:`\mathrm{tr}(H) ≈ \mathrm{tr}(Q^T H Q) + \frac1k \sum_i p_i^T H p_i`, :math:`p_i = (I - QQ^T) g_i`.
    Given ``Q`` the first term is exact and the second is Hutchinson on the deflated remainder, so
    the standard error is that part's: :math:`s/\sqrt k`, ``s`` the sample standard deviation of
    the :math:`p_i^T H p_i` (an unbiased variance estimate given ``Q``, hence also overall).
    """
    k = max(matvecs // 3, 1)
    g = torch.Generator().manual_seed(seed)
    s = _rademacher(size, k, g, dtype, device)
    hs = torch.empty(size, k, dtype=dtype, device=device)
    for i, hsi in _products(matvec, s, matmat, block):
        hs[:, i] = hsi
    q, _ = torch.linalg.qr(hs)
    qt = q.T.contiguous()
    exact = float(sum(float(torch.dot(qt[i], hqi)) for i, hqi in _products(matvec, qt, matmat, block)))
    gs = _rademacher(size, k, g, dtype, device)
    p = gs - (gs @ q) @ q.T
    values = _quadratic_forms(matvec, p, matmat, block)
    return TraceEstimate(exact + float(values.mean()), _standard_error(values), values + exact, 3 * k)


def krylov_hutch_plus_plus(matvec: Matvec, size: int, *, matvecs: int = 100, seed: int = 0,
                           dtype: torch.dtype = torch.float32, device="cpu", matmat: Matmat | None = None,
                           block: int = TRACE_BLOCK, lanczos_fraction: float = 0.25) -> TraceEstimate:
    r"""Hutch++ with a Krylov sketch: ``m = ⌊lanczos_fraction · matvecs⌋`` (≥ 1) Lanczos steps from
    a Rademacher start, then Hutchinson with the other ``n = matvecs − m`` products on the deflated
    remainder (cf. Chen & Hallman 2023, "Krylov-aware stochastic trace estimation").

    With ``Q`` the orthonormal Lanczos basis and ``T = QᵀHQ`` its tridiagonal matrix,
    :math:`\mathrm{tr}(H) = \mathrm{tr}(T) + \mathrm{tr}((I - QQ^T) H (I - QQ^T))`; ``tr(T)`` (the
    sum of the Ritz values) costs no product beyond the ``m`` steps (Hutch++ spends ``k`` more on
    ``HQ``), and a Krylov space of dimension ``m`` captures the top of a decaying spectrum far
    better than ``orth(HS)`` with ``m`` columns. The remainder is estimated with
    :math:`p_i = (I - QQ^T) g_i`, ``g_i`` Rademacher, independent of ``Q``: unbiased given ``Q``.
    Standard error: :math:`s/\sqrt n`, ``s`` the sample standard deviation of the
    :math:`p_i^T H p_i` (as Hutch++'s). Lanczos stops early at an invariant subspace (fewer
    products); when it spans ``R^P`` (``m = P``), ``tr(T)`` is the trace (standard error 0).
    """
    steps = min(max(int(lanczos_fraction * matvecs), 1), size)
    n = max(matvecs - steps, 0)
    g = torch.Generator().manual_seed(seed)
    v0 = _rademacher(size, 1, g, torch.float64, "cpu")[0]
    res = lanczos(matvec, size, max_steps=steps, top_k=steps, bottom_k=0, tol=0.0, v0=v0, dtype=dtype,
                  device=device, check_every=10**9, eigenvectors=True)
    q = res.eigenvectors  # P × steps, orthonormal (rotated Lanczos basis): tr(QᵀHQ) = Σ θ
    exact = float(res.eigenvalues.sum())
    n = 0 if res.steps == size else n  # Q spans R^P: tr(T) is the trace
    gs = _rademacher(size, n, g, dtype, device)
    p = gs - (gs @ q) @ q.T
    values = _quadratic_forms(matvec, p, matmat, block) if n else np.zeros(0)
    estimate = exact + (float(values.mean()) if n else 0.0)
    se = _standard_error(values) if res.steps < size else 0.0
    return TraceEstimate(estimate, se, values + exact, res.steps + n)


TRACE_ESTIMATORS = {"hutchinson": hutchinson, "hutch++": hutch_plus_plus, "krylov++": krylov_hutch_plus_plus}


def estimate_trace(method: str, matvec: Matvec, size: int, *, matvecs: int, seed: int = 0,
                   dtype: torch.dtype = torch.float32, device="cpu", matmat: Matmat | None = None,
                   block: int = TRACE_BLOCK) -> TraceEstimate:
    """``tr(H)`` by one of :data:`TRACE_ESTIMATORS` with a budget of ``matvecs`` products."""
    if method not in TRACE_ESTIMATORS:
        raise ConfigError(f"trace method must be one of {', '.join(TRACE_ESTIMATORS)}, got {method!r}")
    budget = {"samples": matvecs} if method == "hutchinson" else {"matvecs": matvecs}
    return TRACE_ESTIMATORS[method](matvec, size, seed=seed, dtype=dtype, device=device, matmat=matmat,
                                    block=block, **budget)


