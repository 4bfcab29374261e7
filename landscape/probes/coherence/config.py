"""The coherence probe's settings: :class:`CoherenceConfig` and the per-example ``METHODS``."""

from __future__ import annotations

from dataclasses import dataclass

from landscape.probes.base import (
    batch_size_setting,
    check_settings,
    dtype_setting,
    seed_setting,
    setting,
    split_setting,
    subset_setting,
)

METHODS = ("hooks", "vmap")


@dataclass(frozen=True)
class CoherenceConfig:
    """Settings of the coherence / GSNR probe (all recorded beside its results).

    ``subset``: m, the number of examples (a fixed random subset of the split, ``None`` = all);
    ``chunk``: examples per vmap call and per batched matmul (at most; on a CPU a chunk of materialized
    per-example gradients is also kept within 1 MiB, ``_CACHE_BUDGET``); ``batch_size``: examples per forward
    and backward (``None`` = all m in one); ``ddof``: the variance of the GSNR divides by
    ``m − ddof`` (1 as in Liu et al. 2020); ``histogram_range``: fixed (low, high) of the
    log10-GSNR histogram (``None`` = the range of the data).

    The data selection (``split``, ``subset``, ``batch_size``, ``seed``) and ``dtype`` are the
    option groups every probe shares (:mod:`landscape.probes.base`).
    """

    subset: int | None = subset_setting(512, "examples whose per-example gradients are compared")
    split: str = split_setting("train")
    method: str = setting("hooks", "hooks (one batched backward) or vmap (per-example grads).")
    chunk: int = setting(64, "Examples per vmap call and per batched matmul (at most).")
    batch_size: int | None = batch_size_setting(None, "Examples per forward and backward")
    per_layer: bool = setting(True, "Also report each layer's coherence and GSNR.")
    histogram_bins: int = setting(50, "Bins of the log10-GSNR histogram.")
    histogram_range: tuple[float, float] | None = setting(None, "Fixed LOW,HIGH of the log10-GSNR"
                                                                " histogram (None: the data's "
                                                                "range).")
    ddof: int = setting(1, "The GSNR's variance divides by m − ddof (0 or 1).")
    dtype: str = dtype_setting()
    seed: int = seed_setting("the subset")

    def __post_init__(self) -> None:
        rng = self.histogram_range
        check_settings(self, [
            (self.subset is None or (isinstance(self.subset, int) and self.subset >= 2),
             f"subset must be ≥ 2 (coherence compares examples), got {self.subset!r}"),
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (isinstance(self.chunk, int) and self.chunk >= 1, f"chunk must be ≥ 1, got {self.chunk!r}"),
            (self.batch_size is None or isinstance(self.batch_size, int),
             f"batch_size must be a whole number ≥ 1 or None, got {self.batch_size!r}"),
            (isinstance(self.histogram_bins, int) and self.histogram_bins >= 1,
             f"histogram_bins must be ≥ 1, got {self.histogram_bins!r}"),
            (rng is None or (len(rng) == 2 and float(rng[0]) < float(rng[1])),
             f"histogram_range must be (low, high) with low < high, or None, got {rng!r}"),
            (self.ddof in (0, 1), f"ddof must be 0 (1/m) or 1 (1/(m−1)), got {self.ddof!r}"),
        ])
