"""The measures probe: :func:`run_measures` on a checkpoint's training split, its initialization
(``ctx.resolve_checkpoint``) and its run's log (``ctx.run_record``), and its registration."""

from __future__ import annotations

import math
from typing import Any

import torch

from landscape.core.data import samples_args
from landscape.core.state_dict import fit_state_dict
from landscape.errors import LandscapeError
from landscape.params import select_parameters
from landscape.probes.base import ProbeContext, register_probe
from landscape.probes.measures.config import MeasuresConfig
from landscape.probes.measures.flatness import flatness_measures
from landscape.probes.measures.margins import output_margin
from landscape.probes.measures.norms import norm_measures, path_norm
from landscape.probes.measures.optimization import gradient_noise, steps_to_ce
from landscape.probes.measures.weights import weight_matrices
from landscape.tasks import get_task


def _init_matrices(ctx: ProbeContext, cfg: MeasuresConfig) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    if cfg.init is None:
        return None, "no initialization asked for (init=None)"
    if ctx.resolve_checkpoint is None:
        return None, "no initialization checkpoint (the model was not loaded from a run or a checkpoint folder)"
    try:
        tensors = ctx.resolve_checkpoint(cfg.init)
        tensors, _ = fit_state_dict(tensors, ctx.model.state_dict().keys())
        return weight_matrices(ctx.model, tensors, cfg.fold_batchnorm), None
    except (LandscapeError, KeyError, OSError) as exc:
        return None, f"initialization checkpoint {cfg.init!r} not usable: {str(exc).splitlines()[0] if str(exc) else exc!r}"


def _run_meta(ctx: ProbeContext) -> tuple[list[dict[str, Any]] | None, dict[str, Any]]:
    """The training log and config of the checkpoint's run, as the caller gives them (no run: ``None, {}``)."""
    if ctx.run_record is None:
        return None, {}
    records, config = ctx.run_record()
    return records, dict(config)


@register_probe(
    "measures", MeasuresConfig,
    summary=("inv_margin2", "log_prod_spectral", "path_norm", "dist_init_frobenius", "gradient_noise",
             "pacbayes_flatness", "sharpness_flatness"),
    # Jiang et al. 2020, Appendix C: each stored under its own name
    measures={name: name for name in (
        "num_params", "inv_margin2", "log_prod_spectral", "log_prod_spectral_over_margin", "log_sum_spectral",
        "log_sum_spectral_over_margin", "fro_over_spectral", "log_spec_orig_main", "log_spec_init_main",
        "log_prod_frobenius", "log_prod_frobenius_over_margin", "log_sum_frobenius",
        "log_sum_frobenius_over_margin", "dist_init_frobenius", "dist_init_spectral", "param_norm",
        "path_norm", "path_norm_over_margin", "steps_to_ce_0.1", "steps_ce_0.1_to_0.01", "gradient_noise",
        "pacbayes_init", "pacbayes_orig", "pacbayes_flatness", "pacbayes_mag_init", "pacbayes_mag_orig",
        "pacbayes_mag_flatness", "sharpness_init", "sharpness_orig", "sharpness_flatness")},
    families={"VC (parameter count)": ("num_params",), "output margin": ("inv_margin2",),
              "sharpness-based": ("pacbayes", "sharpness"),
              "norm-based": ("log_prod_", "log_sum_", "fro_over", "log_spec_", "dist_init", "param_norm", "path_norm"),
              "optimization-based": ("steps_", "gradient_noise")},
    cli_help="The generalization measures of Jiang et al. 2020 (norms, margins, path norm, PAC-Bayes and "
    "optimization-based) of checkpoints.")
def run_measures(ctx: ProbeContext, cfg: MeasuresConfig) -> dict[str, Any]:
    """The Jiang et al. 2020 measures of the checkpoint (VC, margin, norm, path-norm,
    optimization-based, gradient noise) on the training split; see :mod:`landscape.probes.measures`."""
    model, dev = ctx.model, ctx.device
    split = ctx.split("train")
    task = get_task(getattr(split, "task", "classification"))
    reasons: dict[str, str] = {}
    out: dict[str, Any] = {"num_params": select_parameters(model).numel}

    if task.name == "classification":
        gamma, k, n = output_margin(model, split, quantile=cfg.margin_quantile, batch_size=cfg.batch_size,
                                    output_fn=ctx.output_fn, device=dev)
        out.update(margin=gamma, margin_rank=k, margin_samples=n,
                   inv_margin2=1.0 / gamma**2 if gamma != 0 else math.inf)
        if gamma <= 0:
            reasons["margin"] = (f"the {cfg.margin_quantile:g}-quantile margin is {gamma:.4g} ≤ 0 (over "
                                 f"{cfg.margin_quantile:.0%} of the training samples misclassified); |γ| is used")
    else:
        gamma = math.nan
        out.update(margin=math.nan, inv_margin2=math.nan)
        reasons["margin"] = f"the output margin needs class logits; task is {task.name!r}"

    init, why_init = _init_matrices(ctx, cfg)
    if why_init:
        reasons["dist_init_frobenius"] = reasons["dist_init_spectral"] = reasons["log_spec_init_main"] = why_init
    weights = weight_matrices(model, fold_batchnorm=cfg.fold_batchnorm)
    if weights:
        out.update(norm_measures(weights, init, gamma))
    else:
        reasons["norms"] = "the model has no Linear or Conv layer: no weight matrices"

    x, y = samples_args(split)
    first = next(iter(split.batches(1)))[0]
    if isinstance(first, torch.Tensor) and first.is_floating_point():
        out["path_norm"] = path_norm(model, first, fold_batchnorm=cfg.fold_batchnorm, output_fn=ctx.output_fn,
                                     device=dev)
    else:
        out["path_norm"] = math.nan
        reasons["path_norm"] = "the path norm needs one floating input tensor (an all-ones input is meaningless here)"
    out["path_norm_over_margin"] = out["path_norm"] / gamma**2 if gamma != 0 else math.inf

    records, run_config = _run_meta(ctx)
    t1, t2 = cfg.ce_thresholds
    key1, key2 = f"steps_to_ce_{t1:g}", f"steps_ce_{t1:g}_to_{t2:g}"
    if records is None:
        out[key1] = out[key2] = math.nan
        reasons[key1] = reasons[key2] = "no RUN_DIR: the training log (metrics.jsonl) is not known"
    else:
        out[key1], out[key2], why = steps_to_ce(records, cfg.ce_key, (t1, t2))
        if why:
            reasons[key2] = why
            if not math.isfinite(out[key1]):
                reasons[key1] = why

    b = cfg.grad_batch_size or int(run_config.get("batch_size") or 128)
    noise = gradient_noise(model, ctx.loss, x, y, batch_size=b, subset=cfg.grad_subset, seed=cfg.seed,
                           bn_mode=cfg.bn_mode, output_fn=ctx.output_fn, device=dev)
    out.update(noise, gradient_noise_batch_size=b)
    if not math.isfinite(noise["gradient_noise"]):
        reasons["gradient_noise"] = (f"fewer than 2 mini-batches of {b} points in the {min(len(x), cfg.grad_subset or len(x))} "
                                     "points used; lower grad_batch_size or raise grad_subset")

    if weights:
        flat, why_flat = flatness_measures(model, ctx.loss, x, y, cfg, weights, init, device=dev,
                                           output_fn=ctx.output_fn, task=getattr(split, "task", "classification"),
                                           init_reason=why_init)
        out.update(flat)
        reasons.update(why_flat)
    out["reasons"] = reasons
    return out
