"""The HDF5 store: one group per (checkpoint, probe), written by one process at a time.

Layout (``analysis.h5``)::

    /                       attrs: schema_version
    /<checkpoint>/          attrs: step, checkpoint sha256, ...   (name: :func:`group_name`)
    /<checkpoint>/<probe>/  datasets (arrays) + attrs (settings JSON, versions, seed, ...)
    /failures/<probe>       attrs: error, created

The package, one concept a module:

- :mod:`~landscape.store.store` — :class:`Store`: the write protocol (whole groups moved into
  place, partial ones patched in place), compacting, reading back;
- :mod:`~landscape.store.disk` — the file on disk: lock, open, disk space reserved before each
  write, atomic creation;
- :mod:`~landscape.store.hdf5` — a group's arrays and attributes inside an open file, and their
  byte accounting;
- :mod:`~landscape.store.names` — group names, the settings hash, attribute encoding, the schema
  version;
- :mod:`~landscape.store.errors` — :class:`StoreError` and disk-full detection.
"""

from landscape.store.errors import StoreError
from landscape.store.names import (
    SCHEMA_VERSION,
    _decode_attr,
    _encode_attr,
    checkpoint_name,
    group_name,
    settings_hash,
)
from landscape.store.store import Store

__all__ = ["SCHEMA_VERSION", "Store", "StoreError", "checkpoint_name", "group_name", "settings_hash",
           "_decode_attr", "_encode_attr"]
