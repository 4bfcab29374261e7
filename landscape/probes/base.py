"""What every probe shares: the context it runs in, and the registry that names it.

A probe is a function ``run(ctx, cfg) -> dict`` plus a frozen config dataclass. The dict holds
arrays and scalars (nested dicts become HDF5 subgroups); the probe never opens a file —
:mod:`landscape.analyze` and :mod:`landscape.store` do the I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from landscape.core.subsets import fixed_subset, parse_splits
from landscape.datasets import Dataset, Split
from landscape.errors import ConfigError
from landscape.probes.settings import (
    SPLITS,
    batch_size_setting,
    bn_mode_setting,
    check_settings,
    check_subset,
    coerce_setting,
    coerce_value,
    describe_type,
    dtype_setting,
    seed_setting,
    setting,
    setting_help,
    split_setting,
    subset_setting,
)
from landscape.registry import Registry

__all__ = ["PROBES", "SPLITS", "Probe", "ProbeContext", "batch_size_setting", "bn_mode_setting",
           "check_settings", "check_subset", "coerce_setting", "coerce_value", "default_probes",
           "describe_type", "dtype_setting", "fixed_subset", "make_config", "measure_families",
           "measure_table", "parse_splits", "probe_order", "register_probe", "seed_setting",
           "setting", "setting_help", "split_setting", "subset_setting"]


@dataclass
class ProbeContext:
    """A loaded checkpoint: the model (on ``device``), the per-sample loss, and the data.

    ``loss(logits, y)`` receives :func:`landscape.outputs.logits_of` of the model's output (a
    tensor, a tuple's first element, or ``.logits``), or ``output_fn(output)`` when given."""

    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    data: Dataset
    device: torch.device
    advance: Callable[[int], None] = lambda n: None  # progress: n units of work done so far
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the probes of one checkpoint
    run_cache: dict[str, Any] = field(default_factory=dict)  # shared across checkpoints of one run
    # the training log (metrics records) and the training config of the checkpoint's run (a RUN_DIR only)
    run_record: Callable[[], tuple[list[dict[str, Any]], dict[str, Any]]] | None = None
    partial: dict[str, Any] | None = None  # results of an interrupted run with the same settings
    save_partial: Callable[[dict[str, Any]], None] = lambda arrays: None  # record work done so far
    resolve_checkpoint: Callable[[str], dict[str, torch.Tensor]] | None = None  # another checkpoint's tensors
    # the run's checkpoints as the tensors a direction of a kind perturbs, with their steps (RUN_DIR only)
    load_trajectory: Callable[[str], tuple[list[dict[str, torch.Tensor]], list[int]]] | None = None
    output_fn: Callable[[Any], torch.Tensor] | None = None  # model output → logits (see landscape.outputs)
    features_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None  # (model, x) → features [N, D]
    # where map_chunks runs the chunks, set by the run layer: (ctx, fn, shared, items, workers) → (i, out)
    # pairs as each finishes; None: here, in order
    chunk_runner: Callable[..., Iterator[tuple[int, Any]]] | None = None

    def map_chunks(self, fn: Callable[[ProbeContext, dict[str, Any], Any], Any], shared: dict[str, Any],
                   items: Sequence[Any], *, workers: int = 1) -> Iterator[tuple[int, Any]]:
        """``(index, fn(ctx, shared, items[index]))`` for every item, as each finishes: the chunks of
        a probe's work, which the run layer may send to worker processes or Ray (here, in order,
        without one). ``fn`` is a module-level function (picklable); ``ctx`` is this context, or in
        a worker one rebuilt there from the same checkpoint and data; ``shared`` holds the tensors
        every chunk reads (a dict of tensors, lists and dicts of them: written once per call);
        ``items`` are small picklable chunks. ``workers``: the probe's own setting of how many local
        processes it may use when the run layer has no executor of its own (1: here). A probe
        using it declares ``chunked=True`` (:func:`register_probe`), so that it runs where its
        partial results can be saved as the chunks come back."""
        if self.chunk_runner is None:
            for index, item in enumerate(items):
                yield index, fn(self, shared, item)
        else:
            yield from self.chunk_runner(self, fn, shared, list(items), workers)

    def split(self, name: str) -> Split:
        table = {"train": self.data.train, "test": self.data.test}
        if name not in table:
            raise ConfigError(f"unknown split {name!r}; use train or test")
        return table[name]


@dataclass(frozen=True)
class Probe:
    """Everything the rest of the toolkit needs to know about a probe, declared by its module.

    ``analyze``'s default probe list, ``correlate``'s measures, the figures and the CLI command
    are all read from here (:func:`default_probes`, :func:`measure_table`, ...), so adding a probe
    is one module. The declaration is data: a probe never imports a higher layer."""

    name: str
    config: type
    run: Callable[[ProbeContext, Any], dict[str, Any]]
    summary: tuple[str, ...] = ()  # result keys worth a column in a summary table
    default: int | None = None  # position in analyze's default probe list; None: not a default probe
    # measures correlate may use: name → key path in the probe's stored group ("train/nc1")
    measures: dict[str, str] = field(default_factory=dict)
    # the measure families (Jiang et al. 2020) of its measures: family → measure-name prefixes
    families: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # figures over training: (panel title, key inside a split's subgroup, log y)
    curves: tuple[tuple[str, str, bool], ...] = ()
    curves_title: str = ""  # the title of that figure
    curves_logx: bool = False  # log x when the axis is epochs (and two are > 0)
    figure: str | None = None  # a bespoke drawer kind registered in landscape.figures
    cli_help: str = ""  # one line: what ``landscape NAME`` measures
    checkpoints: str = "last"  # the CLI's default --checkpoints (``all``: a probe over training)
    unit: str = ""  # what the progress bar counts (ctx.advance units)
    work: Callable[[Any], int] | None = None  # units of work per checkpoint for a config (ETA)
    # more option names for a setting, beside its own --KEY: {"splits": ("--split",)}
    cli_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # its work goes through ctx.map_chunks: it runs in the process that stores (saving each chunk as
    # it comes back) and only its chunks go to the executor's workers
    chunked: bool = False


PROBES: Registry[Probe] = Registry("probe")


def register_probe(name: str, config: type, *, summary: tuple[str, ...] = (), default: int | None = None,
                   measures: dict[str, str] | None = None, families: dict[str, tuple[str, ...]] | None = None,
                   curves: tuple[tuple[str, str, bool], ...] = (), curves_title: str = "",
                   curves_logx: bool = False, figure: str | None = None, cli_help: str = "",
                   checkpoints: str = "last", unit: str = "", work: Callable[[Any], int] | None = None,
                   cli_names: dict[str, tuple[str, ...]] | None = None, chunked: bool = False):
    """Decorator: ``@register_probe("hessian", HessianConfig, ...)`` on ``run(ctx, cfg)``; the
    keywords are the fields of :class:`Probe`."""

    def decorator(run: Callable[[ProbeContext, Any], dict[str, Any]]):
        unknown = sorted(set(cli_names or {}) - {f.name for f in dataclasses.fields(config)})
        if unknown:
            raise ValueError(f"probe {name!r}: cli_names for unknown setting(s) {', '.join(unknown)}")
        PROBES.register(name)(Probe(
            name, config, run, summary, default, dict(measures or {}), dict(families or {}), tuple(curves),
            curves_title, curves_logx, figure, cli_help or (run.__doc__ or "").strip().split("\n")[0], checkpoints,
            unit, work, dict(cli_names or {}), chunked))
        return run

    return decorator


# ---- what the rest of the toolkit reads from the declarations ---------------------------------


def probe_order() -> list[str]:
    """Every probe: the default ones in their declared positions, then the others by name."""
    defaults = sorted((p.default, n) for n, p in PROBES.items() if p.default is not None)
    return [n for _, n in defaults] + [n for n, p in PROBES.items() if p.default is None]


def default_probes() -> tuple[str, ...]:
    """What ``analyze(probes="default")`` runs: the probes declaring a ``default`` position."""
    return tuple(n for n in probe_order() if PROBES[n].default is not None)


def measure_table() -> dict[str, tuple[str, str]]:
    """Every declared measure: name → (probe, key path in its stored group), in probe order."""
    out: dict[str, tuple[str, str]] = {}
    for probe in probe_order():
        for measure, key in PROBES[probe].measures.items():
            if measure in out:
                raise ValueError(f"measure {measure!r} is declared by probes {out[measure][0]!r} and {probe!r}")
            out[measure] = (probe, key)
    return out


def measure_families() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(family, measure-name prefixes)`` from every probe's ``families``, families in the order
    they first appear (probe order)."""
    merged: dict[str, tuple[str, ...]] = {}
    for probe in probe_order():
        for family, prefixes in PROBES[probe].families.items():
            merged[family] = merged.get(family, ()) + tuple(p for p in prefixes if p not in merged.get(family, ()))
    return tuple(merged.items())


def make_config(probe: str, **settings: Any) -> Any:
    """Build a probe's config from keyword settings, each converted to its field's type
    (:func:`coerce_setting`); unknown keys and values of the wrong type fail in one line."""
    cls = PROBES[probe].config
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} for probe {probe!r}; valid: {', '.join(names)}")
    return cls(**{key: coerce_setting(cls, key, value) for key, value in settings.items()})
