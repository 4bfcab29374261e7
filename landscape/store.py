"""The HDF5 store: one group per (checkpoint, probe), written atomically by one process.

Layout (``analysis.h5``)::

    /                       attrs: schema_version
    /<checkpoint>/          attrs: step, checkpoint sha256, ...
    /<checkpoint>/<probe>/  datasets (arrays) + attrs (settings JSON, versions, seed, ...)

A group is written under a temporary name and moved into place, so a reader (or a crashed
writer) never sees half a group; an exclusive lock on ``<file>.lock`` serializes writers.
Attribute values that HDF5 cannot hold natively (dicts, lists of mixed type, None) are stored
as JSON strings and decoded on read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from landscape.errors import LandscapeError

SCHEMA_VERSION = 1
_JSON_PREFIX = "json:"


class StoreError(LandscapeError):
    """The HDF5 output cannot be written or read."""


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A stable hash of a probe's settings (used to skip work already stored)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


class Store:
    """An HDF5 results file; ``path`` is created on first write."""

    def __init__(self, path: str | Path, lock_timeout: float = 600.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout

    # ---- locking ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot write results to {self.path} ({exc.strerror}); choose another --out") from exc
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError(
                            f"{self.path} is locked by another landscape process; wait for it or use another --out"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _open(self, mode: str) -> h5py.File:
        try:
            f = h5py.File(self.path, mode, locking=False)
        except OSError as exc:
            if mode == "r" and not self.path.exists():
                raise StoreError(f"results file {self.path} does not exist") from exc
            raise StoreError(
                f"cannot open results file {self.path} ({exc}); it may be corrupt or unwritable — choose another --out"
            ) from exc
        if mode != "r" and "schema_version" not in f.attrs:
            f.attrs["schema_version"] = SCHEMA_VERSION
        return f

    def check_writable(self) -> None:
        """Fail now (not after an hour of work) when the file cannot be written."""
        with self._locked(), self._open("a"):
            pass

    # ---- writing ------------------------------------------------------------------------------
    def write(
        self,
        group: str,
        arrays: Mapping[str, Any],
        attrs: Mapping[str, Any] | None = None,
        parent_attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Write (or replace) ``group`` with ``arrays`` as datasets and ``attrs`` as attributes.

        ``parent_attrs`` are set on the parent group (e.g. the checkpoint's step and hash).
        Nested dicts in ``arrays`` become subgroups.
        """
        group = group.strip("/")
        with self._locked(), self._open("a") as f:
            tmp = f"/.tmp-{uuid.uuid4().hex}"
            g = f.create_group(tmp)
            try:
                _fill(g, arrays)
                for key, value in (attrs or {}).items():
                    g.attrs[key] = _encode_attr(value)
                parent = str(Path("/" + group).parent)
                pg = f.require_group(parent)
                for key, value in (parent_attrs or {}).items():
                    pg.attrs[key] = _encode_attr(value)
                if group in f:
                    del f[group]
                f.move(tmp, "/" + group)
            except BaseException:
                if tmp in f:
                    del f[tmp]
                raise

    # ---- reading ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_file()

    def has(self, group: str, settings: Mapping[str, Any] | None = None) -> bool:
        """Whether ``group`` is stored (and, if ``settings`` is given, with the same settings)."""
        if not self.exists():
            return False
        with self._open("r") as f:
            g = f.get(group.strip("/"))
            if g is None:
                return False
            if _decode_attr(g.attrs.get("complete", True)) is False:
                return False  # partial work of an interrupted run: to be resumed, not reused
            return settings is None or _decode_attr(g.attrs.get("settings_hash")) == settings_hash(settings)

    def read(self, group: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(arrays, attrs)`` of a stored group; subgroups come back as nested dicts."""
        with self._open("r") as f:
            g = f.get(group.strip("/"))
            if g is None:
                raise StoreError(f"{self.path} has no group {group!r}; stored: {', '.join(_list(f)) or 'none'}")
            return _read(g), {k: _decode_attr(v) for k, v in g.attrs.items()}

    def attrs(self, group: str) -> dict[str, Any]:
        """Attributes of any group (e.g. a checkpoint's step and hash); empty if it is absent."""
        if not self.exists():
            return {}
        with self._open("r") as f:
            g = f.get(group.strip("/") or "/")
            return {} if g is None else {k: _decode_attr(v) for k, v in g.attrs.items()}

    def groups(self) -> list[str]:
        if not self.exists():
            return []
        with self._open("r") as f:
            return _list(f)


def _fill(g: h5py.Group, arrays: Mapping[str, Any]) -> None:
    for key, value in arrays.items():
        if isinstance(value, Mapping):
            _fill(g.create_group(key), value)
        else:
            arr = np.asarray(value)
            if arr.dtype.kind == "U":  # text: stored as UTF-8 strings, read back as str
                g.create_dataset(key, data=arr.astype(object), dtype=h5py.string_dtype())
            else:
                g.create_dataset(key, data=arr)


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
