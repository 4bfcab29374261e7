"""The Hessian as a linear operator: products ``H v`` and ``H V`` over the batches of the data.

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
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from landscape.core.data import is_stream
from landscape.core.kernel import BN_MODES, logits_at
from landscape.errors import ConfigError
from landscape.linalg._base import PerSampleLoss
from landscape.outputs import OutputFn
from landscape.params import ParamLayout, model_state, second_order, select_parameters

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
