r"""Directions in weight space and the planes they span (Li et al. 2018, "Visualizing the Loss
Landscape of Neural Nets"; reference: tomgoldstein/loss-landscape, ``net_plotter.py`` and
``projection.py``).

A *direction* is a ``dict[str, Tensor]`` with the same keys, shapes, dtypes and device as the
tensors it perturbs, in the same order. Which tensors those are is set by ``kind``:

* ``"weights"``: every tensor of ``model.named_parameters()``;
* ``"states"``: every floating-point tensor of ``model.state_dict()`` (parameters and the BN
  running mean/var). Integer buffers (``num_batches_tracked``) are never perturbed: they are not
  in a direction at all, and :func:`perturbed` passes them through unchanged.
  A tensor shared under several names (tied weights) is in a direction once, under its first name.

Everything here is a pure function: no model or input tensor is modified, and every random
draw comes from a ``torch.Generator`` seeded by the caller, on the CPU (so a direction is the
same on every device).

Filter normalization, for a Gaussian direction :math:`d` and weights :math:`w`, per tensor:

.. math::

    d_{i} \leftarrow d_{i}\,\frac{\lVert w_{i}\rVert}{\lVert d_{i}\rVert + 10^{-10}}
    \quad\text{for every slice } i \text{ along dim 0 of a tensor with } \mathrm{ndim} > 1,

so every output filter (conv) or row (linear) of the direction has the norm of the matching
filter of the weights. Tensors with ``ndim ≤ 1`` (biases, BN γ/β, running statistics) get
``d = 0`` (``ignore="biasbn"``, our default) or ``d = w`` (``ignore="none"``: what the
reference does whenever ``ignore != "biasbn"``, ``net_plotter.normalize_directions_for_weights``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from landscape.errors import ConfigError

NORMS = ("filter", "layer", "weight", "none")
IGNORES = ("biasbn", "none")
KINDS = ("weights", "states")
PROJECTIONS = ("cos", "lstsq")

_EPS = 1e-10  # the reference's guard against a zero direction norm

Direction = dict[str, Tensor]


# ---- validation --------------------------------------------------------------------------------


def check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    """``value`` is one of ``valid``, or a one-line ConfigError naming them."""
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _check_same_layout(a: Mapping[str, Tensor], b: Mapping[str, Tensor], a_name: str, b_name: str) -> None:
    """``a`` and ``b`` have the same keys with the same shapes, or a one-line ConfigError."""
    missing = [k for k in b if k not in a]
    extra = [k for k in a if k not in b]
    shapes = [f"{k} {tuple(a[k].shape)} vs {tuple(b[k].shape)}" for k in a if k in b and a[k].shape != b[k].shape]
    if missing or extra or shapes:
        parts = []
        for label, keys in ((f"only in {b_name}", missing), (f"only in {a_name}", extra), ("shape mismatch", shapes)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", … ({len(keys)} in all)" if len(keys) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise ConfigError(f"{a_name} and {b_name} do not match ({'; '.join(parts)})")


def _check_fits(d: Mapping[str, Tensor], base: Mapping[str, Tensor], d_name: str, base_name: str) -> None:
    """Every key of ``d`` is in ``base`` with the same shape, or a one-line ConfigError."""
    unknown = [k for k in d if k not in base]
    shapes = [f"{k} {tuple(d[k].shape)} vs {tuple(base[k].shape)}" for k in d if k in base and d[k].shape != base[k].shape]
    if unknown or shapes:
        detail = f"not in {base_name}: {', '.join(unknown[:5])}" if unknown else f"shape mismatch: {', '.join(shapes[:5])}"
        raise ConfigError(f"{d_name} does not fit {base_name} ({detail})")


def _floating(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in tensors.items() if v.is_floating_point()}


# ---- the tensors a direction perturbs ------------------------------------------------------------


def target_tensors(model: nn.Module, kind: str = "weights") -> dict[str, Tensor]:
    """Detached copies of the tensors a direction of ``kind`` perturbs, on the model's device.

    ``weights``: ``model.named_parameters()``; ``states``: the floating-point entries of
    ``model.state_dict()`` (parameters and BN running statistics, no integer buffers). A tensor
    the model shares under several names (tied embeddings) is one entry, under its first name:
    perturbing it perturbs every use.
    """
    check_choice("direction kind", kind, KINDS)
    if kind == "weights":
        items = [(n, p.detach()) for n, p in model.named_parameters()]
    else:
        seen: set[int] = set()
        items = []
        for n, t in model.state_dict(keep_vars=True).items():  # state_dict repeats tied tensors
            if id(t) not in seen:
                seen.add(id(t))
                items.append((n, t.detach()))
    out = {n: t.detach().clone() for n, t in items if t.is_floating_point()}
    if not out:
        raise ConfigError(f"the model has no floating-point {kind} to perturb")
    return out


def random_direction(model: nn.Module, *, kind: str = "weights", seed: int = 0) -> Direction:
    """One standard normal tensor per target tensor (not normalized).

    Drawn in order from ``torch.Generator("cpu").manual_seed(seed)`` (float32, or float64 for
    float64 tensors) and then moved to the tensor's device and dtype, so the same seed gives the
    same direction on every device. Tensors with ``ndim ≤ 1`` get a draw too (as in the
    reference), so the draws of the other tensors do not depend on ``ignore``.
    """
    return _gaussian_like(target_tensors(model, kind), seed)


def _gaussian_like(like: Mapping[str, Tensor], seed: int) -> Direction:
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    out = {}
    for name, t in like.items():
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        out[name] = torch.randn(t.shape, generator=gen, dtype=dtype).to(device=t.device, dtype=t.dtype)
    return out


def normalize_direction(
    direction: Mapping[str, Tensor],
    weights: Mapping[str, Tensor],
    *,
    norm: str = "filter",
    ignore: str = "biasbn",
) -> Direction:
    r"""Rescale ``direction`` to the scale of ``weights``, tensor by tensor (a new dict).

    For tensors with ``ndim > 1``:

    * ``filter``: :math:`d_i \leftarrow d_i \lVert w_i\rVert / (\lVert d_i\rVert + 10^{-10})`
      for each slice :math:`i` along dim 0;
    * ``layer``: :math:`d \leftarrow d \lVert w\rVert / (\lVert d\rVert + 10^{-10})` (the
      reference has no :math:`10^{-10}` here);
    * ``weight``: :math:`d \leftarrow d \odot w`;
    * ``none``: unchanged.

    Tensors with ``ndim ≤ 1``, whatever ``norm``: ``ignore="biasbn"`` → zeros;
    ``ignore="none"`` → ``d = w`` (a copy of the weight, as the reference's
    ``normalize_directions_for_weights/states`` do for any ``ignore`` other than ``'biasbn'``).
    """
    check_choice("norm", norm, NORMS)
    check_choice("ignore", ignore, IGNORES)
    _check_same_layout(direction, weights, "direction", "weights")
    out = {}
    for name, d in direction.items():
        w = weights[name].to(device=d.device, dtype=d.dtype)
        if d.ndim <= 1:
            out[name] = torch.zeros_like(d) if ignore == "biasbn" else w.clone()
        elif norm == "filter":
            dims = tuple(range(1, d.ndim))
            scale = torch.linalg.vector_norm(w, dim=dims, keepdim=True) / (
                torch.linalg.vector_norm(d, dim=dims, keepdim=True) + _EPS
            )
            out[name] = d * scale
        elif norm == "layer":
            out[name] = d * (torch.linalg.vector_norm(w) / (torch.linalg.vector_norm(d) + _EPS))
        elif norm == "weight":
            out[name] = d * w
        else:
            out[name] = d.clone()
    return out


def filter_normalized_direction(
    model: nn.Module,
    *,
    kind: str = "weights",
    norm: str = "filter",
    ignore: str = "biasbn",
    seed: int = 0,
) -> Direction:
    """:func:`random_direction` normalized against the model's own tensors (the reference's
    ``create_random_direction``)."""
    check_choice("norm", norm, NORMS)
    check_choice("ignore", ignore, IGNORES)
    weights = target_tensors(model, kind)
    return normalize_direction(_gaussian_like(weights, seed), weights, norm=norm, ignore=ignore)


# ---- combining directions ------------------------------------------------------------------------


def _dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor], keys: Sequence[str] | None = None) -> float:
    """Inner product of the flattened concatenations, accumulated in float64."""
    keys = list(a) if keys is None else keys
    total = 0.0
    for k in keys:
        total += float(torch.sum(a[k].double() * b[k].to(a[k].device).double()))
    return total


def orthogonalize(
    d1: Mapping[str, Tensor],
    d0: Mapping[str, Tensor],
    *,
    weights: Mapping[str, Tensor] | None = None,
    norm: str = "filter",
    ignore: str = "biasbn",
) -> Direction:
    r"""The component of ``d1`` orthogonal to ``d0`` (one Gram–Schmidt step over all tensors).

    .. math::  d_1' = d_1 - \frac{\langle d_1, d_0|_S\rangle}{\langle d_0|_S, d_0|_S\rangle}\, d_0|_S

    where :math:`d_0|_S` is ``d0`` restricted to the tensors on which ``d1`` is not identically
    zero (elsewhere it is set to 0). Then :math:`\langle d_1', d_0\rangle = 0` exactly in exact
    arithmetic, and tensors that ``d1`` ignores (zeroed biases/BN) stay exactly zero. If
    :math:`d_0|_S = 0`, ``d1`` is already orthogonal and is returned (copied) as it is.

    The result is not rescaled. With ``weights`` given, it is normalized again with
    :func:`normalize_direction` (``norm``, ``ignore``); that restores the filter norms but
    breaks exact orthogonality (per-filter rescaling does not preserve it).
    """
    _check_same_layout(d1, d0, "d1", "d0")
    support = [k for k, t in d1.items() if bool(torch.any(t != 0))]
    in_support = set(support)
    denom = _dot(d0, d0, support)
    coef = _dot(d1, d0, support) / denom if denom > 0 else 0.0
    out = {}
    for k, t in d1.items():
        out[k] = t - coef * d0[k].to(device=t.device, dtype=t.dtype) if k in in_support and coef != 0.0 else t.clone()
    if weights is not None:
        out = normalize_direction(out, weights, norm=norm, ignore=ignore)
    return out


def interpolation_direction(
    theta0: Mapping[str, Tensor],
    theta1: Mapping[str, Tensor],
    *,
    dtype: torch.dtype | None = None,
) -> Direction:
    """``theta1 − theta0`` for every floating-point tensor (not normalized), on ``theta0``'s
    devices, in ``theta0``'s dtypes (or ``dtype``); integer entries (``num_batches_tracked``)
    are left out. The reference's ``get_diff_weights/states``.

    In the weights' dtype, ``theta0 + 1·(theta1 − theta0)`` can miss ``theta1`` by the rounding
    error of the difference (up to ``eps·(|theta0| + |theta1|)``, e.g. where the sign changes). With
    ``dtype=torch.float64`` the difference of two float32 tensors is exact (unless an entry
    shrinks by more than a factor 2²⁹), and :func:`perturbed`, which adds in the promoted dtype
    and rounds once to the weights' dtype, then reproduces ``theta1`` bit for bit.
    """
    _check_same_layout(theta0, theta1, "theta0", "theta1")
    out = {}
    for k, t0 in theta0.items():
        if t0.is_floating_point():
            target = dtype or t0.dtype
            out[k] = theta1[k].to(device=t0.device, dtype=target) - t0.to(target)
    if not out:
        raise ConfigError("theta0 and theta1 hold no floating-point tensors to interpolate between")
    return out


def perturbed(
    weights: Mapping[str, Tensor],
    directions: Sequence[Mapping[str, Tensor]],
    coefficients: Sequence[float],
) -> dict[str, Tensor]:
    r""":math:`w + \sum_i a_i d_i`, as a new dict in the key order of ``weights``.

    Every key of every direction must be in ``weights`` with the same shape. Entries of
    ``weights`` that no direction touches, and integer entries, are passed through unchanged
    (the same tensor objects); perturbed entries are new tensors on ``w``'s device, computed in
    order as ``w + a_0 d_0 + a_1 d_1 + …`` in the promoted dtype of ``w`` and the directions
    (a float64 direction makes the sum float64) and rounded once to ``w``'s dtype.
    """
    if len(directions) != len(coefficients):
        raise ConfigError(f"{len(directions)} direction(s) but {len(coefficients)} coefficient(s); give one coefficient per direction")
    for i, d in enumerate(directions):
        _check_fits(d, weights, f"direction {i}", "the weights")
    out = dict(weights)
    for k, w in weights.items():
        if not w.is_floating_point() or not any(k in d for d in directions):
            continue
        value = w
        for a, d in zip(coefficients, directions, strict=True):
            if k in d:
                value = value + float(a) * d[k].to(w.device)
        out[k] = value.to(w.dtype)
    return out


# ---- flat vectors ----------------------------------------------------------------------------------


def flatten(direction: Mapping[str, Tensor]) -> Tensor:
    """The tensors of ``direction`` concatenated in key order into one 1-D tensor."""
    if not direction:
        raise ConfigError("cannot flatten an empty direction")
    return torch.cat([t.reshape(-1) for t in direction.values()])


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> Direction:
    """Split a 1-D ``vector`` into tensors with the keys, shapes, dtypes and devices of ``like``
    (views of ``vector`` when its dtype and device already match)."""
    total = sum(t.numel() for t in like.values())
    if vector.ndim != 1 or vector.numel() != total:
        raise ConfigError(f"vector of shape {tuple(vector.shape)} does not unflatten into {len(like)} tensors with {total} entries in all")
    out, start = {}, 0
    for k, t in like.items():
        out[k] = vector[start : start + t.numel()].view(t.shape).to(device=t.device, dtype=t.dtype)
        start += t.numel()
    return out
