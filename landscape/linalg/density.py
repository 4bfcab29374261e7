"""The spectral density by stochastic Lanczos quadrature (Golub & Meurant; Ghorbani et al. 2019;
PyHessian's ``density``), and its Gaussian-smoothed form on a grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from landscape.linalg._base import Matmat, Matvec, _rademacher
from landscape.linalg.krylov import lanczos, lanczos_lockstep


@dataclass(frozen=True)
class SpectralDensity:
    """SLQ quadrature: ``nodes[v, j]`` (Ritz values) and ``weights[v, j]`` (squared first components)."""

    nodes: np.ndarray
    weights: np.ndarray

    def moment(self, p: int) -> float:
        """``(1/n_v) Σ_v Σ_j w_vj θ_vj^p`` ≈ ``tr(H^p)/P``."""
        return float(np.mean(np.sum(self.weights * self.nodes**p, axis=1)))


def stochastic_lanczos_quadrature(matvec: Matvec, size: int, *, vectors: int = 1, steps: int = 100,
                                  seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu",
                                  on_step: Callable[[int], None] | None = None,
                                  matmat: Matmat | None = None) -> SpectralDensity:
    """SLQ (PyHessian ``density``): per Rademacher probe ``v`` (normalized), ``m`` Lanczos steps give
    ``T = S diag(θ) Sᵀ``; the quadrature ``Σ_j S_{0j}² f(θ_j)`` approximates ``vᵀ f(H) v``.

    With ``matmat`` (e.g. :meth:`HessianOperator.matmat`) and several ``vectors``, their
    recurrences run in lockstep (:func:`lanczos_lockstep`): each step is one k-vector product, one
    pass over the batches instead of k, with the same probes and, to the rounding of the products,
    the same nodes and weights; it holds the k Lanczos bases at once. Without, one vector at a time.
    ``on_step(j)`` after step ``j`` of each vector's recurrence."""
    g = torch.Generator().manual_seed(seed)
    starts = [_rademacher(size, 1, g, torch.float64, "cpu")[0] for _ in range(vectors)]
    run = dict(max_steps=steps, top_k=0, bottom_k=0, tol=0.0, dtype=dtype, device=device, check_every=10**9,
               on_step=on_step)
    if matmat is not None and vectors > 1:
        results = lanczos_lockstep(matmat, size, starts, **run)
    else:
        results = [lanczos(matvec, size, v0=v0, **run) for v0 in starts]
    nodes = [res.eigenvalues.numpy() for res in results]
    weights = [(res.first_components**2).numpy() for res in results]
    width = max(len(n) for n in nodes)
    pad = lambda a: np.pad(a, (0, width - len(a)))  # noqa: E731 — zero weight for early-stopped probes
    return SpectralDensity(np.stack([pad(n) for n in nodes]), np.stack([pad(w) for w in weights]))


def smoothed_density(sd: SpectralDensity, *, bins: int = 10_000, sigma_squared: float = 1e-5,
                     overhead: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-broadened density on a grid, PyHessian's convention (``density_generate``).

    Grid ``[mean_v min θ − overhead, mean_v max θ + overhead]``; kernel variance
    ``σ² = sigma_squared · max(1, λmax − λmin)``; the result is normalized to unit mass.
    Returns ``(grid, density)``.
    """
    lam_max = float(np.mean(np.max(sd.nodes, axis=1))) + overhead
    lam_min = float(np.mean(np.min(sd.nodes, axis=1))) - overhead
    grid = np.linspace(lam_min, lam_max, bins)
    var = sigma_squared * max(1.0, lam_max - lam_min)
    density = np.zeros(bins)
    for nodes, weights in zip(sd.nodes, sd.weights, strict=True):
        kern = np.exp(-((grid[:, None] - nodes[None, :]) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
        density += kern @ weights
    density /= len(sd.nodes)
    mass = density.sum() * (grid[1] - grid[0])
    return grid, density / mass if mass > 0 else density
