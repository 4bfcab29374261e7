"""Noise-robust losses: symmetric CE, generalized CE, MAE, and the square loss."""

from __future__ import annotations

import torch
from torch import Tensor

from landscape.train.losses.registry import (
    _NEGATIVE,
    _NONNEG,
    _POSITIVE,
    _Interval,
    _log_pt,
    _onehot,
    _register,
)


@_register("sce", "symmetric_ce", alpha=_NONNEG, beta=_NONNEG, log_zero=_NEGATIVE)
def symmetric_ce(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.1,
    beta: float = 1.0,
    log_zero: float = -4.0,
) -> Tensor:
    r"""Symmetric cross-entropy (Wang et al. 2019, "Symmetric Cross Entropy for Robust
    Learning with Noisy Labels").

    .. math:: \ell = \alpha\,\mathrm{CE} + \beta\,\mathrm{RCE},\quad
              \mathrm{RCE} = -\sum_k p_k \log q_k = -A\,(1 - p_t)

    with :math:`q = e_y` and :math:`\log 0 := A` (``log_zero``, the paper's
    ``A = -4``). Defaults α = 0.1, β = 1.0 are the paper's CIFAR-10 values.
    The authors' code clamps the one-hot at 1e-4 and takes the *natural* log,
    i.e. effectively ``A = ln(1e-4) ≈ -9.21``; pass ``log_zero=math.log(1e-4)``
    to match it (their additional clamp of p at 1e-7 changes RCE by < 1e-6·|A|·C).
    """
    log_pt = _log_pt(logits, targets)
    return -alpha * log_pt + beta * log_zero * torch.expm1(log_pt)


@_register("gce", "generalized_ce", q=_Interval(0.0, 1.0, lo_closed=False))
def generalized_ce(logits: Tensor, targets: Tensor, *, q: float = 0.7) -> Tensor:
    r"""Generalized cross-entropy, :math:`\mathcal L_q` (Zhang & Sabuncu 2018,
    "Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels").

    .. math:: \ell = \frac{1 - p_t^{\,q}}{q},\quad q \in (0, 1]

    Tends to CE as ``q → 0``; ``q = 1`` gives :math:`1 - p_t`, half the MAE
    loss. Computed as ``-expm1(q log p_t)/q`` (accurate for small q).
    The truncated variant of the paper is not implemented.
    """
    return -torch.expm1(q * _log_pt(logits, targets)) / q


@_register("mae")
def mae(logits: Tensor, targets: Tensor) -> Tensor:
    r"""Mean absolute error between softmax and one-hot (Ghosh et al. 2017,
    "Robust Loss Functions under Label Noise for Deep Neural Networks").

    .. math:: \ell = \sum_k |p_k - [k = y]| = 2\,(1 - p_t)

    (summed over classes, like the other losses; the closed form is used).
    """
    return -2.0 * torch.expm1(_log_pt(logits, targets))


@_register("mse", scale=_POSITIVE, target_weight=_POSITIVE)
def mse(
    logits: Tensor,
    targets: Tensor,
    *,
    softmax: bool = False,
    scale: float = 1.0,
    target_weight: float = 1.0,
) -> Tensor:
    r"""Square loss on one-hot targets (Hui & Belkin 2021, "Evaluation of Neural
    Architectures Trained with Square Loss vs Cross-Entropy in Classification Tasks").

    .. math:: \ell = \sum_k w_k\,(s_k - M\,[k = y])^2,\quad
              w_k = k_w \text{ if } k = y \text{ else } 1

    with :math:`s = z` (``softmax=False``, the paper's choice: no softmax) or
    :math:`s = \mathrm{softmax}(z)` (the Brier score), :math:`M` = ``scale``
    and :math:`k_w` = ``target_weight`` (the paper's rescaling ``k, M`` for
    many classes, e.g. k = 15, M = 30 on ImageNet; both 1 by default).

    Reduction: **sum over classes** per sample, mean over samples (in
    :class:`Loss`). ``torch.nn.MSELoss()`` (mean over all N·C entries) is this
    divided by C, and the paper writes its per-sample loss with that 1/C too;
    the factor only rescales the learning rate.
    """
    s = torch.softmax(logits, dim=-1) if softmax else logits
    onehot = _onehot(logits, targets)
    weight = 1.0 + (target_weight - 1.0) * onehot
    return (weight * (s - scale * onehot).square()).sum(dim=-1)


