"""The HDF5 store: one group per (checkpoint, probe), written by one process at a time.

Layout (``analysis.h5``)::

    /                       attrs: schema_version
    /<checkpoint>/          attrs: step, checkpoint sha256, ...   (name: :func:`group_name`)
    /<checkpoint>/<probe>/  datasets (arrays) + attrs (settings JSON, versions, seed, ...)
    /failures/<probe>       attrs: error, created

Writing. A new (or replaced) group is written under a temporary name and moved into place, so
a reader never sees half a group. A partial group (``complete=False``, with a ``done`` mask) that
is written again with the same settings is updated *in place*: arrays whose content is unchanged
(directions) are not touched, arrays of the same shape and dtype are overwritten, only new or
reshaped keys are recreated; values go first, then ``done``, then the attributes, ``complete``
last — a crash leaves a partial group whose mask is never ahead of its values. HDF5 never reuses
space freed in an earlier session, so a file with much dead space is compacted (:meth:`Store.repack`)
when a group completes. Before each write the space it may need is reserved on disk
(``posix_fallocate``; HDF5 trims the file at close): a full disk fails with one
:class:`StoreError` before the file is touched, never inside HDF5 (where h5py can segfault).

An exclusive lock on ``<file>.lock`` serializes writers; readers take no lock and write nothing,
so stored results can be read from a read-only location. Attribute values that HDF5 cannot hold
natively (dicts, lists of mixed type, None) are stored as JSON strings and decoded on read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h5py
import numpy as np

from landscape.errors import LandscapeError

SCHEMA_VERSION = 1
_JSON_PREFIX = "json:"
_TMP_PREFIX = ".tmp-"
_RESERVED_NAMES = frozenset({"failures"})
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_SLACK = 256 * 1024  # bytes reserved beyond the arrays: object headers, B-trees, heaps
_BROKEN: set[str] = set()  # files whose HDF5 handle failed to close in this process: never reopened


class StoreError(LandscapeError):
    """The HDF5 output cannot be written or read."""


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


def _is_disk_full(exc: BaseException) -> bool:
    """An ENOSPC/EDQUOT, raised by the OS or reported inside an h5py error message."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text or "errno = 28" in text


class Store:
    """An HDF5 results file; ``path`` is created on first write.

    A ``path`` that is a symlink is refused for writing unless ``allow_symlink=True`` (a
    symlinked ``analysis.h5`` would write into whatever file it points to).
    """

    def __init__(self, path: str | Path, lock_timeout: float = 600.0, allow_symlink: bool = False) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.allow_symlink = allow_symlink

    def _disk_full(self) -> StoreError:
        return StoreError(f"disk full writing {self.path}: free space and rerun the same command to resume")

    def _check_not_symlink(self) -> None:
        if self.path.is_symlink() and not self.allow_symlink:
            raise StoreError(
                f"results file {self.path} is a symlink (to {os.readlink(self.path)}); refusing to write through it: "
                "name the real file instead, or allow it (allow_symlink=True)"
            )

    def _target(self) -> Path:
        """The file writes go to: ``path``, or what it links to when ``allow_symlink``."""
        return self.path.resolve() if self.allow_symlink and self.path.is_symlink() else self.path

    # ---- locking ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The writers' lock; also where every write checks the path (symlink, writable folder)."""
        self._check_not_symlink()
        target = self._target()
        lock_path = target.with_name(target.name + ".lock")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise self._disk_full() from None
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

    @contextlib.contextmanager
    def _reading(self) -> Iterator[h5py.File]:
        """The file open for reading: no lock and nothing written, so a read-only copy works."""
        with self._open("r") as f:
            try:
                yield f
            except (OSError, RuntimeError, KeyError, ValueError) as exc:
                raise StoreError(f"cannot read results file {self.path} ({exc}); it may be corrupt") from exc

    def _open(self, mode: str, path: Path | None = None) -> h5py.File:
        path = self.path if path is None else path
        if str(path.absolute()) in _BROKEN:
            raise StoreError(f"an earlier write to {path} failed (disk full); free space and rerun the same command")
        try:
            f = h5py.File(path, mode, locking=False)
        except OSError as exc:
            if mode == "r" and not path.exists():
                raise StoreError(f"results file {path} does not exist") from exc
            if _is_disk_full(exc):
                raise self._disk_full() from None
            raise StoreError(
                f"cannot open results file {path} ({exc}); it may be corrupt or unwritable — choose another --out"
            ) from exc
        return f

    @contextlib.contextmanager
    def _session(self, reserve: int, path: Path | None = None) -> Iterator[h5py.File]:
        """The file open for writing, with ``reserve`` bytes of disk space set aside first.

        A full disk raises one :class:`StoreError`: before anything is written when the space
        cannot be reserved; otherwise (the estimate was short) the handle is abandoned and the
        file is not opened again by this process."""
        path = self._target() if path is None else path
        created = not path.exists()
        if created:
            self._create(path)
        elif not h5py.is_hdf5(path):
            self._open("r", path).close()  # the one-line "corrupt" error, before the file is touched
        try:
            self._reserve(path, reserve)
            f = self._open("a", path)
            try:
                if "schema_version" not in f.attrs:
                    f.attrs["schema_version"] = SCHEMA_VERSION
                yield f
            except BaseException as exc:
                self._close(f, path)
                if _is_disk_full(exc):
                    raise self._disk_full() from None
                raise
            self._close(f, path)
        except BaseException:
            if created:  # no results file is left by a write that did not happen
                path.unlink(missing_ok=True)
            raise

    def _close(self, f: h5py.File, path: Path) -> None:
        try:
            f.close()
        except Exception as exc:
            _BROKEN.add(str(path.absolute()))  # closing it again (or reopening it) can crash h5py
            if _is_disk_full(exc):
                raise self._disk_full() from None
            raise StoreError(f"cannot finish writing {path} ({exc}); rerun the same command") from None

    def _create(self, path: Path) -> None:
        """A new, empty results file, moved into place only once it is whole (callers hold the lock)."""
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
        self._new_file(tmp)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write results to {path} ({exc.strerror}); choose another --out") from exc

    def _new_file(self, path: Path) -> None:
        """An empty HDF5 file at the fresh name ``path`` (removed again if it cannot be written)."""
        try:
            f = self._open("w", path)
            try:
                f.attrs["schema_version"] = SCHEMA_VERSION
            finally:
                self._close(f, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def _reserve(self, path: Path, nbytes: int) -> None:
        """Allocate ``nbytes`` past the end of ``path`` on disk, so that HDF5's writes (which go to
        the end of the file, or overwrite what is there) cannot run out of space; HDF5 truncates
        the file to its real end when it closes it. Nothing is left behind when this fails."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise self._disk_full() from None
            raise StoreError(f"cannot write results to {path} ({exc.strerror}); choose another --out") from exc
        try:
            size = os.fstat(fd).st_size
            try:
                os.posix_fallocate(fd, size, nbytes)
            except OSError as exc:
                os.ftruncate(fd, size)
                if exc.errno in _DISK_FULL:
                    raise self._disk_full() from None
                st = os.statvfs(path)  # no fallocate on this file system: at least check the free space
                if st.f_bavail * st.f_frsize < nbytes:
                    raise self._disk_full() from None
        finally:
            os.close(fd)

    def check_writable(self) -> None:
        """Fail now (not after an hour of work) when the file cannot be written; a file that does not
        exist yet is created and removed again, so a run that fails before its first result leaves
        no empty results file behind."""
        created = not self._target().exists()
        with self._locked(), self._session(_SLACK):
            pass
        if created:
            with self._locked():
                if self._target().exists():
                    with self._open("r") as f:
                        empty = len(f.keys()) == 0
                    if empty:
                        self._target().unlink()

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


# ---- helpers ------------------------------------------------------------------------------------


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
