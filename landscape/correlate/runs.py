"""What the scores are computed over: the generalization gap of each run, and the groups of runs that differ only in their seed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from landscape.correlate.checks import _check_records, _key, _vector
from landscape.errors import ConfigError

# --------------------------------------------------------------------------- seeds


def seed_groups(
    records: Sequence[Mapping], config_keys: Sequence[str], seed: str = "seed"
) -> list[list[int]]:
    """Indices of the runs to average into one configuration: runs that agree on every key of
    ``config_keys`` (the ``seed`` key excepted; a key a run lacks counts as None) and differ in
    ``seed`` form one group. Runs whose configuration, seed included, is shared by no run with
    another seed stay alone (two copies of one run are two runs, not two seeds). Groups are
    listed in the order of their first run."""
    _check_records(records, [])
    keys = [k for k in dict.fromkeys(config_keys) if k != seed]
    by_config: dict[tuple, list[int]] = {}
    for k, r in enumerate(records):
        by_config.setdefault(tuple(_key(r.get(c)) for c in keys), []).append(k)
    groups: list[list[int]] = []
    for idx in by_config.values():
        if len({_key(records[k].get(seed)) for k in idx}) > 1:
            groups.append(idx)
        else:
            groups.extend([k] for k in idx)
    return sorted(groups, key=lambda grp: grp[0])


# --------------------------------------------------------------------------- gaps


def generalization_gap(records: Sequence[Mapping], kind: str = "acc") -> np.ndarray:
    """Generalization gap per run: ``train_acc − test_acc`` (``kind="acc"``) or
    ``test_loss − train_loss`` (``kind="loss"``) (Jiang et al. 2019, §2). Larger = worse."""
    if kind == "acc":
        keys = ("train_acc", "test_acc")
    elif kind == "loss":
        keys = ("test_loss", "train_loss")
    else:
        raise ConfigError(f"unknown gap kind {kind!r}; use 'acc' or 'loss'")
    _check_records(records, keys)
    first = _vector([r[keys[0]] for r in records], keys[0])
    second = _vector([r[keys[1]] for r in records], keys[1])
    return first - second
