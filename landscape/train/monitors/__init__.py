r"""Monitors: the probes' measurements taken while a model trains, on a budget.

A monitor is a small function over the model, the per-sample loss, a fixed set of samples (the
training set, or a seeded ``subset`` of it: :func:`landscape.probes.base.fixed_subset`), the
optimizer and the step, returning a flat dict of numbers; its cost is declared beside it. It may
keep a state between calls (the previous eigenvector, the previous weights): that state is saved
with every trainer checkpoint, so a resumed run repeats the monitor values bit for bit.

Every quantity is evaluated functionally in eval mode (BatchNorm running statistics, no
dropout), on the model's own weights, without touching its ``.grad``, its buffers or the global
RNG: a run with monitors trains exactly as one without.

Registered monitors (``landscape train --monitor NAME[:every=K,subset=N,KEY=VALUE,...]``):

- ``grad_norm``: :math:`\|\nabla L(\theta)\|_2`, ``L = (1/N) Σ_n ℓ_n`` over the monitor samples
  (the Hessian probe's ``grad_norm``). Cost: one forward + backward pass over them.
- ``weight_norm``: :math:`\|\theta\|_2` over the trainable parameters (a tied tensor once);
  ``per_layer=true`` adds ``weight_norm/<module>``. Cost: one pass over the weights.
- ``update_norm``: :math:`\|\theta_t - \theta_{s}\|_2`, ``s`` the step of the previous call
  (``update_steps = t − s``; ``every=1`` gives the per-step update); absent at the first call.
  Cost: one pass over the weights, one copy of them kept.
- ``logit_stats``: ``logit_norm`` = mean_n :math:`\|z_n\|_2`, ``log_z`` = mean_n
  :math:`\log\sum_k e^{z_{nk}}`, ``max_abs_logit`` = :math:`\max_{n,k} |z_{nk}|`
  (a token task's positions count as samples). Cost: one forward pass.
- ``softmax_collapse``: the fraction of samples whose float32 per-sample loss is exactly 0
  (Softmax Collapse, Prieto et al. 2025: their gradient is exactly 0). Cost: one forward pass.
- ``lambda_max``: the top eigenvalue of :math:`\nabla^2 L(\theta)` over the monitor samples by
  Lanczos (:func:`landscape.linalg.lanczos` on :class:`landscape.linalg.HessianOperator`, as
  the ``hessian`` probe), started from the previous call's Ritz vector (``warm=true``; moved
  along its drift when the drift is steady, ``extrapolate=true``: :func:`warm_start`) and
  stopped at ``tol`` relative accuracy (``rule``: :func:`top_eigenpair`, checked after every HVP)
  or after ``steps`` HVPs.
  Reports ``lambda_max``, ``lambda_max_residual`` (:math:`\|Hv - θv\|`: an eigenvalue lies
  within it), ``lambda_max_error`` (the estimate :math:`r^2/\mathrm{gap}` the stop used),
  ``lambda_max_hvps`` and ``lambda_max_converged``. Cost: at most ``steps`` (default 20)
  Hessian-vector products (≈ 1.2–2.4 gradients each); warm starts typically need 2–7.
- ``adam_sharpness``: Adam's preconditioned sharpness (Cohen et al. 2022, "Adaptive gradient
  methods at the edge of stability"): :math:`\lambda_{max}(P^{-1/2} H P^{-1/2})`,
  :math:`P = \mathrm{diag}(\sqrt{\hat v} + \epsilon)`, :math:`\hat v` the optimizer's
  bias-corrected ``exp_avg_sq``, by the same warm-started Lanczos and settings as ``lambda_max``
  (keys ``adam_sharpness``, ``adam_sharpness_residual``, …), with ``adam_sharpness_threshold``
  = :math:`(2 + 2\beta_1)/((1 - \beta_1)\eta)` (38/η at β₁ = 0.9). Absent before the first
  step; a one-line error for an optimizer without Adam state. Cost: as ``lambda_max``.
- ``nlm_cosine``: :math:`\cos(\nabla L, -\theta)`, the cosine between the gradient and the
  naïve-loss-minimization direction of Prieto et al. 2025 (−θ for a homogeneous model: the
  direction in which the gradient only scales the weights, hence the logits, up); +1 when the
  step :math:`-\eta\nabla L` is parallel to θ. Cost: one forward + backward pass.
- ``per_sample_loss``: ``per_sample_losses``, the list of per-sample losses on a fixed
  ``subset`` (default 32, so a metrics line stays short), and ``per_sample_loss_mean``
  (opposing signals, Rosenfeld & Risteski 2023). Cost: one forward pass over the subset.
- ``coherence``: ``coherence_m_alpha`` (m·α = ‖Σ_i g_i‖² / Σ_i ‖g_i‖²), ``coherence_alpha``,
  ``coherence_gsnr_mean`` on a fixed ``subset`` (default 128), by the coherence probe's own
  :func:`landscape.probes.coherence.coherence`. Cost: per-example gradients of the subset.
- ``attention_logits``: per layer ``attn_max_logit/<i>`` (max |qᵀk|/√d) and
  ``attn_entropy/<i>`` (mean attention entropy, nats), and ``attn_max_logit`` over layers, from
  the model's ``attention_stats(x)`` (the ``transformer``, the ``vit``); a one-line error before training
  for a model without it. Cost: one forward pass.
"""

from landscape.utils import DTYPES  # noqa: I001 — then the registry, then the monitors
from landscape.train.monitors.registry import (
    MONITORS,
    MonitorFn,
    MonitorInputs,
    MonitorSpec,
    PerSampleLoss,
    register_monitor,
)
from landscape.train.monitors.basic import (
    attention_logits,
    coherence,
    grad_norm,
    logit_stats,
    nlm_cosine,
    per_sample_loss,
    softmax_collapse,
    update_norm,
    weight_norm,
)
from landscape.train.monitors.spectral import (
    RULES,
    adam_preconditioner,
    adam_sharpness,
    lambda_max,
    lambda_max_settings,
    remember,
    top_eigenpair,
    warm_start,
)
from landscape.train.monitors.schedule import (
    MonitorConfig,
    MonitorSet,
    check_monitors,
    monitor_from_dict,
    monitors_from_config,
    parse_monitor,
)
from landscape.train.monitors.user_loop import Monitor

__all__ = [
    "DTYPES", "MONITORS", "RULES", "Monitor", "MonitorConfig", "MonitorFn", "MonitorInputs", "MonitorSet",
    "MonitorSpec", "PerSampleLoss", "adam_preconditioner", "adam_sharpness", "attention_logits",
    "check_monitors", "coherence", "grad_norm", "lambda_max", "lambda_max_settings", "logit_stats",
    "monitor_from_dict", "monitors_from_config", "nlm_cosine", "parse_monitor", "per_sample_loss",
    "register_monitor", "remember", "softmax_collapse", "top_eigenpair", "update_norm", "warm_start",
    "weight_norm",
]
