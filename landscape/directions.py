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
from dataclasses import dataclass

import numpy as np
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


# ---- trajectories and PCA ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PCADirections:
    """Top-2 principal directions of a checkpoint trajectory and its coordinates in their plane.

    ``d0``/``d1``: unit-norm directions (keys of the final state); ``coords``: T × 2 array, row
    ``t`` the coordinates of ``θ_t − θ_final``; ``explained_variance_ratio``: shape (2,), as
    sklearn's ``PCA.explained_variance_ratio_``; ``steps``: the checkpoints' steps or names.
    """

    d0: Direction
    d1: Direction
    coords: np.ndarray
    explained_variance_ratio: np.ndarray
    steps: list


def _check_trajectory(trajectory: Sequence[Mapping[str, Tensor]], final: Mapping[str, Tensor]) -> list[str]:
    keys = list(_floating(final))
    if not keys:
        raise ConfigError("the final state holds no floating-point tensors")
    for i, theta in enumerate(trajectory):
        _check_same_layout(_floating(theta), {k: final[k] for k in keys}, f"checkpoint {i}", "the final state")
    return keys


def _stack(trajectory: Sequence[Mapping[str, Tensor]], final: Mapping[str, Tensor], key: str) -> Tensor:
    """T × n float64 matrix, row ``t`` = ``vec(θ_t[key] − θ_final[key])``."""
    f = final[key].double()
    return torch.stack([(theta[key].to(f.device).double() - f).reshape(-1) for theta in trajectory])


def project_trajectory(
    trajectory: Sequence[Mapping[str, Tensor]],
    final: Mapping[str, Tensor],
    directions: Sequence[Mapping[str, Tensor]],
    *,
    projection: str = "cos",
) -> np.ndarray:
    r"""Coordinates (T × k) of every ``θ_t − θ_final`` along ``directions`` (float64).

    ``cos`` (the reference's ``project_1D``): :math:`x_{ti} = \langle θ_t − θ_{final}, d_i\rangle
    / \lVert d_i\rVert`, exact when the directions are orthogonal; ``lstsq`` (the reference's
    ``project_2D(..., 'lstsq')``): the least-squares coefficients
    :math:`\min_x \lVert θ_t − θ_{final} − \sum_i x_i d_i\rVert`.
    """
    check_choice("projection", projection, PROJECTIONS)
    if not trajectory or not directions:
        raise ConfigError("project_trajectory needs at least one checkpoint and one direction")
    for i, d in enumerate(directions):
        _check_fits(d, final, f"direction {i}", "the final state")
        _check_same_layout(d, directions[0], f"direction {i}", "direction 0")
    keys = list(directions[0])
    k = len(directions)
    b = np.zeros((len(trajectory), k))  # <θ_t − θ_f, d_i>
    gram = np.zeros((k, k))  # <d_i, d_j>
    for key in keys:
        x = _stack(trajectory, final, key)
        dk = torch.stack([d[key].to(x.device).double().reshape(-1) for d in directions])
        b += (x @ dk.T).cpu().numpy()
        gram += (dk @ dk.T).cpu().numpy()
    if projection == "cos":
        return b / np.sqrt(np.diag(gram))
    return np.linalg.lstsq(gram, b.T, rcond=None)[0].T


def pca_directions(
    trajectory: Sequence[Mapping[str, Tensor]],
    final: Mapping[str, Tensor] | None = None,
    *,
    ignore: str = "biasbn",
    projection: str = "cos",
    steps: Sequence | None = None,
) -> PCADirections:
    r"""Top-2 principal components of the rows :math:`\mathrm{vec}(θ_t − θ_{final})`.

    As the reference's ``setup_PCA_directions``: the matrix :math:`X` has one row per checkpoint
    (``final`` defaults to the last one, whose row is then 0), over the floating-point tensors of
    ``final``; with ``ignore="biasbn"`` the ``ndim ≤ 1`` tensors are zeroed in :math:`X` and in
    the directions. The directions are sklearn's ``PCA(n_components=2).fit(X).components_``: the
    top right singular vectors of the column-centered :math:`X_c = X − \bar X`, unit norm, signed
    so that the entry of largest magnitude is positive; ``explained_variance_ratio`` is
    :math:`s_i^2 / \sum_j s_j^2`. The coordinates project the *uncentered* rows (the
    reference's ``project_trajectory``), see :func:`project_trajectory`.

    Computed in float64 through the T × T Gram matrix :math:`X_c X_c^\top`, one tensor at a time
    (memory: one tensor's T × n block, not the whole T × P matrix); the directions are returned
    in ``final``'s dtypes and devices, the coordinates from the float64 directions.
    """
    check_choice("ignore", ignore, IGNORES)
    check_choice("projection", projection, PROJECTIONS)
    trajectory = list(trajectory)
    if len(trajectory) < 3:
        raise ConfigError(f"PCA of a trajectory needs at least 3 checkpoints, got {len(trajectory)}")
    if final is None:
        final = trajectory[-1]
    if steps is None:
        steps = list(range(len(trajectory)))
    elif len(steps) != len(trajectory):
        raise ConfigError(f"{len(steps)} steps given for {len(trajectory)} checkpoints")
    keys = _check_trajectory(trajectory, final)
    used = [k for k in keys if not (ignore == "biasbn" and final[k].ndim <= 1)]
    if not used:
        raise ConfigError("every tensor has ndim ≤ 1 and ignore='biasbn' zeroes them all; use ignore='none'")

    def centered(key: str) -> Tensor:
        x = _stack(trajectory, final, key)
        return x - x.mean(dim=0, keepdim=True)

    gram = torch.zeros(len(trajectory), len(trajectory), dtype=torch.float64, device=final[used[0]].device)
    for k in used:
        xc = centered(k)
        gram += xc @ xc.T
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    lam, u = evals.flip(0)[:2], evecs.flip(1)[:, :2]
    total = float(gram.trace())  # Σ_j s_j², sklearn's total variance × (T − 1)
    if not (float(lam[1]) > 1e-12 * float(lam[0]) > 0):
        raise ConfigError("the trajectory spans fewer than two dimensions (its checkpoints lie on a line or coincide)")
    sv = lam.sqrt()
    comps: list[dict[str, Tensor]] = [{}, {}]
    for k in keys:
        if k in used:
            v = centered(k).T @ (u / sv)  # n × 2, right singular vectors
            comps[0][k], comps[1][k] = v[:, 0].view(final[k].shape), v[:, 1].view(final[k].shape)
        else:
            zero = torch.zeros(final[k].shape, dtype=torch.float64, device=final[k].device)
            comps[0][k], comps[1][k] = zero, zero.clone()
    for comp in comps:  # sklearn's svd_flip(u_based_decision=False): largest |entry| positive
        peak = max((t.reshape(-1)[t.abs().argmax()] for t in comp.values() if t.numel()), key=lambda x: float(x.abs()))
        if float(peak) < 0:
            for k in comp:
                comp[k] = -comp[k]
    coords = project_trajectory(trajectory, final, comps, projection=projection)
    d0, d1 = ({k: t.to(dtype=final[k].dtype) for k, t in c.items()} for c in comps)
    return PCADirections(d0=d0, d1=d1, coords=coords, explained_variance_ratio=(lam.cpu().numpy() / total),
                         steps=list(steps))
