"""The registry of dataset loaders, :data:`DATASETS`, and what it tells about them.

A *loader* turns ``seed``, ``root`` and its own keyword parameters into a
:class:`~landscape.data.containers.RawData`; those keyword parameters are the ones
:func:`~landscape.data.pipeline.load_dataset` accepts as ``**params``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from landscape.data.containers import RawData
from landscape.registry import Registry

Loader = Callable[..., RawData]
DATASETS: Registry[Loader] = Registry("dataset")


def dataset_params(name: str) -> dict[str, Any]:
    """The loader's own parameters and their defaults (``inspect.Parameter.empty`` if required)."""
    return {p.name: p.default for p in loader_parameters(DATASETS[name])}


def loader_parameters(loader: Loader) -> list[inspect.Parameter]:
    """The loader's own keyword parameters: its signature less ``seed`` and ``root``."""
    return [
        p
        for p in inspect.signature(loader).parameters.values()
        if p.name not in ("seed", "root") and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
