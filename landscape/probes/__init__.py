"""Probes: one module per measurement, each registered by name in :data:`PROBES`."""

from landscape.probes.base import PROBES, Probe, ProbeContext, make_config, register_probe

# Importing a probe module registers it.
from landscape.probes import coherence, collapse, dse, hessian, measures, rankme, sharpness, surface  # noqa: E402, F401  isort: skip

__all__ = ["PROBES", "Probe", "ProbeContext", "make_config", "register_probe"]
