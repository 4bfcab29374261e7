"""Name → object registries filled by a decorator (models, datasets, losses, optimizers, probes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from landscape.errors import LandscapeError

T = TypeVar("T")


class UnknownNameError(LandscapeError):
    """Raised for a name a registry does not hold; the message lists the valid names."""


class Registry(Generic[T]):
    """A plain dict of named entries with a ``register`` decorator.

    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("ce", "cross_entropy")
    ... def cross_entropy(logits, targets): ...
    >>> LOSSES["cross_entropy"] is LOSSES["ce"]
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[name] = obj
            for alias in aliases:
                self._aliases[alias] = name
            return obj

        return decorator

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases."""
        key = name.strip().lower().replace("-", "_")
        if key in self._entries:
            return key
        if key in self._aliases:
            return self._aliases[key]
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}; valid {self.kind} names: {', '.join(self.names())}"
        )

    def __getitem__(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.strip().lower().replace("-", "_")
        return key in self._entries or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def aliases(self, name: str) -> list[str]:
        canonical = self.canonical(name)
        return sorted(a for a, n in self._aliases.items() if n == canonical)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]
