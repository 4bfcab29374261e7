r"""The flatness measures (48–61): σ and σ′ by the sharpness probe's PAC-Bayes search, the
worst-case α (:func:`worst_case_alpha`) on the sharpness probe's batches, and the bounds from them
(the package docstring, "Flatness" and "Against the references")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.core.data import select
from landscape.core.subsets import fixed_subset
from landscape.probes.measures.bounds import pac_bayes_bound, pac_bayes_mag_bound, sharpness_bound
from landscape.probes.measures.config import MeasuresConfig
from landscape.probes.sharpness import (
    SharpnessConfig,
    _BatchFn,
    _Objective,
    _pac_bayes,
    _perturbed_layout,
    largest_sigma,
    worst_case_ascent,
)
from landscape.utils import DTYPES


def worst_case_alpha(obj: _Objective, batches: list[tuple[torch.Tensor, torch.Tensor]], *, target: float,
                     iters: int, steps: int, alpha0: float = 0.01,
                     momentum_form: str = "croce_hein") -> dict[str, float]:
    """The largest α with ``err(w + δ*_B) − err(w) ≤ target`` on average over ``batches``, where
    ``δ*_B`` maximizes the batch loss :math:`L_B(w+δ)` over the box :math:`|δ_i| ≤ α` (all
    perturbed parameters, not scaled by :math:`|w|`) by ``iters`` Auto-PGD steps
    (:func:`~landscape.probes.sharpness.worst_case_ascent` from δ = 0; the error is the one at
    the loss maximizer found), bisected by :func:`~landscape.probes.sharpness.largest_sigma`."""
    s = torch.ones_like(obj.theta)
    zero = torch.zeros_like(obj.theta)
    clean = [obj.value(zero, xb, yb) for xb, yb in batches]
    err0 = float(np.mean([c[1] for c in clean]))
    out = {"accuracy_clean": 1.0 - err0, "alpha": math.nan, "alpha_hi": math.nan}
    if not math.isfinite(err0):
        return out
    if 1.0 - err0 <= target:  # the drop can never exceed the target
        out.update(alpha=math.inf, alpha_hi=math.inf)
        return out

    def drop(alpha: float) -> float:
        errs = [worst_case_ascent(_BatchFn(obj, xb, yb, lambda: None), s, alpha, norm="linf", iters=iters,
                                  clean=c, momentum_form=momentum_form)[1]
                for (xb, yb), c in zip(batches, clean, strict=True)]
        return float(np.mean(errs)) - err0

    out["alpha"], out["alpha_hi"] = largest_sigma(drop, target, sigma0=alpha0, steps=steps)
    return out


def _flatness_batches(x: Any, y: torch.Tensor | None, scfg: SharpnessConfig, dev: torch.device,
                      dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The sharpness probe's batches: its seeded subset, shuffled with the same seed, cut into
    ``⌊subset/m⌋`` batches of ``m`` (as :func:`landscape.probes.sharpness.sharpness` does)."""
    idx = fixed_subset(len(x), scfg.subset, scfg.seed)
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(scfg.seed))]
    if y is None:
        idx = idx[: (len(idx) // scfg.m) * scfg.m]
    xs, ys = select(x, y, idx)
    xs = xs.to(dev, dtype if xs.is_floating_point() else xs.dtype)
    ys = ys.to(dev, dtype if ys.is_floating_point() else ys.dtype)
    return [(xs[b * scfg.m:(b + 1) * scfg.m], ys[b * scfg.m:(b + 1) * scfg.m]) for b in range(len(ys) // scfg.m)]


def flatness_measures(model: nn.Module, loss, x: Any, y: torch.Tensor | None, cfg: MeasuresConfig,
                      weights: dict[str, torch.Tensor], init: dict[str, torch.Tensor] | None, *,
                      device: torch.device, output_fn=None, task: str = "classification",
                      init_reason: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The PAC-Bayes (48, 49, 53, 56, 57, 61) and worst-case sharpness (50, 51, 54) measures and
    their σ, σ′, α (:mod:`landscape.probes.measures`); ``(values, reasons)``."""
    out: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    pac_keys = ("pacbayes_init", "pacbayes_orig", "pacbayes_flatness", "pacbayes_mag_init", "pacbayes_mag_orig",
                "pacbayes_mag_flatness")
    worst_keys = ("sharpness_init", "sharpness_orig", "sharpness_flatness")
    keys = (pac_keys if cfg.pac_bayes else ()) + (worst_keys if cfg.worst_sharpness else ())
    if not keys:
        return out, reasons
    n = len(x)
    if cfg.pac_m > min(n, cfg.pac_subset or n):
        why = f"pac_m={cfg.pac_m} is larger than the {min(n, cfg.pac_subset or n)} training points used; lower pac_m"
        out.update({k: math.nan for k in keys})
        reasons.update({k: why for k in keys})
        return out, reasons
    scfg = SharpnessConfig(m=cfg.pac_m, subset=cfg.pac_subset, seed=cfg.seed, dtype=cfg.pac_dtype,
                           bn_mode=cfg.bn_mode, params="all", split="train", first_order_rho=None,
                           pac_target=cfg.pac_target, pac_draws=cfg.pac_draws, pac_steps=cfg.pac_steps,
                           pac_eps=cfg.pac_eps, pac_mag_form=cfg.pac_mag_form)
    dtype = DTYPES[cfg.pac_dtype]
    w = torch.cat([t.reshape(-1) for t in weights.values()])
    dist = torch.cat([(t - init[k].to(t.device)).reshape(-1) for k, t in weights.items()]) if init else None
    w2 = float(w @ w)
    d2 = float(dist @ dist) if dist is not None else math.nan
    no_init = init_reason or "no initialization"
    was_training = model.training
    model.train(cfg.bn_mode == "train")  # only the flag, as the sharpness probe does; restored below
    try:
        batches = _flatness_batches(x, y, scfg, device, dtype)
        obj = _Objective(model, loss, _perturbed_layout(model, "all"), scfg, dtype, device, output_fn, task)
        if cfg.pac_bayes:
            pac = _pac_bayes(obj, batches, scfg, dtype, device)
            sigma, sigma_mag = pac.get("sigma", math.nan), pac.get("sigma_mag", math.nan)
            out.update(pac_sigma=sigma, pac_sigma_mag=sigma_mag, pac_accuracy_clean=pac["accuracy_clean"],
                       pacbayes_orig=pac_bayes_bound(w2, sigma, n),
                       pacbayes_init=pac_bayes_bound(d2, sigma, n),
                       pacbayes_flatness=pac.get("inv_sigma2", math.nan),
                       pacbayes_mag_flatness=pac.get("inv_sigma2_mag", math.nan),
                       pacbayes_mag_init=math.nan, pacbayes_mag_orig=math.nan)
            if dist is not None:
                out["pacbayes_mag_init"] = pac_bayes_mag_bound(dist, dist, sigma_mag, cfg.pac_eps, n)
                out["pacbayes_mag_orig"] = pac_bayes_mag_bound(w, dist, sigma_mag, cfg.pac_eps, n)
            else:
                reasons.update(pacbayes_init=no_init, pacbayes_mag_init=no_init,
                               pacbayes_mag_orig=no_init + " (the reference's denominator uses w − w⁰)")
            if not math.isfinite(pac["accuracy_clean"]):
                reasons.update({k: "the training accuracy is undefined for this task's outputs" for k in pac_keys})
            elif math.isinf(sigma):
                why = f"the clean training accuracy {pac['accuracy_clean']:.3g} ≤ pac_target: no σ breaks it"
                reasons.update({k: why for k in pac_keys if "flatness" not in k})
        if cfg.worst_sharpness:
            g0 = obj.num_gradients
            res = worst_case_alpha(obj, batches, target=cfg.worst_target, iters=cfg.worst_iters,
                                   steps=cfg.worst_steps)
            alpha, omega = res["alpha"], w.numel()
            out.update(sharpness_alpha=alpha, sharpness_alpha_hi=res["alpha_hi"],
                       sharpness_accuracy_clean=res["accuracy_clean"],
                       sharpness_gradients=obj.num_gradients - g0,
                       sharpness_orig=sharpness_bound(w2, alpha, omega, n),
                       sharpness_init=sharpness_bound(d2, alpha, omega, n),
                       sharpness_flatness=(1.0 / alpha**2 if alpha > 0 else math.inf) if math.isfinite(alpha)
                       else (0.0 if alpha == math.inf else math.nan))
            if dist is None:
                reasons["sharpness_init"] = no_init
            if not math.isfinite(res["accuracy_clean"]):
                reasons.update({k: "the training accuracy is undefined for this task's outputs" for k in worst_keys})
            elif math.isinf(alpha):
                why = f"the clean training accuracy {res['accuracy_clean']:.3g} ≤ worst_target: no α breaks it"
                reasons.update({k: why for k in worst_keys if "flatness" not in k})
    finally:
        model.train(was_training)
    out["flatness_points"] = len(batches) * cfg.pac_m
    return out, reasons
