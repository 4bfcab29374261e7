"""Small shared helpers: device choice, seeding, atomic file writes, disk-full errors, versions."""

from __future__ import annotations

import errno
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from landscape._version import __version__
from landscape.errors import CheckpointError, LandscapeError

DTYPES = {"float32": torch.float32, "float64": torch.float64}
"""The floating dtypes a probe or monitor computes in, by the name its config gives."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None → CUDA when available, else CPU; otherwise the named device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise LandscapeError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LandscapeError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    """Versions of the packages that determine numerical results."""
    return {
        "landscape": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def current_umask() -> int:
    """The process umask (read from /proc where possible, so it is never changed, even briefly)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode an ordinary ``open(path, "w")`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def make_temp_file(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` (for an atomic replace) with the umask's mode, not mkstemp's 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, new_file_mode())
    return fd, tmp


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], mode: str = "w") -> None:
    """Write ``path`` through a temporary file in the same folder and an ``os.replace``.

    Either the old content or the complete new content is on disk, never a
    partial file. The file gets the mode the umask gives (0644 under umask 022).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda fh: json.dump(obj, fh, indent=2, sort_keys=False) or fh.write("\n"))


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# safetensors (Rust) and some writers report a full disk only in their message text
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from or during) is a full disk / quota."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(path: str | Path, hint: str = "free space and rerun") -> LandscapeError:
    """The one-line error of a write that ran out of space: ``disk full writing PATH: HINT``."""
    return LandscapeError(f"disk full writing {path}: {hint}")


def read_jsonl(path: str | Path) -> list[tuple[str, Any]]:
    """``(line, record)`` for each non-blank line of a JSON-lines file, skipping an unparsable
    *last* line (a write cut short by a kill or a full disk); any other unparsable line is a
    :class:`CheckpointError` naming the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise CheckpointError(f"cannot read {path} ({reason}); the run directory is damaged") from exc
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out: list[tuple[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError as exc:
            if number == len(lines):  # half-written last line: the record was never complete
                break
            raise CheckpointError(
                f"{path} line {number} is not valid JSON ({exc.msg}); the file is damaged: "
                "delete that line (or the file) and rerun"
            ) from None
    return out


def format_bytes(n: float) -> str:
    """``7.3 TiB``, ``512 MiB``, ``12 B``: binary units, two or three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def memory_limit(device: str | torch.device = "cpu") -> int | None:
    """The memory of ``device`` in bytes: a GPU's total memory, or the machine's physical RAM
    (None when it cannot be told)."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(dev).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def check_allocation(what: str, nbytes: float, hint: str, device: str | torch.device = "cpu") -> None:
    """Refuse, before allocating it, ``nbytes`` that ``device`` cannot hold: one line with the
    estimate (``what needs ~7.3 TiB, more than the 128 GiB of cpu memory; hint``)."""
    limit = memory_limit(device)
    if limit is not None and nbytes > limit:
        from landscape.errors import ConfigError

        raise ConfigError(
            f"{what} needs ~{format_bytes(nbytes)}, more than the {format_bytes(limit)} of "
            f"{torch.device(device).type} memory; {hint}"
        )


@contextmanager
def keep_global_rng(device: torch.device) -> Iterator[None]:
    """Whatever runs inside may seed and draw from torch's global RNG; the caller's state (the CPU's,
    and every CUDA device's when ``device`` is one) is restored afterwards, however it ends."""
    cuda = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        yield


def seed_global_rng(seed: int, device: torch.device) -> None:
    """Seed the global RNG a probe draws from: every device's on CUDA (as ``torch.manual_seed``),
    the CPU's alone otherwise (no lazily queued CUDA seed is left for the caller)."""
    if device.type == "cuda":
        torch.manual_seed(seed)
    else:
        torch.random.default_generator.manual_seed(seed)
