r"""Spectral rank measures of a representation: RankMe, effective rank, α-ReQ.

For an embedding matrix :math:`Z \in \mathbb{R}^{N\times K}` (rows = samples) with singular
values :math:`\sigma_1 \ge \dots \ge \sigma_{\min(N,K)}`:

* **RankMe** (Garrido, Balestriero, Najman & LeCun 2023, "RankMe: Assessing the downstream
  performance of pretrained self-supervised representations by their rank", ICML)

  .. math::

      \mathrm{RankMe}(Z) = \exp\Bigl(-\sum_k p_k \log p_k\Bigr), \qquad
      p_k = \frac{\sigma_k(Z)}{\lVert\sigma(Z)\rVert_1} + \varepsilon,

  natural log, :math:`\varepsilon = 10^{-7}`, singular values of :math:`Z` itself (no
  centring, as in the paper; ``center=True`` subtracts the column means first). The paper
  evaluates it on 25,600 samples.
* **Effective rank** (Roy & Vetterli 2007, "The effective rank: a measure of effective
  dimensionality", EUSIPCO): the same without :math:`\varepsilon`, with :math:`0\log 0 = 0`.
* **α-ReQ** (Agrawal, Mondal, Ghosh & Richards 2022, "α-ReQ: Assessing representation
  quality in self-supervised learning by measuring eigenspectrum decay", NeurIPS): the
  exponent of a power law :math:`\lambda_k \propto k^{-\alpha}` fitted to the eigenvalues
  :math:`\lambda_1 \ge \lambda_2 \ge \dots` of the covariance of :math:`Z` (always centred,
  :math:`\lambda_k = \sigma_k(Z - \bar Z)^2/(N-1)`) by least squares on
  :math:`\log\lambda_k = -\alpha\log k + c` over the ranks

  .. math::

      k_{\mathrm{lo}} = \texttt{alpha_rank_min} \le k \le k_{\mathrm{hi}} =
      \min\bigl(\texttt{alpha_rank_max},\ \lfloor \texttt{alpha_fraction}\cdot r\rfloor\bigr),

  where :math:`r` is the number of eigenvalues above ``alpha_rank_tol`` × :math:`\lambda_1`
  (the numerical rank). Default: :math:`k = 1 \dots \lfloor r/2\rfloor`, unweighted — the
  lower half of a finite-sample spectrum bends towards the noise floor. The reference code
  (reptrix 0.1.0, ``reptrix.alpha.get_alpha``, after Stringer et al. 2019) fits the 0-based
  indices ``np.arange(10, 100)``, i.e. ranks 11…100, with weights :math:`1/k`:
  ``RankMeConfig(alpha_rank_min=11, alpha_rank_max=100, alpha_fraction=1.0,
  alpha_weighting="inverse_rank")`` gives its α (to 1e-9 on a 300-eigenvalue power law; its
  eigenvalues are PCA variance ratios, which moves only the intercept). ``alpha_req_r2`` is the
  (unweighted) coefficient of determination of the fit in log–log space on the fitted ranks
  (reptrix's ``fit_R2`` spans ranks 11 … min(500, K − 10) instead). Fewer than two ranks to
  fit → NaN. reptrix's ``get_rankme`` is the entropy of the centred covariance eigenvalues, not
  of :math:`\sigma(Z)` as in Garrido et al. and here: a different number.

Computed in float64 on ``Z``'s device with ``torch.linalg.svdvals``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape.errors import ConfigError, LandscapeError
from landscape.features import FeatureSettings, check_finite_features, split_features
from landscape.probes.base import ProbeContext, register_probe, setting

__all__ = ["RankMeConfig", "rankme", "power_law_fit"]

_WEIGHTINGS = ("none", "inverse_rank")


@dataclass(frozen=True)
class RankMeConfig:
    """Options of :func:`rankme` (see the module docstring for the formulas)."""

    eps: float = setting(1e-7, "ε added to the normalized singular values before the entropy.")
    center: bool = setting(False, "Center the features before the SVD.")
    alpha_rank_min: int = setting(1, "α-ReQ: first rank of the power-law fit.")
    alpha_rank_max: int | None = setting(None, "α-ReQ: last rank of the fit (None: from "
                                               "alpha_fraction).")
    alpha_fraction: float = setting(0.5, "α-ReQ: fraction of the spectrum fitted when "
                                         "alpha_rank_max is None.")
    alpha_weighting: str = setting("none", "α-ReQ fit weights: none or inverse_rank.")
    alpha_rank_tol: float = setting(1e-12, "α-ReQ: eigenvalues at or below this × the largest are"
                                           " left out.")

    def __post_init__(self) -> None:
        if self.eps < 0:
            raise ConfigError(f"eps must be ≥ 0, got {self.eps}")
        if self.alpha_rank_min < 1:
            raise ConfigError(f"alpha_rank_min is a 1-based rank, got {self.alpha_rank_min}")
        if self.alpha_rank_max is not None and self.alpha_rank_max < self.alpha_rank_min + 1:
            raise ConfigError(
                f"alpha_rank_max ({self.alpha_rank_max}) must exceed alpha_rank_min ({self.alpha_rank_min})"
            )
        if not (0.0 < self.alpha_fraction <= 1.0):
            raise ConfigError(f"alpha_fraction must be in (0, 1], got {self.alpha_fraction}")
        if self.alpha_weighting not in _WEIGHTINGS:
            raise ConfigError(
                f"alpha_weighting must be one of {', '.join(_WEIGHTINGS)}, got {self.alpha_weighting!r}"
            )


def _entropy_exp(p: Tensor) -> float:
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def power_law_fit(
    eigenvalues: np.ndarray, cfg: RankMeConfig = RankMeConfig()
) -> tuple[float, float, float, tuple[int, int]]:
    """Fit :math:`\\log\\lambda_k = -\\alpha\\log k + c` to descending ``eigenvalues`` over the
    rank range of ``cfg``; returns ``(alpha, c, r2, (k_lo, k_hi))`` (ranks 1-based, inclusive)."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.size == 0 or not lam[0] > 0:
        return math.nan, math.nan, math.nan, (0, 0)
    r = int(np.count_nonzero(lam > cfg.alpha_rank_tol * lam[0]))
    k_hi = min(r, math.floor(cfg.alpha_fraction * r))
    if cfg.alpha_rank_max is not None:
        k_hi = min(k_hi, cfg.alpha_rank_max)
    k_lo = cfg.alpha_rank_min
    if k_hi - k_lo + 1 < 2:
        return math.nan, math.nan, math.nan, (k_lo, k_hi)
    k = np.arange(k_lo, k_hi + 1, dtype=np.float64)
    x, y = np.log(k), np.log(lam[k_lo - 1 : k_hi])
    w = 1.0 / k if cfg.alpha_weighting == "inverse_rank" else np.ones_like(k)
    design = np.stack([x, np.ones_like(x)], axis=1)
    sw = np.sqrt(w)
    (slope, intercept), *_ = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)
    resid = y - (slope * x + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return -float(slope), float(intercept), r2, (k_lo, k_hi)


def rankme(Z: Tensor, cfg: RankMeConfig = RankMeConfig()) -> dict[str, Any]:
    """RankMe, effective rank and α-ReQ of the embeddings ``Z`` (``N × K``; ``N × …`` is
    flattened).

    Returns:
        ``rankme``, ``effective_rank``, ``alpha_req``, ``alpha_req_r2``,
        ``alpha_req_intercept`` (floats; ``c`` of the fit), ``alpha_fit_ranks`` (``[k_lo,
        k_hi]``), ``singular_values`` (of ``Z``, centred if ``cfg.center``, descending) and
        ``covariance_eigenvalues`` (descending), numpy. An all-zero ``Z`` gives NaN.
    """
    if not isinstance(Z, Tensor):
        raise ConfigError(f"Z must be a torch.Tensor, got {type(Z).__name__}")
    if Z.ndim < 2 or Z.shape[0] < 1:
        raise ConfigError(f"Z must be N × K with N ≥ 1, got shape {tuple(Z.shape)}")
    z = Z.reshape(Z.shape[0], -1).to(torch.float64)
    if not bool(torch.isfinite(z).all()):
        raise LandscapeError("Z contains NaN or inf; RankMe, effective rank and α-ReQ are undefined")
    if cfg.center:
        z = z - z.mean(0)
    s = torch.linalg.svdvals(z)
    total = float(s.sum())
    if total > 0:
        q = s / total
        rank_me = math.exp(float(-((q + cfg.eps) * (q + cfg.eps).log()).sum()))
        eff = _entropy_exp(q)
    else:
        rank_me = eff = math.nan
    n = z.shape[0]
    zc = z if cfg.center else z - z.mean(0)
    lam = (torch.linalg.svdvals(zc) ** 2 / max(n - 1, 1)).cpu().numpy()
    alpha, intercept, r2, (k_lo, k_hi) = power_law_fit(lam, cfg)
    return {
        "rankme": rank_me,
        "effective_rank": eff,
        "alpha_req": alpha,
        "alpha_req_r2": r2,
        "alpha_req_intercept": intercept,
        "alpha_fit_ranks": np.array([k_lo, k_hi]),
        "singular_values": s.cpu().numpy(),
        "covariance_eigenvalues": lam,
    }


@dataclass(frozen=True)
class RankMeProbeConfig(FeatureSettings, RankMeConfig):
    """The RankMe probe: :class:`RankMeConfig` on the features of :class:`FeatureSettings`."""


@register_probe(
    "rankme", RankMeProbeConfig, summary=("rankme", "effective_rank", "alpha_req"), default=4,
    measures={"rankme_train": "train/rankme"}, families={"representation": ("rankme",)},
    curves=(("RankMe", "rankme", False), ("effective rank", "effective_rank", False), ("α-ReQ", "alpha_req", False)),
    curves_title="RankMe over training", checkpoints="all", cli_names={"splits": ("--split",)},
    cli_help="RankMe, effective rank and α-ReQ of the features, over a run's checkpoints.")
def run_rankme(ctx: ProbeContext, cfg: RankMeProbeConfig) -> dict[str, Any]:
    """RankMe, effective rank and α-ReQ of the features on each split; one subgroup per split."""
    out = {}
    for split, (feats, _, _, _) in split_features(ctx, cfg).items():
        check_finite_features(feats, split, "rankme")
        out[split] = rankme(feats, cfg)
    return out
