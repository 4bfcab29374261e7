"""What a failed store operation raises: :class:`StoreError`, and how a full disk is recognized."""

from __future__ import annotations

import errno

from landscape.errors import LandscapeError

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class StoreError(LandscapeError):
    """The HDF5 output cannot be written or read."""


def _is_disk_full(exc: BaseException) -> bool:
    """An ENOSPC/EDQUOT, raised by the OS or reported inside an h5py error message."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text or "errno = 28" in text
