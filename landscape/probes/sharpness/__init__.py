"""Sharpness probe: worst-case and average-case (adaptive) m-sharpness, first-order flatness, and
PAC-Bayes flatness.

References
----------
* Andriushchenko, Croce, Müller, Hein, Flammarion 2023, "A Modern Look at the Relationship
  between Sharpness and Generalization" (tml-epfl/sharpness-vs-generalization, ``sharpness.py``):
  m-sharpness, adaptive perturbation sets, Auto-PGD on the weights, average-case sharpness.
* Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
  parameter-free attacks" (Auto-PGD: step-size schedule and momentum).
* Kwon et al. 2021 (ASAM): the adaptive set ``T_w = diag|w|``.
* Zhang et al. 2023 (GAM): first-order flatness ``R¹_ρ(θ) = ρ · max_{‖δ‖≤ρ} ‖∇L(θ+δ)‖``.
* Jiang et al. 2019, "Fantastic Generalization Measures"; Dziugaite et al. 2020: PAC-Bayes
  flatness, the largest weight-noise σ that keeps the training accuracy within a target.

Conventions
-----------
Every perturbation is written ``δ = s ⊙ u`` with ``s = |w|`` (``adaptive``) or ``s = 1``; the sets
are ``‖u‖_∞ ≤ ρ`` (``linf``) and ``‖u‖₂ ≤ ρ`` (``l2``, one global norm over all perturbed
parameters; for ``adaptive`` this is the ellipsoid ``‖δ/|w|‖₂ ≤ ρ``). Coordinates with ``w_i = 0``
are never perturbed in adaptive mode. ``L_B`` is the mean of the per-sample loss over a batch ``B``
of ``m`` points; the subset (``cfg.subset`` points of the split, fixed by ``cfg.seed``) is shuffled
with the same seed and cut into ``⌊subset/m⌋`` batches (an incomplete last batch is dropped, so
every batch has exactly ``m`` points). The model is never mutated: every evaluation goes through
:func:`landscape.core.kernel.logits_at` with perturbed copies of the parameters.

Why one probe with four measures
--------------------------------
Worst case, average case, first-order flatness and PAC-Bayes are one registered probe,
``sharpness``, because they are four views of one object: they share the objective ``L_B(w + δ)``
(:class:`_Objective`: the perturbed parameter set ``params``, the logit normalization, ``bn_mode``
and ``dtype``), the fixed subset and its batches of ``m`` (drawn once, with one seed), the
clean pass (Auto-PGD's first gradient at δ = 0 is it, and every measure reads it), one random
generator (the measures draw from it in turn, so a result is reproducible from the settings),
and one stored group ``/<checkpoint>/sharpness`` with one ``settings`` record. Four probes would
evaluate the same clean batches four times and store four copies of the same settings, and
correlating a flatness with the sharpness of the same points would need a cross-group match.
The code is one module a measure all the same:

* :mod:`~landscape.probes.sharpness.config` — :class:`SharpnessConfig`, its choices, the paper's ρ grids;
* :mod:`~landscape.probes.sharpness.objective` — ``L_B(w + δ)``, its gradients, the batches, the error;
* :mod:`~landscape.probes.sharpness.projections` — the sets' projections (ball, ellipsoid), random starts;
* :mod:`~landscape.probes.sharpness.auto_pgd` — worst case: Auto-PGD (:func:`worst_case_ascent`);
* :mod:`~landscape.probes.sharpness.average` — average case (Monte Carlo);
* :mod:`~landscape.probes.sharpness.first_order` — :func:`first_order_flatness` (GAM);
* :mod:`~landscape.probes.sharpness.pac_bayes` — :func:`largest_sigma`, :func:`magnitude_aware_std`;
* :mod:`~landscape.probes.sharpness.probe` — :func:`sharpness` and the registration.
"""

from landscape.probes.sharpness.auto_pgd import (
    _value_only,
    _worst_case,
    auto_pgd_checkpoints,
    worst_case_ascent,
)
from landscape.probes.sharpness.average import _average_case
from landscape.probes.sharpness.config import (
    DEFAULT_RHOS,
    ELLIPSOID,
    KINDS,
    MOMENTUM_FORMS,
    NORMS,
    PAC_MAG_FORMS,
    PARAM_SETS,
    SharpnessConfig,
)
from landscape.probes.sharpness.first_order import _first_order, first_order_flatness
from landscape.probes.sharpness.objective import (
    NORM_LAYERS,
    PerSampleLoss,
    _batches,
    _BatchFn,
    _check_clean,
    _error,
    _Objective,
    _perturbed_layout,
)
from landscape.probes.sharpness.pac_bayes import _pac_bayes, largest_sigma, magnitude_aware_std
from landscape.probes.sharpness.probe import _sharpness, run_sharpness, sharpness
from landscape.probes.sharpness.projections import _random_u, _unit, project, project_ellipsoid
from landscape.utils import DTYPES  # the name measures.py and older callers import from here

__all__ = ["DEFAULT_RHOS", "DTYPES", "ELLIPSOID", "KINDS", "MOMENTUM_FORMS", "NORMS", "NORM_LAYERS", "PAC_MAG_FORMS",
           "PARAM_SETS", "PerSampleLoss", "SharpnessConfig", "auto_pgd_checkpoints", "first_order_flatness",
           "largest_sigma", "magnitude_aware_std", "project", "project_ellipsoid", "run_sharpness", "sharpness",
           "worst_case_ascent",
           # private, imported by landscape.probes.measures and the tests
           "_BatchFn", "_Objective", "_average_case", "_batches", "_check_clean", "_error", "_first_order",
           "_pac_bayes", "_perturbed_layout", "_random_u", "_sharpness", "_unit", "_value_only", "_worst_case"]
