r"""The generalization measures of Jiang et al. 2020 ("Fantastic Generalization Measures and Where
to Find Them", ICLR, arXiv 1912.02178, Appendix C), one number each per checkpoint.

Numbers in brackets are the paper's equation numbers. The reference implementation followed for
the exact forms is Dziugaite et al. 2020's ``robust-generalization-measures``
(``data/generation/measures.py``, after ``bneyshabur/generalization-bounds``); everything here is
computed in float64.

Weight matrices
    :math:`W_1,\dots,W_d` are the weights of the model's ``nn.Linear`` and ``nn.Conv1d/2d/3d``
    layers, in module order (a tensor shared by two layers once; biases, normalization layers and
    embeddings are not weight matrices). A conv kernel ``[out, in, k…]`` is reshaped to the matrix
    ``[out, in·∏k]`` (the reference's main measures; its ``_FFT`` variants, the exact operator
    norm of the convolution, are not computed here). With ``fold_batchnorm`` (default, as the
    reference's ``_reparam``) a BatchNorm that directly follows a layer in module registration order
    (parameter-free modules in between other than ``nn.Identity`` break the pair) is folded into
    it first: :math:`W \leftarrow \operatorname{diag}(s)W`, :math:`s = \gamma/\sqrt{v+\epsilon}`,
    bias :math:`\beta + s(b-\mu)`; the same is done to the initialization with its own statistics.

Output margin (22)
    :math:`\gamma` is the :math:`k`-th smallest of :math:`z_y - \max_{j\ne y} z_j` over the whole
    training split, :math:`k = \max(\lfloor N/10\rfloor, 1)` (the reference's
    ``kthvalue(m // 10)``: the 10th percentile), ``margin`` is that signed value and the
    measures use :math:`|\gamma|` as the reference does; ``inv_margin2`` :math:`= 1/\gamma^2`.

Norms (29–44), with :math:`\sigma_i = \lVert W_i\rVert_2`, :math:`F_i = \lVert W_i\rVert_F`,
:math:`W^0_i` the initialization, logs natural, following the paper's (and the reference's) log forms:

* ``log_prod_spectral`` (32) :math:`\sum_i \log\sigma_i^2`; ``log_prod_spectral_over_margin`` (31)
  the same :math:`-\,2\log|\gamma|`;
* ``log_sum_spectral`` (35) :math:`\log d + \frac1d\sum_i\log\sigma_i^2` — the paper's "sum of
  spectral norms" is :math:`d\,(\prod_i\sigma_i^2)^{1/d}` (the smallest sum over the rescalings
  that leave a ReLU net unchanged), not the literal :math:`\sum_i\sigma_i^2`;
  ``log_sum_spectral_over_margin`` (34) :math:`\log d + \frac1d(\sum_i\log\sigma_i^2 - 2\log|\gamma|)`;
* ``fro_over_spectral`` (33) :math:`\sum_i F_i^2/\sigma_i^2`; ``log_spec_orig_main`` (30)
  (31) :math:`+ \log\sum_i F_i^2/\sigma_i^2`; ``log_spec_init_main`` (29)
  (31) :math:`+ \log\sum_i \lVert W_i - W_i^0\rVert_F^2/\sigma_i^2`;
* ``log_prod_frobenius`` (37) :math:`\sum_i\log F_i^2`, ``log_prod_frobenius_over_margin`` (36),
  ``log_sum_frobenius`` (39) :math:`\log d + \frac1d\sum_i\log F_i^2`,
  ``log_sum_frobenius_over_margin`` (38), as for the spectral norm;
* ``dist_init_frobenius`` (40) :math:`\sum_i\lVert W_i-W_i^0\rVert_F^2`, ``dist_init_spectral`` (41)
  :math:`\sum_i\lVert W_i-W_i^0\rVert_2^2`, ``param_norm`` (42) :math:`\sum_i F_i^2`;
* ``path_norm`` (44): the sum of the model's outputs at the all-ones input (one sample of the
  input's shape), in eval mode, with every trainable parameter squared (the model's own forward,
  through :func:`torch.func.functional_call`; the reference's ``_path_norm``). For a ReLU net
  without biases this is :math:`\sum_{\text{paths}}\prod w^2`; biases enter squared as paths
  that start at them. A folded BatchNorm becomes the reference's identity (weight 1, running mean
  0, variance 1, so :math:`x/\sqrt{1+\epsilon}`), the folded bias squared; a normalization layer
  that is not folded (LayerNorm, a BatchNorm without a preceding layer) has its affine parameters
  squared and its statistics as stored, so the number is then not a sum over paths.
  ``path_norm_over_margin`` (43) :math:`=` ``path_norm`` :math:`/\gamma^2`.

The reference then "adjusts for dataset size" (``0.5·(v − log m)`` for logs, ``sqrt(v/m)`` else);
Jiang et al. do not, and with one training-set size it changes no rank, so it is not applied.

``num_params`` (20) counts every trainable parameter (a shared tensor once); ``num_weights`` the
entries of the weight matrices (what the reference counts).

Optimization (63, 64), from ``RUN_DIR/metrics.jsonl`` (the run's whole log, whatever checkpoint is
probed): ``steps_to_ce_0.1`` is the first logged step whose training cross-entropy
(``ce_key``, default ``train_ce``: the trainer's full-training-set evaluation) is ≤ 0.1, and
``steps_ce_0.1_to_0.01`` the first step at ≤ 0.01 minus that one; the resolution is the logging
interval (an epoch for ``landscape train``). The thresholds are ``ce_thresholds``.

Gradient noise (66): with the first :math:`K\cdot b` points of a fixed seeded subset cut into
:math:`K = \lfloor\texttt{grad_subset}/b\rfloor` disjoint mini-batches of ``b`` points (``b`` =
``grad_batch_size``, default the run's training batch size, else 128),
:math:`g_k = \nabla_w \frac1b\sum_{i\in B_k}\ell_i` over all trainable parameters and
:math:`\bar g = \frac1K\sum_k g_k` (the gradient on those :math:`Kb` points),
``gradient_noise`` :math:`= \frac1K\sum_k\lVert g_k-\bar g\rVert^2` — the variance of the
mini-batch gradient of size ``b``; ``grad_norm2`` :math:`= \lVert\bar g\rVert^2`.

Flatness (48–61), with :math:`w` the weight matrices above flattened into one vector (BatchNorm
folded; no biases, no normalization parameters: the reference's ``get_weights_only`` after
``_reparam``), :math:`w^0` the same of the initialization, :math:`\omega` = ``num_weights`` and
:math:`m` the training-set size :math:`N`:

* σ (``pac_sigma``): the largest std of isotropic noise :math:`u \sim N(0, \sigma^2 I)` on *all*
  trainable parameters (the reference perturbs ``model.parameters()``) with
  :math:`\mathrm{acc}(w) - \mathbb E_u\,\mathrm{acc}(w+u) \le` ``pac_target`` (0.1); σ′
  (``pac_sigma_mag``) the same for the magnitude-aware noise of std
  :math:`\sqrt{\sigma'^2 w_i^2 + \epsilon^2}` (ε = ``pac_eps``). Both come from the sharpness
  probe's own search (:func:`landscape.probes.sharpness._pac_bayes`: ``pac_draws`` draws, geometric
  bisection, on the sharpness probe's seeded subset of ``pac_subset`` points in batches of
  ``pac_m``), so with the same settings and seed the two probes store one σ;
* ``pacbayes_init`` (48) :math:`\frac{\lVert w-w^0\rVert^2}{4\sigma^2} + \log\frac m\sigma + 10`,
  ``pacbayes_orig`` (49) the same with :math:`\lVert w\rVert^2`, ``pacbayes_flatness`` (53)
  :math:`1/\sigma^2`;
* ``pacbayes_mag_init`` (56) :math:`\frac14\sum_{i=1}^{\omega}\log\frac{\epsilon^2 + (\sigma'^2+1)
  \lVert w-w^0\rVert^2/\omega}{\epsilon^2 + \sigma'^2(w_i-w^0_i)^2} + \log\frac m{\sigma'} + 10`,
  ``pacbayes_mag_orig`` (57) with :math:`\lVert w\rVert^2` in the numerator (the denominator keeps
  :math:`w-w^0`, as the reference code writes both), ``pacbayes_mag_flatness`` (61) :math:`1/\sigma'^2`;
* α (``sharpness_alpha``): the largest α with the error increase at the worst case of the box
  :math:`|u_i| \le \alpha` (all trainable parameters) ≤ ``worst_target`` (0.1), per batch of the same
  subset: Auto-PGD (:func:`~landscape.probes.sharpness.worst_case_ascent`, ``worst_iters`` steps from
  u = 0) *maximizes the batch loss* (cross-entropy, as Jiang et al.'s sample code ascends the
  cross-entropy) and the error is read at the loss maximizer; bisected as σ is
  (:func:`worst_case_alpha`, ``worst_steps`` steps); ``sharpness_alpha_hi`` is the bracket's upper end;
* ``sharpness_init`` (50) :math:`\frac{\lVert w-w^0\rVert^2\log(2\omega)}{4\alpha^2} + \log\frac m\alpha
  + 10`, ``sharpness_orig`` (51) with :math:`\lVert w\rVert^2`, ``sharpness_flatness`` (54) :math:`1/\alpha^2`.
  (The equation numbers 50, 51, 54 are our reading of the paper; the reference code numbers only
  the PAC-Bayes rows.)

Against the references: the robust-generalization-measures code draws its "σ" noise with
``torch.normal(0, σ²)`` (std σ², not σ) and its magnitude-aware noise with std
:math:`\sigma'^2 w^2 + \epsilon^2` (a variance passed as the std), bisects σ linearly on [0, 2] for
15 steps (returning the last midpoint, stopping early within 0.01 of the target) with 10 draws over
the whole training set; here the std is σ (resp. :math:`\sqrt{\sigma'^2w^2+\epsilon^2}`, Jiang et al.'s
noise), the answer is a σ known to meet the target, and the draws, steps and subset are the sharpness
probe's (``pac_draws=10, pac_subset=None`` is the reference's count and data). That code has no
worst-case family; Jiang et al.'s sample code starts the ascent from Gaussian noise, ascends
plain gradient steps and projects onto an l2 ball :math:`\lVert u\rVert_2 \le \alpha` (the paper
writes the box :math:`|u_i|\le\alpha`, used here), and takes the worst of 15 such draws.
Costs are in :class:`MeasuresConfig`.

A measure that cannot be computed (no initialization checkpoint, no RUN_DIR, a run that never
reached the cross-entropy, a task without class logits) is NaN, with the reason in ``reasons``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.core.data import samples_args, select
from landscape.core.kernel import logits_at
from landscape.core.state_dict import fit_state_dict
from landscape.errors import ConfigError, LandscapeError
from landscape.params import model_state, select_parameters
from landscape.probes.base import ProbeContext, fixed_subset, register_probe, setting
from landscape.probes.sharpness import (
    DTYPES,
    PAC_MAG_FORMS,
    SharpnessConfig,
    _BatchFn,
    _Objective,
    _pac_bayes,
    _perturbed_layout,
    largest_sigma,
    worst_case_ascent,
)
from landscape.tasks import get_task

__all__ = ["MeasuresConfig", "weight_matrices", "norm_measures", "path_norm", "output_margin",
           "gradient_noise", "steps_to_ce", "pac_bayes_bound", "pac_bayes_mag_bound", "sharpness_bound",
           "worst_case_alpha", "flatness_measures"]

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = nn.modules.batchnorm._BatchNorm
F64 = torch.float64


@dataclass(frozen=True)
class MeasuresConfig:
    """Settings of the measures probe (see the module docstring for every formula).

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
    batch_size: int = setting(512, "Samples per forward pass.")
    grad_batch_size: int | None = setting(None, "Samples per batch of the gradient-noise measure "
                                                "(None: the run's batch size, else 128).")
    grad_subset: int | None = setting(2048, "Samples of the gradient-noise measure (None: the "
                                            "whole split).")
    ce_key: str = setting("train_ce", "The metrics.jsonl key of the training cross-entropy "
                                      "(steps-to-CE measures).")
    ce_thresholds: tuple[float, float] = setting((0.1, 0.01), "The two cross-entropy levels of "
                                                              "the steps-to-CE measures, "
                                                              "HIGH,LOW.")
    bn_mode: str = setting("eval", "BatchNorm in eval or train mode.")
    seed: int = setting(0, "Seed of the subsets and the noise draws.")
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
        checks = [
            (0 < self.margin_quantile < 1, f"margin_quantile must be in (0, 1), got {self.margin_quantile}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.grad_batch_size is None or self.grad_batch_size >= 1,
             f"grad_batch_size must be ≥ 1 or None, got {self.grad_batch_size}"),
            (self.grad_subset is None or self.grad_subset >= 2, f"grad_subset must be ≥ 2 or None, got {self.grad_subset}"),
            (self.bn_mode in ("eval", "train"), f"bn_mode must be eval or train, got {self.bn_mode!r}"),
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
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            a, b = (float(t) for t in self.ce_thresholds)
        except (TypeError, ValueError):
            raise ConfigError(f"ce_thresholds must be two numbers, got {self.ce_thresholds!r}") from None
        if not a > b > 0:
            raise ConfigError(f"ce_thresholds must be (first, second) with first > second > 0, got {self.ce_thresholds}")
        object.__setattr__(self, "ce_thresholds", (a, b))


# --------------------------------------------------------------------------- weight matrices


def _fold_pairs(model: nn.Module) -> dict[str, str]:
    """``{layer name: BatchNorm name}`` for each BatchNorm that directly follows a weight layer in
    module registration order with as many features as the layer has outputs."""
    pairs: dict[str, str] = {}
    prev: tuple[str, nn.Module] | None = None
    for name, m in model.named_modules():
        if isinstance(m, WEIGHT_LAYERS):
            prev = (name, m)
        elif isinstance(m, _BN):
            if (prev is not None and m.affine and m.track_running_stats and prev[0] not in pairs
                    and prev[1].weight.shape[0] == m.num_features):
                pairs[prev[0]] = name
            prev = None
        elif not list(m.children()) and not isinstance(m, nn.Identity):
            prev = None  # any other leaf (an activation, dropout, …) breaks the pair
    return pairs


def _key(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def _fold(tensors: dict[str, torch.Tensor], layer: str, bn: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(diag(s)·W, β + s(b − μ))`` of ``layer`` followed by BatchNorm ``bn``, from ``tensors``."""
    w = tensors[_key(layer, "weight")].to(F64)
    b = tensors.get(_key(layer, "bias"))
    b = torch.zeros(w.shape[0], dtype=F64, device=w.device) if b is None else b.to(F64)
    scale = tensors[_key(bn, "weight")].to(F64) / torch.sqrt(tensors[_key(bn, "running_var")].to(F64) + eps)
    w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    bias = tensors[_key(bn, "bias")].to(F64) + scale * (b - tensors[_key(bn, "running_mean")].to(F64))
    return w, bias


def weight_matrices(model: nn.Module, tensors: dict[str, torch.Tensor] | None = None,
                    fold_batchnorm: bool = True) -> dict[str, torch.Tensor]:
    """``{layer name: W}`` of the model's Linear/Conv layers as float64 matrices ``[out, −1]``,
    BatchNorm folded in where it directly follows; ``tensors`` (a state dict of the same model,
    e.g. the initialization) in place of the model's own."""
    state = tensors if tensors is not None else {k: v.detach() for k, v in model.state_dict().items()}
    pairs = _fold_pairs(model) if fold_batchnorm else {}
    eps = {name: m.eps for name, m in model.named_modules() if isinstance(m, _BN)}
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, m in model.named_modules():
        if not isinstance(m, WEIGHT_LAYERS) or id(m.weight) in seen:
            continue
        seen.add(id(m.weight))
        if name in pairs:
            w, _ = _fold(state, name, pairs[name], eps[pairs[name]])
        else:
            w = state[_key(name, "weight")].to(F64)
        out[name] = w.reshape(w.shape[0], -1)
    return out


def _logsum(values: torch.Tensor) -> float:
    return float(torch.log(values).sum())


def norm_measures(weights: dict[str, torch.Tensor], init: dict[str, torch.Tensor] | None,
                  margin: float) -> dict[str, Any]:
    """The norm-based measures (29–42) of the matrices ``weights`` (init-based ones NaN without
    ``init``) and per-layer norms; ``margin`` is γ (its absolute value is used)."""
    mats = list(weights.values())
    d = len(mats)
    spec = torch.stack([torch.linalg.matrix_norm(w, ord=2) for w in mats]) ** 2
    fro = torch.stack([torch.linalg.matrix_norm(w, ord="fro") for w in mats]) ** 2
    log_prod_spec, log_prod_fro = _logsum(spec), _logsum(fro)
    log_m2 = 2 * math.log(abs(margin)) if margin != 0 and math.isfinite(margin) else math.nan
    out: dict[str, Any] = {
        "num_weights": sum(w.numel() for w in mats),
        "num_layers": d,
        "log_prod_spectral": log_prod_spec,
        "log_prod_spectral_over_margin": log_prod_spec - log_m2,
        "log_sum_spectral": math.log(d) + log_prod_spec / d,
        "log_sum_spectral_over_margin": math.log(d) + (log_prod_spec - log_m2) / d,
        "fro_over_spectral": float((fro / spec).sum()),
        "log_spec_orig_main": log_prod_spec - log_m2 + _log(float((fro / spec).sum())),
        "log_prod_frobenius": log_prod_fro,
        "log_prod_frobenius_over_margin": log_prod_fro - log_m2,
        "log_sum_frobenius": math.log(d) + log_prod_fro / d,
        "log_sum_frobenius_over_margin": math.log(d) + (log_prod_fro - log_m2) / d,
        "param_norm": float(fro.sum()),
        "layers": np.array(list(weights), dtype=object),
        "spectral_norms": spec.sqrt().cpu().numpy(),
        "frobenius_norms": fro.sqrt().cpu().numpy(),
    }
    if init is None:
        out.update(dist_init_frobenius=math.nan, dist_init_spectral=math.nan, log_spec_init_main=math.nan)
        return out
    diffs = [w - init[name].to(w.device) for name, w in weights.items()]
    dfro = torch.stack([torch.linalg.matrix_norm(x, ord="fro") for x in diffs]) ** 2
    dspec = torch.stack([torch.linalg.matrix_norm(x, ord=2) for x in diffs]) ** 2
    out.update(dist_init_frobenius=float(dfro.sum()), dist_init_spectral=float(dspec.sum()),
               log_spec_init_main=log_prod_spec - log_m2 + _log(float((dfro / spec).sum())),
               dist_init_frobenius_layers=dfro.sqrt().cpu().numpy(),
               dist_init_spectral_layers=dspec.sqrt().cpu().numpy())
    return out


# --------------------------------------------------------------------------- path norm


def path_norm(model: nn.Module, sample: torch.Tensor, *, fold_batchnorm: bool = True,
              output_fn=None, device: torch.device | None = None) -> float:
    """The sum of the outputs at the all-ones input shaped like ``sample`` (one input, no batch
    dimension needed: ``sample[:1]``), every trainable parameter squared (module docstring)."""
    dev = device if device is not None else next(model.parameters()).device
    state = model_state(model, F64, dev)
    trainable = set(select_parameters(model).names)
    for name in trainable:
        state[name] = state[name] ** 2
    if fold_batchnorm:
        modules = dict(model.named_modules())
        raw = model_state(model, F64, dev)
        for layer, bn in _fold_pairs(model).items():
            eps = modules[bn].eps
            w, bias = _fold(raw, layer, bn, eps)
            state[_key(layer, "weight")] = w**2
            if modules[layer].bias is not None:
                state[_key(layer, "bias")] = torch.zeros_like(state[_key(layer, "bias")])
            state[_key(bn, "weight")] = torch.ones_like(bias)
            state[_key(bn, "bias")] = bias**2 / math.sqrt(1 + eps)  # (z + b²)/√(1+ε), the reference's form
            state[_key(bn, "running_mean")] = torch.zeros_like(bias)
            state[_key(bn, "running_var")] = torch.ones_like(bias)
    ones = torch.ones_like(sample[:1], dtype=F64, device=dev)
    with torch.no_grad():
        z = logits_at(model, state, ones, bn_mode="eval", output_fn=output_fn)
    return float(z.to(F64).sum())


def _log(v: float) -> float:
    """``log v``; −inf at 0 (a checkpoint at its own initialization), NaN below (or NaN in)."""
    return math.log(v) if v > 0 else (-math.inf if v == 0 else math.nan)


# --------------------------------------------------------------------------- margin, gradients


def output_margin(model: nn.Module, split: Any, *, quantile: float = 0.1, batch_size: int = 512,
                  output_fn=None, device: torch.device | None = None) -> tuple[float, int, int]:
    """``(γ, k, N)``: the ``k``-th smallest margin ``z_y − max_{j≠y} z_j`` over the ``N`` samples
    of ``split`` (a Split or a Stream), ``k = max(⌊quantile·N⌋, 1)``; float64, eval mode."""
    dev = device if device is not None else next(model.parameters()).device
    state = model_state(model, F64, dev)
    margins = []
    with torch.no_grad():
        for xb, yb in split.batches(batch_size):
            xb = xb.to(dev, F64 if xb.is_floating_point() else xb.dtype)
            z = logits_at(model, state, xb, bn_mode="eval", output_fn=output_fn).to(F64)
            yb = yb.to(dev).long()
            if z.ndim != 2 or z.shape[1] < 2:
                raise ConfigError(f"the output margin needs class logits [N, C ≥ 2], got shape {tuple(z.shape)}")
            correct = z.gather(1, yb[:, None])[:, 0]
            other = z.scatter(1, yb[:, None], -math.inf).max(1).values
            margins.append(correct - other)
    m = torch.cat(margins)
    k = max(math.floor(quantile * len(m)), 1)
    return float(m.kthvalue(k).values), k, len(m)


def gradient_noise(model: nn.Module, loss, x: Any, y: torch.Tensor | None, *, batch_size: int,
                   subset: int | None, seed: int = 0, bn_mode: str = "eval", output_fn=None,
                   device: torch.device | None = None) -> dict[str, float]:
    """``gradient_noise`` :math:`\\frac1K\\sum_k\\lVert g_k-\\bar g\\rVert^2` over ``K`` disjoint
    mini-batches of ``batch_size`` points of a fixed subset (module docstring), ``grad_norm2``,
    ``K``; float64. ``x, y`` as :func:`landscape.core.data.samples_args` gives them."""
    dev = device if device is not None else next(model.parameters()).device
    n = len(x)
    idx = fixed_subset(n, subset, seed)
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
    k_batches = len(idx) // batch_size
    if k_batches < 2:
        return {"gradient_noise": math.nan, "grad_norm2": math.nan, "gradient_noise_batches": k_batches}
    idx = idx[: k_batches * batch_size]
    xs, ys = select(x, y, idx)
    state = model_state(model, F64, dev)
    names = select_parameters(model).names
    mean: torch.Tensor | None = None
    m2 = 0.0
    for k in range(k_batches):
        sl = slice(k * batch_size, (k + 1) * batch_size)
        xb = xs[sl].to(dev, F64 if xs.is_floating_point() else xs.dtype)
        yb = ys[sl].to(dev, F64 if ys.is_floating_point() else ys.dtype)
        params = {nm: state[nm].clone().requires_grad_(True) for nm in names}
        z = logits_at(model, {**state, **params}, xb, bn_mode=bn_mode, output_fn=output_fn, keep=names)
        grads = torch.autograd.grad(loss(z, yb).mean(), [params[nm] for nm in names], allow_unused=True)
        g = torch.cat([(gr if gr is not None else torch.zeros_like(params[nm])).reshape(-1)
                       for nm, gr in zip(names, grads, strict=True)]).to(F64)
        if mean is None:
            mean = g.clone()
            continue
        delta = g - mean
        mean = mean + delta / (k + 1)
        m2 += float(delta @ (g - mean))  # Welford: Σ‖g_k − ḡ‖² without cancellation
    assert mean is not None
    return {"gradient_noise": m2 / k_batches, "grad_norm2": float(mean @ mean), "gradient_noise_batches": k_batches}


# --------------------------------------------------------------------------- optimization


def steps_to_ce(records: list[dict[str, Any]], key: str, thresholds: tuple[float, float]
                ) -> tuple[float, float, str | None]:
    """``(first step with key ≤ t₁, first step with key ≤ t₂ minus that, reason)`` from metric
    records in order; NaN (with the reason) where the run never got there."""
    logged = [r for r in records if "event" not in r and isinstance(r.get(key), int | float)
              and isinstance(r.get("step"), int | float)]
    if not logged:
        return math.nan, math.nan, f"metrics.jsonl has no {key!r} records"
    t1, t2 = thresholds
    first = next((r["step"] for r in logged if r[key] <= t1), None)
    second = next((r["step"] for r in logged if r[key] <= t2), None)
    if first is None:
        return math.nan, math.nan, f"{key} never reached {t1:g} (lowest logged {min(r[key] for r in logged):.4g})"
    if second is None:
        return float(first), math.nan, f"{key} never reached {t2:g} (lowest logged {min(r[key] for r in logged):.4g})"
    return float(first), float(second - first), None


# --------------------------------------------------------------------------- flatness


def pac_bayes_bound(norm2: float, sigma: float, m: int) -> float:
    """(48, 49) :math:`\\lVert v\\rVert^2/(4\\sigma^2) + \\log(m/\\sigma) + 10`, ``norm2`` :math:`=\\lVert v\\rVert^2`
    (:math:`v = w - w^0` or :math:`w`); ``inf`` for σ = 0, NaN for σ = ∞ (no σ breaks the target)."""
    if sigma == 0:
        return math.inf
    if not math.isfinite(sigma):
        return math.nan
    return norm2 / (4 * sigma**2) + math.log(m / sigma) + 10


def pac_bayes_mag_bound(ref: torch.Tensor, dist: torch.Tensor, sigma: float, eps: float, m: int) -> float:
    r"""(56, 57) as the reference code writes them, with ``ref`` :math:`= v` (:math:`w - w^0` or
    :math:`w`), ``dist`` :math:`= w - w^0`, :math:`\omega` = ``ref.numel()``:
    :math:`\frac14\sum_i\log\frac{\epsilon^2 + (\sigma'^2+1)\lVert v\rVert^2/\omega}
Vert^2/\omega}
    {\epsilon^2 + \sigma'^2 (w_i - w^0_i)^2} + \log(m/\sigma') + 10` (the denominator uses
    :math:`w - w^0` in both forms). ``inf`` for σ′ = 0, NaN for σ′ = ∞."""
    if sigma == 0:
        return math.inf
    if not math.isfinite(sigma):
        return math.nan
    ref, dist = ref.to(F64), dist.to(F64)
    num = eps**2 + (sigma**2 + 1) * float(ref @ ref) / ref.numel()
    den = eps**2 + sigma**2 * dist**2
    return 0.25 * float(torch.log(num / den).sum()) + math.log(m / sigma) + 10


def sharpness_bound(norm2: float, alpha: float, omega: int, m: int) -> float:
    """(50, 51) :math:`\\lVert v\\rVert^2\\log(2\\omega)/(4\\alpha^2) + \\log(m/\\alpha) + 10`; ``inf`` for
    α = 0, NaN for α = ∞."""
    if alpha == 0:
        return math.inf
    if not math.isfinite(alpha):
        return math.nan
    return norm2 * math.log(2 * omega) / (4 * alpha**2) + math.log(m / alpha) + 10


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
    their σ, σ′, α (module docstring); ``(values, reasons)``."""
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


# --------------------------------------------------------------------------- the probe


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
