r"""Coherence and GSNR from the sums over the examples: :class:`GradientStatistics` holds
:math:`S = \sum_i g_i` and :math:`Q = \sum_i g_i^{\odot 2}`; :func:`gsnr` and :func:`summarize`
compute every reported number from them (formulas: :mod:`landscape.probes.coherence`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from landscape.errors import ConfigError

QUANTILE_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class GradientStatistics:
    """Sums over m examples of per-example gradients: ``sum[name]`` = Σ_i g_i and ``sum_sq[name]``
    = Σ_i g_i² (elementwise), float64, one entry per parameter; ``method[name]`` says which path
    computed ``sum_sq`` ("hooks" or "vmap"); ``eps`` is the machine epsilon of the dtype the
    gradients were computed in (it sets the round-off floor of the variance)."""

    count: int
    sum: dict[str, torch.Tensor]
    sum_sq: dict[str, torch.Tensor]
    method: dict[str, str] = field(default_factory=dict)
    eps: float = float(np.finfo(np.float64).eps)

    def sum_norm_sq(self, names: Sequence[str] | None = None) -> float:
        """Σ_i ‖g_i‖² over the parameters ``names`` (all by default) = Σ_j Q_j."""
        names = list(self.sum_sq) if names is None else names
        return float(sum(self.sum_sq[n].sum() for n in names))


def _flat(stats: GradientStatistics) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Σg and Σg² as flat float64 arrays (in the order of ``stats.sum``) and each parameter's size."""
    names = list(stats.sum)
    s = torch.cat([stats.sum[n].reshape(-1) for n in names]).double().cpu().numpy()
    q = torch.cat([stats.sum_sq[n].reshape(-1) for n in names]).double().cpu().numpy()
    return s, q, [stats.sum[n].numel() for n in names]


def gsnr(stats: GradientStatistics, ddof: int = 1, flat: tuple | None = None) -> dict[str, np.ndarray]:
    """Per-parameter GSNR r_j = ḡ_j² / Var(g_j), Var with 1/(m − ddof), flattened in the order of
    ``stats.sum``. Entries whose gradient is zero for every example are NaN (undefined); zero
    variance with a nonzero mean gives +inf, where "zero" means Σ_i g_ij² − m ḡ_j² ≤ 4√m·eps·Σ_i g_ij²
    (below the round-off of the sums; in float32 with m = 512, GSNRs above ≈ 10⁵ read as ∞)."""
    m = stats.count
    if m - ddof < 1:
        raise ConfigError(f"GSNR needs more than {ddof} example(s), got {m}")
    s, q, _ = flat if flat is not None else _flat(stats)
    mean = s / m
    spread = q - m * mean**2
    spread[spread <= 4 * math.sqrt(m) * stats.eps * q] = 0.0
    var = spread / (m - ddof)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = mean**2 / var
    r[q == 0] = np.nan
    return {"gsnr": r, "mean": mean, "var": var}


def summarize(
    stats: GradientStatistics,
    *,
    per_layer: bool = True,
    histogram_bins: int = 50,
    histogram_range: tuple[float, float] | None = None,
    ddof: int = 1,
    flat: tuple[np.ndarray, np.ndarray, list[int]] | None = None,
) -> dict[str, Any]:
    """Coherence, normalized coherence and GSNR summaries from the sums (see :mod:`landscape.probes.coherence`);
    ``flat``: :func:`_flat` of ``stats`` when the caller has it already."""
    m = stats.count
    flat = _flat(stats) if flat is None else flat
    s, q, sizes = flat
    norm_of_sum = _segment_sums(s * s, sizes)  # per parameter: ‖Σ_i g_i‖²
    sum_of_norm = _segment_sums(q, sizes)  # per parameter: Σ_i ‖g_i‖²
    sum_norm, norm_sum = float(sum_of_norm.sum()), float(norm_of_sum.sum())
    m_alpha = norm_sum / sum_norm if sum_norm > 0 else float("nan")
    out: dict[str, Any] = {
        "alpha": m_alpha / m,
        "m_alpha": m_alpha,
        "num_samples": m,
        "num_params": int(s.size),
        "mean_grad_norm_sq": norm_sum / m**2,  # ‖E g‖²
        "mean_sq_grad_norm": sum_norm / m,  # E ‖g‖²
    }
    r = gsnr(stats, ddof, flat)["gsnr"]
    finite = r[np.isfinite(r)]
    out["gsnr_ddof"] = ddof
    out["gsnr_num_finite"] = int(finite.size)
    out["gsnr_num_infinite"] = int(np.isinf(r).sum())
    out["gsnr_num_undefined"] = int(r.size - finite.size - out["gsnr_num_infinite"])
    out["gsnr_mean"] = float(finite.mean()) if finite.size else float("nan")
    # the same order statistics from a sorted copy: numpy's SIMD sort beats its multi-kth partition
    quantiles = (np.quantile(np.sort(finite), QUANTILE_LEVELS) if finite.size
                 else np.full(len(QUANTILE_LEVELS), np.nan))
    out["gsnr_median"] = float(quantiles[QUANTILE_LEVELS.index(0.5)])  # one partition for all levels
    out["gsnr_quantile_levels"] = np.array(QUANTILE_LEVELS)
    out["gsnr_quantiles"] = quantiles
    logs = np.log10(finite[finite > 0])
    hist, edges = np.histogram(logs, bins=histogram_bins, range=histogram_range)
    out["gsnr_hist"] = hist.astype(np.int64)
    out["gsnr_bin_edges"] = edges
    if per_layer:
        out["layers"] = _per_layer(stats, norm_of_sum, sum_of_norm, sizes)
    return out


def _segment_sums(values: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Sum of each consecutive block of ``values`` of the given ``sizes`` (0 for an empty block)."""
    out = np.zeros(len(sizes))
    nonempty = np.flatnonzero(np.asarray(sizes) > 0)
    if nonempty.size:
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])[nonempty]
        out[nonempty] = np.add.reduceat(values, starts)
    return out


def _per_layer(stats: GradientStatistics, norm_of_sum, sum_of_norm, sizes) -> dict[str, Any]:
    blocks: dict[str, list[int]] = {}  # grouped as landscape.params.layer_blocks does
    params = list(stats.sum)
    for k, name in enumerate(params):
        owner = name.rsplit(".", 1)[0] if "." in name else name
        blocks.setdefault(owner, []).append(k)
    names, m_alphas, counts, methods = [], [], [], []
    for layer, ks in blocks.items():
        total = float(sum_of_norm[ks].sum())
        m_alphas.append(float(norm_of_sum[ks].sum()) / total if total > 0 else float("nan"))
        names.append(layer)
        counts.append(sum(sizes[k] for k in ks))
        methods.append("+".join(sorted({stats.method.get(params[k], "?") for k in ks})))
    return {
        "names": names,
        "alpha": np.array(m_alphas) / stats.count,
        "m_alpha": np.array(m_alphas),
        "num_params": np.array(counts, dtype=np.int64),
        "method": methods,
    }

