"""A probe's settings: config fields with their help text, the option groups every probe that
reads data shares (data selection: split, subset, batch_size, seed; numerics: dtype, bn_mode),
their checks, and a setting's value converted to its field's type (one rule for Python calls,
``--setting KEY=VALUE`` and the CLI's ``--KEY`` options).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import field
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np

from landscape.core.kernel import BN_MODES
from landscape.errors import ConfigError
from landscape.utils import DTYPES

__all__ = ["SPLITS", "batch_size_setting", "bn_mode_setting", "check_settings", "check_subset", "coerce_setting",
           "coerce_value", "describe_type", "dtype_setting", "seed_setting", "setting", "setting_help",
           "split_setting", "subset_setting"]


def setting(default: Any, help: str) -> Any:
    """A config field with its default and the help text the CLI shows for ``--KEY``:
    ``top_k: int = setting(5, "Largest eigenvalues.")``."""
    return field(default=default, metadata={"help": help})


# The option groups every probe shares, declared once: which data (split, subset, batch_size, seed)
# and which numerics (dtype, bn_mode). A probe's config names the ones it has with these helpers
# (its own default where it differs) and :func:`check_settings` validates them alike everywhere.
SPLITS = ("train", "test")


def split_setting(default: str = "train") -> Any:
    """``split``: the checkpoint's data the probe reads."""
    return setting(default, "train or test.")


def subset_setting(default: int | None, what: str = "samples") -> Any:
    """``subset``: a fixed, seeded subset of the split (``None``: all of it)."""
    return setting(default, f"A fixed subset of N {what}, drawn with seed (None: the whole split).")


def batch_size_setting(default: int | None, what: str = "Samples per forward pass") -> Any:
    """``batch_size``: samples per pass (memory, never the result, except where said)."""
    return setting(default, f"{what}{' (None: all in one)' if default is None else ''}.")


def seed_setting(uses: str) -> Any:
    """``seed``: every random draw of the probe; ``uses`` says which."""
    return setting(0, f"Seed of {uses}.")


def dtype_setting() -> Any:
    """``dtype``: the precision the probe computes in (the model is cast for it)."""
    return setting("float32", "float32 or float64.")


def bn_mode_setting() -> Any:
    """``bn_mode``: BatchNorm with its running statistics (eval) or each batch's (train)."""
    return setting("eval", "BatchNorm in eval (running stats) or train (batch stats) mode.")


def check_subset(cfg: Any, n: int, held: str | None = None) -> None:
    """A ``subset`` larger than the ``n`` samples there are is refused in one line, unless it is the
    probe's default, which means *at most* that many (the samples used are recorded with the
    results): a probe's defaults work on data of any size. ``held``: what has the ``n`` samples."""
    subset = getattr(cfg, "subset", None)
    default = next(f.default for f in dataclasses.fields(cfg) if f.name == "subset")
    if subset is not None and subset > n and subset != default:
        raise ConfigError(f"subset of {subset} samples asked for, but {held or f'the data hold {n}'}; "
                          f"use a subset ≤ {n} or none")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_settings(cfg: Any, checks: list[tuple[bool, str]] = ()) -> None:
    """Raise :class:`ConfigError` with the first failed message: the shared groups' checks for the
    fields ``cfg`` has (split, subset, batch_size, dtype, bn_mode), then the probe's own ``checks``."""
    have = {f.name for f in dataclasses.fields(cfg)}
    shared: list[tuple[bool, str]] = []
    if "split" in have:
        shared.append((cfg.split in SPLITS, f"split must be train or test, got {cfg.split!r}"))
    for name in ("subset", "batch_size"):
        if name in have:
            value = getattr(cfg, name)
            shared.append((value is None or (_is_int(value) and value >= 1),
                           f"{name} must be a whole number ≥ 1 or None, got {value!r}"))
    if "dtype" in have:
        shared.append((cfg.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}"))
    if "bn_mode" in have:
        shared.append((cfg.bn_mode in BN_MODES, f"bn_mode must be one of {', '.join(BN_MODES)}, got {cfg.bn_mode!r}"))
    for ok, message in [*shared, *checks]:
        if not ok:
            raise ConfigError(message)


def setting_help(config: type) -> dict[str, str]:
    """``{field: help}`` of a config's fields (``setting(..., help)`` metadata; empty if none)."""
    return {f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(config)}


# ---- a setting's value, converted to its field's type -------------------------------------------

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
_NONE = ("none", "null")
_EXAMPLES = {float: "0.1,0.2", int: "1,2", str: "a,b"}


def _alternatives(tp: Any) -> tuple[Any, ...]:
    return get_args(tp) if get_origin(tp) in (Union, UnionType) else (tp,)


def describe_type(tp: Any) -> str:
    """``tp`` in words, for an error: ``float or none``, ``2 comma-separated float values (e.g. 0.1,0.2)``."""
    parts = []
    for a in _alternatives(tp):
        if a is type(None):
            parts.append("none")
        elif a is bool:
            parts.append("true or false")
        elif get_origin(a) in (tuple, list) and get_args(a):
            items = get_args(a)
            n = f"{len(items)} " if get_origin(a) is tuple and items[-1] is not Ellipsis else ""
            name = getattr(items[0], "__name__", str(items[0]))
            example = f" (e.g. {_EXAMPLES[items[0]]})" if items[0] in _EXAMPLES else ""
            parts.append(f"{n}comma-separated {name} values{example}")
        else:
            parts.append(getattr(a, "__name__", str(a)))
    return " or ".join(parts)


def _scalar(a: type, value: Any) -> Any:
    """``value`` as a ``bool``/``int``/``float``/``str`` where that is exact; else ValueError."""
    if a is bool:
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif a is int:
        if _is_int(value):
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
    elif a is float:
        if isinstance(value, float):
            return value
        if isinstance(value, int | np.integer | np.floating) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
    elif isinstance(value, str):  # str
        return value
    raise ValueError(value)


def _sequence(a: Any, value: Any, text: bool) -> Any:
    """A tuple or list type's value, element by element: from a tuple or list, from comma-separated
    text (``0.1,0.2``, brackets allowed), or one number for a variadic tuple; else ValueError."""
    items = get_args(a)
    variadic = get_origin(a) is list or items[-1] is Ellipsis
    if isinstance(value, str):
        body = value.strip()
        if body[:1] + body[-1:] in ("[]", "()"):
            body = body[1:-1]
        value = [v.strip() for v in body.split(",") if v.strip()]
        if not value:
            raise ValueError(value)
    elif variadic and isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        value = [value]
    elif not isinstance(value, tuple | list):
        raise ValueError(value)
    if not variadic and len(value) != len(items):
        raise ValueError(value)
    kinds = [items[0]] * len(value) if variadic else list(items)
    out = [coerce_value(k, "", v, text=text) for k, v in zip(kinds, value, strict=True)]
    return tuple(out) if get_origin(a) is tuple else out


def coerce_value(tp: Any, key: str, value: Any, *, text: bool = False) -> Any:
    """``value`` converted to the type ``tp`` where the conversion is exact and unambiguous, or a
    one-line :class:`ConfigError` ``"{key} must be {type}, got {value!r}"``.

    ``int`` takes 3 and "3" (not 2.5, True or "abc"); ``float`` ints and numeric text; ``bool``
    real bools and true/false/1/0/yes/no (any case); ``str`` text as it is; ``X | None`` also None,
    "none" and "null"; tuples and lists element by element (from a sequence or ``0.1,0.2``). A
    union tries its alternatives in order; one with ``str`` keeps a Python string as it is, while
    ``text=True`` (the command line's text) tries the others first (``sigma=10`` is the number 10.0).
    Other types (``Literal``, ``Any``, classes) are left to the config's own checks (text is read as
    JSON where it can be)."""
    options = _alternatives(tp)
    if type(None) in options and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
        return None
    if isinstance(value, str) and str in options and not text:
        return value
    for a in options:
        if a is type(None):
            continue
        try:
            if a in (bool, int, float, str):
                return _scalar(a, value)
            if get_origin(a) in (tuple, list) and get_args(a):
                return _sequence(a, value, text)
        except (ValueError, ConfigError):
            continue
        if get_origin(a) is Literal or not (text and isinstance(value, str)):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    raise ConfigError(f"{key} must be {describe_type(tp)}, got {value!r}")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    try:
        return get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved: the config checks its own values
        return {}


def coerce_setting(cls: type, key: str, value: Any, *, text: bool = False) -> Any:
    """The setting ``key`` of config class ``cls`` converted to its field's annotated type
    (:func:`coerce_value`); a key that is not a field is returned as given."""
    types = _field_types(cls)
    return coerce_value(types[key], key, value, text=text) if key in types else value
