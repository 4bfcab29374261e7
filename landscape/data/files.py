"""Where file-based loaders look for their files: ``root``, or the data root
``$LANDSCAPE_DATA`` (default ``data`` in the current directory)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

DATA_ENV = "LANDSCAPE_DATA"
"""Environment variable naming the data root (default ``data`` in the current directory)."""


def data_root() -> Path:
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path("data")


def search_folders(
    root: Path | None, default: str, under_root: Sequence[str], under_data: Sequence[str]
) -> list[Path]:
    """Folders to look in: ``root`` and ``root/<under_root>``, or, without ``root``,
    ``<data>/<default>`` and ``<data>/<under_data>`` with ``<data>`` = ``$LANDSCAPE_DATA`` or ``data``."""
    if root is not None:
        return [root, *(root / sub for sub in under_root)]
    base = data_root()
    return [base / default, *(base / sub for sub in under_data)]
