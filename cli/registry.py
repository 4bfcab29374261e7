"""``landscape models|datasets|losses|optimizers``: the registered names of each registry
(:class:`landscape.registry.Registry`), their aliases, parameters with defaults, and the first
paragraph of their docstrings."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from rich.table import Table

from landscape.datasets import DATASETS
from landscape.models import MODELS
from landscape.registry import Registry
from landscape.train.losses import LOSSES
from landscape.train.optim import OPTIMIZERS
from landscape_cli.app import console

REGISTRIES: dict[str, Registry] = {"models": MODELS, "datasets": DATASETS, "losses": LOSSES,
                                   "optimizers": OPTIMIZERS}
"""command → the registry it lists."""


def describe(registry: Registry, name: str) -> tuple[str, str, str]:
    """``(name, aliases, parameters and description)`` of one registered entry."""
    obj = registry[name]
    try:
        sig = inspect.signature(obj)
        params = ", ".join(
            f"{k}={p.default!r}"
            for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
        )
    except (TypeError, ValueError):
        params = ""
    doc = " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())
    return name, ", ".join(registry.aliases(name)), f"{params}\n[dim]{doc}[/]" if params else f"[dim]{doc}[/]"


def print_registry(kind: str, registry: Registry) -> None:
    """A table of every entry of ``registry``, titled ``kind``."""
    table = Table(title=kind)
    table.add_column("name", style="bold")
    table.add_column("aliases")
    table.add_column("parameters / description")
    for name in registry.names():
        table.add_row(*describe(registry, name))
    console.print(table)


def listing_command(kind: str) -> Callable[[], None]:
    """The command ``landscape KIND``: print the registry of :data:`REGISTRIES` ``[kind]``."""

    def command() -> None:
        print_registry(kind, REGISTRIES[kind])

    command.__doc__ = f"List the registered {kind} and their parameters."
    command.__name__ = f"list_{kind}"
    return command
