"""Correlating complexity measures with generalization (Jiang et al. 2019; PGDL 2020).

Modules: ``checks`` (input checks), ``ranks`` (τ, Spearman, bootstrap CI, Ψ), ``cmi`` (the CMI
score), ``runs`` (the gap, seed groups).

Pure functions over arrays and run records; no file I/O. A *record* is a dict describing one
trained run: its hyper-parameter values (e.g. ``{"lr": 0.1, "depth": 4}``) plus numbers such as
``train_acc``, ``test_acc`` and the measures under study.

References
----------
- Y. Jiang, B. Neyshabur, H. Mobahi, D. Krishnan, S. Bengio, "Fantastic Generalization Measures
  and Where to Find Them", ICLR 2020 (arXiv:1912.02178, 2019): Kendall's τ over runs, the
  granulated Kendall coefficient Ψ (§4), and the conditional-mutual-information score (§5).
- Y. Jiang et al., "NeurIPS 2020 Competition: Predicting Generalization in Deep Learning"
  (PGDL, arXiv:2012.07976), whose scoring program (``scoring_program/mutual_information.py`` of
  the competition's starting kit) defines the CMI score used by default here.

Conventions
-----------
- Generalization gap ``g = train_acc − test_acc`` (or ``test_loss − train_loss``); a good
  measure μ grows with g, so positive τ / Ψ / high CMI is good.
- The CMI score defaults to the PGDL 2020 scoring program's form (``variant="pgdl"``: pairs of
  axes, every ordered pair of runs including self-pairs, cells averaged uniformly); the toolkit's
  earlier form is ``variant="landscape"``.
- Seed is not an axis: :func:`seed_groups` finds the runs that differ only in their seed, which
  callers (``landscape.study.correlation_table``) average into one configuration.
- Every function checks its input and raises :class:`~landscape.errors.ConfigError` (one line)
  on length mismatch, fewer than 2 runs, NaN/inf values, or an unknown axis / key.
"""

from __future__ import annotations

from landscape.correlate.cmi import CMI_VARIANTS, conditional_mutual_information
from landscape.correlate.ranks import bootstrap_ci, granulated_kendall, kendall_tau, spearman
from landscape.correlate.runs import generalization_gap, seed_groups

__all__ = [
    "CMI_VARIANTS",
    "bootstrap_ci",
    "conditional_mutual_information",
    "generalization_gap",
    "granulated_kendall",
    "kendall_tau",
    "seed_groups",
    "spearman",
]
