"""Correlating complexity measures with generalization (Jiang et al. 2019; PGDL 2020).

Pure functions over arrays and run records; no file I/O. A *record* is a dict describing one
trained run: its hyper-parameter values (e.g. ``{"lr": 0.1, "depth": 4}``) plus numbers such as
``train_acc``, ``test_acc`` and the measures under study.

References
----------
- Y. Jiang, B. Neyshabur, H. Mobahi, D. Krishnan, S. Bengio, "Fantastic Generalization Measures
  and Where to Find Them", ICLR 2020 (arXiv:1912.02178, 2019): Kendall's τ over runs, the
  granulated Kendall coefficient Ψ (§4), and the conditional-mutual-information score (§5).
- Y. Jiang et al., "NeurIPS 2020 Competition: Predicting Generalization in Deep Learning"
  (PGDL, arXiv:2012.07976), whose scoring program (``scoring_program/mutual_information.py`` of
  the competition's starting kit) defines the CMI score used by default here.

Conventions
-----------
- Generalization gap ``g = train_acc − test_acc`` (or ``test_loss − train_loss``); a good
  measure μ grows with g, so positive τ / Ψ / high CMI is good.
- The CMI score defaults to the PGDL 2020 scoring program's form (``variant="pgdl"``: pairs of
  axes, every ordered pair of runs including self-pairs, cells averaged uniformly); the toolkit's
  earlier form is ``variant="landscape"``.
- Seed is not an axis: :func:`seed_groups` finds the runs that differ only in their seed, which
  callers (``landscape.study.correlation_table``) average into one configuration.
- Every function checks its input and raises :class:`~landscape.errors.ConfigError` (one line)
  on length mismatch, fewer than 2 runs, NaN/inf values, or an unknown axis / key.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from .errors import ConfigError

__all__ = [
    "CMI_VARIANTS",
    "bootstrap_ci",
    "conditional_mutual_information",
    "generalization_gap",
    "granulated_kendall",
    "kendall_tau",
    "seed_groups",
    "spearman",
]


# --------------------------------------------------------------------------- validation


def _vector(x: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name} must be a 1-D array of numbers ({e})") from None
    if a.ndim != 1:
        raise ConfigError(f"{name} must be 1-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ConfigError(f"{name} has a NaN or infinite value (run {bad}); drop or fix that run")
    return a


def _pair(measure: Any, gap: Any) -> tuple[np.ndarray, np.ndarray]:
    m, g = _vector(measure, "measure"), _vector(gap, "gap")
    if m.shape != g.shape:
        raise ConfigError(f"measure has {m.size} runs but gap has {g.size}; they must match")
    if m.size < 2:
        raise ConfigError(f"need at least 2 runs to correlate, got {m.size}")
    return m, g


def _check_records(records: Sequence[Mapping], keys: Sequence[str]) -> None:
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise ConfigError("records must be a list of dicts, one per run")
    if len(records) < 2:
        raise ConfigError(f"need at least 2 runs (records), got {len(records)}")
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ConfigError(f"record {i} is a {type(r).__name__}, not a dict")
        for k in keys:
            if k not in r:
                known = ", ".join(sorted(map(str, r))) or "none"
                raise ConfigError(f"unknown key or axis {k!r} (record {i} has: {known})")


def _check_axes(axes: Sequence[str], measure: str, gap: str) -> list[str]:
    if isinstance(axes, str):
        axes = [axes]
    axes = list(axes)
    if not axes:
        raise ConfigError("axes is empty; name at least one hyper-parameter axis")
    if len(set(axes)) != len(axes):
        raise ConfigError(f"axes has duplicates: {axes}")
    for a in axes:
        if a in (measure, gap):
            raise ConfigError(f"axis {a!r} is also the measure or the gap key")
    return axes


def _key(v: Any) -> Hashable:
    """A hashable stand-in for a hyper-parameter value (lists → tuples, else repr)."""
    if isinstance(v, Hashable):
        return v
    if isinstance(v, (list, tuple)):
        return tuple(_key(x) for x in v)
    return repr(v)


def _columns(
    records: Sequence[Mapping], measure: str, gap: str, axes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    _check_records(records, [*axes, measure, gap])
    m = _vector([r[measure] for r in records], f"measure {measure!r}")
    g = _vector([r[gap] for r in records], f"gap {gap!r}")
    return m, g


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


# --------------------------------------------------------------------------- mutual information


def _entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Entropy (bits) of each row of a non-negative count array; 0 for an empty row."""
    tot = counts.sum(axis=-1, keepdims=True)
    p = np.divide(counts, tot, out=np.zeros_like(counts, dtype=float), where=tot > 0)
    logp = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logp).sum(axis=-1)


CMI_VARIANTS = ("pgdl", "landscape")


def _axis_codes(records: Sequence[Mapping], axes: Sequence[str]) -> np.ndarray:
    """``(n_runs, n_axes)`` integer codes of the runs' values on each axis."""
    codes = np.empty((len(records), len(axes)), dtype=np.int64)
    for c, a in enumerate(axes):
        lookup: dict[Hashable, int] = {}
        codes[:, c] = [lookup.setdefault(_key(r[a]), len(lookup)) for r in records]
    return codes


def _cell_tables(
    codes: np.ndarray, i: np.ndarray, j: np.ndarray, outcome: np.ndarray, S: tuple[int, ...]
) -> np.ndarray:
    """``(n_cells, 2, 2)`` counts of (V_g, V_μ) over the pairs in each cell
    ``U_S = (θ_i^S, θ_j^S)``; only cells holding at least one pair."""
    if S:
        cols = np.concatenate([codes[i][:, S], codes[j][:, S]], axis=1)
        _, cell = np.unique(cols, axis=0, return_inverse=True)
        cell = cell.ravel()
    else:
        cell = np.zeros(i.size, dtype=np.int64)
    n_cells = int(cell.max()) + 1
    return np.bincount(4 * cell + outcome, minlength=4 * n_cells).reshape(n_cells, 2, 2)


def conditional_mutual_information(
    records: Sequence[Mapping],
    measure: str,
    gap: str,
    axes: Sequence[str],
    variant: str = "pgdl",
    max_set_size: int | None = None,
) -> dict:
    """Conditional-mutual-information score of a measure (Jiang et al. 2019, §5; PGDL 2020).

    Over ordered pairs of runs ``(i, j)`` let ``V_g = [g_i > g_j]`` and ``V_μ = [μ_i > μ_j]``
    (a tie counts as "not greater"). For a set S of hyper-parameter axes the *cell* of a pair is
    ``U_S = (θ_i^S, θ_j^S)``, the two runs' values on S. In each cell u, with plug-in
    probabilities over its pairs and in bits, ``I_u = I(V_μ; V_g | U_S=u)`` and
    ``H_u = H(V_g | U_S=u)``; the score of S is

    .. math:: \\tilde I_S = \\frac{\\sum_u w_u I_u}{\\sum_u w_u H_u}, \\qquad
              K(μ) = \\min_S \\tilde I_S ,

    in [0, 1]: 1 when the measure's ordering determines the gap's ordering whatever the
    hyper-parameters held fixed, ≈ 0 when it carries no information about it beyond them.

    ``variant="pgdl"`` (default) is the PGDL 2020 scoring program
    (``scoring_program/mutual_information.py``): S ranges over the pairs of axes (sets of size
    exactly 2), every ordered pair of runs counts, self-pairs ``(i, i)`` and gap ties included
    (as "not greater"), and cells are weighted uniformly, ``w_u = 1``. On a complete grid (what
    PGDL requires) every cell holds pairs and this is PGDL's number; on an incomplete grid
    PGDL's empty cells are NaN, and here only cells holding pairs are averaged. Needs ≥ 2 axes.
    PGDL adds 1e-12 inside the logarithm of its entropy; that shifts its scores by ~1e-12.

    ``variant="landscape"`` is this toolkit's earlier form: S ranges over every subset of size
    ≤ ``max_set_size`` (default 2; the empty set included), self-pairs and pairs whose gaps tie
    are dropped (V_g is undefined for them), and cells are weighted by ``w_u = p(u)``, i.e.
    ``Ĩ_S = I(V_μ; V_g | U_S) / H(V_g | U_S)``. It is usually lower than PGDL's (sets of
    size 0 and 1 are also candidates for the minimum).

    A set whose weighted gap entropy is 0 (its axes already fix the gap's ordering) is undefined
    (NaN in ``per_set``) and skipped; if every set is, the score is NaN and ``argmin`` None.
    Returns ``{"score": K, "argmin": S (tuple of axes), "per_set": {S: Ĩ_S}, "variant": …}``.
    """
    if variant not in CMI_VARIANTS:
        raise ConfigError(f"unknown CMI variant {variant!r}; use one of {', '.join(CMI_VARIANTS)}")
    axes = _check_axes(axes, measure, gap)
    if variant == "pgdl":
        if max_set_size not in (None, 2):
            raise ConfigError(
                f"the PGDL CMI conditions on sets of exactly 2 axes (max_set_size={max_set_size!r});"
                " use variant='landscape' for other sizes"
            )
        if len(axes) < 2:
            raise ConfigError(
                f"the PGDL CMI conditions on pairs of axes and needs at least 2, got {axes}; "
                "name more axes or use variant='landscape'"
            )
    elif max_set_size is None:
        max_set_size = 2
    if variant == "landscape" and (
        isinstance(max_set_size, bool) or not isinstance(max_set_size, (int, np.integer))
        or max_set_size < 0
    ):
        raise ConfigError(f"max_set_size must be a non-negative integer, got {max_set_size!r}")
    m, g = _columns(records, measure, gap, axes)
    n = m.size
    if np.all(g == g[0]):
        raise ConfigError("every run has the same gap; its ordering carries no information")
    codes = _axis_codes(records, axes)

    if variant == "pgdl":
        i, j = (a.ravel() for a in np.indices((n, n)))  # every ordered pair, self-pairs included
        sets = list(itertools.combinations(range(len(axes)), 2))
    else:
        i, j = np.nonzero(~np.eye(n, dtype=bool))
        keep = g[i] != g[j]
        i, j = i[keep], j[keep]
        sizes = range(min(max_set_size, len(axes)) + 1)
        sets = [S for k in sizes for S in itertools.combinations(range(len(axes)), k)]
    vg = (g[i] > g[j]).astype(np.int64)
    vm = (m[i] > m[j]).astype(np.int64)
    outcome = 2 * vg + vm  # 0..3: (V_g, V_μ)

    per_set: dict[tuple[str, ...], float] = {}
    for S in sets:
        joint = _cell_tables(codes, i, j, outcome, S)
        h_g = _entropy_bits(joint.sum(axis=2))  # H(V_g | U=u)
        h_m = _entropy_bits(joint.sum(axis=1))  # H(V_μ | U=u)
        h_gm = _entropy_bits(joint.reshape(-1, 4))  # H(V_g, V_μ | U=u)
        if variant == "pgdl":
            weight = np.full(joint.shape[0], 1.0 / joint.shape[0])  # uniform over cells
        else:
            weight = joint.sum(axis=(1, 2)) / i.size  # p(u)
        cmi, hg = float(weight @ (h_g + h_m - h_gm)), float(weight @ h_g)
        name = tuple(axes[k] for k in S)
        per_set[name] = max(cmi, 0.0) / hg if hg > 1e-12 else float("nan")
    valid = {k: v for k, v in per_set.items() if not math.isnan(v)}
    if not valid:
        return {"score": float("nan"), "argmin": None, "per_set": per_set, "variant": variant}
    argmin = min(valid, key=valid.__getitem__)
    return {"score": valid[argmin], "argmin": argmin, "per_set": per_set, "variant": variant}


# --------------------------------------------------------------------------- seeds


def seed_groups(
    records: Sequence[Mapping], config_keys: Sequence[str], seed: str = "seed"
) -> list[list[int]]:
    """Indices of the runs to average into one configuration: runs that agree on every key of
    ``config_keys`` (the ``seed`` key excepted; a key a run lacks counts as None) and differ in
    ``seed`` form one group. Runs whose configuration, seed included, is shared by no run with
    another seed stay alone (two copies of one run are two runs, not two seeds). Groups are
    listed in the order of their first run."""
    _check_records(records, [])
    keys = [k for k in dict.fromkeys(config_keys) if k != seed]
    by_config: dict[tuple, list[int]] = {}
    for k, r in enumerate(records):
        by_config.setdefault(tuple(_key(r.get(c)) for c in keys), []).append(k)
    groups: list[list[int]] = []
    for idx in by_config.values():
        if len({_key(records[k].get(seed)) for k in idx}) > 1:
            groups.append(idx)
        else:
            groups.extend([k] for k in idx)
    return sorted(groups, key=lambda grp: grp[0])


# --------------------------------------------------------------------------- gaps


def generalization_gap(records: Sequence[Mapping], kind: str = "acc") -> np.ndarray:
    """Generalization gap per run: ``train_acc − test_acc`` (``kind="acc"``) or
    ``test_loss − train_loss`` (``kind="loss"``) (Jiang et al. 2019, §2). Larger = worse."""
    if kind == "acc":
        keys = ("train_acc", "test_acc")
    elif kind == "loss":
        keys = ("test_loss", "train_loss")
    else:
        raise ConfigError(f"unknown gap kind {kind!r}; use 'acc' or 'loss'")
    _check_records(records, keys)
    first = _vector([r[keys[0]] for r in records], keys[0])
    second = _vector([r[keys[1]] for r in records], keys[1])
    return first - second
