r"""Classification losses the trainer implements, and the objective wrapper :class:`Loss`.

Every registered loss is a plain function of logits ``z`` (``[..., C]``, usually
``N × C``) and integer targets ``y`` (``[...]``, long) that returns **per-sample**
values (shape ``[...]``, usually ``[N]``)::

    f(logits, targets, *, **params) -> Tensor[N]

Reduction convention: a loss is summed over classes inside each sample (where
it has a sum over classes at all) and averaged over samples by
:meth:`Loss.forward`, i.e. :math:`L = \frac{1}{N}\sum_n \ell(z_n, y_n)`
(``c = 1/N``). Notation below: :math:`p = \mathrm{softmax}(z)`,
:math:`p_t = p_y`, :math:`e_y` the one-hot vector of ``y``,
:math:`\mathrm{CE} = -\log p_t = \log\sum_k e^{z_k} - z_y`.

The functions work with any leading batch shape (also an unbatched ``[C]``
logit vector with a ``[]`` target, as under ``torch.func.vmap``), call no
``.item()`` and build no one-hot with ``F.one_hot``, so per-example gradients
(``vmap(grad(...))``) and HVPs go through them.

The registered functions trust their parameters; :class:`Loss` /
:func:`build_loss` check names, types and ranges and raise
:class:`~landscape.errors.ConfigError` with one line saying what is wrong.

Weight decay is not here: the optimizers apply it (coupled L2 or decoupled).
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from landscape.errors import ConfigError
from landscape.registry import Registry
from landscape.tasks import TOKEN_TASKS, sequence_loss

__all__ = [
    "LOSSES",
    "Loss",
    "build_loss",
    "loss_names",
    "sparsemax",
    "cross_entropy",
    "label_smoothing",
    "maxsup",
    "focal",
    "poly1",
    "symmetric_ce",
    "generalized_ce",
    "mae",
    "mse",
    "temperature_ce",
    "sparsemax_loss",
    "stablemax",
    "stablemax_ce",
    "spherical_zloss",
]

LOSSES: Registry[Callable[..., Tensor]] = Registry("loss")


# --------------------------------------------------------------------------- ranges


@dataclass(frozen=True)
class _Interval:
    """A real interval for a parameter; ``None`` ends are unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_closed: bool = True
    hi_closed: bool = True

    def __contains__(self, v: float) -> bool:
        # Written so that NaN is never inside.
        if self.lo is not None and not (v >= self.lo if self.lo_closed else v > self.lo):
            return False
        if self.hi is not None and not (v <= self.hi if self.hi_closed else v < self.hi):
            return False
        return math.isfinite(v)

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            left = "[" if self.lo_closed else "("
            right = "]" if self.hi_closed else ")"
            return f"in {left}{self.lo:g}, {self.hi:g}{right}"
        if self.lo is not None:
            return f"{'>=' if self.lo_closed else '>'} {self.lo:g}"
        if self.hi is not None:
            return f"{'<=' if self.hi_closed else '<'} {self.hi:g}"
        return "finite"


_NONNEG = _Interval(lo=0.0)
_POSITIVE = _Interval(lo=0.0, lo_closed=False)
_NEGATIVE = _Interval(hi=0.0, hi_closed=False)

# canonical loss name -> {param name -> allowed interval}
_RANGES: dict[str, dict[str, _Interval]] = {}


def _register(name: str, *aliases: str, **ranges: _Interval):
    """Register a loss in :data:`LOSSES` and record the allowed range of each parameter."""

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        unknown = set(ranges) - set(_param_defaults(fn))
        if unknown:  # a programming error in this module
            raise TypeError(f"ranges for parameters {sorted(unknown)} that {fn.__name__} lacks")
        LOSSES.register(name, *aliases)(fn)
        _RANGES[name] = dict(ranges)
        return fn

    return decorator


def _param_defaults(fn: Callable[..., Tensor]) -> dict[str, Any]:
    """Keyword parameters of a registered loss (everything after logits, targets) and defaults."""
    params = list(inspect.signature(fn).parameters.values())[2:]
    return {p.name: p.default for p in params}


# --------------------------------------------------------------------------- helpers


def _onehot(logits: Tensor, targets: Tensor) -> Tensor:
    """One-hot of ``targets`` in the dtype/device of ``logits`` (vmap-friendly)."""
    classes = torch.arange(logits.shape[-1], device=logits.device)
    return (classes == targets.unsqueeze(-1)).to(logits.dtype)


def _pick(x: Tensor, targets: Tensor) -> Tensor:
    """``x[..., y]``: the target entry of each row."""
    return x.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _log_pt(logits: Tensor, targets: Tensor) -> Tensor:
    """:math:`\\log p_t`, from ``log_softmax`` (stable)."""
    return _pick(torch.log_softmax(logits, dim=-1), targets)


# --------------------------------------------------------------------------- losses


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


@_register("temperature_ce", "tce", temperature=_POSITIVE)
def temperature_ce(logits: Tensor, targets: Tensor, *, temperature: float = 1.0) -> Tensor:
    r"""Temperature-scaled cross-entropy: CE of :math:`z / T`.

    .. math:: \ell = \log\sum_k e^{z_k/T} - z_y/T

    ``T = 1`` is CE. No :math:`T^2` factor (that belongs to distillation).
    """
    return -_log_pt(logits / temperature, targets)


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


# --------------------------------------------------------------------------- objective


def _describe_params(name: str) -> str:
    defaults = _param_defaults(LOSSES[name])
    if not defaults:
        return f"loss {name!r} accepts no parameters"
    ranges = _RANGES.get(name, {})
    parts = []
    for p, d in defaults.items():
        rng = f" ({p} {ranges[p]})" if p in ranges else ""
        parts.append(f"{p}={d!r}{rng}")
    return f"accepted parameters of loss {name!r}: " + ", ".join(parts)


def _check_number(what: str, value: Any, interval: _Interval, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number, got {value!r}; {hint}")
    value = float(value)
    if value not in interval:
        raise ConfigError(f"{what} must be {interval}, got {value!r}; {hint}")
    return value


def _resolve_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the signature and ranges of loss ``name``; add defaults."""
    defaults = _param_defaults(LOSSES[name])
    hint = _describe_params(name)
    for key in params:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"loss {name!r} got an unknown parameter {key!r}{guess}; {hint}")
    ranges = _RANGES.get(name, {})
    resolved: dict[str, Any] = {}
    for key, default in defaults.items():
        value = params.get(key, default)
        what = f"loss {name!r}: {key}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{what} must be true or false, got {value!r}; {hint}")
        elif isinstance(default, (int, float)):
            value = _check_number(what, value, ranges.get(key, _Interval()), hint)
        resolved[key] = value
    return resolved


class Loss(torch.nn.Module):
    r"""A registered loss (name + params) plus optional terms: the training objective.

    .. math::
        \ell_n = f(z_n, y_n; \theta) + \lambda_z \big(\log\textstyle\sum_k e^{z_{nk}}\big)^2,
        \qquad
        L = \frac1N \sum_n \ell_n, \qquad
        L_\text{flood} = |L - b| + b

    - ``z_loss`` (:math:`\lambda_z`): PaLM's auxiliary logit z-loss (Chowdhery
      et al. 2022 use 1e-4), per sample; 0 (off) by default.
    - ``flooding`` (:math:`b`): flooding (Ishida et al. 2020, "Do We Need Zero
      Training Loss After Achieving Zero Training Loss?") of the batch-mean
      loss (z-loss included): below ``b`` the gradient is reversed (gradient
      ascent). ``None`` (off) by default; ``0`` is a no-op for non-negative losses.

    :meth:`per_sample` gives :math:`\ell_n` (no flooding: it acts on the mean);
    :meth:`forward` gives the scalar objective. Unknown names raise the
    registry's error; bad parameters raise :class:`~landscape.errors.ConfigError`.
    """

    def __init__(
        self,
        name: str = "ce",
        *,
        z_loss: float = 0.0,
        flooding: float | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        self.name = LOSSES.canonical(name)
        self.fn = LOSSES[self.name]
        self.params = _resolve_params(self.name, params)
        self.z_loss = _check_number("z_loss", z_loss, _NONNEG, "z_loss is the PaLM z-loss weight")
        self.flooding = (
            None
            if flooding is None
            else _check_number(
                "flooding", flooding, _NONNEG, "flooding is the flood level b, or None for off"
            )
        )

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-sample objective ``[N]``: the base loss plus the z-loss term, no flooding."""
        if logits.shape[:-1] != targets.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not fit: "
                "expected logits [N, C] and targets [N]"
            )
        out = self.fn(logits, targets, **self.params)
        if self.z_loss:
            out = out + self.z_loss * torch.logsumexp(logits, dim=-1).square()
        return out

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Scalar objective: the mean of :meth:`per_sample`, then flooding if set."""
        loss = self.per_sample(logits, targets).mean()
        if self.flooding is not None:
            loss = (loss - self.flooding).abs() + self.flooding
        return loss

    def spec(self) -> dict[str, Any]:
        """``{"name", "params", "z_loss", "flooding"}``, canonical name and all params resolved.

        ``build_loss(s["name"], z_loss=s["z_loss"], flooding=s["flooding"], **s["params"])``
        rebuilds the same loss.
        """
        return {
            "name": self.name,
            "params": dict(self.params),
            "z_loss": self.z_loss,
            "flooding": self.flooding,
        }

    def extra_repr(self) -> str:
        parts = [repr(self.name), *(f"{k}={v!r}" for k, v in self.params.items())]
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss!r}")
        if self.flooding is not None:
            parts.append(f"flooding={self.flooding!r}")
        return ", ".join(parts)


def build_loss(
    name: str = "ce",
    *,
    z_loss: float = 0.0,
    flooding: float | None = None,
    **params: Any,
) -> Loss:
    """The :class:`Loss` for a registered name (or alias) and its parameters."""
    return Loss(name, z_loss=z_loss, flooding=flooding, **params)


class SequenceLoss(torch.nn.Module):
    r"""The training objective of a token task from a per-token :class:`Loss`:
    ``ℓ_n = c · Σ_{t valid} ℓ(z_{n,t}, y_{n,t})`` with ``c = N / T_total`` of the training split
    (:func:`landscape.tasks.sequence_loss`), so the batch mean is the token-weighted mean at the
    training split's scale; the loss's z-loss term is per token, flooding acts on the batch mean."""

    def __init__(self, loss: Loss, task: str, scale: float) -> None:
        super().__init__()
        self.loss, self.task, self.scale = loss, task, float(scale)
        self.per_sample = sequence_loss(loss.per_sample, task, self.scale)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        loss = self.per_sample(logits, targets).mean()
        if self.loss.flooding is not None:
            loss = (loss - self.loss.flooding).abs() + self.loss.flooding
        return loss

    def spec(self) -> dict[str, Any]:
        return {**self.loss.spec(), "task": self.task, "token_scale": self.scale}


def task_objective(loss: Loss, data: Any) -> Loss | SequenceLoss:
    """``loss`` as the objective of ``data``'s task (``data.info["task"]``, classification when
    absent): itself for classification, a :class:`SequenceLoss` for per-token targets."""
    task = (data.info or {}).get("task") or {}
    if task.get("name") not in TOKEN_TASKS:
        return loss
    return SequenceLoss(loss, task["name"], len(data.train) / task["valid_tokens"]["train"])


def loss_names() -> list[str]:
    """The canonical names of the registered losses, sorted."""
    return LOSSES.names()
