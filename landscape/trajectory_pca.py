r"""PCA directions of a training trajectory, and the trajectory's coordinates in their plane
(Li et al. 2018, §7; reference: tomgoldstein/loss-landscape, ``projection.py``
``setup_PCA_directions`` / ``project_trajectory``).

A trajectory is the checkpoints' tensors of one kind (:func:`landscape.directions.target_tensors`),
in order; the directions are :mod:`landscape.directions` directions (same keys, shapes, dtypes);
everything is a pure function, in float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from landscape.directions import (
    IGNORES,
    PROJECTIONS,
    Direction,
    _check_fits,
    _check_same_layout,
    _floating,
    check_choice,
)
from landscape.errors import ConfigError

__all__ = ["PCADirections", "pca_directions", "project_trajectory"]


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
