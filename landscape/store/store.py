"""The :class:`Store`: writing a group (whole, or a partial one patched in place), compacting the
file, and reading groups back.

Writing. A new (or replaced) group is written under a temporary name and moved into place, so
a reader never sees half a group. A partial group (``complete=False``, with a ``done`` mask) that
is written again with the same settings is updated *in place*: arrays whose content is unchanged
(directions) are not touched, arrays of the same shape and dtype are overwritten, only new or
reshaped keys are recreated; values go first, then ``done``, then the attributes, ``complete``
last — a crash leaves a partial group whose mask is never ahead of its values. HDF5 never reuses
space freed in an earlier session, so a file with much dead space is compacted (:meth:`Store.repack`)
when a group completes. The lock, the space reserved before each write and the atomic creation of
a new file are :mod:`landscape.store.disk`'s.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from landscape.store.disk import _SLACK, _StoreFile
from landscape.store.errors import _DISK_FULL, StoreError, _is_disk_full
from landscape.store.hdf5 import (
    _as_storable,
    _changed_bytes,
    _list,
    _live_bytes,
    _nbytes,
    _read,
    _replace,
    _set_attrs,
    _update,
)
from landscape.store.names import _TMP_PREFIX, _decode_attr, settings_hash


class Store(_StoreFile):
    """An HDF5 results file; ``path`` is created on first write.

    A ``path`` that is a symlink is refused for writing unless ``allow_symlink=True`` (a
    symlinked ``analysis.h5`` would write into whatever file it points to).
    """

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
        Nested dicts in ``arrays`` become subgroups. A stored partial group with the same
        ``settings_hash`` whose ``done`` mask the new one extends is updated in place (see the
        module docstring); any other write replaces the group whole. A group written with
        ``complete`` true (or absent) compacts the file when much of it is dead space.
        """
        group = group.strip("/")
        arrays = {k: _as_storable(v) for k, v in arrays.items()}
        attrs, parent_attrs = dict(attrs or {}), dict(parent_attrs or {})
        with self._locked():
            patch_bytes = self._patch_bytes(group, arrays, attrs, parent_attrs)
            in_place = patch_bytes is not None
            new_bytes = patch_bytes if patch_bytes is not None else _nbytes(arrays)
            reserve = 2 * new_bytes + _SLACK + 4 * len(json.dumps([attrs, parent_attrs], default=str))
            with self._session(reserve) as f:
                if in_place:
                    _update(f[group], arrays, attrs)
                    _set_attrs(f[group].parent, parent_attrs, clear=False)
                    _set_attrs(f[group], attrs, clear=True)
                else:
                    _replace(f, group, arrays, attrs, parent_attrs)
            if _decode_attr(attrs.get("complete", True)) is not False:
                self._repack_if_bloated()

    def _patch_bytes(self, group: str, arrays: Mapping[str, Any], attrs: Mapping[str, Any],
                     parent_attrs: Mapping[str, Any]) -> int | None:
        """If ``group`` holds partial work of the same computation that ``arrays`` continues (same
        settings and checkpoint, a ``done`` mask that only grows): the bytes patching it in place
        creates anew. Otherwise None: the group is replaced whole."""
        if not self.path.is_file() or "done" not in arrays or "settings_hash" not in attrs:
            return None
        with self._open("r") as f:
            g = f.get(group)
            if not isinstance(g, h5py.Group) or not isinstance(g.get("done"), h5py.Dataset):
                return None
            if _decode_attr(g.attrs.get("complete", True)) is not False:
                return None  # complete results are replaced whole, never patched
            if _decode_attr(g.attrs.get("settings_hash")) != attrs["settings_hash"]:
                return None
            sha = parent_attrs.get("checkpoint_sha256")
            if sha is not None and _decode_attr(g.parent.attrs.get("checkpoint_sha256")) != sha:
                return None
            old, new = g["done"][()], np.asarray(arrays["done"])
            if old.shape != new.shape or np.any(old.astype(bool) & ~new.astype(bool)):
                return None
            return _changed_bytes(g, arrays)

    # ---- compacting ---------------------------------------------------------------------------
    def repack(self) -> tuple[int, int]:
        """Rewrite the file without its dead space (HDF5 never reuses space freed in an earlier
        session): a copy in the same folder replaces it atomically. ``(bytes before, after)``."""
        if not self.path.is_file():
            raise StoreError(f"results file {self.path} does not exist")
        with self._locked():
            return self._repack()

    def _repack_if_bloated(self) -> None:
        size = self.path.stat().st_size
        if size <= 1024 * 1024:
            return
        with self._open("r") as f:
            live = _live_bytes(f)
        if size > 1.5 * live + 1024 * 1024:
            self._repack()

    def _repack(self) -> tuple[int, int]:
        if not self.path.is_file():
            raise StoreError(f"results file {self.path} does not exist")
        target = self._target()
        before = target.stat().st_size
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.repack")
        try:
            with self._open("r", target) as src:
                reserve = int(1.25 * _live_bytes(src)) + _SLACK
                self._new_file(tmp)
                self._reserve(tmp, reserve)
                dst = self._open("a", tmp)
                try:
                    for key, value in src.attrs.items():
                        dst.attrs[key] = value
                    for key in src:
                        if not key.startswith(_TMP_PREFIX):  # debris of a crashed writer
                            src.copy(src[key], dst, name=key)
                except BaseException as exc:
                    self._close(dst, tmp)
                    if _is_disk_full(exc):
                        raise self._disk_full() from None
                    raise
                self._close(dst, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, target.stat().st_mode & 0o7777)
            os.replace(tmp, target)
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise self._disk_full() from None
            raise StoreError(f"cannot repack {self.path} ({exc.strerror or exc}); it is left as it was") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return before, target.stat().st_size

    # ---- reading ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_file()

    def has(self, group: str, settings: Mapping[str, Any] | None = None) -> bool:
        """Whether ``group`` is stored (and, if ``settings`` is given, with the same settings)."""
        if not self.exists():
            return False
        with self._reading() as f:
            g = f.get(group.strip("/"))
            if g is None:
                return False
            if _decode_attr(g.attrs.get("complete", True)) is False:
                return False  # partial work of an interrupted run: to be resumed, not reused
            return settings is None or _decode_attr(g.attrs.get("settings_hash")) == settings_hash(settings)

    def read(self, group: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(arrays, attrs)`` of a stored group; subgroups come back as nested dicts."""
        with self._reading() as f:
            g = f.get(group.strip("/"))
            if g is None:
                raise StoreError(f"{self.path} has no group {group!r}; stored: {', '.join(_list(f)) or 'none'}")
            return _read(g), {k: _decode_attr(v) for k, v in g.attrs.items()}

    def attrs(self, group: str) -> dict[str, Any]:
        """Attributes of any group (e.g. a checkpoint's step and hash); empty if it is absent."""
        if not self.exists():
            return {}
        with self._reading() as f:
            g = f.get(group.strip("/") or "/")
            return {} if g is None else {k: _decode_attr(v) for k, v in g.attrs.items()}

    def groups(self) -> list[str]:
        if not self.exists():
            return []
        with self._reading() as f:
            return _list(f)

