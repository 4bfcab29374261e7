"""Checkpoint files: one named (:class:`Checkpoint`), a folder's listed in natural order, and
the one selector (:func:`select_checkpoints`: ``last``, ``every:N``, a step, a name, a glob, …).

Reads names only, never weights.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape.errors import ConfigError
from landscape.weights import hf_weight_file

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# files beside weights that hold no weights: optimizer/trainer state (ours: step_N.state.pt; HF Trainer's)
_NOT_WEIGHTS = re.compile(r"^(optimizer|scheduler|scaler|rng_state.*|training_args|.*\.state)\.(pt|pth|bin)$")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint file, with the step and epoch its name (or its RUN_DIR) gives.

    ``label`` names it where the file name does not (``checkpoint-500/model.safetensors``).
    """

    path: Path
    step: int | None = None
    epoch: int | None = None
    label: str | None = None

    @classmethod
    def from_name(cls, path: str | Path, label: str | None = None) -> Checkpoint:
        """A foreign checkpoint, its step/epoch parsed from its name (:func:`parse_position`)."""
        cp = cls(Path(path), label=label)
        step, epoch = parse_position(cp.name)
        return cls(cp.path, step, epoch, label)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        for suffix in WEIGHT_SUFFIXES:
            if self.path.name.endswith(suffix) and self.path.name != suffix:
                return self.path.name[: -len(suffix)]
        return self.path.name

    @property
    def state_path(self) -> Path:
        return self.path.with_name(f"{self.name}.state.pt")


_EPOCH_IN_NAME = re.compile(r"(?<![a-z])(?:epochs?|ep)[_=-]?(\d+)", re.IGNORECASE)
_STEP_IN_NAME = re.compile(r"(?<![a-z])(?:global_step|steps?|iter(?:ation)?s?)[_=-]?(\d+)", re.IGNORECASE)
_NUMBER_NAME = re.compile(r"^(?:[a-z][a-z_-]*[_-])?(\d+)$", re.IGNORECASE)


def parse_position(name: str) -> tuple[int | None, int | None]:
    """``(step, epoch)`` from a checkpoint name, ``None`` where it says nothing.

    ``epoch_15``, ``epoch=3``, ``ep7`` give an epoch; ``step_000500``, ``step-1200``,
    ``global_step=9``, ``iter100`` a step; Lightning's ``epoch=3-step=1200`` both. A name that is
    one word and a number (``ckpt_000300``, ``checkpoint-500`` as the Hugging Face Trainer names
    its folders, ``model_10``, ``300``) gives a step.
    """
    epoch = _EPOCH_IN_NAME.search(name)
    step = _STEP_IN_NAME.search(name)
    if epoch is None and step is None:
        step = _NUMBER_NAME.match(name)
    return (int(step.group(1)) if step else None, int(epoch.group(1)) if epoch else None)


def natural_key(name: str) -> tuple[tuple[int, Any], ...]:
    """Sort key putting ``epoch_5`` before ``epoch_10`` (numbers compared as numbers)."""
    return tuple((1, int(part)) if part.isdigit() else (0, part.lower())
                 for part in re.split(r"(\d+)", name) if part)


def folder_checkpoints(folder: str | Path) -> list[Checkpoint]:
    """The checkpoints in a folder of foreign weights, in natural order (:func:`order_checkpoints`):
    its ``.safetensors``/``.pt``/``.pth``/``.bin``/``.ckpt`` files (not optimizer or trainer
    state) and its Hugging Face checkpoint subfolders (``checkpoint-500/``). Reads no weights."""
    folder = Path(folder)
    entries = sorted(folder.iterdir())
    found = [Checkpoint.from_name(p) for p in entries
             if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not p.name.startswith(".")
             and not _NOT_WEIGHTS.match(p.name)]
    found += [Checkpoint.from_name(w, label=d.name) for d in entries
              if d.is_dir() and not d.name.startswith(".") and (w := hf_weight_file(d)) is not None]
    names = [c.name for c in found]
    # two files differing only in extension (epoch_5.pt, epoch_5.safetensors) keep their file names
    found = [c if names.count(c.name) == 1 else Checkpoint(c.path, c.step, c.epoch, c.path.name) for c in found]
    return order_checkpoints(found)


def order_checkpoints(checkpoints: Iterable[Checkpoint]) -> list[Checkpoint]:
    """By step where every checkpoint has one, else by epoch where every one has one, else by name;
    names in natural order (``epoch_5`` < ``epoch_10``) break ties."""
    cps = list(checkpoints)
    for attr in ("step", "epoch"):
        if cps and all(getattr(c, attr) is not None for c in cps):
            return sorted(cps, key=lambda c, a=attr: (getattr(c, a), natural_key(c.name)))
    return sorted(cps, key=lambda c: natural_key(c.name))


SELECTION_HELP = ("last, first, all, every:N, a step (or epoch) S, step:S, epoch:E, a name or a glob "
                  "(epoch_1*); comma lists mix them")


def _available(checkpoints: list[Checkpoint]) -> str:
    def label(c: Checkpoint) -> str:  # the step/epoch where the name does not show it
        extra = [f"{k} {v}" for k, v in (("step", c.step), ("epoch", c.epoch)) if v is not None and str(v) not in c.name]
        return f"{c.name} ({', '.join(extra)})" if extra else c.name

    names = [label(c) for c in checkpoints]
    return ", ".join(names) if len(names) <= 6 else \
        ", ".join(names[:3]) + ", …, " + ", ".join(names[-2:]) + f" ({len(names)} in all)"


def _match(item: str, checkpoints: list[Checkpoint]) -> list[int]:
    """Indices of the checkpoints one selection item names (empty: none)."""
    n = len(checkpoints)
    if item == "last":
        return [n - 1]
    if item == "first":
        return [0]
    if item == "all":
        return list(range(n))
    if item.startswith("every:"):
        try:
            k = int(item.split(":", 1)[1])
        except ValueError:
            k = 0
        if k < 1:
            raise ConfigError(f"bad checkpoint selection {item!r}; every:N needs an integer N ≥ 1")
        return sorted({*range(0, n, k), n - 1})
    kind, sep, number = item.partition(":")
    if sep and kind in ("step", "epoch"):
        try:
            value = int(number)
        except ValueError:
            raise ConfigError(f"bad checkpoint selection {item!r}; {kind}:N needs an integer N") from None
        return [i for i, c in enumerate(checkpoints) if getattr(c, kind) == value]
    if any(ch in item for ch in "*?["):
        return [i for i, c in enumerate(checkpoints)
                if fnmatch.fnmatchcase(c.name, item) or fnmatch.fnmatchcase(c.path.name, item)]
    by_name = [i for i, c in enumerate(checkpoints) if item in (c.name, c.path.name)]
    if by_name or not item.lstrip("-").isdigit():
        return by_name
    value = int(item)
    for kind in ("step", "epoch"):
        hits = [i for i, c in enumerate(checkpoints) if getattr(c, kind) == value]
        if hits:
            return hits
    return []


def select_checkpoints(checkpoints: list[Checkpoint], which: str) -> list[Checkpoint]:
    """The checkpoints ``which`` names, in the given order, each once.

    ``which`` is a comma list of: ``last``, ``first``, ``all``, ``every:N`` (every N-th, always the
    last), an integer (the checkpoint at that step, else at that epoch), ``step:S``, ``epoch:E``, a
    name (with or without its file extension) or a glob over names (``epoch_1*``). An item that
    names nothing is a :class:`ConfigError` listing what there is.
    """
    if not checkpoints:
        return []
    items = [s.strip() for s in str(which).split(",") if s.strip()]
    if not items:
        raise ConfigError(f"empty checkpoint selection {which!r}; use {SELECTION_HELP}")
    chosen: set[int] = set()
    for item in items:
        hits = _match(item, checkpoints)
        if not hits:
            what = f"at step(s) {item}" if item.lstrip("-").isdigit() else f"matches {item!r}"
            raise ConfigError(f"no checkpoint {what}; available: {_available(checkpoints)}")
        chosen.update(hits)
    return [checkpoints[i] for i in sorted(chosen)]
