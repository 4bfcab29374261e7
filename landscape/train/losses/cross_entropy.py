"""Cross-entropy and its relatives: label smoothing, MaxSup, focal, PolyLoss, temperature-scaled CE."""

from __future__ import annotations

import torch
from torch import Tensor

from landscape.train.losses.registry import (
    _NONNEG,
    _POSITIVE,
    _Interval,
    _log_pt,
    _pick,
    _register,
)


@_register("ce", "cross_entropy")
def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    r"""Cross-entropy :math:`\ell = -\log p_t = \log\sum_k e^{z_k} - z_y`.

    Equals ``F.cross_entropy(z, y, reduction='none')``.
    """
    return -_log_pt(logits, targets)


@_register("label_smoothing", "ls", smoothing=_Interval(0.0, 1.0, hi_closed=False))
def label_smoothing(logits: Tensor, targets: Tensor, *, smoothing: float = 0.1) -> Tensor:
    r"""Label smoothing (Szegedy et al. 2016): CE against :math:`(1-s)e_y + s/C`.

    .. math:: \ell = (1-s)\,(-\log p_t) + \frac{s}{C}\sum_k (-\log p_k)
              = \mathrm{CE} + s\,(z_y - \bar z),\quad \bar z = \tfrac1C\textstyle\sum_k z_k

    Equals ``F.cross_entropy(z, y, label_smoothing=s, reduction='none')``;
    ``smoothing`` in ``[0, 1)``.
    """
    logp = torch.log_softmax(logits, dim=-1)
    return -(1.0 - smoothing) * _pick(logp, targets) - smoothing * logp.mean(dim=-1)


@_register("maxsup", alpha=_NONNEG)
def maxsup(logits: Tensor, targets: Tensor, *, alpha: float = 0.1) -> Tensor:
    r"""MaxSup, Max Suppression (Zhou et al. 2025, "MaxSup: Overcoming Representation
    Collapse in Label Smoothing", arXiv:2502.15798).

    .. math:: \ell = \mathrm{CE} + \alpha\,(\max_k z_k - \bar z),\quad
              \bar z = \tfrac1C\textstyle\sum_k z_k

    Label smoothing with ``s = α`` is :math:`\mathrm{CE} + \alpha(z_y - \bar z)`;
    MaxSup penalizes the top-1 logit instead of the target logit, so the two
    agree on correctly classified samples. The gradient flows through the max
    (as in the authors' code). Their code schedules α linearly from 0.1 to 0.2
    over training (ConvNets); here α is a constant, scheduling is the trainer's.
    """
    ce = -_log_pt(logits, targets)
    return ce + alpha * (logits.amax(dim=-1) - logits.mean(dim=-1))


@_register("focal", gamma=_NONNEG)
def focal(logits: Tensor, targets: Tensor, *, gamma: float = 2.0) -> Tensor:
    r"""Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection"), softmax form.

    .. math:: \ell = -(1-p_t)^\gamma \log p_t

    ``γ = 0`` is CE. The class-balancing factor α_t of the paper is left out.
    """
    log_pt = _log_pt(logits, targets)
    one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(logits.dtype).tiny)
    return -one_minus_pt.pow(gamma) * log_pt


@_register("poly1", "polyloss", epsilon=_Interval(lo=-1.0))
def poly1(logits: Tensor, targets: Tensor, *, epsilon: float = 1.0) -> Tensor:
    r"""Poly-1 loss (Leng et al. 2022, "PolyLoss: A Polynomial Expansion Perspective of
    Classification Loss Functions").

    .. math:: \ell = \mathrm{CE} + \varepsilon\,(1 - p_t)

    ``ε = 0`` is CE. We require ``ε ≥ -1``: below that the loss is no longer
    decreasing in :math:`p_t` (:math:`d\ell/dp_t = -1/p_t - \varepsilon`).
    """
    log_pt = _log_pt(logits, targets)
    return -log_pt - epsilon * torch.expm1(log_pt)


@_register("temperature_ce", "tce", temperature=_POSITIVE)
def temperature_ce(logits: Tensor, targets: Tensor, *, temperature: float = 1.0) -> Tensor:
    r"""Temperature-scaled cross-entropy: CE of :math:`z / T`.

    .. math:: \ell = \log\sum_k e^{z_k/T} - z_y/T

    ``T = 1`` is CE. No :math:`T^2` factor (that belongs to distillation).
    """
    return -_log_pt(logits / temperature, targets)


