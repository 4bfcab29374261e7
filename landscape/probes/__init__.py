"""Probes: one module per measurement, each registered by name in :data:`PROBES`.

Every module of this package is imported here, and importing a probe module registers it: adding
a probe is adding its module (it declares what the CLI, ``analyze``, ``correlate`` and the
figures need: :class:`~landscape.probes.base.Probe`)."""

import importlib
import pkgutil

from landscape.probes.base import PROBES, Probe, ProbeContext, make_config, register_probe

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_") and _module != "base":
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["PROBES", "Probe", "ProbeContext", "make_config", "register_probe"]
