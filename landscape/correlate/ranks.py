"""Rank correlations of a measure with the gap: Kendall's τ, Spearman's ρ, their bootstrap confidence interval, and the granulated Kendall coefficient Ψ (Jiang et al. 2020, §4)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from landscape.correlate.checks import _check_axes, _columns, _key, _pair
from landscape.errors import ConfigError

# --------------------------------------------------------------------------- rank correlations


def kendall_tau(measure: Any, gap: Any) -> float:
    """Jiang et al.'s Kendall coefficient over runs (Jiang et al. 2019, eq. 3):

    .. math:: τ = \\frac{1}{n(n-1)} \\sum_{i \\ne j} \\operatorname{sign}(μ_i − μ_j)\\,
              \\operatorname{sign}(g_i − g_j),

    in [−1, 1]; a tie in either variable contributes 0 (this is tau-a: it equals SciPy's
    tau-b only when there are no ties). O(n²) time and memory.
    """
    m, g = _pair(measure, gap)
    n = m.size
    s = np.sign(m[:, None] - m[None, :]) * np.sign(g[:, None] - g[None, :])
    return float(s.sum() / (n * (n - 1)))


def spearman(measure: Any, gap: Any) -> float:
    """Spearman's rank correlation ρ: the Pearson correlation of the ranks (ties get their
    average rank), as in ``scipy.stats.spearmanr``. NaN when either variable is constant."""
    m, g = _pair(measure, gap)
    rm, rg = rankdata(m) - (m.size + 1) / 2, rankdata(g) - (g.size + 1) / 2
    den = math.sqrt(float(rm @ rm) * float(rg @ rg))
    return float(rm @ rg / den) if den > 0 else float("nan")


def _bootstrap_kendall(m: np.ndarray, g: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """:func:`kendall_tau` of every resample ``(m[idx[b]], g[idx[b]])`` at once.

    With ``P_kl = sign(μ_k − μ_l) sign(g_k − g_l)`` over the original runs and ``c_b`` the number
    of times each run is drawn in resample b, that resample's sum over its ordered pairs is
    ``c_bᵀ P c_b`` (a repeated run ties with itself: ``P_kk = 0``), so τ_b = c_bᵀ P c_b / (n(n−1)).
    """
    n_boot, n = idx.shape
    p = np.sign(m[:, None] - m[None, :]) * np.sign(g[:, None] - g[None, :])
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    counts = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)
    return np.einsum("bk,bk->b", counts @ p, counts) / (n * (n - 1))


def _batched_spearman(m: np.ndarray, g: np.ndarray) -> np.ndarray:
    """:func:`spearman` of each row of ``(B, n)`` arrays (NaN where a row is constant)."""
    n = m.shape[1]
    rm = rankdata(m, axis=1) - (n + 1) / 2
    rg = rankdata(g, axis=1) - (n + 1) / 2
    den = np.sqrt((rm * rm).sum(axis=1) * (rg * rg).sum(axis=1))
    num = (rm * rg).sum(axis=1)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def bootstrap_ci(
    measure: Any,
    gap: Any,
    stat: Callable[[np.ndarray, np.ndarray], float] = kendall_tau,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval for ``stat(measure, gap)``, resampling runs (pairs
    (μ_i, g_i)) with replacement (Efron & Tibshirani 1993, §13.3).

    Returns the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of the ``n_boot`` resampled
    statistics (resamples where ``stat`` is NaN are ignored). The resample indices are drawn at
    once, ``default_rng(seed).integers(0, n, size=(n_boot, n))`` (row b is resample b), so the
    same seed gives the same interval. :func:`kendall_tau` and :func:`spearman` are evaluated
    on all resamples at once (numpy, no Python loop over resamples); any other ``stat`` is
    called once per resample. Caveat: a resample repeats runs and repeated runs tie, so
    resampled τ is shrunk towards 0 by a factor ≈ 1 − 1/n.
    """
    m, g = _pair(measure, gap)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    n = m.size
    idx = np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n))
    if stat is kendall_tau:
        stats = _bootstrap_kendall(m, g, idx)
    elif stat is spearman:
        stats = _batched_spearman(m[idx], g[idx])
    else:
        stats = np.array([stat(m[row], g[row]) for row in idx], dtype=float)
    if np.all(np.isnan(stats)):
        raise ConfigError("the statistic is NaN on every bootstrap resample (constant data?)")
    alpha = (1 - level) / 2
    low, high = np.nanquantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def granulated_kendall(
    records: Sequence[Mapping], measure: str, gap: str, axes: Sequence[str]
) -> dict:
    """Granulated Kendall coefficient Ψ (Jiang et al. 2019, §4, eq. 4).

    For each axis i in ``axes``, the runs are grouped by their values on every *other* axis
    (so within a group only axis i varies); ``m_i`` is the mean of :func:`kendall_tau` over the
    groups with at least 2 runs, and

    .. math:: Ψ = \\frac{1}{|axes|} \\sum_i m_i .

    Returns ``{"psi": Ψ, "per_axis": {axis: m_i}, "groups": {axis: number of groups used}}``.
    An axis with no group of ≥ 2 runs (e.g. it never varies with the others held fixed) gets
    ``m_i = nan`` and 0 groups and is left out of Ψ; if every axis is like that, ConfigError.
    """
    axes = _check_axes(axes, measure, gap)
    m, g = _columns(records, measure, gap, axes)
    per_axis: dict[str, float] = {}
    n_groups: dict[str, int] = {}
    for a in axes:
        others = [b for b in axes if b != a]
        groups: dict[tuple, list[int]] = {}
        for k, r in enumerate(records):
            groups.setdefault(tuple(_key(r[b]) for b in others), []).append(k)
        taus = [kendall_tau(m[idx], g[idx]) for idx in groups.values() if len(idx) >= 2]
        per_axis[a] = float(np.mean(taus)) if taus else float("nan")
        n_groups[a] = len(taus)
    used = [v for v in per_axis.values() if not math.isnan(v)]
    if not used:
        raise ConfigError(
            "no axis has a group of ≥ 2 runs that differ only along it; "
            "granulated Kendall needs runs on a (partial) grid"
        )
    return {"psi": float(np.mean(used)), "per_axis": per_axis, "groups": n_groups}
