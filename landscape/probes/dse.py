r"""Diffusion spectral entropy and mutual information (Liao, Liu et al., "Assessing neural
network representations during training using noise-resilient diffusion spectral entropy",
ICML TAGML workshop 2023 / CISS 2024; code: ChenLiu-1996/DiffusionSpectralEntropy, PyPI
``dse-dsmi``).

**DSE** of :math:`N` points :math:`z_i \in \mathbb{R}^D` (raw features, no centring):

1. if :math:`N >` ``max_n``, keep ``max_n`` rows drawn without replacement by
   ``random.Random(seed).sample(range(N), max_n)`` (the same draw as the package's
   ``random.seed(seed); random.sample(...)``);
2. Gaussian kernel :math:`G_{ij} = \exp(-\lVert z_i - z_j\rVert^2 / 2\sigma^2)` (the
   package's factor :math:`1/(\sigma\sqrt{2\pi})` cancels in step 3);
3. :math:`K = D^{-1/2} G D^{-1/2}`, :math:`D = \operatorname{diag}(G\mathbf 1)`: symmetric,
   with the spectrum of the diffusion operator :math:`P = D^{-1}G`;
4. :math:`\lambda = \lvert\operatorname{eig}(K)\rvert^t`, :math:`p = \lambda / \sum\lambda +
   \epsilon` with :math:`\epsilon` = ``np.finfo(float).eps`` (:math:`2^{-52}`, added to every
   :math:`p_k` after normalizing, as the package does), and

   .. math:: \mathrm{DSE} = -\sum_{k=1}^{N} p_k \log_2 p_k \quad\text{(bits)}.

All :math:`N` eigenvalues are kept, as in ``dse-dsmi`` 1.1; ``drop_trivial=True`` drops the
largest (signed) eigenvalue, :math:`=1`, before step 4, as the repository's older
``api/dse.py`` does. Points much farther apart than :math:`\sigma` give :math:`K = I` and
DSE :math:`= \log_2 N`; identical points give :math:`K = \mathbf 1\mathbf 1^\top/N` and
DSE :math:`\approx 0`. :math:`\sigma` defaults to 10 (the package's default);
``"sqrt_d"`` uses :math:`\sqrt D` (used in one study of the reference repository),
``"median"`` the median of the pairwise distances :math:`\lVert z_i - z_j\rVert`,
:math:`i<j` (median heuristic).

**DSMI** of :math:`Z` and a reference :math:`Y` (class labels, or a continuous variable such
as the inputs):

.. math::

    \mathrm{DSMI}(Z;Y) = \sum_i \frac{n_i}{N}\bigl(H^*_i - H_i\bigr),

:math:`H_i` the DSE of the features of group :math:`i` (:math:`n_i` samples), :math:`H^*_i`
the mean DSE of ``n_random_subsets`` uniformly random subsets of size :math:`n_i` of all
:math:`N` rows. As in the package, the subset generator is re-seeded with ``seed`` for every
group (groups of equal size get the same subsets). Groups: integer ``Y`` (``N`` or ``N × 1``)
are labels; a float ``Y`` of shape ``N`` / ``N × 1`` is min–max scaled and binned into
``n_clusters`` equal-width bins (``np.digitize``); a float ``Y`` with more columns
(``N × …`` is flattened) is clustered by ``sklearn.cluster.SpectralClustering(n_clusters,
affinity="nearest_neighbors", assign_labels="cluster_qr", random_state=seed)``, all as in
``dse_dsmi.diffusion_spectral_mutual_information``. The assignment is returned as
``clusters``: pass it back as an integer ``Y`` to skip re-clustering fixed inputs at the next
checkpoint. A string :math:`\sigma` is resolved once on all of :math:`Z` (on its seeded
subsample of ``max_n`` rows when :math:`N` is larger) and then used for every group and
subset, so the :math:`H_i` and :math:`H^*_i` share one kernel.

Eigenvalues come from ``torch.linalg.eigvalsh`` in float64 on ``Z``'s device (GPU if ``Z``
is on one). Memory is :math:`O(n^2)` for ``n = min(N, max_n)``: 0.8 GB at 10,000 points.
Differences from ``dse-dsmi``: group DSEs larger than ``max_n`` are subsampled with a fresh
``random.Random(seed)`` (the package re-seeds the global ``random`` module there, which also
changes the later random subsets of that group); the kernel's squared distances are computed
as :math:`\lVert z_i\rVert^2 + \lVert z_j\rVert^2 - 2 z_i\cdot z_j` (clamped at 0) instead of
``sklearn.metrics.pairwise_distances`` squared — equal to round-off.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape.core.data import is_stream
from landscape.errors import ConfigError
from landscape.features import FeatureSettings, check_finite_features, split_features
from landscape.probes.base import ProbeContext, register_probe, seed_setting, setting
from landscape.utils import check_allocation

__all__ = ["DSEConfig", "diffusion_spectral_entropy", "diffusion_spectral_mutual_information"]

_SIGMA_RULES = ("sqrt_d", "median")
_EPS = float(np.finfo(float).eps)


@dataclass(frozen=True)
class DSEConfig:
    """Options of :func:`diffusion_spectral_entropy` and
    :func:`diffusion_spectral_mutual_information`.

    Attributes:
        sigma: Gaussian kernel bandwidth, a positive float or ``"sqrt_d"`` / ``"median"``.
        t: diffusion time (power of the eigenvalues), ≥ 1.
        max_n: at most this many points enter one kernel matrix (seeded subsample).
        drop_trivial: drop the top eigenvalue (the older ``api/dse.py`` convention).
        seed: seed of the subsampling, the random subsets of DSMI and spectral clustering.
        n_clusters: groups made from a continuous ``Y`` in DSMI.
        n_random_subsets: random subsets averaged for each :math:`H^*_i` in DSMI.
    """

    sigma: float | str = setting(10.0, "Gaussian kernel bandwidth: a positive number, sqrt_d or "
                                       "median.")
    t: int = setting(1, "Diffusion time (power of the eigenvalues), ≥ 1.")
    max_n: int = setting(10_000, "At most this many points enter one kernel matrix (seeded "
                                 "subsample).")
    drop_trivial: bool = setting(False, "Drop the top eigenvalue (the older api/dse.py "
                                        "convention).")
    seed: int = seed_setting("the subsampling, DSMI's random subsets and the clustering")
    n_clusters: int = setting(10, "Groups made from a continuous Y in DSMI.")
    n_random_subsets: int = setting(5, "Random subsets averaged for each H*_i in DSMI.")

    def __post_init__(self) -> None:
        if isinstance(self.sigma, str):
            if self.sigma not in _SIGMA_RULES:
                raise ConfigError(
                    f"sigma must be a positive number or one of {', '.join(_SIGMA_RULES)}, got {self.sigma!r}"
                )
        elif not (
            isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma > 0
        ):
            raise ConfigError(f"sigma must be a positive number, got {self.sigma!r}")
        if self.t < 1:
            raise ConfigError(f"t must be ≥ 1, got {self.t}")
        if self.max_n < 2:
            raise ConfigError(f"max_n must be ≥ 2, got {self.max_n}")
        if self.n_clusters < 2:
            raise ConfigError(f"n_clusters must be ≥ 2, got {self.n_clusters}")
        if self.n_random_subsets < 1:
            raise ConfigError(f"n_random_subsets must be ≥ 1, got {self.n_random_subsets}")


def _as_points(name: str, z: Tensor | np.ndarray) -> Tensor:
    if isinstance(z, np.ndarray):
        z = torch.from_numpy(z)
    if not isinstance(z, Tensor):
        raise ConfigError(f"{name} must be a tensor or numpy array, got {type(z).__name__}")
    if z.ndim < 2 or z.shape[0] < 1:
        raise ConfigError(f"{name} must be N × D with N ≥ 1, got shape {tuple(z.shape)}")
    z = z.reshape(z.shape[0], -1).to(torch.float64)
    if not bool(torch.isfinite(z).all()):
        raise ConfigError(f"{name} contains NaN or inf")
    return z


def _subsample(z: Tensor, max_n: int, seed: int) -> Tensor:
    if z.shape[0] <= max_n:
        return z
    idx = random.Random(seed).sample(range(z.shape[0]), k=max_n)
    return z[torch.as_tensor(idx, device=z.device)]


def _sq_dists(z: Tensor) -> Tensor:
    sq = (z * z).sum(1)
    d2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * z @ z.T).clamp_min_(0.0)
    d2.fill_diagonal_(0.0)
    return d2


def _resolve_sigma(z: Tensor, sigma: float | str) -> float:
    if not isinstance(sigma, str):
        return float(sigma)
    if sigma == "sqrt_d":
        return math.sqrt(z.shape[1])
    n = z.shape[0]
    if n < 2:
        raise ConfigError("sigma='median' needs at least 2 points")
    iu = torch.triu_indices(n, n, offset=1, device=z.device)
    dist = _sq_dists(z)[iu[0], iu[1]].sqrt()
    m = dist.numel()  # the median of an even count averages the two middle values (np.median)
    med = 0.5 * float(dist.kthvalue((m + 1) // 2).values + dist.kthvalue(m // 2 + 1).values)
    if not med > 0:
        raise ConfigError(
            "sigma='median' is 0 (more than half of the pairs of points coincide); give sigma"
        )
    return med


def _diffusion_eigenvalues(z: Tensor, sigma: float) -> Tensor:
    """Eigenvalues (descending) of K = D^{-1/2} G D^{-1/2}."""
    g = torch.exp(_sq_dists(z) / (-2.0 * sigma**2))
    inv_sqrt_deg = g.sum(1).rsqrt()
    k = inv_sqrt_deg.unsqueeze(1) * g * inv_sqrt_deg.unsqueeze(0)
    k = 0.5 * (k + k.T)
    return torch.linalg.eigvalsh(k).flip(0)


def _entropy_bits(eigenvalues: Tensor, t: int, drop_trivial: bool) -> float:
    lam = eigenvalues[1:] if drop_trivial else eigenvalues
    lam = lam.abs() ** t
    p = lam / lam.sum() + _EPS
    return float(-(p * torch.log2(p)).sum())


def _dse(z: Tensor, sigma: float, cfg: DSEConfig) -> tuple[float, Tensor, int]:
    z = _subsample(z, cfg.max_n, cfg.seed)
    eig = _diffusion_eigenvalues(z, sigma)
    return _entropy_bits(eig, cfg.t, cfg.drop_trivial), eig, z.shape[0]


def diffusion_spectral_entropy(Z: Tensor, cfg: DSEConfig = DSEConfig()) -> dict[str, Any]:
    """Diffusion spectral entropy of the rows of ``Z`` (``N × D``; ``N × …`` is flattened).

    Returns:
        ``dse`` (bits), ``eigenvalues`` (signed eigenvalues of :math:`K`, descending, numpy),
        ``n_used`` (points after subsampling), ``sigma_used``.
    """
    z = _subsample(_as_points("Z", Z), cfg.max_n, cfg.seed)
    sigma = _resolve_sigma(z, cfg.sigma)
    dse, eig, n_used = _dse(z, sigma, cfg)
    return {"dse": dse, "eigenvalues": eig.cpu().numpy(), "n_used": n_used, "sigma_used": sigma}


def _groups(y: Tensor | np.ndarray, n: int, cfg: DSEConfig) -> np.ndarray:
    """Group index of every row: labels, binned scalars or spectral clusters (as dse-dsmi)."""
    arr = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    if arr.shape[0] != n:
        raise ConfigError(f"Y has {arr.shape[0]} rows but Z has {n}")
    arr = arr.reshape(n, -1)
    if arr.shape[1] == 1 and (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        return arr.reshape(-1).astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise ConfigError(
            f"integer Y must hold one label per row (N or N × 1), got shape {arr.shape}"
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ConfigError("Y contains NaN or inf")
    if arr.shape[1] == 1:
        lo, hi = arr.min(0), arr.max(0)
        scaled = (arr - lo) / np.where(hi > lo, hi - lo, 1.0)
        bins = np.linspace(0, 1, cfg.n_clusters + 1)[:-1]
        return np.digitize(scaled, bins=bins).reshape(-1).astype(np.int64)
    from sklearn.cluster import SpectralClustering

    op = SpectralClustering(
        n_clusters=cfg.n_clusters,
        affinity="nearest_neighbors",
        assign_labels="cluster_qr",
        random_state=cfg.seed,
    ).fit(arr)
    return np.asarray(op.labels_, dtype=np.int64)


def diffusion_spectral_mutual_information(
    Z: Tensor, Y: Tensor | np.ndarray, cfg: DSEConfig = DSEConfig()
) -> dict[str, Any]:
    """Diffusion spectral mutual information between the rows of ``Z`` and a reference ``Y``.

    Args:
        Z: ``N × D`` features.
        Y: ``N`` (or ``N × 1``) integer labels, ``N`` float scalars (binned), or ``N × …``
            float vectors such as inputs (spectral clustering); see the module docstring.
        cfg: :class:`DSEConfig`.

    Returns:
        ``dsmi`` (bits); per group, in ascending group id: ``groups`` (ids), ``group_sizes``
        (:math:`n_i`), ``entropy_per_group`` (:math:`H_i`), ``baseline_per_group``
        (:math:`H^*_i`), ``mi_per_group`` (:math:`H^*_i - H_i`); ``clusters`` (the group id of
        every row, ``N``), ``sigma_used``.
    """
    z = _as_points("Z", Z)
    n = z.shape[0]
    clusters = _groups(Y, n, cfg)
    sigma = _resolve_sigma(_subsample(z, cfg.max_n, cfg.seed), cfg.sigma)
    ids, sizes = np.unique(clusters, return_counts=True)
    h, h_star = [], []
    for gid, size in zip(ids, sizes, strict=True):
        members = torch.as_tensor(np.flatnonzero(clusters == gid), device=z.device)
        h.append(_dse(z[members], sigma, cfg)[0])
        rng = random.Random(cfg.seed)
        reps = []
        for _ in range(cfg.n_random_subsets):
            idx = torch.as_tensor(rng.sample(range(n), k=int(size)), device=z.device)
            reps.append(_dse(z[idx], sigma, cfg)[0])
        h_star.append(float(np.mean(reps)))
    h_arr, h_star_arr = np.array(h), np.array(h_star)
    mi = h_star_arr - h_arr
    return {
        "dsmi": float(np.sum(sizes / sizes.sum() * mi)),
        "groups": ids,
        "group_sizes": sizes,
        "entropy_per_group": h_arr,
        "baseline_per_group": h_star_arr,
        "mi_per_group": mi,
        "clusters": clusters,
        "sigma_used": sigma,
    }


def _kernel_bytes(n: int) -> int:
    """Peak memory of one kernel of ``n`` points: distances, Gaussian, normalized and symmetrized
    copies, float64."""
    return 4 * n * n * 8


@dataclass(frozen=True)
class DSEProbeConfig(FeatureSettings, DSEConfig):
    """The DSE/DSMI probe: :class:`DSEConfig` on the features of :class:`FeatureSettings`.

    ``dsmi_inputs`` also computes DSMI(Z; X) against the (spectrally clustered) inputs.
    """

    dsmi_inputs: bool = setting(True, "Also DSMI(Z; X) against the spectrally clustered inputs.")


@register_probe(
    "dse", DSEProbeConfig, summary=("dse", "dsmi_y", "dsmi_x"),
    curves=(("DSE (bits)", "dse", False), ("DSMI(Z; Y) (bits)", "dsmi_y", False), ("DSMI(Z; X) (bits)", "dsmi_x", False)),
    curves_title="Diffusion spectral entropy over training", checkpoints="all", cli_names={"splits": ("--split",)},
    cli_help="Diffusion spectral entropy and mutual information DSMI(Z;Y), DSMI(Z;X) of the features, over a run's "
    "checkpoints.")
def run_dse(ctx: ProbeContext, cfg: DSEProbeConfig) -> dict[str, Any]:
    """DSE of the features, DSMI(Z; Y) with the labels and DSMI(Z; X) with clustered inputs, per split.

    The input clustering is the same at every checkpoint of a run, so it is computed once.
    """
    out: dict[str, Any] = {}
    inputs = ctx.data.train.sample_inputs
    if cfg.dsmi_inputs and not isinstance(inputs, torch.Tensor):
        raise ConfigError("dse: DSMI(Z; X) clusters one input tensor by Euclidean distance; with dict inputs "
                          "set dsmi_inputs=false (--setting dsmi_inputs=false; in analyze, dse.dsmi_inputs=false)")
    if cfg.dsmi_inputs and not inputs.is_floating_point() and inputs.dtype != torch.uint8:
        raise ConfigError(
            f"dse: DSMI(Z; X) clusters the inputs by Euclidean distance, which has no meaning for "
            f"integer inputs ({str(inputs.dtype).removeprefix('torch.')}, e.g. token ids); "
            "set dsmi_inputs=false (--setting dsmi_inputs=false; in analyze, dse.dsmi_inputs=false)"
        )
    for split, (feats, _, y, x) in split_features(ctx, cfg).items():
        check_finite_features(feats, split, "DSE")
        n = min(len(feats), cfg.max_n)
        check_allocation(f"a diffusion kernel of {n:,} × {n:,} points", _kernel_bytes(n),
                         "use fewer --samples (or a smaller max_n)", feats.device)
        res = diffusion_spectral_entropy(feats, cfg)
        mi_y = diffusion_spectral_mutual_information(feats, y, cfg)
        group = {"dse": res["dse"], "eigenvalues": res["eigenvalues"], "n_used": res["n_used"],
                 "sigma_used": res["sigma_used"], "dsmi_y": mi_y["dsmi"],
                 "dsmi_y_per_class": mi_y["mi_per_group"]}
        if cfg.dsmi_inputs:
            key = f"input_clusters:{split}:{cfg.samples}:{cfg.seed}:{cfg.n_clusters}"
            if key not in ctx.run_cache:
                if is_stream(x):  # the clustering needs every input: gathered flattened, batch by batch
                    flat = torch.cat([xb.reshape(len(xb), -1).to(torch.float64) for xb, _ in x.batches(cfg.batch_size)])
                else:
                    flat = x.reshape(len(x), -1).to(torch.float64)
                ctx.run_cache[key] = diffusion_spectral_mutual_information(feats, flat, cfg)["clusters"]
            mi_x = diffusion_spectral_mutual_information(feats, torch.as_tensor(ctx.run_cache[key]), cfg)
            group["dsmi_x"] = mi_x["dsmi"]
        out[split] = group
    return out
