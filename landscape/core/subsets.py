"""Which part of the data a measurement reads: the splits it names and a fixed seeded subset."""

from __future__ import annotations

import torch

from landscape.errors import ConfigError


def parse_splits(splits: str) -> list[str]:
    """``"train"``, ``"test"``, ``"train,test"`` or ``"both"`` as a list of split names, each once."""
    names = [s.strip() for s in splits.replace("both", "train,test").split(",") if s.strip()]
    bad = [s for s in names if s not in ("train", "test")]
    if bad or not names:
        raise ConfigError(f"splits must be train, test or train,test (both), got {splits!r}")
    return list(dict.fromkeys(names))


def fixed_subset(n: int, size: int | None, seed: int) -> torch.Tensor:
    """The same ``size`` indices of ``range(n)`` for a given seed (all of them, in order, for None)."""
    if size is None or size >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values
