"""How things are named and encoded in ``analysis.h5``: the schema version, checkpoint group names
(:func:`group_name` / :func:`checkpoint_name`), the settings hash, and attribute values that HDF5
cannot hold natively (dicts, lists of mixed type, None), stored as JSON strings and decoded on read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import numpy as np

from landscape.store.errors import StoreError

SCHEMA_VERSION = 1
_JSON_PREFIX = "json:"
_TMP_PREFIX = ".tmp-"
_RESERVED_NAMES = frozenset({"failures"})


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A stable hash of a probe's settings (used to skip work already stored)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def group_name(checkpoint: str) -> str:
    """The HDF5 group name of a checkpoint name, escaped so it cannot collide with the file's layout.

    Percent-encoding: ``%`` → ``%25`` and ``/`` → ``%2F`` always; the first character of a name
    that starts with ``.`` (``.``, ``..``, ``.tmp-…``) or equals ``failures`` is written as
    ``%XX`` (``.`` → ``%2E``, ``failures`` → ``%66ailures``). Every other name is unchanged
    (``step_000500`` stays ``step_000500``). :func:`checkpoint_name` inverts it exactly.
    """
    if not checkpoint:
        raise StoreError("a checkpoint name cannot be empty")
    name = checkpoint.replace("%", "%25").replace("/", "%2F")
    if name.startswith(".") or name in _RESERVED_NAMES:
        name = f"%{ord(name[0]):02X}{name[1:]}"
    return name


def checkpoint_name(group: str) -> str:
    """The checkpoint name that :func:`group_name` escaped to ``group`` (percent-decoding)."""
    return unquote(group)


def _encode_attr(value: Any) -> Any:
    if isinstance(value, str | bool | int | float | np.integer | np.floating | np.bool_):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return np.asarray(value)
    return _JSON_PREFIX + json.dumps(value, default=str)


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith(_JSON_PREFIX):
        return json.loads(value[len(_JSON_PREFIX) :])
    if isinstance(value, np.generic):
        return value.item()
    return value
