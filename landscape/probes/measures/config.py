"""The measures probe's settings: :class:`MeasuresConfig` (costs in its docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from landscape.errors import ConfigError
from landscape.probes.base import (
    batch_size_setting,
    bn_mode_setting,
    check_settings,
    seed_setting,
    setting,
)
from landscape.probes.sharpness import PAC_MAG_FORMS, SharpnessConfig
from landscape.utils import DTYPES


@dataclass(frozen=True)
class MeasuresConfig:
    """Settings of the measures probe (see :mod:`landscape.probes.measures` for every formula).

    ``init``: the initialization, a step or checkpoint name of the run (``"0"``: step 0, which
    ``landscape train`` always writes) or a file; ``None`` leaves the init-based measures NaN.

    ``pac_bayes`` (on) finds the PAC-Bayes σ and σ′ with the sharpness probe's own search
    (:func:`landscape.probes.sharpness._pac_bayes`); the ``pac_*`` settings, ``seed`` and
    ``bn_mode`` default to the sharpness probe's, so the two probes report one σ. Cost: about
    ``2 · pac_draws · (bracket + pac_steps) ≈ 2·3·16`` forward passes over the ``pac_subset``
    points (≈ 100 passes over 1,024 points; no gradient). ``worst_sharpness`` (on) bisects the
    worst-case α (:func:`worst_case_alpha`): about ``(bracket + worst_steps) · worst_iters ≈ 12·5``
    gradients of each of the ``pac_subset/pac_m`` batches (≈ 60 forward+backward passes over
    1,024 points, about half the default sharpness probe's 4 ρ × 20 iterations)."""

    init: str | None = setting("0", "The initialization: a step or checkpoint name of the run, or"
                                    " a file (None: no init-based measures).")
    fold_batchnorm: bool = setting(True, "Fold a BatchNorm into the layer it follows before the "
                                         "norm measures.")
    margin_quantile: float = setting(0.1, "Quantile of the output margins used as the margin.")
    batch_size: int = batch_size_setting(512)
    grad_batch_size: int | None = setting(None, "Samples per batch of the gradient-noise measure "
                                                "(None: the run's batch size, else 128).")
    grad_subset: int | None = setting(2048, "Samples of the gradient-noise measure (None: the "
                                            "whole split).")
    ce_key: str = setting("train_ce", "The metrics.jsonl key of the training cross-entropy "
                                      "(steps-to-CE measures).")
    ce_thresholds: tuple[float, float] = setting((0.1, 0.01), "The two cross-entropy levels of "
                                                              "the steps-to-CE measures, "
                                                              "HIGH,LOW.")
    bn_mode: str = bn_mode_setting()
    seed: int = seed_setting("the subsets and the noise draws")
    # flatness: PAC-Bayes σ, σ′ (the sharpness probe's search and defaults) and worst-case α
    pac_bayes: bool = setting(True, "PAC-Bayes σ and σ′ with the sharpness probe's search.")
    pac_target: float = setting(SharpnessConfig.pac_target, "PAC-Bayes: allowed drop of train "
                                                            "accuracy.")
    pac_draws: int = setting(SharpnessConfig.pac_draws, "PAC-Bayes: Monte-Carlo draws per σ.")
    pac_steps: int = setting(SharpnessConfig.pac_steps, "PAC-Bayes: bisection steps of the σ "
                                                        "search.")
    pac_eps: float = setting(SharpnessConfig.pac_eps, "ε of the magnitude-aware noise (0 = noise "
                                                      "σ|w| only).")
    pac_mag_form: str = setting(SharpnessConfig.pac_mag_form, "Magnitude-aware noise std: jiang "
                                                              "or linear.")
    pac_subset: int | None = setting(SharpnessConfig.subset, "PAC-Bayes and worst-case α: fixed "
                                                             "subset of training points.")
    pac_m: int = setting(SharpnessConfig.m, "Batch size of the PAC-Bayes and worst-case α passes.")
    pac_dtype: str = setting(SharpnessConfig.dtype, "float32 or float64.")
    worst_sharpness: bool = setting(True, "Bisect the worst-case sharpness α.")
    worst_target: float = setting(0.1, "Worst-case α: the allowed increase of the error at the "
                                       "worst case.")
    worst_iters: int = setting(5, "Worst-case α: Auto-PGD steps per bisection step.")
    worst_steps: int = setting(8, "Worst-case α: bisection steps.")

    def __post_init__(self) -> None:
        check_settings(self, [
            (0 < self.margin_quantile < 1, f"margin_quantile must be in (0, 1), got {self.margin_quantile}"),
            (self.grad_batch_size is None or self.grad_batch_size >= 1,
             f"grad_batch_size must be ≥ 1 or None, got {self.grad_batch_size}"),
            (self.grad_subset is None or self.grad_subset >= 2, f"grad_subset must be ≥ 2 or None, got {self.grad_subset}"),
            (0 < self.pac_target < 1, f"pac_target must be in (0, 1), got {self.pac_target}"),
            (0 < self.worst_target < 1, f"worst_target must be in (0, 1), got {self.worst_target}"),
            (self.pac_draws >= 1 and self.pac_steps >= 1, "pac_draws and pac_steps must be ≥ 1"),
            (self.worst_iters >= 1 and self.worst_steps >= 1, "worst_iters and worst_steps must be ≥ 1"),
            (self.pac_eps >= 0 and math.isfinite(self.pac_eps), f"pac_eps must be ≥ 0, got {self.pac_eps}"),
            (self.pac_mag_form in PAC_MAG_FORMS,
             f"pac_mag_form must be one of {', '.join(PAC_MAG_FORMS)}, got {self.pac_mag_form!r}"),
            (self.pac_dtype in DTYPES, f"pac_dtype must be one of {', '.join(DTYPES)}, got {self.pac_dtype!r}"),
            (self.pac_m >= 1, f"pac_m must be ≥ 1, got {self.pac_m}"),
            (self.pac_subset is None or self.pac_m <= self.pac_subset,
             f"pac_m={self.pac_m} is larger than pac_subset={self.pac_subset}; use pac_m ≤ pac_subset"),
        ])
        try:
            a, b = (float(t) for t in self.ce_thresholds)
        except (TypeError, ValueError):
            raise ConfigError(f"ce_thresholds must be two numbers, got {self.ce_thresholds!r}") from None
        if not a > b > 0:
            raise ConfigError(f"ce_thresholds must be (first, second) with first > second > 0, got {self.ce_thresholds}")
        object.__setattr__(self, "ce_thresholds", (a, b))
