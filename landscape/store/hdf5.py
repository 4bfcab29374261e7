"""The arrays and attributes of one group inside an open HDF5 file: creating, filling, patching in
place and moving a group into place; reading it back; and the byte accounting a write reserves
space by (:func:`_nbytes`, :func:`_changed_bytes`) and a repack compacts by (:func:`_live_bytes`).

Text arrays are stored as UTF-8 strings and read back as ``str``; nested dicts become subgroups.
Nothing here locks, opens or reserves space: :mod:`landscape.store.disk` does.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from landscape.store.names import _TMP_PREFIX, _encode_attr


def _as_storable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _as_storable(v) for k, v in value.items()}
    arr = np.asarray(value)
    return arr.astype(object) if arr.dtype.kind == "U" else arr


def _is_text(arr: np.ndarray) -> bool:
    return arr.dtype.kind == "O"


def _nbytes(arrays: Mapping[str, Any]) -> int:
    total = 0
    for value in arrays.values():
        if isinstance(value, Mapping):
            total += _nbytes(value) + 1024
        elif _is_text(value):
            total += sum(len(str(s).encode()) + 32 for s in value.reshape(-1)) + 4096
        else:
            total += value.nbytes + 1024
    return total


def _changed_bytes(g: h5py.Group, arrays: Mapping[str, Any]) -> int:
    total = 0
    for key, value in arrays.items():
        item = g.get(key)
        if isinstance(value, Mapping):
            total += _changed_bytes(item, value) if isinstance(item, h5py.Group) else _nbytes(value)
        elif _is_text(value) or not _fits(item, value):
            total += _nbytes({key: value})
    return total


def _fits(item: Any, arr: np.ndarray) -> bool:
    return (isinstance(item, h5py.Dataset) and h5py.check_string_dtype(item.dtype) is None
            and item.shape == arr.shape and item.dtype == arr.dtype)


def _create(g: h5py.Group, key: str, arr: np.ndarray) -> None:
    if _is_text(arr):  # text: stored as UTF-8 strings, read back as str
        g.create_dataset(key, data=arr, dtype=h5py.string_dtype())
    else:
        g.create_dataset(key, data=arr)


def _fill(g: h5py.Group, arrays: Mapping[str, Any]) -> None:
    for key, value in arrays.items():
        if isinstance(value, Mapping):
            _fill(g.create_group(key), value)
        else:
            _create(g, key, value)


def _set_attrs(g: h5py.Group | h5py.File, attrs: Mapping[str, Any], clear: bool) -> None:
    """Set ``attrs`` (``complete`` last); with ``clear``, drop the ones not in ``attrs``."""
    if clear:
        for key in [k for k in g.attrs if k not in attrs]:
            del g.attrs[key]
    for key, value in sorted(attrs.items(), key=lambda kv: kv[0] == "complete"):
        encoded = _encode_attr(value)
        if key in g.attrs and _same_attr(g.attrs[key], encoded):
            continue  # rewriting an unchanged text attribute would only leave dead heap space
        g.attrs[key] = encoded


def _same_attr(old: Any, new: Any) -> bool:
    if isinstance(old, bytes):
        old = old.decode()
    if isinstance(old, str) or isinstance(new, str):
        return isinstance(old, str) and isinstance(new, str) and old == new
    old, new = np.asarray(old), np.asarray(new)
    return old.dtype == new.dtype and old.shape == new.shape and bool(np.array_equal(old, new))


def _replace(f: h5py.File, group: str, arrays: Mapping[str, Any], attrs: Mapping[str, Any],
             parent_attrs: Mapping[str, Any]) -> None:
    """Write the group whole under a temporary name and move it into place."""
    tmp = f"/{_TMP_PREFIX}{uuid.uuid4().hex}"
    g = f.create_group(tmp)
    try:
        _fill(g, arrays)
        _set_attrs(g, attrs, clear=False)
        pg = f.require_group(str(Path("/" + group).parent))
        _set_attrs(pg, parent_attrs, clear=False)
        if group in f:
            del f[group]
        f.move(tmp, "/" + group)
    except BaseException:
        with contextlib.suppress(Exception):
            if tmp in f:
                del f[tmp]
        raise


def _update(g: h5py.Group, arrays: Mapping[str, Any], attrs: Mapping[str, Any], top: bool = True) -> None:
    """Patch ``g`` to hold ``arrays``: unchanged data untouched, same-shape data overwritten in
    place, the rest recreated; at the top level the ``done`` mask is written after every value."""
    for key in [k for k in g if k not in arrays]:
        del g[key]
    for key, value in arrays.items():
        if top and key == "done":
            continue
        item = g.get(key)
        if isinstance(value, Mapping):
            if not isinstance(item, h5py.Group):
                if item is not None:
                    del g[key]
                item = g.create_group(key)
            _update(item, value, {}, top=False)
        elif _fits(item, value):
            if not _same(item, value):
                item[...] = value
        elif isinstance(item, h5py.Dataset) and _is_text(value) and item.shape == value.shape and \
                h5py.check_string_dtype(item.dtype) is not None and \
                np.array_equal(item.asstr()[()], value.astype(str)):
            pass  # the same text: rewriting it would only leave dead heap space
        else:
            if item is not None:
                del g[key]
            _create(g, key, value)
    if top:
        done = g["done"]
        if _fits(done, arrays["done"]):
            done[...] = arrays["done"]
        else:
            del g["done"]
            _create(g, "done", arrays["done"])


def _same(ds: h5py.Dataset, arr: np.ndarray) -> bool:
    old = ds[()]
    return bool(np.array_equal(old, arr, equal_nan=arr.dtype.kind in "fc"))


def _live_bytes(f: h5py.File) -> int:
    """What a compacted copy of ``f`` needs: object headers, group/attribute indexes and heaps,
    and the data of every dataset (text with its heap)."""
    total = 4096  # superblock and root

    def visit(name: str, obj: Any) -> None:
        nonlocal total
        info = h5py.h5o.get_info(obj.id)
        meta = info.meta_size
        total += info.hdr.space.total + meta.obj.index_size + meta.obj.heap_size
        total += meta.attr.index_size + meta.attr.heap_size
        if isinstance(obj, h5py.Dataset):
            total += obj.id.get_storage_size()
            if h5py.check_string_dtype(obj.dtype) is not None:
                total += sum(len(s) + 16 for s in np.asarray(obj.asstr()[()], dtype=object).reshape(-1)) + 4096

    visit("/", f)
    f.visititems(visit)
    return total


def _read(g: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in g.items():
        if isinstance(item, h5py.Group):
            out[key] = _read(item)
        elif h5py.check_string_dtype(item.dtype) is not None:
            out[key] = item.asstr()[()]
        else:
            out[key] = item[()]
    return out


def _list(f: h5py.File) -> list[str]:
    names: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and "settings_hash" in obj.attrs:
            names.append(name)

    f.visititems(visit)
    return sorted(names)
