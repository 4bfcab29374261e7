"""Hessian-vector products and the Krylov methods built on them, one concept a module.

- :mod:`~landscape.linalg.operator`: :class:`HessianOperator` — ``H v`` and ``H V`` of the mean
  loss over the data's batches (cached per-batch gradient graphs within a memory budget, double
  backward, forward-over-reverse), the memory a graph holds measured.
- :mod:`~landscape.linalg.krylov`: :func:`lanczos` with full reorthogonalization (Golub & Van Loan
  §10.1), its stopping rules and Ritz error estimates, and :func:`lanczos_lockstep`
  (independent recurrences, one k-vector product per step).
- :mod:`~landscape.linalg.trace`: Hutchinson (1989), Hutch++ (Meyer et al. 2021) and krylov++
  (Hutch++ with a Lanczos sketch), each with a standard error; :func:`estimate_trace`.
- :mod:`~landscape.linalg.density`: stochastic Lanczos quadrature (Golub & Meurant; Ghorbani et
  al. 2019; PyHessian) and the smoothed spectral density.

Every name is importable from ``landscape.linalg`` itself.
"""

from landscape.linalg._base import Matmat, Matvec, PerSampleLoss, _rademacher
from landscape.linalg.density import (
    SpectralDensity,
    smoothed_density,
    stochastic_lanczos_quadrature,
)
from landscape.linalg.krylov import (
    LANCZOS_RULES,
    LanczosResult,
    lanczos,
    lanczos_lockstep,
    ritz_errors,
)
from landscape.linalg.operator import HVP_METHODS, MEMORY_BUDGET_MB, HessianOperator
from landscape.linalg.trace import (
    TRACE_BLOCK,
    TRACE_ESTIMATORS,
    TraceEstimate,
    estimate_trace,
    hutch_plus_plus,
    hutchinson,
    krylov_hutch_plus_plus,
)

__all__ = [
    "HVP_METHODS", "LANCZOS_RULES", "MEMORY_BUDGET_MB", "TRACE_BLOCK", "TRACE_ESTIMATORS", "HessianOperator",
    "LanczosResult", "Matmat", "Matvec", "PerSampleLoss", "SpectralDensity", "TraceEstimate", "_rademacher",
    "estimate_trace", "hutch_plus_plus", "hutchinson", "krylov_hutch_plus_plus", "lanczos", "lanczos_lockstep",
    "ritz_errors", "smoothed_density", "stochastic_lanczos_quadrature",
]
