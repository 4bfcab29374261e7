"""What is already stored: whether a (checkpoint, probe) result in the file may be served or
resumed with these settings, this checkpoint file and these data, and how a result is made
storable.

A stored result is served (``complete``) or resumed (``partial``) only when it was computed from
the same checkpoint file, data, loss, weights and settings; anything else is an error unless
``force``, so that nothing stored is served or replaced silently.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape.checkpoints import checkpoint_matches
from landscape.errors import ConfigError
from landscape.probes import PROBES
from landscape.store import Store, group_name, settings_hash
from landscape.targets import Target


def _check_stored(store: Store, targets: list[Target], probe: str, settings: dict[str, Any],
                  force: bool, identities: dict[str, str] | None = None) -> dict[str, str]:
    """``{group: "complete"|"partial"}`` for stored groups with these settings, this checkpoint file
    and this data and loss (``identities``: :func:`landscape.targets.data_identity` per target);
    results stored otherwise are never served nor replaced silently: that is an error unless ``force``.

    Complete or partial is :meth:`Store.has <landscape.store.Store.has>`'s answer; the settings are
    compared here rather than by ``Store.has(group, settings)``'s hash, because a setting added in a
    later version counts as its default (:func:`_same_settings`)."""
    if force:
        return {}
    wanted = settings_hash(settings)
    found: dict[str, str] = {}
    for target in targets:
        group = f"{group_name(target.name)}/{probe}"
        attrs = store.attrs(group) if store.exists() else {}
        if not attrs:
            continue
        bound = attrs if attrs.get("checkpoint_sha256") else store.attrs(group_name(target.name))
        if not checkpoint_matches(target.path, bound):
            raise ConfigError(
                f"{store.path} already holds {probe} results for {target.name}, computed from another "
                f"checkpoint file (sha256 {str(bound.get('checkpoint_sha256') or 'unknown')[:12]}…, "
                f"{bound.get('checkpoint') or 'unrecorded path'}), not {target.path}; "
                "pass --force to recompute them, or write to another --out"
            )
        for which, other in (attrs.get("other_checkpoints") or {}).items():
            if not Path(other.get("checkpoint", "")).is_file() or not checkpoint_matches(other["checkpoint"], other):
                raise ConfigError(
                    f"{store.path} holds {probe} results for {target.name} computed with checkpoint {which!r} "
                    f"({other.get('checkpoint')}), which has changed or is gone; pass --force to recompute them"
                )
        identity = (identities or {}).get(target.name)
        if identity is not None and attrs.get("data_identity", identity) != identity:
            raise ConfigError(
                f"{store.path} already holds {probe} results for {target.name} computed with other data or "
                "another loss (dataset, its parameters or file contents, label noise, loss settings); "
                "pass --force to replace them, or write to another --out"
            )
        asked = {"weights": target.weights, "strip_prefix": target.strip_prefix}
        load = attrs.get("checkpoint_load") or {}
        was = load.get("requested", asked)
        same_tensors = (not load.get("other_weights") and was.get("strip_prefix") == asked["strip_prefix"]
                        and asked["weights"] in ("auto", load.get("weights")))  # one set of weights in the file
        if was != asked and not same_tensors:
            raise ConfigError(
                f"{store.path} already holds {probe} results for {target.name} read with --weights "
                f"{was.get('weights')} --strip-prefix {was.get('strip_prefix')}, not --weights "
                f"{asked['weights']} --strip-prefix {asked['strip_prefix']}; pass --force to replace "
                "them, or write to another --out"
            )
        if attrs.get("settings_hash") != wanted and not _same_settings(probe, attrs.get("settings") or {}, settings):
            old = attrs.get("settings") or {}
            diff = ", ".join(f"{k} {old.get(k)!r} → {v!r}" for k, v in settings.items() if old.get(k) != v)
            raise ConfigError(
                f"{store.path} already holds {probe} results for {target.name} with other settings ({diff}); "
                "pass --force to replace them, or write to another --out"
            )
        found[group] = "complete" if store.has(group) else "partial"  # partial: an interrupted run's
    return found


def _same_settings(probe: str, stored: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether results stored with ``stored`` settings are these ``settings``: a setting added in a
    later version counts as its default where the stored record lacks it, or as what the config's
    ``ABSENT_MEANS`` says the results were computed with before it existed."""

    config = PROBES[probe].config
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    defaults.update(getattr(config, "ABSENT_MEANS", {}))  # a setting whose default changed when it was added

    def same(a: Any, b: Any) -> bool:
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)

    return set(stored) <= set(settings) and all(
        same(stored[k], v) if k in stored else (k in defaults and same(defaults[k], v)) for k, v in settings.items())


def _storable(result: dict[str, Any]) -> dict[str, Any]:
    """Scalars and arrays as HDF5 can hold them (bools → uint8, None → NaN, tensors → numpy)."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            out[key] = _storable(value)
        elif isinstance(value, torch.Tensor):
            out[key] = value.detach().cpu().numpy()
        elif value is None:
            out[key] = np.nan
        elif isinstance(value, bool | np.bool_):
            out[key] = np.uint8(value)
        else:
            out[key] = value
    return out

