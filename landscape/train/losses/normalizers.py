"""Losses over other normalizers than softmax: sparsemax, StableMax, the spherical Z-loss."""

from __future__ import annotations

import torch
from torch import Tensor

from landscape.train.losses.registry import (
    _POSITIVE,
    _pick,
    _register,
)


def _sparsemax_threshold(z: Tensor) -> Tensor:
    r"""The threshold :math:`\tau(z)` along the last dim (keepdim), sort-based.

    Sort :math:`z_{(1)} \ge \dots \ge z_{(C)}`; the support size is
    :math:`k(z) = \max\{k : 1 + k z_{(k)} > \sum_{j \le k} z_{(j)}\}` and
    :math:`\tau = (\sum_{j \le k(z)} z_{(j)} - 1)/k(z)`. Differentiable: the
    gradient of τ is :math:`1/k(z)` on the support.
    """
    zs, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    cumsum = zs.cumsum(dim=-1)
    support_size = (1.0 + k * zs > cumsum).sum(dim=-1, keepdim=True)  # >= 1
    return (cumsum.gather(-1, support_size - 1) - 1.0) / support_size.to(z.dtype)


def sparsemax(z: Tensor, dim: int = -1) -> Tensor:
    r"""Sparsemax (Martins & Astudillo 2016): the Euclidean projection of ``z`` onto the
    probability simplex along ``dim``.

    .. math:: \mathrm{sparsemax}(z)_k = \max(z_k - \tau(z), 0),\quad
              \textstyle\sum_k \max(z_k - \tau, 0) = 1

    Sort-based, :math:`O(C \log C)`; differentiable (Jacobian
    :math:`\mathrm{diag}(s) - s s^\top/|S|`, :math:`s` the support indicator).
    """
    z = z.movedim(dim, -1)
    z = z - z.detach().amax(dim=-1, keepdim=True)  # shift invariance, for range
    out = (z - _sparsemax_threshold(z)).clamp_min(0.0)
    return out.movedim(-1, dim)


@_register("sparsemax")
def sparsemax_loss(logits: Tensor, targets: Tensor) -> Tensor:
    r"""Sparsemax loss (Martins & Astudillo 2016, "From Softmax to Sparsemax").

    .. math:: \ell = -z_y + \tfrac12 \sum_{j \in S(z)} (z_j^2 - \tau(z)^2) + \tfrac12

    with :math:`S(z) = \{j : z_j > \tau(z)\}` the support of
    :math:`\mathrm{sparsemax}(z)`. Non-negative, zero iff
    :math:`\mathrm{sparsemax}(z) = e_y` (e.g. when :math:`z_y \ge z_j + 1` for
    all :math:`j \ne y`), gradient :math:`\mathrm{sparsemax}(z) - e_y`.
    Shift invariant; computed on :math:`z - \max z`.
    """
    z = logits - logits.detach().amax(dim=-1, keepdim=True)
    tau = _sparsemax_threshold(z)
    support = (z > tau).to(z.dtype)
    quad = 0.5 * (support * (z.square() - tau.square())).sum(dim=-1)
    return quad - _pick(z, targets) + 0.5


def _log_stablemax_s(x: Tensor) -> Tensor:
    r""":math:`\log s(x)`, :math:`s(x) = x + 1` for :math:`x \ge 0`, :math:`1/(1 - x)` for :math:`x < 0`.

    Both branches are evaluated on clamped inputs so that neither produces a NaN
    (or a NaN gradient) where :func:`torch.where` does not select it.
    """
    pos = torch.log1p(x.clamp_min(0.0))
    neg = -torch.log1p((-x).clamp_min(0.0))
    return torch.where(x >= 0, pos, neg)


def stablemax(z: Tensor, dim: int = -1) -> Tensor:
    r"""StableMax (Prieto et al. 2025): :math:`p_i = s(z_i)/\sum_j s(z_j)` along ``dim``.

    .. math:: s(x) = \begin{cases} x + 1 & x \ge 0 \\ 1/(1 - x) & x < 0 \end{cases}

    :math:`s` is positive, increasing and continuously differentiable (:math:`s(0) = 1`,
    :math:`s'(0) = 1`); it grows linearly, not exponentially, so float32 probabilities do
    not round to exactly 1 at moderate logits. Not shift invariant.
    """
    log_s = _log_stablemax_s(z)
    return torch.exp(log_s - torch.logsumexp(log_s, dim=dim, keepdim=True))


@_register("stablemax", "stablemax_ce")
def stablemax_ce(logits: Tensor, targets: Tensor) -> Tensor:
    r"""StableMax cross-entropy (Prieto, Barsbey, Mediano & Birdal 2025, "Grokking at the
    Edge of Numerical Stability").

    .. math:: \ell = -\log \frac{s(z_y)}{\sum_j s(z_j)},\quad
              s(x) = \begin{cases} x + 1 & x \ge 0 \\ 1/(1 - x) & x < 0 \end{cases}

    computed as :math:`\log\sum_j e^{\log s(z_j)} - \log s(z_y)` (the authors'
    ``log_stablemax``; their code evaluates it in float64, here it runs in the logits' dtype).
    """
    log_s = _log_stablemax_s(logits)
    return torch.logsumexp(log_s, dim=-1) - _pick(log_s, targets)


@_register("spherical_zloss", "spherical_z", a=_POSITIVE, eps=_POSITIVE)
def spherical_zloss(
    logits: Tensor, targets: Tensor, *, a: float = 1.0, b: float = 1.0, eps: float = 1e-12
) -> Tensor:
    r"""The spherical Z-loss of de Brébisson & Vincent (2016, "The Z-loss: a shift and scale
    invariant classification loss belonging to the Spherical Family").

    .. math:: \tilde z = \frac{z - \mu}{\sigma},\quad
              \mu = \tfrac1C\textstyle\sum_k z_k,\quad
              \sigma = \sqrt{\tfrac1C\textstyle\sum_k (z_k - \mu)^2 + \epsilon},\qquad
              \ell = \tfrac1a\,\mathrm{softplus}\big(a\,(b - \tilde z_y)\big)

    (population σ as in the paper; ``eps`` only keeps a constant logit vector finite).
    Invariant to shifting and to positively scaling the logits. The paper tunes ``a > 0``
    and ``b`` per task; the defaults here (1, 1) are a neutral start, not the paper's values.
    **Not** the PaLM logit z-loss :math:`\lambda\log^2 Z` — that is the ``z_loss`` weight of
    :class:`Loss` (``--z-loss``).
    """
    mu = logits.mean(dim=-1, keepdim=True)
    centered = logits - mu
    sigma = torch.sqrt(centered.square().mean(dim=-1, keepdim=True) + eps)
    zt = _pick(centered / sigma, targets)
    return torch.nn.functional.softplus(a * (b - zt)) / a


