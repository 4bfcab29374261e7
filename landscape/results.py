"""Stored results out: ``load_results(path)`` reads an ``analysis.h5`` (layout: ``docs/schema.md``).

:class:`Results` is a read-only mapping ``"<checkpoint>/<probe>" → ProbeResult`` and gives the tidy
table :meth:`Results.rows` (one row per checkpoint × probe × measure [× split] [× index]), as a
pandas DataFrame (:meth:`Results.to_frame`, pandas an optional extra), CSV (no pandas needed) or
Parquet. Which stored values become rows:

* every numeric scalar dataset → one row, ``index`` empty;
* every numeric 1-D dataset of at most ``max_vector`` (32) entries → one row per entry, ``index``
  ``0 … n−1`` (``eigenvalues`` with index 0 is λ_max); ``label`` names the entry when the group
  holds a coordinate of the same length beside it: ``names[k]`` (per-layer arrays) or ``rhos[k]``
  (per-radius arrays of the sharpness probe, written ``rho=0.002``);
* nothing else: arrays of 2 or more dimensions (grids, class means, directions), longer 1-D
  arrays (spectra, densities; ``max_vector=None`` keeps them all), text, and every array of a
  group with a ``done`` mask (a surface grid and its coordinates) — read those with
  ``results[group].arrays``;
* with ``metrics=True``, the numeric training metrics recorded on each checkpoint group
  (``train_acc``, ``test_loss``, …; not ``step``/``epoch``/``checkpoint*``) as probe ``metrics``.

``split`` is the subgroup name for probes that store one subgroup per split (``train``/``test``:
collapse, rankme, dse), otherwise the probe's ``split`` setting (hessian, sharpness, coherence) or
the first of its ``splits`` (surface); ``measure`` is the dataset's path below the probe (or split)
group (``pac_bayes/inv_sigma2``, ``layers/top_eigenvalue``). Incomplete groups (an interrupted
surface, ``complete`` false) give no rows unless ``include_partial=True``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from landscape.errors import LandscapeError
from landscape.store import SCHEMA_VERSION, Store, StoreError, checkpoint_name

__all__ = ["COLUMNS", "ProbeResult", "Results", "collect_series", "load_results"]

COLUMNS = ("checkpoint", "step", "epoch", "probe", "split", "measure", "index", "label", "value",
           "settings_hash")
MAX_VECTOR = 32
SPLITS = ("train", "test")
LABEL_COORDINATES = ("names", "rhos")  # sibling datasets that name the entries of a vector


@dataclass(frozen=True)
class ProbeResult:
    """One stored ``/<checkpoint>/<probe>`` group: its datasets (subgroups as nested dicts), its
    attributes (settings decoded from JSON) and those of its checkpoint group (step, metrics, …)."""

    group: str
    checkpoint: str
    probe: str
    arrays: dict[str, Any]
    attrs: dict[str, Any]
    checkpoint_attrs: dict[str, Any]

    @property
    def complete(self) -> bool:
        return self.attrs.get("complete", True) is not False

    @property
    def settings(self) -> dict[str, Any]:
        return self.attrs.get("settings") or {}


def load_results(path: str | Path) -> Results:
    """Open a results file (``FILE.h5``, or a RUN_DIR holding ``analysis.h5``) for reading."""
    path = Path(path)
    if path.is_dir() and (path / "analysis.h5").is_file():
        path = path / "analysis.h5"
    if not path.exists():
        raise LandscapeError(f"results file {path} does not exist; give an analysis.h5 written by landscape analyze")
    if path.is_dir():
        raise LandscapeError(f"{path} is a folder without analysis.h5; give a results file (FILE.h5)")
    try:
        import h5py

        is_hdf5 = h5py.is_hdf5(path)
    except OSError as exc:
        raise LandscapeError(f"cannot read results file {path} ({exc.strerror or exc})") from exc
    if not is_hdf5:
        raise LandscapeError(f"{path} is not an HDF5 file; give an analysis.h5 written by landscape analyze")
    return Results(path)


class Results(Mapping[str, ProbeResult]):
    """A results file, read on demand: ``results["step_000660/hessian"].arrays["eigenvalues"]``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._store = Store(self.path)
        self.attrs = self._store.attrs("/")
        self._groups = self._store.groups()
        version = self.attrs.get("schema_version")
        if version is None:
            raise LandscapeError(f"{self.path} is not a landscape results file (no schema_version attribute)")
        if int(version) > SCHEMA_VERSION:
            raise LandscapeError(
                f"{self.path} has schema version {version}, newer than this landscape reads "
                f"({SCHEMA_VERSION}); upgrade landscape"
            )
        names = dict.fromkeys(g.rpartition("/")[0] for g in self._groups)
        self._checkpoint_attrs = {c: self._store.attrs(c) for c in names}

    # ---- the mapping --------------------------------------------------------------------------
    def __getitem__(self, group: str) -> ProbeResult:
        group = group.strip("/")
        if group not in self._groups:
            raise KeyError(group)
        arrays, attrs = self._store.read(group)
        checkpoint, _, probe = group.rpartition("/")
        return ProbeResult(group, checkpoint, attrs.get("probe", probe), arrays, attrs,
                           self._checkpoint_attrs[checkpoint])

    def __iter__(self) -> Iterator[str]:
        order = {c: i for i, c in enumerate(self.checkpoints)}
        return iter(sorted(self._groups, key=lambda g: (order[g.rpartition("/")[0]], g.rpartition("/")[2])))

    def __len__(self) -> int:
        return len(self._groups)

    def __repr__(self) -> str:
        return f"Results({str(self.path)!r}, {len(self.checkpoints)} checkpoints, {len(self)} groups)"

    @property
    def schema_version(self) -> int:
        return int(self.attrs["schema_version"])

    @property
    def checkpoints(self) -> list[str]:
        """Checkpoint groups, ordered by step (natural name order where no step is recorded)."""

        def key(name: str) -> tuple[Any, ...]:
            step = self._checkpoint_attrs[name].get("step")
            return (step is None, step if step is not None else 0, _natural_key(name))

        return sorted(self._checkpoint_attrs, key=key)

    @property
    def probes(self) -> list[str]:
        return sorted({g.rpartition("/")[2] for g in self._groups})

    def checkpoint_attrs(self, checkpoint: str) -> dict[str, Any]:
        return dict(self._checkpoint_attrs[checkpoint])

    @property
    def failures(self) -> dict[str, dict[str, Any]]:
        """``{"<probe>" or "<probe>/<checkpoint>": attrs}`` of the ``/failures`` groups (``error``, ``created``)."""
        try:
            tree, _ = self._store.read("failures")
        except StoreError:
            return {}
        out: dict[str, dict[str, Any]] = {}

        def walk(prefix: str, node: dict[str, Any]) -> None:
            for name, child in node.items():
                if not isinstance(child, dict):
                    continue
                path = f"{prefix}{name}"
                attrs = self._store.attrs(f"failures/{path}")
                if "error" in attrs:
                    out[path] = attrs
                walk(path + "/", child)

        walk("", tree)
        return out

    # ---- the tidy table -----------------------------------------------------------------------
    def rows(self, *, max_vector: int | None = MAX_VECTOR, metrics: bool = True,
             include_partial: bool = False) -> list[dict[str, Any]]:
        """Tidy records with the keys :data:`COLUMNS`, ordered by checkpoint (step), probe, then
        as stored; the rules for what becomes a row are in the module docstring."""
        out: list[dict[str, Any]] = []
        by_checkpoint: dict[str, list[str]] = {}
        for group in self:
            by_checkpoint.setdefault(group.rpartition("/")[0], []).append(group)
        for checkpoint in self.checkpoints:
            cattrs = self._checkpoint_attrs[checkpoint]
            base = {"checkpoint": checkpoint_name(checkpoint), "step": _int_or_none(cattrs.get("step")),
                    "epoch": _float_or_none(cattrs.get("epoch"))}
            if metrics:
                for name, value in cattrs.items():
                    if name in ("step", "epoch") or name.startswith("checkpoint") or not _is_number(value):
                        continue
                    out.append(_row(base, "metrics", "", name, None, None, value, ""))
            for group in by_checkpoint.get(checkpoint, []):
                result = self[group]
                if not result.complete and not include_partial:
                    continue
                split = _setting_split(result.settings)
                for sub_split, measure, index, label, value in _walk(result.arrays, split, "", max_vector):
                    out.append(_row(base, result.probe, sub_split, measure, index, label, value,
                                    result.attrs.get("settings_hash", "")))
        return out

    def to_frame(self, **kwargs: Any):
        """:meth:`rows` as a pandas DataFrame (columns :data:`COLUMNS`; ``step``/``index`` nullable ints)."""
        try:
            import pandas as pd
        except ImportError:
            raise LandscapeError("to_frame needs pandas: pip install 'landscape[pandas]'") from None
        frame = pd.DataFrame.from_records(self.rows(**kwargs), columns=list(COLUMNS))
        return frame.astype({"step": "Int64", "index": "Int64", "epoch": "float64", "value": "float64"})

    def to_csv(self, path: str | Path, **kwargs: Any) -> int:
        """Write :meth:`rows` as CSV (header :data:`COLUMNS`, empty cells for none; no pandas
        needed) atomically; returns the number of rows."""
        rows = self.rows(**kwargs)

        def write(fh) -> None:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow(["" if row[c] is None else _cell(row[c]) for c in COLUMNS])

        _write_out(self.path, path, write, "w")
        return len(rows)

    def to_parquet(self, path: str | Path, **kwargs: Any) -> int:
        """Write :meth:`to_frame` as Parquet (needs pandas and pyarrow) atomically; returns the rows."""
        import importlib.util

        if importlib.util.find_spec("pandas") is None or importlib.util.find_spec("pyarrow") is None:
            raise LandscapeError("parquet export needs pandas and pyarrow: pip install 'landscape[parquet]'")
        frame = self.to_frame(**kwargs)
        _write_out(self.path, path, lambda fh: frame.to_parquet(fh, engine="pyarrow", index=False), "wb")
        return len(frame)


# ---- series over training ------------------------------------------------------------------------


def collect_series(store_path: str | Path, probe: str, keys: list[str]) -> dict[str, Any]:
    """Scalars of ``probe`` across the stored checkpoints: ``{"name", "step", "epoch", key…}``.

    In training order: by step where every checkpoint has one, else by epoch where every one has
    one, else by name in natural order (``epoch_5`` before ``epoch_10``); a missing step or epoch
    is NaN. A key may be a path into subgroups (``"train/nc1"``).
    """
    from landscape.checkpoints import natural_key

    store = Store(store_path)
    rows = []
    for group in store.groups():
        ckpt, _, name = group.rpartition("/")
        if name != probe:
            continue
        arrays, _ = store.read(group)
        parent_attrs = store.attrs(ckpt)
        row: dict[str, Any] = {"name": checkpoint_name(ckpt), "step": float(parent_attrs.get("step", np.nan)),
                               "epoch": float(parent_attrs.get("epoch", np.nan))}
        for key in keys:
            value: Any = arrays
            for part in key.split("/"):
                value = value.get(part, np.nan) if isinstance(value, dict) else np.nan
            row[key] = float(np.asarray(value).reshape(-1)[0]) if np.size(value) else np.nan
        rows.append(row)
    by = next((k for k in ("step", "epoch") if rows and all(np.isfinite(r[k]) for r in rows)), None)
    rows.sort(key=lambda r: ((r[by],) if by else ()) + (natural_key(r["name"]),))
    out = {k: np.array([r[k] for r in rows], dtype=float) for k in ["step", "epoch", *keys]}
    return {"name": np.array([r["name"] for r in rows], dtype=str), **out}


# ---- helpers ------------------------------------------------------------------------------------


def _walk(node: dict[str, Any], split: str, prefix: str, max_vector: int | None,
          ) -> Iterator[tuple[str, str, int | None, str | None, float]]:
    """``(split, measure, index, label, value)`` of the rows of one (sub)group, recursively."""
    if "done" in node:  # a resumable grid: its arrays and directions are not rows, its scalars are
        node = {k: v for k, v in node.items() if not isinstance(v, dict) and np.ndim(v) == 0}
    for key, value in node.items():
        if isinstance(value, dict):
            if not prefix and key in SPLITS:
                yield from _walk(value, key, "", max_vector)
            else:
                yield from _walk(value, split, f"{prefix}{key}/", max_vector)
            continue
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            continue
        measure = prefix + key
        if arr.ndim == 0:
            yield split, measure, None, None, float(arr)
        elif arr.ndim == 1 and (max_vector is None or arr.size <= max_vector):
            labels = _labels(node, key, arr.size)
            for k, v in enumerate(arr.tolist()):
                yield split, measure, k, labels[k] if labels else None, float(v)


def _labels(node: dict[str, Any], key: str, n: int) -> list[str] | None:
    for coord in LABEL_COORDINATES:
        if coord == key or coord not in node:
            continue
        values = np.atleast_1d(np.asarray(node[coord]))
        if values.ndim != 1 or values.size != n:
            continue
        if coord == "rhos":
            return [f"rho={float(v):g}" for v in values]
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]
    return None


def _setting_split(settings: dict[str, Any]) -> str:
    split = settings.get("split")
    if isinstance(split, str):
        return split
    splits = settings.get("splits")
    return splits.split(",")[0] if isinstance(splits, str) and splits else ""


def _row(base: dict[str, Any], probe: str, split: str, measure: str, index: int | None, label: str | None,
         value: Any, settings_hash: str) -> dict[str, Any]:
    return {**base, "probe": probe, "split": split, "measure": measure, "index": index, "label": label,
            "value": float(value), "settings_hash": settings_hash}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _int_or_none(value: Any) -> int | None:
    return int(value) if _is_number(value) and math.isfinite(value) else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if _is_number(value) else None


def _cell(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)  # repr: the float round-trips


def _natural_key(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _write_out(source: Path, path: str | Path, write, mode: str) -> None:
    from landscape.utils import atomic_write, disk_full_error, is_disk_full

    path = Path(path)
    if path.exists() and path.resolve() == source.resolve():
        raise LandscapeError(f"{path} is the results file itself; write the table to another file")
    try:
        atomic_write(path, write, mode=mode)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path) from exc
        raise LandscapeError(f"cannot write {path} ({exc.strerror or exc}); choose another path") from exc
