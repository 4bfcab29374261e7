"""The conditional-mutual-information score of a measure (Jiang et al. 2020, §5; the PGDL 2020 scoring program's form by default)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from landscape.correlate.checks import _check_axes, _columns, _key
from landscape.errors import ConfigError

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
