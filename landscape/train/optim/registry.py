"""The optimizer registry: name → class, filled by ``@OPTIMIZERS.register`` in each family's module.

Importing :mod:`landscape.train.optim` imports every family, so the registry is complete
whenever any module of the package has been imported.
"""

from __future__ import annotations

import inspect

from torch.optim import Optimizer

from landscape.registry import Registry

OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer")

# Constructor arguments that are not hyperparameters.
_STRUCTURAL_ARGS = ("self", "params", "base_optimizer", "model", "norm_params")


def _keyword_names(cls: type) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return [
        name
        for name, p in sig.parameters.items()
        if name not in _STRUCTURAL_ARGS
        and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    ]
