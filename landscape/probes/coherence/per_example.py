r"""Σ_i g_i and Σ_i g_i² (elementwise) of per-example gradients: :func:`gradient_statistics`.

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

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from landscape.batch import InputBatch
from landscape.errors import ConfigError
from landscape.outputs import OutputFn, logits_of
from landscape.params import call, model_state, select_parameters
from landscape.probes.coherence.config import METHODS
from landscape.probes.coherence.statistics import GradientStatistics

_MATMUL_BUDGET = 2**25  # elements of one chunk of materialized per-example gradients (128 MiB fp32)
# on a CPU a chunk that stays in cache (1 MiB fp32) is squared and summed ≈2× faster than a large one
_CACHE_BUDGET = 2**18

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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

