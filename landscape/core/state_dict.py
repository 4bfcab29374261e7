"""Fitting a state dict's keys to a model: prefixes stripped (a pure function on dicts, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from landscape.errors import CheckpointError


def shorten(items: list[str], n: int = 8) -> str:
    """``a, b, c, … , y, z (30 in all)`` for long lists."""
    if len(items) <= n:
        return ", ".join(items)
    return ", ".join(items[: n - 2]) + ", …, " + ", ".join(items[-2:]) + f" ({len(items)} in all)"


def fit_state_dict(state: Mapping[str, torch.Tensor], model_keys: Iterable[str],
                   strip_prefix: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """``(state, applied_prefix)``: ``state`` with a key prefix removed so that it fits a model
    whose state-dict keys are ``model_keys``.

    With ``strip_prefix`` (``"model."``), only the keys under it are kept, without it (the
    submodule's weights; the rest, e.g. a loss's buffers, is left out). Without it, a prefix is
    stripped automatically while every key shares one first component (``model.``) that no model
    key has (a Lightning module's ``self.model``). Where the model's weights are found under one
    prefix beside other keys, a :class:`CheckpointError` says which ``--strip-prefix`` to pass.
    ``applied_prefix`` is ``""`` when nothing was stripped.
    """
    expected = set(model_keys)
    if strip_prefix:
        prefix = strip_prefix if strip_prefix.endswith(".") else strip_prefix + "."
        under = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not under:
            heads = sorted({k.split(".", 1)[0] + "." for k in state if "." in k})
            raise CheckpointError(
                f"no key of the checkpoint starts with {prefix!r} (--strip-prefix); its keys start with "
                f"{shorten([repr(h) for h in heads]) or 'no prefix'}")
        return under, prefix
    out, applied = dict(state), ""
    while out and set(out) != expected:
        heads = {k.split(".", 1)[0] for k in out}
        if len(heads) != 1 or any("." not in k for k in out):
            break
        head = heads.pop() + "."
        if any(k.startswith(head) for k in expected):
            break
        out, applied = {k[len(head):]: v for k, v in out.items()}, applied + head
    if set(out) != expected:
        for head in sorted({k.split(".", 1)[0] + "." for k in out if "." in k}):
            if {k[len(head):] for k in out if k.startswith(head)} == expected:
                others = sorted(k for k in out if not k.startswith(head))
                raise CheckpointError(
                    f"the model's weights are under {applied + head!r} in the checkpoint, beside other "
                    f"keys ({shorten(others, 4)}); pass --strip-prefix {applied + head} to load them")
    return out, applied
