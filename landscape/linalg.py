"""Hessian-vector products and the Krylov methods built on them.

The loss is the sample-weighted mean over the chosen data,

.. math::  L(θ) = \\frac{1}{N} \\sum_n ℓ(f_θ(x_n), y_n) = \\sum_b \\frac{n_b}{N} L_b(θ),

so a full-data HVP is ``Σ_b (n_b/N) H_b v``. Three ways to compute ``H_b v``:

- ``cached_graph``: build ``∇L_b`` once with ``create_graph=True`` and differentiate it again for
  every ``v`` (what PyHessian does for one batch): the forward and first backward pass are paid
  once; measured ≈ 1.2–1.7 gradients per HVP on CPU. Memory: the batch's double-backward graph.
- ``double_backward``: the same, rebuilt for every ``v`` (≈ 2.2–2.4 gradients per HVP on CPU).
- ``forward_over_reverse``: ``torch.func.jvp(torch.func.grad(L_b), (θ,), (v,))`` (≈ 3.1–3.2 on CPU).

``method="auto"`` (default) caches the graph of every batch that fits ``memory_budget_mb`` (the
first always) and double-backwards the others; a stream of several batches is double-backwarded.
(Ratios from ``benchmarks/hessian.py`` on an MLP and a BatchNorm CNN on digits; the multi-batch
cost and the first call against PyHessian: ``benchmarks/hvp_batches.py``.)

Lanczos with full reorthogonalization gives extremal eigenpairs (Golub & Van Loan §10.1);
Hutchinson (1989), Hutch++ (Meyer et al. 2021) and Hutch++ with a Lanczos sketch estimate the trace; stochastic Lanczos
quadrature (Golub & Meurant; Ghorbani et al. 2019; PyHessian) gives the spectral density.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.core.data import is_stream
from landscape.core.kernel import BN_MODES, logits_at
from landscape.errors import ConfigError
from landscape.outputs import OutputFn
from landscape.params import ParamLayout, model_state, second_order, select_parameters

Matvec = Callable[[torch.Tensor], torch.Tensor]
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

HVP_METHODS = ("auto", "cached_graph", "double_backward", "forward_over_reverse")
MEMORY_BUDGET_MB = 1024.0  # default memory for cached gradient graphs beyond the first


@dataclass
class _Graph:
    """One batch's gradient ``∇L_b`` (flat) with its graph, so that ``H_b v = ∂(∇L_b · v)/∂θ``."""

    grad: torch.Tensor
    loss: torch.Tensor  # L_b, detached
    nbytes: int  # the memory the graph holds, measured while it was built


class _HeldBytes:
    """Measures the memory a gradient graph holds: the storages of the tensors autograd saves
    while it is built (a ``saved_tensors_hooks`` pack hook, each storage once), except those
    that existed before (parameters, buffers, the data), plus the tensors passed to
    :meth:`add`; on CUDA at least the growth of ``torch.cuda.memory_allocated``."""

    def __init__(self, existing: set[int], device: torch.device) -> None:
        self.seen, self.device, self.nbytes = set(existing), device, 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.add(t)
        return t

    def add(self, t: torch.Tensor) -> None:
        try:
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError, TypeError):  # a tensor without a plain storage
            key, size = id(t), t.numel() * t.element_size()
        if key not in self.seen:
            self.seen.add(key)
            self.nbytes += size

    def __enter__(self) -> _HeldBytes:
        self._hooks.__enter__()
        self._start = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
        if self.device.type == "cuda":
            self.nbytes = max(self.nbytes, torch.cuda.memory_allocated(self.device) - self._start)


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


def _storage_keys(tensors) -> set[int]:
    keys = set()
    for t in tensors:
        try:
            keys.add(t.untyped_storage().data_ptr())
        except (RuntimeError, NotImplementedError, TypeError):
            pass
    return keys


class HessianOperator:
    """The Hessian of the mean loss over ``(x, y)`` w.r.t. a set of parameters, as a linear operator.

    ``x`` with ``y=None`` is the samples themselves: an in-memory ``Split``, or a
    :class:`~landscape.core.data.Stream` read batch by batch at every HVP (its own batches; one
    batch of inputs in memory at a time; ``batch_size`` is then the stream's).

    ``params`` restricts the operator to a block (the others stay fixed): the result is the
    diagonal block ``H[params, params]`` of the full Hessian. The model is never mutated: its
    parameters and buffers are copied (cast to ``dtype``) and used through ``functional_call``.
    Parameters are as the model owns them (:mod:`landscape.params`): a tied tensor is one
    coordinate block, and the HVP differentiates through every use of it. Every HVP runs under
    :func:`landscape.params.second_order` (math SDPA backend, selected automatically), so
    attention layers with default settings work on CPU and GPU.

    ``method="cached_graph"`` (what ``auto`` picks for in-memory data, and for a stream of one
    batch) keeps batch ``b``'s gradient graph after its first product and differentiates it again
    for every ``v``. The first batch's graph is always kept (a double backward builds that graph
    anyway, so peak memory is the same); further ones while the graphs kept stay within
    ``memory_budget_mb``, each measured as it is built (the storages autograd saves for it, on
    CUDA the allocator's growth) and predicted from the first's bytes per sample. The batches that
    do not fit are double-backwarded at every product (one forward + two backwards), which gives
    the same product. A stream of several batches is double-backwarded (it holds one batch of
    inputs at a time). :meth:`hvp_info` says what was cached.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: PerSampleLoss,
        x: Any,
        y: torch.Tensor | None = None,
        *,
        params: Sequence[str] | None = None,
        batch_size: int | None = None,
        bn_mode: str = "eval",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        method: str = "auto",
        output_fn: OutputFn | None = None,
        memory_budget_mb: float = MEMORY_BUDGET_MB,
    ) -> None:
        if bn_mode not in BN_MODES:
            raise ConfigError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
        if method not in HVP_METHODS:
            raise ConfigError(f"HVP method must be one of {', '.join(HVP_METHODS)}, got {method!r}")
        if not memory_budget_mb >= 0:
            raise ConfigError(f"memory_budget_mb must be ≥ 0, got {memory_budget_mb}")
        self.model = model
        self.loss = loss
        self.output_fn = output_fn  # model output → logits (landscape.outputs.logits_of)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype
        self.bn_mode = bn_mode
        self.method = method
        self.memory_budget_mb = float(memory_budget_mb)
        self.layout: ParamLayout = select_parameters(model, params)
        self.state = model_state(model, dtype, self.device)
        self.theta = self.layout.flatten(self.state)
        # one leaf per parameter tensor (views of θ): gradients come back per tensor, with no
        # split of θ or re-concatenation of the gradient in any backward pass
        self._leaves = tuple(t.detach().requires_grad_(True) for t in self.layout.unflatten(self.theta).values())
        self.stream = None
        if y is None and is_stream(x):  # streamed batch by batch: never held in memory at once
            self.stream = x.to(self.device, dtype)
            self.n = len(self.stream)
        else:
            if y is None:  # an in-memory Split
                x, y = x.x, x.y
            self.x = x.to(self.device, dtype if x.is_floating_point() else x.dtype)
            self.y = y.to(self.device, dtype if y.is_floating_point() else y.dtype)
            self.n = len(self.x)
        if self.n == 0:
            raise ConfigError("the Hessian needs at least one data point")
        self.batch_size = batch_size or self.n
        if self.method == "auto":
            one_batch = self.stream is None or self.stream.num_batches(self.batch_size) == 1
            self.method = "cached_graph" if one_batch else "double_backward"
        if self.method == "forward_over_reverse" and bn_mode == "train":
            self.method = "double_backward"  # running-stat updates have no forward-mode rule
        self.num_matvecs = 0
        self._graphs: dict[int, _Graph] = {}
        self._uncached: set[int] = set()  # batches whose graph did not fit the budget
        self._bytes_per_sample = 0.0

    @property
    def size(self) -> int:
        return self.layout.numel

    @property
    def num_batches(self) -> int:
        if self.stream is not None:
            return self.stream.num_batches(self.batch_size)
        return -(-self.n // self.batch_size)

    def _batch_loss(self, theta: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        state = {**self.state, **self.layout.unflatten(theta)}
        z = logits_at(self.model, state, xb, bn_mode=self.bn_mode, output_fn=self.output_fn, keep=self.layout.names)
        return self.loss(z, yb).mean()

    def _leaf_loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """``L_b`` as a function of the per-tensor leaves."""
        state = {**self.state, **dict(zip(self.layout.names, self._leaves, strict=True))}
        z = logits_at(self.model, state, xb, bn_mode=self.bn_mode, output_fn=self.output_fn, keep=self.layout.names)
        return self.loss(z, yb).mean()

    def _batches(self):
        if self.stream is not None:
            for i, (xb, yb) in enumerate(self.stream.batches(self.batch_size)):
                yield i, xb, yb, len(yb) / self.n
            return
        for i, start in enumerate(range(0, self.n, self.batch_size)):
            xb, yb = self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]
            yield i, xb, yb, len(xb) / self.n

    # ---- gradient graphs ----

    def _keeps(self, i: int, n_b: int) -> bool:
        """Whether batch ``i``'s graph is to be kept: the first always, the others while the kept
        graphs' total stays within the budget (predicted from the first's bytes per sample)."""
        if self.method != "cached_graph" or i in self._uncached:
            return False
        if not self._graphs:
            return True
        return self._held_bytes() + self._bytes_per_sample * n_b <= self.memory_budget_mb * 2**20

    def _held_bytes(self) -> int:
        return sum(g.nbytes for g in self._graphs.values())

    def _build(self, xb: torch.Tensor, yb: torch.Tensor, measure: bool) -> _Graph:
        """``L_b`` and ``∇L_b`` with its graph (``create_graph=True``), its memory measured if asked."""
        existing = (self.theta, *self.state.values(), *([] if self.stream is not None else [self.x, self.y]))
        held = _HeldBytes(_storage_keys(existing), self.device) if measure else None
        with second_order(), held if held is not None else contextlib.nullcontext():
            value = self._leaf_loss(xb, yb)
            grads = torch.autograd.grad(value, self._leaves, create_graph=True, allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                              for g, p in zip(grads, self._leaves, strict=True)])
        if held is not None and self.device.type != "cuda":
            held.add(flat)
        return _Graph(flat, value.detach(), held.nbytes if held is not None else 0)

    def _graph(self, i: int, xb: torch.Tensor, yb: torch.Tensor) -> tuple[_Graph, bool]:
        """Batch ``i``'s graph and whether it is kept: the cached one, or one built now (and kept
        if it fits the budget)."""
        if i in self._graphs:
            return self._graphs[i], True
        keep = self._keeps(i, len(yb))
        graph = self._build(xb, yb, measure=keep)
        if keep and self._graphs and self._held_bytes() + graph.nbytes > self.memory_budget_mb * 2**20:
            keep = False  # predicted to fit, measured not to
        if keep:
            if not self._graphs:
                self._bytes_per_sample = graph.nbytes / len(yb)
            self._graphs[i] = graph
        elif self.method == "cached_graph":
            self._uncached.add(i)
        return graph, keep

    def hvp_info(self) -> dict[str, Any]:
        """How the products were computed: ``hvp_method`` (``cached_graph``, ``double_backward``,
        ``forward_over_reverse``, or ``cached_graph+double_backward`` when only some batches' graphs
        fit), ``hvp_batches``, ``hvp_cached_batches``, ``hvp_graph_mb`` (memory of the graphs kept,
        measured) and ``memory_budget_mb``. Complete after the first product."""
        method = self.method
        if method == "cached_graph" and self._uncached:
            method = "cached_graph+double_backward" if self._graphs else "double_backward"
        return {"hvp_method": method, "hvp_batches": self.num_batches,
                "hvp_cached_batches": len(self._graphs), "hvp_graph_mb": self._held_bytes() / 2**20,
                "memory_budget_mb": self.memory_budget_mb}

    def release_graphs(self) -> None:
        """Free the cached graphs (later products rebuild them, within the budget again)."""
        self._graphs.clear()
        self._uncached.clear()

    # ---- products ----

    def loss_and_gradient(self, keep_graphs: bool = False) -> tuple[float, torch.Tensor]:
        """``L(θ)`` and ``∇L(θ)`` over all batches. ``keep_graphs`` (with ``cached_graph``): build
        the gradients with their graphs and keep those that fit, so that the first HVPs reuse them
        (the same values: ``create_graph`` does not change the gradient)."""
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        grad = torch.zeros_like(self.theta)
        for i, xb, yb, w in self._batches():
            if keep_graphs and (i in self._graphs or self._keeps(i, len(yb))):
                graph, _ = self._graph(i, xb, yb)
                value, g = graph.loss, graph.grad.detach()
            else:
                theta = self.theta.detach().requires_grad_(True)
                value = self._batch_loss(theta, xb, yb)
                (g,) = torch.autograd.grad(value, theta)
            total += w * value.detach()
            grad.add_(g, alpha=w)
        return float(total), grad

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` = Σ_b (n_b/N) H_b v."""
        v = v.to(self.device, self.dtype)
        out = torch.zeros_like(self.theta)
        for i, xb, yb, w in self._batches():
            self._batch_hvp(i, v, xb, yb, w, out)
        self.num_matvecs += 1
        return out

    __call__ = matvec

    def _batch_hvp(self, i: int, v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, w: float,
                   out: torch.Tensor) -> None:
        """``out += w · H_b v`` (in place, ``out`` flat)."""
        with second_order():  # the graph (and its forward pass) must use differentiable attention
            if self.method == "forward_over_reverse":
                try:
                    grad_fn = torch.func.grad(lambda t: self._batch_loss(t, xb, yb))
                    out.add_(torch.func.jvp(grad_fn, (self.theta,), (v,))[1].detach(), alpha=w)
                    return
                except (RuntimeError, NotImplementedError):
                    self.method = "double_backward"  # a layer without a forward-mode rule
            graph, kept = self._graph(i, xb, yb)
            # ∂(∇L_b · v)/∂θ: the same backward pass as grad_outputs=v (d(g·v)/dg = 1·v exactly),
            # without the lazy sympy import of autograd's grad_outputs shape check (≈ 0.6–1.3 s)
            dot = torch.dot(graph.grad, v)
            if not dot.requires_grad:  # ∇L_b does not depend on θ: H_b = 0
                return
            hv = torch.autograd.grad(dot, self._leaves, retain_graph=kept, allow_unused=True)
        for o, h in zip(self.layout.unflatten(out).values(), hv, strict=True):
            if h is not None:
                o.add_(h, alpha=w)

    def dense(self) -> torch.Tensor:
        """The full matrix, column by column (P HVPs): for tests and tiny models only."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)

    # ---- k-vector products (matmat) ----

    def matmat(self, vectors: torch.Tensor, *, batched: bool = False) -> torch.Tensor:
        """Rows ``H v_i`` of ``vectors`` (``k × P``) in ONE pass over the batches.

        Each batch's gradient graph (the cached one, or one built for these ``k`` rows and freed
        after them) is differentiated once per row, so a double-backwarded batch costs one forward
        and first backward for ``k`` products instead of ``k`` of each. ``batched=True`` runs the
        ``k`` backwards as one vmapped backward (``autograd.grad(is_grads_batched=True)``);
        forward-over-reverse maps ``jvp(grad)`` over the tangents (``torch.func.vmap``). On CPU the
        vmapped backward is not faster than ``k`` backwards (``benchmarks/trace.py``), hence the
        default. The rows equal stacked :meth:`matvec` products to float rounding."""
        vectors = vectors.to(self.device, self.dtype)
        if vectors.ndim != 2 or vectors.shape[1] != self.size:
            raise ConfigError(f"matmat takes a k × {self.size} block of vectors, got shape {tuple(vectors.shape)}")
        out = torch.zeros_like(vectors)
        if len(vectors):
            for i, xb, yb, w in self._batches():
                self._batch_hmm(i, vectors, xb, yb, w, out, batched)
            self.num_matvecs += len(vectors)
        return out

    def _batch_hmm(self, i: int, vectors: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, w: float,
                   out: torch.Tensor, batched: bool) -> None:
        """``out += w · (H_b v_i)_i`` for the rows of ``vectors`` (in place)."""
        with second_order():
            if self.method == "forward_over_reverse":
                try:
                    grad_fn = torch.func.grad(lambda t: self._batch_loss(t, xb, yb))
                    hv = torch.func.vmap(lambda v: torch.func.jvp(grad_fn, (self.theta,), (v,))[1])(vectors)
                    out.add_(hv.detach(), alpha=w)
                    return
                except (RuntimeError, NotImplementedError):
                    self.method = "double_backward"  # a layer without a forward-mode rule
            graph, kept = self._graph(i, xb, yb)
            if not graph.grad.requires_grad:  # ∇L_b does not depend on θ: H_b = 0
                return
            if batched:
                hv = torch.autograd.grad(graph.grad, self._leaves, grad_outputs=vectors, retain_graph=kept,
                                         is_grads_batched=True, allow_unused=True)
                k = len(vectors)
                out.add_(torch.cat([(h if h is not None else torch.zeros(k, *p.shape, dtype=p.dtype, device=p.device))
                                    .reshape(k, -1) for h, p in zip(hv, self._leaves, strict=True)], dim=1), alpha=w)
                return
            for r, v in enumerate(vectors):  # as matvec: ∂(∇L_b · v)/∂θ, the graph kept for the next row
                hv = torch.autograd.grad(torch.dot(graph.grad, v), self._leaves,
                                         retain_graph=kept or r < len(vectors) - 1, allow_unused=True)
                for o, h in zip(self.layout.unflatten(out[r]).values(), hv, strict=True):
                    if h is not None:
                        o.add_(h, alpha=w)


# ---- Lanczos ----------------------------------------------------------------------------------


@dataclass
class LanczosResult:
    """Ritz values (ascending), Ritz vectors (columns, optional), residual bounds, and T's pieces.

    ``errors[i]`` is the eigenvalue-error estimate ``min(r_i, r_i²/δ_i)`` of :func:`lanczos`'s
    ``rule="error"`` (``δ_i`` the gap to the nearest other Ritz value, capped by ``gap``)."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor | None
    residuals: torch.Tensor
    alphas: torch.Tensor
    betas: torch.Tensor
    steps: int
    converged: bool
    first_components: torch.Tensor = field(repr=False, default=None)  # S[0, :] — SLQ weights are its squares
    basis_bytes: int = 0
    errors: torch.Tensor | None = None


LANCZOS_RULES = ("residual", "error")


def _tridiagonal_eigh(alphas: Sequence[float], betas: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(alphas, dtype=torch.float64)
    b = torch.as_tensor(betas, dtype=torch.float64)
    t = torch.diag(a)
    if len(b):
        t = t + torch.diag(b, 1) + torch.diag(b, -1)
    return torch.linalg.eigh(t)


def ritz_errors(evals: torch.Tensor, residuals: torch.Tensor, gap: float | None = None) -> torch.Tensor:
    r"""Eigenvalue-error estimates of Ritz pairs: :math:`\min(r_i, r_i^2/\delta_i)`.

    ``δ_i`` is the distance from ``θ_i`` to the nearest other Ritz value, no larger than ``gap``
    (absolute) when given; with neither (one Ritz value, no ``gap``) the estimate is ``r_i``. If ``θ_i`` is the Ritz value nearest to exactly one eigenvalue ``λ``
    and the rest of the spectrum is ``δ_i`` away, :math:`|θ_i - λ| ≤ r_i^2/δ_i` (Kato–Temple;
    Parlett 1980 §11-7); a Ritz gap over-estimates the true gap (the next eigenvalue lies between
    the Ritz values), so this is an estimate, not a bound, while ``r_i`` is one (there is an
    eigenvalue within ``r_i`` of ``θ_i``).
    """
    n = len(evals)
    if n < 2:
        delta = torch.full_like(evals, math.inf)
    else:
        d = torch.diff(evals).abs()
        delta = torch.minimum(torch.cat([d[:1].new_full((1,), math.inf), d]),
                              torch.cat([d, d[:1].new_full((1,), math.inf)]))
    if gap is not None:
        delta = delta.clamp_max(gap)
    known = (delta > 0) & torch.isfinite(delta)  # a single Ritz value without a cap: no gap known
    quad = torch.where(known, residuals**2 / delta.clamp_min(torch.finfo(torch.float64).tiny),
                       torch.full_like(residuals, math.inf))
    return torch.minimum(residuals, quad)


def lanczos(
    matvec: Matvec,
    size: int,
    *,
    max_steps: int = 100,
    top_k: int = 5,
    bottom_k: int = 0,
    tol: float | None = None,
    v0: torch.Tensor | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    basis_device: torch.device | str | None = None,
    eigenvectors: bool = False,
    check_every: int = 1,
    rule: str = "residual",
    gap: float | None = None,
    on_step: Callable[[int], None] | None = None,
) -> LanczosResult:
    """Lanczos with full reorthogonalization for the ``top_k`` largest and ``bottom_k`` smallest eigenpairs.

    Builds the tridiagonal ``T_m = V_mᵀ H V_m`` (``V`` orthonormal, reorthogonalized twice against
    every previous vector). The Ritz pair ``(θ_i, V s_i)`` has residual ``r_i = ‖H V s_i − θ_i V s_i‖
    = |β_m s_{m,i}|``. The Ritz values are checked after every ``check_every`` steps (default: every
    step; the ``m × m`` eigenproblem is tiny next to an HVP). ``rule="residual"`` (default) stops
    when every wanted pair has ``r_i ≤ tol · max|θ|`` (an eigenvalue lies within ``r_i`` of
    ``θ_i``; default ``tol``: 1e-4 in float32, 1e-9 in float64); ``rule="error"`` when every
    wanted pair's error estimate ``min(r_i, r_i²/δ_i) ≤ tol · max|θ|`` (:func:`ritz_errors`;
    ``gap``: a relative cap on ``δ_i / max|θ|``, e.g. a previous measurement's). Iteration also
    ends after ``max_steps`` (capped at ``size``) or at an invariant subspace (``β ≈ 0``: the Ritz
    values are then exact). ``basis_device="cpu"`` keeps the ``m × P`` basis off the GPU.
    """
    if rule not in LANCZOS_RULES:
        raise ConfigError(f"Lanczos rule must be one of {', '.join(LANCZOS_RULES)}, got {rule!r}")
    if check_every < 1:
        raise ConfigError(f"check_every must be ≥ 1, got {check_every}")
    device = torch.device(device)
    basis_device = torch.device(basis_device) if basis_device is not None else device
    if tol is None:
        tol = 1e-9 if dtype == torch.float64 else 1e-4
    m = min(max_steps, size)
    if v0 is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        v0 = torch.randn(size, generator=g, dtype=torch.float64)
    q = (v0 / v0.norm()).to(device, dtype)
    basis = torch.zeros(m, size, dtype=dtype, device=basis_device)
    alphas: list[float] = []
    betas: list[float] = []
    eps = torch.finfo(dtype).eps
    converged = False
    beta = torch.zeros((), dtype=dtype, device=device)
    beta_f, alpha_max = 0.0, 0.0
    evals = evecs = None
    for j in range(m):
        basis[j] = q.to(basis_device)
        w = matvec(q).to(dtype)
        alpha = torch.dot(q, w)
        w = w - alpha * q - (beta * basis[j - 1].to(device) if j > 0 else 0.0)
        for _ in range(2):  # full reorthogonalization, twice ("twice is enough")
            vb = basis[: j + 1]
            w = w - (vb.T @ (vb @ w.to(basis_device))).to(device)
        beta = w.norm()
        ab = torch.stack([alpha, beta]).double().cpu()  # one device sync per step
        alphas.append(float(ab[0]))
        beta_f = float(ab[1])
        alpha_max = max(alpha_max, abs(alphas[-1]))
        if on_step is not None:
            on_step(j + 1)
        last = j == m - 1
        invariant = beta_f <= eps * 100 * alpha_max or beta_f == 0.0
        if invariant or last or (j + 1) % check_every == 0:
            evals, evecs = _tridiagonal_eigh(alphas, betas)
            if invariant:
                converged = True
                break
            if len(evals) >= top_k + bottom_k and _done(evals, beta_f * evecs[-1].abs(), top_k, bottom_k,
                                                        tol, rule, gap):
                converged = True
                break
        if last:
            break
        betas.append(beta_f)
        q = w / beta
    steps = len(alphas)
    if evals is None:
        evals, evecs = _tridiagonal_eigh(alphas, betas[: steps - 1])
    residuals = (beta_f * evecs[-1]).abs()
    if steps == size:
        residuals = torch.zeros_like(residuals)
        converged = True
    vectors = None
    if eigenvectors:
        wanted = _wanted(steps, top_k, bottom_k)
        vectors = (basis[:steps].T.to(device) @ evecs[:, wanted].to(device, dtype))
    scale = float(evals.abs().max()) if len(evals) else 0.0
    return LanczosResult(
        eigenvalues=evals,
        eigenvectors=vectors,
        residuals=residuals,
        alphas=torch.tensor(alphas, dtype=torch.float64),
        betas=torch.tensor(betas[: steps - 1], dtype=torch.float64),
        steps=steps,
        converged=converged,
        first_components=evecs[0].clone(),
        basis_bytes=basis.numel() * basis.element_size(),
        errors=ritz_errors(evals, residuals, None if gap is None else gap * scale),
    )


def _done(evals: torch.Tensor, residuals: torch.Tensor, top_k: int, bottom_k: int, tol: float, rule: str,
          gap: float | None) -> bool:
    """Whether every wanted Ritz pair meets ``rule`` at ``tol`` (relative to ``max|θ|``)."""
    wanted = _wanted(len(evals), top_k, bottom_k)
    scale = float(evals.abs().max().clamp_min(torch.finfo(torch.float64).tiny))
    if rule == "error":
        residuals = ritz_errors(evals, residuals, None if gap is None else gap * scale)
    return bool((residuals[wanted] <= tol * scale).all())


def _wanted(n: int, top_k: int, bottom_k: int) -> torch.Tensor:
    idx = list(range(max(n - top_k, 0), n)) + list(range(min(bottom_k, n)))
    return torch.tensor(sorted(set(idx)), dtype=torch.long)


# ---- trace ------------------------------------------------------------------------------------

Matmat = Callable[[torch.Tensor], torch.Tensor]  # rows v_i of a (k, P) block → rows H v_i
TRACE_BLOCK = 16  # rows per matmat call: k vectors' products in one pass over the batches


def _rademacher(size: int, n: int, generator: torch.Generator, dtype: torch.dtype, device) -> torch.Tensor:
    return (torch.randint(0, 2, (n, size), generator=generator, dtype=torch.int8) * 2 - 1).to(device, dtype)


def _products(matvec: Matvec, rows: torch.Tensor, matmat: Matmat | None, block: int):
    """``(i, H r_i)`` for the rows ``r_i``: one ``matvec`` each, or ``matmat`` on blocks of ``block`` rows."""
    if matmat is None:
        for i, r in enumerate(rows):
            yield i, matvec(r)
        return
    for start in range(0, len(rows), block):
        for j, hr in enumerate(matmat(rows[start : start + block])):
            yield start + j, hr


def _quadratic_forms(matvec: Matvec, rows: torch.Tensor, matmat: Matmat | None, block: int) -> np.ndarray:
    """``r_iᵀ H r_i`` for every row (float64 on the host)."""
    return np.array([float(torch.dot(rows[i], hr)) for i, hr in _products(matvec, rows, matmat, block)])


def _standard_error(values: np.ndarray) -> float:
    """``std(values, ddof=1) / √n``: the standard error of their mean (NaN for fewer than 2)."""
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


@dataclass(frozen=True)
class TraceEstimate:
    """An unbiased estimate of ``tr(H)`` with its standard error and the matvecs it used.

    ``samples`` are the per-probe terms whose mean is the estimate (for the deflated estimators,
    the exact part plus each remainder term), so ``standard_error = std(samples)/√len(samples)``.
    """

    estimate: float
    standard_error: float
    samples: np.ndarray
    matvecs: int


def hutchinson(matvec: Matvec, size: int, *, samples: int = 100, seed: int = 0,
               dtype: torch.dtype = torch.float32, device="cpu", matmat: Matmat | None = None,
               block: int = TRACE_BLOCK) -> TraceEstimate:
    r"""Hutchinson (1989): :math:`\mathrm{tr}(H) ≈ \frac1n \sum_i z_i^T H z_i`, ``z_i`` Rademacher.

    Standard error: :math:`s/\sqrt n`, ``s`` the sample standard deviation (ddof 1) of the
    :math:`z_i^T H z_i` (its expectation is :math:`\sqrt{2(\|H\|_F^2 - \sum_i H_{ii}^2)/n}`).
    ``matmat`` (e.g. :meth:`HessianOperator.matmat`): the products ``block`` vectors at a time,
    the same vectors and values as one ``matvec`` each.
    """
    g = torch.Generator().manual_seed(seed)
    z = _rademacher(size, samples, g, dtype, device)
    values = _quadratic_forms(matvec, z, matmat, block)
    return TraceEstimate(float(values.mean()), _standard_error(values), values, samples)


def hutch_plus_plus(matvec: Matvec, size: int, *, matvecs: int = 99, seed: int = 0,
                    dtype: torch.dtype = torch.float32, device="cpu", matmat: Matmat | None = None,
                    block: int = TRACE_BLOCK) -> TraceEstimate:
    r"""Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with ``matvecs`` = 3k products.

    ``Q = orth(H S)`` for Rademacher ``S ∈ R^{P×k}``;
    :math:`\mathrm{tr}(H) ≈ \mathrm{tr}(Q^T H Q) + \frac1k \sum_i p_i^T H p_i`, :math:`p_i = (I - QQ^T) g_i`.
    Given ``Q`` the first term is exact and the second is Hutchinson on the deflated remainder, so
    the standard error is that part's: :math:`s/\sqrt k`, ``s`` the sample standard deviation of
    the :math:`p_i^T H p_i` (an unbiased variance estimate given ``Q``, hence also overall).
    """
    k = max(matvecs // 3, 1)
    g = torch.Generator().manual_seed(seed)
    s = _rademacher(size, k, g, dtype, device)
    hs = torch.empty(size, k, dtype=dtype, device=device)
    for i, hsi in _products(matvec, s, matmat, block):
        hs[:, i] = hsi
    q, _ = torch.linalg.qr(hs)
    qt = q.T.contiguous()
    exact = float(sum(float(torch.dot(qt[i], hqi)) for i, hqi in _products(matvec, qt, matmat, block)))
    gs = _rademacher(size, k, g, dtype, device)
    p = gs - (gs @ q) @ q.T
    values = _quadratic_forms(matvec, p, matmat, block)
    return TraceEstimate(exact + float(values.mean()), _standard_error(values), values + exact, 3 * k)


def krylov_hutch_plus_plus(matvec: Matvec, size: int, *, matvecs: int = 100, seed: int = 0,
                           dtype: torch.dtype = torch.float32, device="cpu", matmat: Matmat | None = None,
                           block: int = TRACE_BLOCK, lanczos_fraction: float = 0.25) -> TraceEstimate:
    r"""Hutch++ with a Krylov sketch: ``m = ⌊lanczos_fraction · matvecs⌋`` (≥ 1) Lanczos steps from
    a Rademacher start, then Hutchinson with the other ``n = matvecs − m`` products on the deflated
    remainder (cf. Chen & Hallman 2023, "Krylov-aware stochastic trace estimation").

    With ``Q`` the orthonormal Lanczos basis and ``T = QᵀHQ`` its tridiagonal matrix,
    :math:`\mathrm{tr}(H) = \mathrm{tr}(T) + \mathrm{tr}((I - QQ^T) H (I - QQ^T))`; ``tr(T)`` (the
    sum of the Ritz values) costs no product beyond the ``m`` steps (Hutch++ spends ``k`` more on
    ``HQ``), and a Krylov space of dimension ``m`` captures the top of a decaying spectrum far
    better than ``orth(HS)`` with ``m`` columns. The remainder is estimated with
    :math:`p_i = (I - QQ^T) g_i`, ``g_i`` Rademacher, independent of ``Q``: unbiased given ``Q``.
    Standard error: :math:`s/\sqrt n`, ``s`` the sample standard deviation of the
    :math:`p_i^T H p_i` (as Hutch++'s). Lanczos stops early at an invariant subspace (fewer
    products); when it spans ``R^P`` (``m = P``), ``tr(T)`` is the trace (standard error 0).
    """
    steps = min(max(int(lanczos_fraction * matvecs), 1), size)
    n = max(matvecs - steps, 0)
    g = torch.Generator().manual_seed(seed)
    v0 = _rademacher(size, 1, g, torch.float64, "cpu")[0]
    res = lanczos(matvec, size, max_steps=steps, top_k=steps, bottom_k=0, tol=0.0, v0=v0, dtype=dtype,
                  device=device, check_every=10**9, eigenvectors=True)
    q = res.eigenvectors  # P × steps, orthonormal (rotated Lanczos basis): tr(QᵀHQ) = Σ θ
    exact = float(res.eigenvalues.sum())
    n = 0 if res.steps == size else n  # Q spans R^P: tr(T) is the trace
    gs = _rademacher(size, n, g, dtype, device)
    p = gs - (gs @ q) @ q.T
    values = _quadratic_forms(matvec, p, matmat, block) if n else np.zeros(0)
    estimate = exact + (float(values.mean()) if n else 0.0)
    se = _standard_error(values) if res.steps < size else 0.0
    return TraceEstimate(estimate, se, values + exact, res.steps + n)


TRACE_ESTIMATORS = {"hutchinson": hutchinson, "hutch++": hutch_plus_plus, "krylov++": krylov_hutch_plus_plus}


def estimate_trace(method: str, matvec: Matvec, size: int, *, matvecs: int, seed: int = 0,
                   dtype: torch.dtype = torch.float32, device="cpu", matmat: Matmat | None = None,
                   block: int = TRACE_BLOCK) -> TraceEstimate:
    """``tr(H)`` by one of :data:`TRACE_ESTIMATORS` with a budget of ``matvecs`` products."""
    if method not in TRACE_ESTIMATORS:
        raise ConfigError(f"trace method must be one of {', '.join(TRACE_ESTIMATORS)}, got {method!r}")
    budget = {"samples": matvecs} if method == "hutchinson" else {"matvecs": matvecs}
    return TRACE_ESTIMATORS[method](matvec, size, seed=seed, dtype=dtype, device=device, matmat=matmat,
                                    block=block, **budget)


# ---- spectral density -------------------------------------------------------------------------


@dataclass(frozen=True)
class SpectralDensity:
    """SLQ quadrature: ``nodes[v, j]`` (Ritz values) and ``weights[v, j]`` (squared first components)."""

    nodes: np.ndarray
    weights: np.ndarray

    def moment(self, p: int) -> float:
        """``(1/n_v) Σ_v Σ_j w_vj θ_vj^p`` ≈ ``tr(H^p)/P``."""
        return float(np.mean(np.sum(self.weights * self.nodes**p, axis=1)))


def stochastic_lanczos_quadrature(matvec: Matvec, size: int, *, vectors: int = 1, steps: int = 100,
                                  seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu",
                                  on_step: Callable[[int], None] | None = None) -> SpectralDensity:
    """SLQ (PyHessian ``density``): per Rademacher probe ``v`` (normalized), ``m`` Lanczos steps give
    ``T = S diag(θ) Sᵀ``; the quadrature ``Σ_j S_{0j}² f(θ_j)`` approximates ``vᵀ f(H) v``."""
    g = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(vectors):
        v0 = _rademacher(size, 1, g, torch.float64, "cpu")[0]
        res = lanczos(matvec, size, max_steps=steps, top_k=0, bottom_k=0, tol=0.0, v0=v0,
                      dtype=dtype, device=device, check_every=10**9, on_step=on_step)
        nodes.append(res.eigenvalues.numpy())
        weights.append((res.first_components**2).numpy())
    width = max(len(n) for n in nodes)
    pad = lambda a: np.pad(a, (0, width - len(a)))  # noqa: E731 — zero weight for early-stopped probes
    return SpectralDensity(np.stack([pad(n) for n in nodes]), np.stack([pad(w) for w in weights]))


def smoothed_density(sd: SpectralDensity, *, bins: int = 10_000, sigma_squared: float = 1e-5,
                     overhead: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-broadened density on a grid, PyHessian's convention (``density_generate``).

    Grid ``[mean_v min θ − overhead, mean_v max θ + overhead]``; kernel variance
    ``σ² = sigma_squared · max(1, λmax − λmin)``; the result is normalized to unit mass.
    Returns ``(grid, density)``.
    """
    lam_max = float(np.mean(np.max(sd.nodes, axis=1))) + overhead
    lam_min = float(np.mean(np.min(sd.nodes, axis=1))) - overhead
    grid = np.linspace(lam_min, lam_max, bins)
    var = sigma_squared * max(1.0, lam_max - lam_min)
    density = np.zeros(bins)
    for nodes, weights in zip(sd.nodes, sd.weights, strict=True):
        kern = np.exp(-((grid[:, None] - nodes[None, :]) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
        density += kern @ weights
    density /= len(sd.nodes)
    mass = density.sum() * (grid[1] - grid[0])
    return grid, density / mass if mass > 0 else density
