"""Hessian probe: top/bottom eigenvalues (Lanczos), trace (krylov++ / Hutch++ / Hutchinson), spectral density
(SLQ), and the same per layer.

References: Yao et al. 2020 (PyHessian), Ghorbani et al. 2019 (SLQ for neural nets), Meyer et al.
2021 (Hutch++). ``engine="pyhessian"`` runs PyHessian itself (power iteration with deflation,
Hutchinson) on the same model and data, for comparison; its SLQ (``density()``) needs ``torch.eig``,
gone since torch 2.0, so that engine has no density.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from landscape.core.data import samples_args, select
from landscape.errors import ConfigError, LandscapeError
from landscape.linalg import (
    MEMORY_BUDGET_MB,
    HessianOperator,
    estimate_trace,
    lanczos,
    smoothed_density,
    stochastic_lanczos_quadrature,
)
from landscape.outputs import OutputFn, logits_of
from landscape.params import layer_blocks, select_parameters
from landscape.probes.base import (
    ProbeContext,
    batch_size_setting,
    bn_mode_setting,
    check_settings,
    check_subset,
    dtype_setting,
    fixed_subset,
    register_probe,
    seed_setting,
    setting,
    split_setting,
    subset_setting,
)
from landscape.utils import DTYPES, check_allocation, memory_limit

TRACE_METHODS = ("hutchinson", "hutch++", "krylov++")  # landscape.linalg.TRACE_ESTIMATORS
ENGINES = ("lanczos", "pyhessian")
PYHESSIAN_DENSITY = ("engine 'pyhessian' has no density: PyHessian 0.1's density() needs torch.eig, removed in "
                     "torch 2.0; use engine='lanczos' (the same SLQ) for density=True")


@dataclass(frozen=True)
class HessianConfig:
    """Settings of the Hessian probe (all recorded beside its results)."""

    top_k: int = setting(5, "Largest eigenvalues.")
    bottom_k: int = setting(1, "Smallest eigenvalues.")
    lanczos_steps: int = setting(100, "Maximum Lanczos steps.")
    tol: float | None = setting(None, "Ritz residual tolerance (default by dtype).")
    eigenvectors: bool = setting(False, "Store the top eigenvectors.")
    trace: bool = setting(True, "Trace estimate (by trace_method), with its standard error.")
    # krylov++ by default: at a matched standard error ≥ 2× fewer HVPs than Hutchinson on the digits
    # MLP (×60) and ResNet-20 (×4), benchmarks/trace.py; results stored before were Hutchinson's
    trace_method: str = setting("krylov++", "krylov++ (Hutch++ with a Lanczos sketch), hutch++ or "
                                            "hutchinson.")
    trace_samples: int = setting(100, "Probe vectors (matvecs) of the trace estimate.")
    density: bool = setting(False, "Spectral density by stochastic Lanczos quadrature.")
    density_vectors: int = setting(1, "SLQ probe vectors.")
    density_steps: int = setting(100, "Lanczos steps per SLQ vector.")
    density_bins: int = setting(10_000, "Grid points of the smoothed spectral density.")
    sigma_squared: float = setting(1e-5, "Variance of the Gaussian smoothing the spectral density.")
    per_layer: bool = setting(False, "Top eigenvalue and trace of each layer's block.")
    subset: int | None = subset_setting(None)
    batch_size: int = batch_size_setting(2048, "Samples per HVP batch (each batch's gradient graph is "
                                               "built once and reused while memory_budget_mb allows)")
    memory_budget_mb: float = setting(MEMORY_BUDGET_MB, "Memory (MB, measured) for the gradient graphs "
                                      "kept across HVP batches (the first is always kept); the batches "
                                      "that do not fit are rebuilt at every HVP.")
    bn_mode: str = bn_mode_setting()
    dtype: str = dtype_setting()
    engine: str = setting("lanczos", "lanczos (ours) or pyhessian (eigenvalues and trace only).")
    seed: int = seed_setting("the subset and the random vectors")
    basis_device: str | None = setting(None, "Keep the Lanczos basis here (e.g. cpu) for huge "
                                             "models.")
    split: str = split_setting()

    # what results stored without a setting were computed with (the default has changed since)
    ABSENT_MEANS: ClassVar[dict[str, Any]] = {"trace_method": "hutchinson"}

    def __post_init__(self) -> None:
        check_settings(self, [
            (self.top_k >= 1, f"top_k must be ≥ 1, got {self.top_k}"),
            (self.bottom_k >= 0, f"bottom_k must be ≥ 0, got {self.bottom_k}"),
            (self.lanczos_steps >= 2, f"lanczos_steps must be ≥ 2, got {self.lanczos_steps}"),
            (self.trace_method in TRACE_METHODS, f"trace_method must be one of {', '.join(TRACE_METHODS)}"),
            (self.trace_samples >= 2, f"trace_samples must be ≥ 2, got {self.trace_samples}"),
            (self.density_vectors >= 1 and self.density_steps >= 2, "density needs ≥ 1 vector and ≥ 2 steps"),
            (self.tol is None or self.tol >= 0, f"tol must be ≥ 0, got {self.tol}"),
            (self.sigma_squared > 0, f"sigma_squared must be > 0, got {self.sigma_squared}"),
            (self.density_bins >= 2, f"density_bins must be ≥ 2, got {self.density_bins}"),
            (self.trace_method != "hutch++" or self.trace_samples >= 6,
             f"hutch++ needs trace_samples ≥ 6 (3 groups of ≥ 2), got {self.trace_samples}"),
            (self.memory_budget_mb >= 0, f"memory_budget_mb must be ≥ 0, got {self.memory_budget_mb}"),
            (self.engine in ENGINES, f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}"),
            (self.engine != "pyhessian" or not self.density, PYHESSIAN_DENSITY),
        ])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hessian(
    model: nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: Any,
    y: torch.Tensor | None,
    cfg: HessianConfig = HessianConfig(),
    *,
    device: torch.device | str | None = None,
    on_hvp: Callable[[int], None] | None = None,
    output_fn: OutputFn | None = None,
) -> dict[str, Any]:
    """Spectrum summaries of ``∇²L(θ)``, ``L = (1/N) Σ_n loss(f_θ(x_n), y_n)`` over ``(x, y)``
    (or a fixed ``cfg.subset`` of it); ``y=None``: ``x`` is the samples (a ``Split``, or a
    :class:`~landscape.core.data.Stream` read batch by batch at every HVP). ``loss`` returns per-sample values of the logits
    ``f_θ(x)`` = :func:`landscape.outputs.logits_of` of the model's output (or ``output_fn``'s).

    Returns arrays and scalars: ``eigenvalues`` (top-k, descending), ``bottom_eigenvalues``
    (ascending), ``residuals``, ``lambda_ratio`` = |λ_min/λ_max|, ``trace``/``trace_se``,
    ``esd_nodes``/``esd_weights``/``density_grid``/``density``, ``layers`` (per-layer
    ``top_eigenvalue``, ``trace``, ``trace_se``, ``num_params``), and counts (``num_hvps``, ``num_params``).
    """
    check_subset(cfg, len(x))
    if cfg.engine == "pyhessian":
        if y is None:  # PyHessian takes one in-memory batch
            x, y = select(x, y, torch.arange(len(x)))
        return _pyhessian(model, loss, x, y, cfg, device, output_fn)
    dtype = DTYPES[cfg.dtype]
    if cfg.subset is None:
        pass  # all of it: in memory as it is (no copy), or streamed: every HVP reads the batches
    else:
        x, y = select(x, y, fixed_subset(len(x), cfg.subset, cfg.seed))
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    counter = {"n": 0}

    def make_op(params=None) -> HessianOperator:
        op = HessianOperator(model, loss, x, y, params=params, batch_size=cfg.batch_size,
                             bn_mode=cfg.bn_mode, dtype=dtype, device=dev, output_fn=output_fn,
                             memory_budget_mb=cfg.memory_budget_mb)
        inner = op.matvec

        def counted(v: torch.Tensor) -> torch.Tensor:
            out = inner(v)
            if not bool(torch.isfinite(out).all()):
                raise LandscapeError(
                    f"a Hessian-vector product became NaN/inf (HVP {counter['n'] + 1}) although the loss is "
                    "finite: the curvature overflows here; try dtype=float64, or another checkpoint"
                )
            counter["n"] += 1
            if on_hvp is not None:
                on_hvp(counter["n"])
            return out

        op.matvec = counted  # type: ignore[method-assign]
        inner_block = op.matmat

        def counted_block(vectors: torch.Tensor) -> torch.Tensor:  # k products in one pass, counted as k
            out = inner_block(vectors)
            if not bool(torch.isfinite(out).all()):
                raise LandscapeError(
                    f"a Hessian-vector product became NaN/inf (HVPs {counter['n'] + 1}–{counter['n'] + len(vectors)}) "
                    "although the loss is finite: the curvature overflows here; try dtype=float64, or another checkpoint"
                )
            for _ in range(len(vectors)):  # on_hvp once per product, as for matvec
                counter["n"] += 1
                if on_hvp is not None:
                    on_hvp(counter["n"])
            return out

        op.matmat = counted_block  # type: ignore[method-assign]
        return op

    op = make_op()
    if cfg.top_k > op.size or cfg.bottom_k > op.size:
        raise ConfigError(
            f"top_k={cfg.top_k} / bottom_k={cfg.bottom_k} exceed the {op.size} parameters of the model; ask for fewer"
        )
    _check_sizes(op.size, cfg, dtype, dev)
    out: dict[str, Any] = {"num_params": op.size, "num_samples": len(x)}
    loss_value, grad = op.loss_and_gradient(keep_graphs=True)  # the graphs the HVPs reuse
    if not (np.isfinite(loss_value) and bool(torch.isfinite(grad).all())):
        what = "loss" if not np.isfinite(loss_value) else "gradient"
        raise LandscapeError(
            f"the {what} is NaN/inf at these weights on the {len(x)} samples; the Hessian is undefined there "
            "(check the data and the loss, or probe another checkpoint)"
        )
    out["loss"] = loss_value
    out["grad_norm"] = float(grad.norm())
    res = lanczos(op.matvec, op.size, max_steps=cfg.lanczos_steps, top_k=cfg.top_k, bottom_k=cfg.bottom_k,
                  tol=cfg.tol, seed=cfg.seed, dtype=dtype, device=dev, basis_device=cfg.basis_device,
                  eigenvectors=cfg.eigenvectors)
    evals = res.eigenvalues.numpy()
    k = min(cfg.top_k, len(evals))
    top = evals[::-1][:k].copy()
    out["eigenvalues"] = top
    out["residuals"] = res.residuals.numpy()[::-1][:k].copy()
    out["lanczos_steps"] = res.steps
    out["converged"] = bool(res.converged)
    out["basis_bytes"] = res.basis_bytes
    if cfg.bottom_k:
        out["bottom_eigenvalues"] = evals[: cfg.bottom_k].copy()
        out["bottom_residuals"] = res.residuals.numpy()[: cfg.bottom_k].copy()
        out["lambda_ratio"] = float(abs(evals[0] / evals[-1])) if evals[-1] != 0 else float("nan")
    if cfg.eigenvectors and res.eigenvectors is not None:
        wanted_top = res.eigenvectors[:, -k:].flip(1)  # columns in the order of `eigenvalues`
        out["eigenvectors"] = wanted_top.T.cpu().numpy()  # in cfg.dtype
    if cfg.trace:
        est = _trace(op, cfg, dtype, dev)
        out["trace"], out["trace_se"] = est.estimate, est.standard_error
    if cfg.density:
        lockstep = _slq_lockstep(op, cfg, dtype, dev)  # one k-vector product per Lanczos step
        sd = stochastic_lanczos_quadrature(op.matvec, op.size, vectors=cfg.density_vectors,
                                           steps=cfg.density_steps, seed=cfg.seed, dtype=dtype, device=dev,
                                           matmat=op.matmat if lockstep else None)
        grid, dens = smoothed_density(sd, bins=cfg.density_bins, sigma_squared=cfg.sigma_squared)
        out.update(esd_nodes=sd.nodes, esd_weights=sd.weights, density_grid=grid, density=dens)
    info = op.hvp_info()  # hvp_method, batches, graphs cached and their measured memory
    info.pop("memory_budget_mb")  # in the config already
    out.update(info)
    op.release_graphs()  # before the per-layer operators build theirs
    if cfg.per_layer:
        out["layers"] = _per_layer(model, make_op, cfg, dtype, dev)
    out["num_hvps"] = counter["n"]
    return out


def _check_sizes(size: int, cfg: HessianConfig, dtype: torch.dtype, dev: torch.device) -> None:
    """Refuse, before allocating them, a Lanczos basis (``min(steps, P) × P``) or a density grid
    larger than the memory that would hold it."""
    item = torch.finfo(dtype).bits // 8
    basis_dev = torch.device(cfg.basis_device) if cfg.basis_device else dev
    check_allocation(f"a Lanczos basis of {min(cfg.lanczos_steps, size):,} × {size:,} values",
                     min(cfg.lanczos_steps, size) * size * item, "use fewer --lanczos-steps (or --basis-device cpu)",
                     basis_dev)
    if cfg.density:
        check_allocation(f"an SLQ basis of {min(cfg.density_steps, size):,} × {size:,} values",
                         min(cfg.density_steps, size) * size * item, "use fewer --density-steps", dev)
        check_allocation(f"a density grid of {cfg.density_bins:,} bins", cfg.density_bins * 8 * 4,
                         "use fewer density_bins")


def _slq_lockstep(op: HessianOperator, cfg: HessianConfig, dtype: torch.dtype, dev: torch.device) -> bool:
    """Whether SLQ runs its ``density_vectors`` recurrences in lockstep (one ``matmat`` per step:
    one pass over the batches for k products; the same nodes and weights, bit-equal in our CPU runs): where
    a batch's graph is rebuilt per product (one forward and first backward per step instead of k:
    ×1.27 on the digits MLP, ``benchmarks/trace.py``; with every graph cached a block costs what
    its matvecs cost: ×0.85–1.2, noise) and the k bases take at most half the device's memory; else
    one vector at a time (one basis)."""
    if cfg.density_vectors < 2 or "double_backward" not in op.hvp_info()["hvp_method"]:  # known: Lanczos ran
        return False
    size = op.size
    limit = memory_limit(dev)
    nbytes = cfg.density_vectors * min(cfg.density_steps, size) * size * (torch.finfo(dtype).bits // 8)
    return limit is None or nbytes <= limit / 2


def _trace(op: HessianOperator, cfg: HessianConfig, dtype: torch.dtype, dev: torch.device):
    """``cfg.trace_method``'s estimate with ``cfg.trace_samples`` products. Where a batch's graph is
    rebuilt per product (double backward), ``op.matmat`` batches them: one forward and first backward
    per block of vectors instead of per vector (the same values to float rounding); with every graph
    cached a block costs what its matvecs cost (``benchmarks/trace.py``), and matvec is used."""
    rebuilt = "double_backward" in op.hvp_info()["hvp_method"]  # known: Lanczos ran first
    return estimate_trace(cfg.trace_method, op.matvec, op.size, matvecs=cfg.trace_samples, seed=cfg.seed,
                          dtype=dtype, device=dev, matmat=op.matmat if rebuilt else None)


def _per_layer(model, make_op, cfg: HessianConfig, dtype, dev) -> dict[str, np.ndarray]:
    """Top eigenvalue and trace of each diagonal block ``H[layer, layer]``."""
    blocks = layer_blocks(model, select_parameters(model))
    names, tops, traces, trace_ses, sizes = [], [], [], [], []
    for layer, params in blocks.items():
        op = make_op(params)
        res = lanczos(op.matvec, op.size, max_steps=cfg.lanczos_steps, top_k=1, bottom_k=0, tol=cfg.tol,
                      seed=cfg.seed, dtype=dtype, device=dev)
        names.append(layer)
        tops.append(float(res.eigenvalues[-1]))
        sizes.append(op.size)
        est = _trace(op, cfg, dtype, dev) if cfg.trace else None
        traces.append(est.estimate if est is not None else float("nan"))
        trace_ses.append(est.standard_error if est is not None else float("nan"))
    return {
        "names": np.array(names, dtype="S"),
        "top_eigenvalue": np.array(tops),
        "trace": np.array(traces),
        "trace_se": np.array(trace_ses),
        "num_params": np.array(sizes),
    }


def _pyhessian(model, loss, x, y, cfg: HessianConfig, device, output_fn=None) -> dict[str, Any]:
    """Run PyHessian (Yao et al. 2020) itself on the same model and data subset.

    PyHessian runs on a copy of the model (its constructor switches the model to eval mode and
    leaves gradients behind) inside a forked RNG (its random vectors come from the global one, seeded
    with ``cfg.seed``). Eigenvalues and trace only: PyHessian 0.1's ``density()`` calls ``torch.eig``,
    removed in torch 2.0 (the config refuses ``density=True`` with this engine; ours is the same SLQ).
    """
    try:  # the module (pyhessian/__init__ shadows the name `pyhessian.hessian` with the class)
        pyhessian_module = importlib.import_module("pyhessian.hessian")
    except ImportError as exc:
        raise LandscapeError(
            "engine 'pyhessian' needs PyHessian: pip install pyhessian --no-deps (or pip install -e '.[dev]')"
        ) from exc
    if cfg.bn_mode != "eval" or cfg.dtype != "float32" or cfg.per_layer:
        raise ConfigError("engine 'pyhessian' supports bn_mode=eval, dtype=float32 and no per-layer spectra")
    if not isinstance(x, torch.Tensor):
        raise ConfigError("engine 'pyhessian' takes one input tensor; use engine='lanczos' for dict batches")
    idx = fixed_subset(len(x), cfg.subset, cfg.seed)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model = copy.deepcopy(model).to(dev)
    criterion = lambda out, tgt: loss(logits_of(out, output_fn), tgt).mean()  # noqa: E731
    count = {"n": 0}
    real_hvp = pyhessian_module.hessian_vector_product

    def counted_hvp(*args, **kwargs):
        count["n"] += 1
        return real_hvp(*args, **kwargs)

    pyhessian_module.hessian_vector_product = counted_hvp
    devices = [dev] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            # PyHessian builds its graph with backward(create_graph=True); torch warns about that.
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            torch.manual_seed(cfg.seed)
            hc = pyhessian_module.hessian(model, criterion, data=(x[idx].to(dev), y[idx].to(dev)),
                                          cuda=dev.type == "cuda")
            top, _ = hc.eigenvalues(maxIter=cfg.lanczos_steps, tol=1e-3, top_n=cfg.top_k)
            out: dict[str, Any] = {"eigenvalues": np.array(sorted(top, reverse=True)), "num_samples": len(idx)}
            if cfg.trace:
                values = np.array(hc.trace(maxIter=cfg.trace_samples, tol=1e-3))
                out["trace"] = float(values.mean())
                out["trace_se"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    finally:
        pyhessian_module.hessian_vector_product = real_hvp
    out["num_hvps"] = count["n"]
    out["engine"] = "pyhessian"
    return out


@register_probe(
    "hessian", HessianConfig, summary=("eigenvalues", "bottom_eigenvalues", "trace", "num_hvps"), default=0,
    measures={"lambda_max": "eigenvalues", "hessian_trace": "trace"},
    families={"curvature (Hessian)": ("lambda_max", "hessian_")}, figure="hessian", unit="HVPs",
    cli_help="Hessian eigenvalues (Lanczos), trace (krylov++ by default, Hutch++, Hutchinson; with its standard error) and spectral density (SLQ) of checkpoints.")
def run_hessian(ctx: ProbeContext, cfg: HessianConfig) -> dict[str, Any]:
    """The Hessian probe on the checkpoint's ``cfg.split`` (the training loss, labels as trained)."""
    x, y = samples_args(ctx.split(cfg.split))
    return hessian(ctx.model, ctx.loss, x, y, cfg, device=ctx.device, on_hvp=ctx.advance,
                   output_fn=ctx.output_fn)
