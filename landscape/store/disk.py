"""The results file on disk: the writers' lock, opening it (for reading with no lock), a write
session with its disk space reserved first, and creating a new file atomically.

Before each write the space it may need is reserved on disk (``posix_fallocate``; HDF5 trims the
file at close): a full disk fails with one :class:`StoreError` before the file is touched, never
inside HDF5 (where h5py can segfault). An exclusive lock on ``<file>.lock`` serializes writers;
readers take no lock and write nothing, so stored results can be read from a read-only location.
A file whose HDF5 handle failed to close is never opened again by this process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import h5py

from landscape.store.errors import _DISK_FULL, StoreError, _is_disk_full
from landscape.store.names import SCHEMA_VERSION

_SLACK = 256 * 1024  # bytes reserved beyond the arrays: object headers, B-trees, heaps
_BROKEN: set[str] = set()  # files whose HDF5 handle failed to close in this process: never reopened


class _StoreFile:
    """An HDF5 results file at ``path`` (created on first write): lock, open, reserve, create.

    A ``path`` that is a symlink is refused for writing unless ``allow_symlink=True``.
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
