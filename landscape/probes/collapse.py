r"""Neural collapse (Papyan, Han & Donoho 2020, "Prevalence of neural collapse during the
terminal phase of deep learning training", PNAS 117(40)) and follow-up measures.

Notation: penultimate features :math:`h_i \in \mathbb{R}^D` (the input of the last linear
layer, see :func:`landscape.features.extract_features`), labels :math:`y_i`, :math:`N`
samples, :math:`C` classes with :math:`n_c` samples each, class means
:math:`\mu_c = \frac{1}{n_c}\sum_{y_i = c} h_i`, global mean :math:`\mu_G`, centred means
:math:`\tilde\mu_c = \mu_c - \mu_G` stacked as the columns of :math:`M \in \mathbb{R}^{D\times C}`,
classifier :math:`W \in \mathbb{R}^{C\times D}` with rows :math:`w_c` (bias :math:`b`).

.. math::

    \Sigma_W = \frac{1}{N}\sum_i (h_i - \mu_{y_i})(h_i - \mu_{y_i})^\top, \qquad
    \Sigma_B = \frac{1}{C}\sum_c \tilde\mu_c \tilde\mu_c^\top = \frac{1}{C} M M^\top .

Returned measures (all → 0 under collapse, except where said):

* ``nc1`` :math:`= \frac{1}{C}\operatorname{Tr}(\Sigma_W \Sigma_B^+)`. :math:`\Sigma_B^+`
  keeps the top :math:`C-1` eigenpairs of :math:`\Sigma_B` (``torch.linalg.eigh``; those
  below ``nc1_rank_tol`` × the largest are dropped too), so ``nc1 ≥ 0`` exactly; a
  ``pinv`` / ``svds`` of :math:`\Sigma_B` can turn negative through round-off. Computed in
  the dual: the eigenpairs come from the :math:`C\times C` Gram matrix :math:`M^\top M / C`
  and :math:`\operatorname{Tr}(\Sigma_W U \Lambda^{-1} U^\top)` from the residuals projected
  on :math:`U`, so no :math:`D\times D` matrix is formed (:math:`D` may be a flattened conv
  map). The authors' Colab logs :math:`\operatorname{Tr}(\Sigma_W\Sigma_B^+)` **without**
  the :math:`1/C` (``Sw_invSb`` = ``C · nc1``).
* ``trace_ratio`` :math:`= \operatorname{Tr}\Sigma_W / \operatorname{Tr}\Sigma_B`.
* ``cdnv`` (class-distance normalized variance, Galanti, György & Hutter 2022, "On the role
  of neural collapse in transfer learning") :math:`= \operatorname{mean}_{c<c'}
  \frac{V_c + V_{c'}}{2\lVert\mu_c - \mu_{c'}\rVert^2}`, :math:`V_c = \frac{1}{n_c}\sum_{y_i=c}
  \lVert h_i - \mu_c\rVert^2` (population variance). ``nc-toolbox``'s ``nc1_cdnv`` reports
  the coefficient of variation of the same pairwise values instead of their mean.
* NC2, ``equinorm_means`` :math:`= \operatorname{std}_c\lVert\tilde\mu_c\rVert /
  \operatorname{mean}_c\lVert\tilde\mu_c\rVert` and ``equinorm_weights`` the same for
  :math:`\lVert w_c\rVert` (std with Bessel's correction, ``torch.std`` as in the Colab).
* NC2, ``equiangular_means`` :math:`= \operatorname{mean}_{c\ne c'}\lvert\cos(\tilde\mu_c,
  \tilde\mu_{c'}) + \frac{1}{C-1}\rvert` (the Colab's ``coherence``), ``equiangular_weights``
  the same for the rows of :math:`W`; ``cos_std_means`` / ``cos_std_weights``
  :math:`= \operatorname{std}_{c<c'}\cos` (Bessel-corrected; 0 for a single pair), the paper's
  Fig. 3.
* NC3, ``self_duality`` :math:`= \lVert W^\top/\lVert W\rVert_F - M/\lVert M\rVert_F
  \rVert_F^2` — **squared**, as in the authors' code (``W_M_dist``); ``nc-toolbox``'s
  ``nc3_self_duality`` is its square root. :math:`W^\top` is :math:`D\times C`, its columns
  the class weight vectors, in the same class order as the columns of :math:`M`; the bias is
  not used.
* NC4, ``ncc_mismatch`` = fraction of samples whose nearest class mean
  :math:`\arg\min_c\lVert h_i - \mu_c\rVert` differs from the network's prediction
  (``predictions``, or :math:`\arg\max_c (W h_i + b)_c` when only ``weight``/``bias`` are
  given) — the prediction, not the label, as in the Colab. Ties go to the lower class index.
* Orthogonal frame (the collapse target of bias-free models under MSE loss, e.g. Tirer &
  Bruna 2022 for unconstrained features; Dang et al. 2023 for deep linear nets):
  ``orthogonal_frame_means`` :math:`= \lVert \bar M^\top \bar M/\lVert \bar M^\top \bar
  M\rVert_F - I_C/\sqrt{C}\rVert_F` with :math:`\bar M = [\mu_c]` the **non-centred** means,
  ``orthogonal_frame_weights`` the same with :math:`W W^\top`.

Also returned: ``class_means`` (``C × D``, non-centred, NaN rows for empty classes),
``global_mean`` (``D``), ``num_samples_per_class`` (``C``), ``empty_classes`` (indices),
``num_classes_present``, ``nc1_rank`` (eigenpairs kept in :math:`\Sigma_B^+`),
``class_variances`` (:math:`V_c`, NaN for empty classes).

Empty classes (no sample in ``labels``) are excluded: :math:`C` above is the number of classes
present in every measure built from class means, and :math:`W`'s rows are restricted to those
classes in NC3. The weight-only measures (``equinorm_weights``, ``equiangular_weights``,
``cos_std_weights``, ``orthogonal_frame_weights``) use all rows of :math:`W`. Measures that
need ``weight`` (or ``predictions``) are NaN when it is not given.

:math:`\mu_G` is the mean of the class means (as in the Colab's ``torch.mean(M, dim=1)``;
equal to the sample mean for balanced classes); ``global_mean="samples"`` uses the sample
mean instead. Everything is computed in float64 on the features' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from landscape.errors import ConfigError, LandscapeError
from landscape.features import (
    FeatureSettings,
    check_finite_features,
    find_classifier,
    split_features,
)
from landscape.probes.base import ProbeContext, register_probe, setting

__all__ = ["CollapseConfig", "neural_collapse"]

_GLOBAL_MEANS = ("class_means", "samples")


@dataclass(frozen=True)
class CollapseConfig:
    """Options of :func:`neural_collapse`.

    Attributes:
        nc1_rank_tol: eigenvalues of :math:`\\Sigma_B` at or below ``nc1_rank_tol`` × the
            largest are left out of :math:`\\Sigma_B^+` (besides keeping at most :math:`C-1`).
        include_orthogonal_frame: also return ``orthogonal_frame_means`` / ``_weights``.
        global_mean: ``"class_means"`` (the Colab's :math:`\\mu_G`) or ``"samples"``.
    """

    nc1_rank_tol: float = setting(1e-12, "Eigenvalues of Σ_B at or below this × the largest are "
                                         "left out of Σ_B⁺.")
    include_orthogonal_frame: bool = setting(True, "Also return the orthogonal-frame measures.")
    global_mean: str = setting("class_means", "class_means (μ_G as the mean of the class means) "
                                              "or samples.")

    def __post_init__(self) -> None:
        if not (0.0 <= self.nc1_rank_tol < 1.0):
            raise ConfigError(f"nc1_rank_tol must be in [0, 1), got {self.nc1_rank_tol}")
        if self.global_mean not in _GLOBAL_MEANS:
            raise ConfigError(
                f"global_mean must be one of {', '.join(_GLOBAL_MEANS)}, got {self.global_mean!r}"
            )


def _std(x: Tensor) -> float:
    """Bessel-corrected std; 0 for fewer than two values."""
    return float(x.std()) if x.numel() > 1 else 0.0


def _cosine_stats(rows: Tensor) -> tuple[float, float]:
    """(mean_{c≠c'} |cos + 1/(C−1)|, std_{c<c'} cos) of the rows of ``rows`` (C × D)."""
    c = rows.shape[0]
    unit = rows / rows.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    off = ~torch.eye(c, dtype=torch.bool, device=rows.device)
    equiangular = float((cos[off] + 1.0 / (c - 1)).abs().mean())
    iu = torch.triu_indices(c, c, offset=1, device=rows.device)
    return equiangular, _std(cos[iu[0], iu[1]])


def _equinorm(rows: Tensor) -> float:
    norms = rows.norm(dim=1)
    return _std(norms) / float(norms.mean())


def _orthogonal_frame(rows: Tensor) -> float:
    """‖G/‖G‖_F − I/√C‖_F with G = rows rowsᵀ (C × C)."""
    gram = rows @ rows.T
    c = gram.shape[0]
    eye = torch.eye(c, dtype=gram.dtype, device=gram.device)
    return float(
        torch.linalg.matrix_norm(gram / torch.linalg.matrix_norm(gram) - eye / math.sqrt(c))
    )


def _as_2d(name: str, t: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        try:
            t = torch.as_tensor(t)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(f"{name} must be a tensor or an array, got {type(t).__name__}") from e
    if t.ndim < 2:
        raise ConfigError(f"{name} must be N × D, got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1)


def neural_collapse(
    features: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    predictions: Tensor | None = None,
    num_classes: int | None = None,
    cfg: CollapseConfig = CollapseConfig(),
) -> dict[str, Any]:
    """Neural-collapse measures NC1–NC4 of ``features`` (see the module docstring for formulas).

    Args:
        features: ``N × D`` penultimate features (``N × …`` is flattened).
        labels: ``N`` integer class labels in ``[0, num_classes)``.
        weight: classifier weight ``C × D`` (rows = classes), e.g. from
            :func:`landscape.features.find_classifier`.
        bias: classifier bias ``C``; only used to compute predictions when ``predictions``
            is not given.
        predictions: ``N`` predicted classes of the network (``logits.argmax(1)``); pass them
            to compare NC4 with the network's own float32 argmax.
        num_classes: ``C``; default ``weight.shape[0]``, else ``labels.max() + 1``.
        cfg: :class:`CollapseConfig`.

    Returns:
        A dict of Python floats / ints and numpy arrays: ``nc1``, ``nc1_rank``, ``trace_ratio``,
        ``cdnv``, ``equinorm_means``, ``equinorm_weights``, ``equiangular_means``,
        ``equiangular_weights``, ``cos_std_means``, ``cos_std_weights``, ``self_duality``,
        ``ncc_mismatch``, ``orthogonal_frame_means``, ``orthogonal_frame_weights`` (if
        ``cfg.include_orthogonal_frame``), ``class_means``, ``global_mean``,
        ``class_variances``, ``num_samples_per_class``, ``empty_classes``,
        ``num_classes_present``.

    Raises:
        ConfigError: inconsistent shapes, labels out of range, fewer than two classes present.
        LandscapeError: non-finite features.
    """
    h = _as_2d("features", features).to(torch.float64)
    dev = h.device
    n, d = h.shape
    y = torch.as_tensor(labels).reshape(-1).to(dev)
    if y.numel() != n:
        raise ConfigError(f"labels has {y.numel()} entries but features has {n} rows")
    if y.is_floating_point() or y.is_complex():
        raise ConfigError(f"labels must be integers, got {y.dtype}")
    y = y.long()
    if not bool(torch.isfinite(h).all()):
        raise LandscapeError("features contain NaN or inf; neural-collapse measures are undefined")

    w = None
    if weight is not None:
        w = _as_2d("weight", weight).to(device=dev, dtype=torch.float64)
        if w.shape[1] != d:
            raise ConfigError(f"weight is {tuple(w.shape)} but features have D = {d}")
        if num_classes is not None and w.shape[0] != num_classes:
            raise ConfigError(f"weight has {w.shape[0]} rows but num_classes = {num_classes}")
    c = int(
        num_classes
        if num_classes is not None
        else w.shape[0]
        if w is not None
        else int(y.max()) + 1
    )
    if n < c:
        raise ConfigError(
            f"neural collapse needs at least as many samples as classes, got {n} samples for {c} classes; "
            f"use more samples (≥ {c})"
        )
    if n and (int(y.min()) < 0 or int(y.max()) >= c):
        raise ConfigError(
            f"labels must lie in [0, {c}), got range [{int(y.min())}, {int(y.max())}]"
        )

    counts = torch.bincount(y, minlength=c)
    present = torch.nonzero(counts > 0).flatten()
    cp = int(present.numel())
    if cp < 2:
        raise ConfigError(f"neural collapse needs samples of at least 2 classes, got {cp}")

    sums = torch.zeros(c, d, dtype=torch.float64, device=dev).index_add_(0, y, h)
    means_all = sums / counts.unsqueeze(1)  # NaN rows for empty classes
    means = means_all[present]  # cp × D, non-centred
    mu_g = means.mean(0) if cfg.global_mean == "class_means" else h.mean(0)
    mc = means - mu_g  # rows = centred means, i.e. Mᵀ
    resid = h - means_all[y]  # N × D

    # ---- NC1: Tr(Σ_W Σ_B⁺)/C in the dual (C × C Gram), Σ_B⁺ from the top C−1 eigenpairs.
    gram = mc @ mc.T / cp
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    k = min(cp - 1, d)
    top_vals, top_vecs = evals[-k:], evecs[:, -k:]
    lam_max = float(evals[-1])
    keep = top_vals > max(cfg.nc1_rank_tol * lam_max, 0.0)
    lam, vecs = top_vals[keep], top_vecs[:, keep]
    rank = int(lam.numel())
    if rank == 0:
        nc1 = math.nan  # all class means coincide: Σ_B = 0
    else:
        u = mc.T @ vecs / torch.sqrt(cp * lam)  # D × r, orthonormal eigenvectors of Σ_B
        proj = resid @ u  # N × r
        nc1 = float(((proj**2).sum(0) / n / lam).sum()) / cp

    # ---- Σ_W / Σ_B traces and CDNV.
    sq_resid = (resid**2).sum(1)
    tr_w = float(sq_resid.sum()) / n
    tr_b = float((mc**2).sum()) / cp
    var_all = torch.zeros(c, dtype=torch.float64, device=dev).index_add_(0, y, sq_resid) / counts
    var = var_all[present]
    g = mc @ mc.T
    dist2 = (g.diagonal().unsqueeze(0) + g.diagonal().unsqueeze(1) - 2 * g).clamp_min(0.0)
    iu = torch.triu_indices(cp, cp, offset=1, device=dev)
    cdnv = float(((var[iu[0]] + var[iu[1]]) / (2 * dist2[iu[0], iu[1]])).mean())

    # ---- NC2 on the means.
    equiangular_m, cos_std_m = _cosine_stats(mc)
    out: dict[str, Any] = {
        "nc1": nc1,
        "nc1_rank": rank,
        "trace_ratio": tr_w / tr_b if tr_b > 0 else math.nan,
        "cdnv": cdnv,
        "equinorm_means": _equinorm(mc),
        "equinorm_weights": math.nan,
        "equiangular_means": equiangular_m,
        "equiangular_weights": math.nan,
        "cos_std_means": cos_std_m,
        "cos_std_weights": math.nan,
        "self_duality": math.nan,
        "ncc_mismatch": math.nan,
    }

    # ---- NC2/NC3 on the classifier.
    if w is not None:
        out["equinorm_weights"] = _equinorm(w)
        out["equiangular_weights"], out["cos_std_weights"] = _cosine_stats(w)
        wp = w[present]
        diff = wp / torch.linalg.matrix_norm(wp) - mc / torch.linalg.matrix_norm(mc)
        out["self_duality"] = float((diff**2).sum())

    # ---- NC4: nearest class mean vs the network's prediction.
    pred = None
    if predictions is not None:
        pred = torch.as_tensor(predictions).reshape(-1).to(dev).long()
        if pred.numel() != n:
            raise ConfigError(f"predictions has {pred.numel()} entries but features has {n} rows")
    elif w is not None:
        logits = h @ w.T
        if bias is not None:
            logits = logits + torch.as_tensor(bias).reshape(-1).to(device=dev, dtype=torch.float64)
        pred = logits.argmax(1)
    if pred is not None:
        # argmin_c ‖h − μ_c‖² = argmin_c (‖μ_c‖² − 2 h·μ_c); centring by μ_G leaves it unchanged
        # and keeps the numbers small.
        hc = h - mu_g
        score = (mc**2).sum(1).unsqueeze(0) - 2 * hc @ mc.T
        ncc = present[score.argmin(1)]
        out["ncc_mismatch"] = float((ncc != pred).double().mean())

    if cfg.include_orthogonal_frame:
        out["orthogonal_frame_means"] = _orthogonal_frame(means)
        out["orthogonal_frame_weights"] = _orthogonal_frame(w) if w is not None else math.nan

    out.update(
        class_means=means_all.cpu().numpy(),
        global_mean=mu_g.cpu().numpy(),
        class_variances=var_all.cpu().numpy(),
        num_samples_per_class=counts.cpu().numpy(),
        empty_classes=torch.nonzero(counts == 0).flatten().cpu().numpy(),
        num_classes_present=cp,
    )
    return out


@dataclass(frozen=True)
class CollapseProbeConfig(FeatureSettings, CollapseConfig):
    """The neural-collapse probe: :class:`CollapseConfig` on the features of :class:`FeatureSettings`."""


@register_probe(
    "collapse", CollapseProbeConfig, summary=("nc1", "equiangular_means", "self_duality", "ncc_mismatch"),
    default=3, measures={"nc1_train": "train/nc1"}, families={"representation": ("nc1",)},
    curves=(("NC1  Tr(Σ_W Σ_B⁺)/C", "nc1", True), ("NC2 equinorm (means)", "equinorm_means", True),
            ("NC2 equiangularity (means)", "equiangular_means", True), ("NC3 self-duality", "self_duality", True),
            ("NC4 NCC mismatch", "ncc_mismatch", True), ("CDNV", "cdnv", True)),
    curves_title="Neural collapse over training", curves_logx=True, checkpoints="all",
    cli_names={"splits": ("--split",)},
    cli_help="Neural collapse (NC1–NC4, CDNV, orthogonal frame) of the penultimate features, over a run's "
    "checkpoints.")
def run_collapse(ctx: ProbeContext, cfg: CollapseProbeConfig) -> dict[str, Any]:
    """NC1–NC4 of the penultimate features on each split (Papyan et al. 2020); one subgroup per split."""
    if getattr(ctx.data.train, "task", "classification") != "classification":
        raise ConfigError("neural collapse is defined for class labels (task 'classification'); "
                          f"this data's task is {ctx.data.train.task!r}")
    weight = None
    if cfg.layer is None or isinstance(dict(ctx.model.named_modules()).get(cfg.layer), nn.Linear):
        weight, _ = find_classifier(ctx.model, cfg.layer)  # the linear layer whose input is the feature
    out: dict[str, Any] = {}
    for split, (feats, logits, y, _) in split_features(ctx, cfg).items():
        check_finite_features(feats, split, "neural collapse")
        w = None if weight is None else weight.to(feats.device)
        out[split] = neural_collapse(feats, y, w, predictions=logits.argmax(1),
                                     num_classes=ctx.data.num_classes, cfg=cfg)
    return out
