r"""Gradient coherence (Chatterjee & Zielinski 2022) and the gradient signal-to-noise ratio (GSNR,
Liu et al. 2020) from per-example gradients.

With per-example gradients :math:`g_i = \nabla_\theta \ell(f_\theta(x_i), y_i)`, :math:`i = 1…m`
(of the per-sample losses, not of their mean), the probe reports

.. math::

    \alpha = \frac{\lVert \mathbb{E}_i g_i \rVert^2}{\mathbb{E}_i \lVert g_i \rVert^2}
           = \frac{\lVert \sum_i g_i \rVert^2}{m \sum_i \lVert g_i \rVert^2},
    \qquad m\alpha = \frac{\lVert \sum_i g_i \rVert^2}{\sum_i \lVert g_i \rVert^2},

the coherence and its normalized form :math:`\alpha/\alpha_\perp = m\alpha` (:math:`\alpha_\perp =
1/m` for mutually orthogonal gradients): ``m_alpha`` is m for identical gradients, 1 for mutually
orthogonal ones, 0 when they cancel (Chatterjee & Zielinski, "On the Generalization Mystery in Deep
Learning", 2022). The same is reported for each layer's block of parameters. The GSNR of parameter
j (Liu et al., "Understanding Why Neural Networks Generalize Well Through GSNR of Parameters",
ICLR 2020) is

.. math::

    r_j = \frac{\bar g_j^2}{\operatorname{Var}(g_j)},\qquad
    \bar g_j = \frac1m \sum_i g_{ij},\qquad
    \operatorname{Var}(g_j) = \frac{1}{m-1}\Bigl(\sum_i g_{ij}^2 - m\,\bar g_j^2\Bigr),

with the **unbiased** (``1/(m−1)``) sample variance as in Liu et al. (``ddof=1``, the default;
``ddof=0`` gives ``1/m``). Everything is a function of three sums over the examples: :math:`S =
\sum_i g_i`, :math:`Q = \sum_i g_i^{\odot 2}` (elementwise) and :math:`\sum_i \lVert g_i\rVert^2 =
\sum_j Q_j` (per layer: the sum of that layer's entries of Q).

``method="hooks"`` (the default) gets the sums from ONE batched forward and backward of
:math:`\sum_i \ell_i` (so the output gradients :math:`\delta_i` are per-example ones) with module
hooks, as BackPACK's ``SumGradSquared`` / ``BatchL2Grad`` do:

* ``nn.Linear`` with inputs :math:`a_i` (``N×in``): :math:`g_i = \delta_i a_i^\top`, so
  :math:`Q_W = (\delta^{\odot 2})^\top (a^{\odot 2})`, :math:`Q_b = \sum_i \delta_i^{\odot 2}` (no
  per-example gradient is formed); with sequence inputs (``N×T×in``) :math:`g_i = \delta_i^\top
  a_i` is formed by a batched matmul, ``chunk`` examples at a time.
* ``nn.Conv2d`` (``groups=1``, numeric padding, zero padding mode): with the unfolded input
  (im2col) :math:`U_i` (``C_in·k·k × L``) and :math:`\delta_i` (``C_out × L``),
  :math:`g_i = \delta_i U_i^\top`, formed by a batched matmul ``chunk`` examples at a time.
* BatchNorm (eval, affine, running statistics): :math:`y = \gamma \hat x + \beta` per channel
  with :math:`\hat x = (x - \mu_{run})/\sqrt{\sigma^2_{run} + \epsilon}`, so
  :math:`g_{\gamma,i} = \sum_{pos} \delta_i \odot \hat x_i`, :math:`g_{\beta,i} = \sum_{pos} \delta_i`.

Every other parameter (LayerNorm, embeddings, grouped convs, modules called more
than once, tied weights) falls back to ``torch.func.vmap(torch.func.grad(…))`` over the examples in
chunks of ``chunk``, differentiating those parameters only. ``method="vmap"`` uses that path for
all parameters (the reference the hooks are tested against). With dict inputs
(:class:`~landscape.batch.InputBatch`, Hugging Face batches) that fallback takes one example per
backward pass instead of ``vmap``: HF models branch on the attention mask's values, which ``vmap``
cannot trace. One example is one sequence.

The model runs in eval mode (BatchNorm uses its running statistics, so examples are independent
and the per-example gradients are well defined); its training flags are restored afterwards, and
the only other change is module hooks removed in a ``finally``. The parameters are read through
:func:`torch.func.functional_call` with detached copies (in ``cfg.dtype``), so ``.grad`` is never
touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from landscape.batch import InputBatch
from landscape.core.data import samples_args, select
from landscape.errors import ConfigError, LandscapeError
from landscape.outputs import OutputFn, logits_of
from landscape.params import call, model_state, select_parameters
from landscape.probes.base import ProbeContext, fixed_subset, register_probe, setting
from landscape.utils import DTYPES

METHODS = ("hooks", "vmap")
QUANTILE_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)
_MATMUL_BUDGET = 2**25  # elements of one chunk of materialized per-example gradients (128 MiB fp32)
# on a CPU a chunk that stays in cache (1 MiB fp32) is squared and summed ≈2× faster than a large one
_CACHE_BUDGET = 2**18

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CoherenceConfig:
    """Settings of the coherence / GSNR probe (all recorded beside its results).

    ``subset``: m, the number of examples (a fixed random subset of the split, ``None`` = all);
    ``chunk``: examples per vmap call and per batched matmul (at most; on a CPU a chunk of materialized
    per-example gradients is also kept within 1 MiB, ``_CACHE_BUDGET``); ``batch_size``: examples per forward
    and backward (``None`` = all m in one); ``ddof``: the variance of the GSNR divides by
    ``m − ddof`` (1 as in Liu et al. 2020); ``histogram_range``: fixed (low, high) of the
    log10-GSNR histogram (``None`` = the range of the data).
    """

    subset: int | None = setting(512, "Examples whose per-example gradients are compared (None: "
                                      "all of the split).")
    split: str = setting("train", "train or test.")
    method: str = setting("hooks", "hooks (one batched backward) or vmap (per-example grads).")
    chunk: int = setting(64, "Examples per vmap call and per batched matmul (at most).")
    batch_size: int | None = setting(None, "Examples per forward and backward (None: all in one).")
    per_layer: bool = setting(True, "Also report each layer's coherence and GSNR.")
    histogram_bins: int = setting(50, "Bins of the log10-GSNR histogram.")
    histogram_range: tuple[float, float] | None = setting(None, "Fixed LOW,HIGH of the log10-GSNR"
                                                                " histogram (None: the data's "
                                                                "range).")
    ddof: int = setting(1, "The GSNR's variance divides by m − ddof (0 or 1).")
    dtype: str = setting("float32", "float32 or float64.")
    seed: int = setting(0, "Seed of the subset.")

    def __post_init__(self) -> None:
        rng = self.histogram_range
        checks = [
            (self.subset is None or (isinstance(self.subset, int) and self.subset >= 2),
             f"subset must be ≥ 2 (coherence compares examples), got {self.subset!r}"),
            (self.split in ("train", "test"), f"split must be train or test, got {self.split!r}"),
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (isinstance(self.chunk, int) and self.chunk >= 1, f"chunk must be ≥ 1, got {self.chunk!r}"),
            (self.batch_size is None or (isinstance(self.batch_size, int) and self.batch_size >= 1),
             f"batch_size must be ≥ 1 or None, got {self.batch_size!r}"),
            (isinstance(self.histogram_bins, int) and self.histogram_bins >= 1,
             f"histogram_bins must be ≥ 1, got {self.histogram_bins!r}"),
            (rng is None or (len(rng) == 2 and float(rng[0]) < float(rng[1])),
             f"histogram_range must be (low, high) with low < high, or None, got {rng!r}"),
            (self.ddof in (0, 1), f"ddof must be 0 (1/m) or 1 (1/(m−1)), got {self.ddof!r}"),
            (self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GradientStatistics:
    """Sums over m examples of per-example gradients: ``sum[name]`` = Σ_i g_i and ``sum_sq[name]``
    = Σ_i g_i² (elementwise), float64, one entry per parameter; ``method[name]`` says which path
    computed ``sum_sq`` ("hooks" or "vmap"); ``eps`` is the machine epsilon of the dtype the
    gradients were computed in (it sets the round-off floor of the variance)."""

    count: int
    sum: dict[str, torch.Tensor]
    sum_sq: dict[str, torch.Tensor]
    method: dict[str, str] = field(default_factory=dict)
    eps: float = float(np.finfo(np.float64).eps)

    def sum_norm_sq(self, names: Sequence[str] | None = None) -> float:
        """Σ_i ‖g_i‖² over the parameters ``names`` (all by default) = Σ_j Q_j."""
        names = list(self.sum_sq) if names is None else names
        return float(sum(self.sum_sq[n].sum() for n in names))

    def norm_sq_of_sum(self, names: Sequence[str] | None = None) -> float:
        """‖Σ_i g_i‖² over the parameters ``names`` (all by default)."""
        names = list(self.sum) if names is None else names
        return float(sum((self.sum[n] ** 2).sum() for n in names))


# --------------------------------------------------------------------------------------------
# the per-example statistics


def gradient_statistics(
    model: nn.Module,
    loss: Loss,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str = "hooks",
    chunk: int = 64,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    names: Sequence[str] | None = None,
    output_fn: OutputFn | None = None,
) -> GradientStatistics:
    """Σ_i g_i and Σ_i g_i² (elementwise) of the per-example gradients g_i = ∇ℓ(f(x_i), y_i) of
    the parameters ``names`` (default: all trainable ones), the model in eval mode; ``f(x)`` is
    :func:`landscape.outputs.logits_of` of the model's output (or ``output_fn``'s)."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(x) != len(y) or len(x) < 1:
        raise ConfigError(f"need matching, non-empty inputs and targets, got {len(x)} inputs and {len(y)} targets")
    layout = select_parameters(model, names)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    state = model_state(model, dtype=dtype, device=dev)
    x = x.to(dev, dtype=dtype) if (dtype is not None and x.is_floating_point()) else x.to(dev)
    y = y.to(dev)
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        if method == "vmap":
            total, sq = _vmap_sums(model, loss, state, layout.names, x, y, chunk, output_fn=output_fn)
            tags = dict.fromkeys(layout.names, "vmap")
        else:
            total, sq, tags = _hook_sums(model, loss, state, layout.names, x, y, chunk, batch_size, output_fn)
    finally:
        for m, flag in flags.items():
            m.training = flag
    eps = torch.finfo(dtype or state[layout.names[0]].dtype).eps
    return GradientStatistics(len(x), total, sq, tags, eps)


def _vmap_sums(model, loss, state, names, x, y, chunk, want_sum: bool = True, output_fn=None):
    """Σ g and Σ g² of ``names`` by ``vmap(grad)``, ``chunk`` examples per call, the rest fixed."""
    params = {n: state[n] for n in names}
    fixed = {k: v for k, v in state.items() if k not in params}

    def one(p, xi, yi):
        out = functional_call(model, {**fixed, **p}, (xi.unsqueeze(0),))
        return loss(logits_of(out, output_fn), yi.unsqueeze(0)).sum()

    per_example = vmap(grad(one), in_dims=(None, 0, 0))
    if isinstance(x, InputBatch):  # dict batches: HF models branch on the mask's values, which vmap
        per_example = _looped_grads(model, loss, fixed, output_fn)  # cannot; one example at a time
    total = {n: torch.zeros(p.shape, dtype=torch.float64, device=p.device) for n, p in params.items()}
    sq = {n: torch.zeros_like(t) for n, t in total.items()}
    for start in range(0, len(x), chunk):
        g = per_example(params, x[start:start + chunk], y[start:start + chunk])
        for n in names:
            gn = g[n].detach()
            sq[n] += (gn * gn).sum(0).double()
            if want_sum:
                total[n] += gn.sum(0).double()
    return total, sq


def _looped_grads(model, loss, fixed, output_fn):
    """Per-example gradients ``{name: [n, …]}`` of a slice of examples, one backward each."""
    def one(p, xi, yi):
        return loss(logits_of(call(model, {**fixed, **p}, xi), output_fn), yi).sum()

    def per_example(params, xs, ys):
        grads = [grad(one)(params, xs[i:i + 1], ys[i:i + 1]) for i in range(len(ys))]
        return {n: torch.stack([g[n] for g in grads]) for n in params}
    return per_example


def _hookable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.modules.batchnorm._BatchNorm):  # eval: an affine map per channel
        return module.affine and module.running_mean is not None and module.running_var is not None
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def _hook_sums(model, loss, state, names, x, y, chunk, batch_size, output_fn=None):
    # Which selected parameters a hooked module owns (weight/bias, not tied to another module).
    owners: dict[str, list[str]] = {}
    aliases: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        aliases[id(p)] = aliases.get(id(p), 0) + 1
    chosen = set(names)
    hooked: dict[str, nn.Module] = {}
    for mname, module in model.named_modules():
        if not _hookable(module):
            continue
        own = []
        for pname in ("weight", "bias"):
            p = getattr(module, pname, None)
            full = f"{mname}.{pname}" if mname else pname
            if p is not None and full in chosen and aliases.get(id(p), 0) == 1:
                own.append(full)
        if own:
            owners[mname] = own
            hooked[mname] = module

    records: dict[str, list[list[torch.Tensor]]] = {m: [] for m in hooked}
    bad: set[str] = set()

    def forward_hook(mname):
        def hook(module, inputs, output):
            a = inputs[0]
            if not (output.requires_grad and a.shape[0] == len_batch[0]) or \
                    (isinstance(module, nn.Conv2d) and a.ndim != 4) or a.ndim < 2:
                bad.add(mname)
                return
            rec = [a.detach()]
            records[mname].append(rec)
            output.register_hook(lambda d: rec.append(d.detach()))
        return hook

    len_batch = [0]
    params = {n: state[n].detach().requires_grad_(True) for n in names}
    call_state = {**state, **params}
    total = {n: torch.zeros(p.shape, dtype=torch.float64, device=p.device) for n, p in params.items()}
    sq = {n: torch.zeros_like(t) for n, t in total.items()}
    handles = [module.register_forward_hook(forward_hook(m)) for m, module in hooked.items()]
    bs = batch_size or len(x)
    try:
        for start in range(0, len(x), bs):
            xb, yb = x[start:start + bs], y[start:start + bs]
            len_batch[0] = len(xb)
            for r in records.values():
                r.clear()
            out = call(model, call_state, xb)
            per_sample = loss(logits_of(out, output_fn), yb)
            if per_sample.shape != (len(xb),):
                raise ConfigError(f"the loss must return one value per sample, shape ({len(xb)},), "
                                  f"got {tuple(per_sample.shape)}")
            grads = torch.autograd.grad(per_sample.sum(), list(params.values()), allow_unused=True)
            for n, g in zip(params, grads, strict=True):
                if g is not None:
                    total[n] += g.detach().double()
            for mname, recs in records.items():
                if mname in bad:
                    continue
                if len(recs) != 1 or len(recs[0]) != 2:  # called twice, or output unused
                    bad.add(mname)
                    continue
                a, d = recs[0]
                for n, q in _module_sum_sq(hooked[mname], owners[mname], a, d, chunk).items():
                    sq[n] += q.double()
            for r in records.values():
                r.clear()
    finally:
        for h in handles:
            h.remove()
    via_hooks = {n for m, own in owners.items() if m not in bad for n in own}
    rest = [n for n in names if n not in via_hooks]
    if rest:
        _, rest_sq = _vmap_sums(model, loss, state, rest, x, y, chunk, want_sum=False, output_fn=output_fn)
        sq.update(rest_sq)
    tags = {n: ("hooks" if n in via_hooks else "vmap") for n in names}
    return total, sq, tags


def _module_sum_sq(module: nn.Module, own: list[str], a: torch.Tensor, d: torch.Tensor, chunk: int):
    """Σ_i g_i² of a Linear / Conv2d module's weight and bias from inputs ``a`` and output grads ``d``."""
    want_w = any(n.endswith("weight") for n in own)
    want_b = any(n.endswith("bias") for n in own)
    w_name = next((n for n in own if n.endswith("weight")), None)
    b_name = next((n for n in own if n.endswith("bias")), None)
    out: dict[str, torch.Tensor] = {}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):  # g_γ,i = Σ_pos δ_i ⊙ x̂_i, g_β,i = Σ_pos δ_i
        view = (1, -1) + (1,) * (a.ndim - 2)
        mean, var = module.running_mean.to(a).view(view), module.running_var.to(a).view(view)
        d2 = d.reshape(d.shape[0], d.shape[1], -1)
        if want_w:
            gw = (d * (a - mean) * torch.rsqrt(var + module.eps)).reshape_as(d2).sum(2)
            out[w_name] = (gw * gw).sum(0)
        if want_b:
            gb = d2.sum(2)
            out[b_name] = (gb * gb).sum(0)
        return out
    if isinstance(module, nn.Linear) and a.ndim == 2:
        if want_w:
            out[w_name] = (d * d).T @ (a * a)
        if want_b:
            out[b_name] = (d * d).sum(0)
        return out
    n = a.shape[0]
    if isinstance(module, nn.Linear):  # N × … × in: per-example g_i = δ_iᵀ a_i, summed over positions
        a = a.reshape(n, -1, a.shape[-1])
        d = d.reshape(n, -1, d.shape[-1])
        w_shape = (d.shape[-1], a.shape[-1])
    else:
        d = d.reshape(n, d.shape[1], -1)  # N × C_out × L
        w_shape = (module.out_channels, module.weight[0].numel())
    budget = _CACHE_BUDGET if a.device.type == "cpu" else _MATMUL_BUDGET
    step = max(1, min(chunk, budget // max(1, math.prod(w_shape))))
    if want_w:
        acc = torch.zeros(w_shape, dtype=torch.float64, device=a.device)
        for s in range(0, n, step):
            if isinstance(module, nn.Linear):
                g = torch.bmm(d[s:s + step].transpose(1, 2), a[s:s + step])
            else:
                u = F.unfold(a[s:s + step], module.kernel_size, dilation=module.dilation,
                             padding=module.padding, stride=module.stride)  # c × C_in·k·k × L
                g = torch.bmm(d[s:s + step], u.transpose(1, 2))
            acc += g.square_().sum(0)  # in place: one pass over g, no second chunk-sized buffer
        out[w_name] = acc.reshape(module.weight.shape)
    if want_b:
        db = d.sum(1) if isinstance(module, nn.Linear) else d.sum(2)
        out[b_name] = (db * db).sum(0)
    return out


# --------------------------------------------------------------------------------------------
# coherence and GSNR from the statistics


def _flat(stats: GradientStatistics) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Σg and Σg² as flat float64 arrays (in the order of ``stats.sum``) and each parameter's size."""
    names = list(stats.sum)
    s = torch.cat([stats.sum[n].reshape(-1) for n in names]).double().cpu().numpy()
    q = torch.cat([stats.sum_sq[n].reshape(-1) for n in names]).double().cpu().numpy()
    return s, q, [stats.sum[n].numel() for n in names]


def gsnr(stats: GradientStatistics, ddof: int = 1, flat: tuple | None = None) -> dict[str, np.ndarray]:
    """Per-parameter GSNR r_j = ḡ_j² / Var(g_j), Var with 1/(m − ddof), flattened in the order of
    ``stats.sum``. Entries whose gradient is zero for every example are NaN (undefined); zero
    variance with a nonzero mean gives +inf, where "zero" means Σ_i g_ij² − m ḡ_j² ≤ 4√m·eps·Σ_i g_ij²
    (below the round-off of the sums; in float32 with m = 512, GSNRs above ≈ 10⁵ read as ∞)."""
    m = stats.count
    if m - ddof < 1:
        raise ConfigError(f"GSNR needs more than {ddof} example(s), got {m}")
    s, q, _ = flat if flat is not None else _flat(stats)
    mean = s / m
    spread = q - m * mean**2
    spread[spread <= 4 * math.sqrt(m) * stats.eps * q] = 0.0
    var = spread / (m - ddof)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = mean**2 / var
    r[q == 0] = np.nan
    return {"gsnr": r, "mean": mean, "var": var}


def summarize(
    stats: GradientStatistics,
    *,
    per_layer: bool = True,
    histogram_bins: int = 50,
    histogram_range: tuple[float, float] | None = None,
    ddof: int = 1,
    flat: tuple[np.ndarray, np.ndarray, list[int]] | None = None,
) -> dict[str, Any]:
    """Coherence, normalized coherence and GSNR summaries from the sums (see the module docstring);
    ``flat``: :func:`_flat` of ``stats`` when the caller has it already."""
    m = stats.count
    flat = _flat(stats) if flat is None else flat
    s, q, sizes = flat
    norm_of_sum = _segment_sums(s * s, sizes)  # per parameter: ‖Σ_i g_i‖²
    sum_of_norm = _segment_sums(q, sizes)  # per parameter: Σ_i ‖g_i‖²
    sum_norm, norm_sum = float(sum_of_norm.sum()), float(norm_of_sum.sum())
    m_alpha = norm_sum / sum_norm if sum_norm > 0 else float("nan")
    out: dict[str, Any] = {
        "alpha": m_alpha / m,
        "m_alpha": m_alpha,
        "num_samples": m,
        "num_params": int(s.size),
        "mean_grad_norm_sq": norm_sum / m**2,  # ‖E g‖²
        "mean_sq_grad_norm": sum_norm / m,  # E ‖g‖²
    }
    r = gsnr(stats, ddof, flat)["gsnr"]
    finite = r[np.isfinite(r)]
    out["gsnr_ddof"] = ddof
    out["gsnr_num_finite"] = int(finite.size)
    out["gsnr_num_infinite"] = int(np.isinf(r).sum())
    out["gsnr_num_undefined"] = int(r.size - finite.size - out["gsnr_num_infinite"])
    out["gsnr_mean"] = float(finite.mean()) if finite.size else float("nan")
    # the same order statistics from a sorted copy: numpy's SIMD sort beats its multi-kth partition
    quantiles = (np.quantile(np.sort(finite), QUANTILE_LEVELS) if finite.size
                 else np.full(len(QUANTILE_LEVELS), np.nan))
    out["gsnr_median"] = float(quantiles[QUANTILE_LEVELS.index(0.5)])  # one partition for all levels
    out["gsnr_quantile_levels"] = np.array(QUANTILE_LEVELS)
    out["gsnr_quantiles"] = quantiles
    logs = np.log10(finite[finite > 0])
    hist, edges = np.histogram(logs, bins=histogram_bins, range=histogram_range)
    out["gsnr_hist"] = hist.astype(np.int64)
    out["gsnr_bin_edges"] = edges
    if per_layer:
        out["layers"] = _per_layer(stats, norm_of_sum, sum_of_norm, sizes)
    return out


def _segment_sums(values: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Sum of each consecutive block of ``values`` of the given ``sizes`` (0 for an empty block)."""
    out = np.zeros(len(sizes))
    nonempty = np.flatnonzero(np.asarray(sizes) > 0)
    if nonempty.size:
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])[nonempty]
        out[nonempty] = np.add.reduceat(values, starts)
    return out


def _per_layer(stats: GradientStatistics, norm_of_sum, sum_of_norm, sizes) -> dict[str, Any]:
    blocks: dict[str, list[int]] = {}  # grouped as landscape.params.layer_blocks does
    params = list(stats.sum)
    for k, name in enumerate(params):
        owner = name.rsplit(".", 1)[0] if "." in name else name
        blocks.setdefault(owner, []).append(k)
    names, m_alphas, counts, methods = [], [], [], []
    for layer, ks in blocks.items():
        total = float(sum_of_norm[ks].sum())
        m_alphas.append(float(norm_of_sum[ks].sum()) / total if total > 0 else float("nan"))
        names.append(layer)
        counts.append(sum(sizes[k] for k in ks))
        methods.append("+".join(sorted({stats.method.get(params[k], "?") for k in ks})))
    return {
        "names": names,
        "alpha": np.array(m_alphas) / stats.count,
        "m_alpha": np.array(m_alphas),
        "num_params": np.array(counts, dtype=np.int64),
        "method": methods,
    }


def coherence(
    model: nn.Module,
    loss: Loss,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: CoherenceConfig = CoherenceConfig(),
    device: torch.device | str | None = None,
    output_fn: OutputFn | None = None,
) -> dict[str, Any]:
    """Coherence α, m·α (overall and per layer) and GSNR summaries of the per-example gradients of
    ``loss`` (per-sample values) on a fixed ``cfg.subset`` of ``(x, y)``.

    Returns scalars ``alpha``, ``m_alpha``, ``gsnr_mean``, ``gsnr_median``, ``mean_grad_norm_sq``
    (‖E g‖²), ``mean_sq_grad_norm`` (E‖g‖²), counts ``num_samples``, ``num_params``,
    ``gsnr_num_finite`` / ``_infinite`` / ``_undefined``; arrays ``gsnr_quantile_levels``,
    ``gsnr_quantiles``, ``gsnr_hist`` (counts of log10 r_j over the finite, positive r_j) and
    ``gsnr_bin_edges``; and ``layers``: ``names``, ``alpha``, ``m_alpha``, ``num_params``,
    ``method`` (which path computed each layer's Σg²).
    """
    if len(x) < 2:
        raise ConfigError(f"coherence needs at least 2 examples, the data hold {len(x)}")
    if cfg.subset is not None and cfg.subset > len(x):
        raise ConfigError(
            f"subset of {cfg.subset} samples asked for, but the data hold {len(x)}; use a subset ≤ {len(x)} or none"
        )
    idx = fixed_subset(len(x), cfg.subset, cfg.seed)
    xs, ys = select(x, y, idx)
    stats = gradient_statistics(model, loss, xs, ys, method=cfg.method, chunk=cfg.chunk,
                                batch_size=cfg.batch_size, dtype=DTYPES[cfg.dtype], device=device,
                                output_fn=output_fn)
    flat = _flat(stats)
    if not (np.isfinite(flat[0]).all() and np.isfinite(flat[1]).all()):
        bad = [n for n in stats.sum if not (bool(torch.isfinite(stats.sum[n]).all())
                                            and bool(torch.isfinite(stats.sum_sq[n]).all()))]
        raise LandscapeError(
            f"per-example gradients are NaN/inf in {len(bad)} of {len(stats.sum)} parameter tensors (first: "
            f"{bad[0]}) on the {stats.count} examples; coherence is undefined at these weights "
            "(check the data and the loss, or probe another checkpoint)"
        )
    out = summarize(stats, per_layer=cfg.per_layer, histogram_bins=cfg.histogram_bins,
                    histogram_range=cfg.histogram_range, ddof=cfg.ddof, flat=flat)
    out["method"] = cfg.method
    return out


@register_probe(
    "coherence", CoherenceConfig, summary=("alpha", "m_alpha", "gsnr_mean"), default=2,
    measures={"coherence_m_alpha": "m_alpha"}, families={"optimization-based": ("coherence",)},
    figure="coherence", checkpoints="all",
    cli_help="Gradient coherence α, m·α (Chatterjee & Zielinski) and GSNR (Liu et al.), per layer, over a run's "
    "checkpoints.")
def run_coherence(ctx: ProbeContext, cfg: CoherenceConfig) -> dict[str, Any]:
    """The coherence / GSNR probe on the checkpoint's ``cfg.split`` (labels as trained)."""
    x, y = samples_args(ctx.split(cfg.split))
    out = coherence(ctx.model, ctx.loss, x, y, cfg, device=ctx.device, output_fn=ctx.output_fn)
    ctx.advance(1)
    return out
