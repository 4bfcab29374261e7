"""Hessian trace: HVPs to a matched standard error (ours vs PyHessian's Hutchinson), and the
k-vector product (``HessianOperator.matmat``) against k single HVPs.

    python benchmarks/trace.py --model mlp --samples 512 --runs 3 --threads 1
    python benchmarks/trace.py --model resnet20 --samples 64 --runs 3 --threads 1 --py-samples 50

One run builds one model and trains it briefly (``benchmarks/hessian.py``'s ``load_data`` and
``train``: the digits MLP, or ResNet-20 on CIFAR-sized ``gaussian_mixture`` images), then for each
of ``--runs`` seeds:

(a) PyHessian (Yao et al. 2020): ``hessian(model, criterion, data=(x, y)).trace(maxIter=n, tol=0)``
    (``tol=0``: all ``n = --py-samples`` Rademacher probes, no early stop) gives the samples
    ``zᵀHz``; their standard deviation ``σ`` fixes its standard error after ``m`` HVPs, ``σ/√m``,
    so it needs ``(σ / s)²`` HVPs to reach a standard error ``s``.
(b) ours: each ``--methods`` estimator (``landscape.linalg.TRACE_ESTIMATORS``) with ``--budget``
    products reports its estimate and standard error ``s`` (Hutchinson: ``std/√m``; Hutch++ and
    krylov++: ``std/√n`` of the Hutchinson part on the deflated remainder); the ratio is
    PyHessian's HVPs to reach ``s`` over our budget. The summary uses ``σ`` pooled over all seeds'
    PyHessian samples (per seed ``σ`` from ``--py-samples`` probes is itself noisy).

Every estimate is shown with the spread it claims, and all of them must agree within it. The
medians over the seeds are printed per model, with the machine's load (``os.getloadavg``).

(c) ``--timing-k`` vectors: their products by k ``matvec`` calls against one ``matmat`` (the loop
    of backwards on each batch's graph, and ``batched=True``: one vmapped backward), with the data
    in one batch and in ``--timing-batches`` batches (the operator's default, and double backward
    with the graph rebuilt per product, what runs when the graphs do not fit): medians of
    ``--timing-repeats`` interleaved rounds, the ratio looped / batched (> 1: ``matmat`` faster).
(d) SLQ with ``--slq-vectors`` probes × ``--slq-steps`` Lanczos steps (the Hessian probe's density):
    one vector at a time (a ``matvec`` per step) against the recurrences in lockstep (one k-row
    ``matmat`` per step: one pass over the batches), same three operator set-ups as (c); medians of
    ``--slq-repeats`` alternated rounds, the ratio sequential / lockstep, and the largest relative
    difference of the nodes. ``--slq-only`` runs just this (and the training).

    python benchmarks/trace.py --model mlp --slq-only --slq-vectors 4 --slq-repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hessian import load_data, train  # noqa: E402  (benchmarks/hessian.py)

from landscape.linalg import (  # noqa: E402
    TRACE_ESTIMATORS,
    HessianOperator,
    estimate_trace,
    stochastic_lanczos_quadrature,
)
from landscape.models import build_model, count_parameters  # noqa: E402
from landscape.train.losses import build_loss  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp", choices=["mlp", "resnet20"])
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--image-shape", default="3,32,32")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--budget", type=int, default=100, help="our HVPs per estimate")
    p.add_argument("--methods", default="hutchinson,hutch++,krylov++")
    p.add_argument("--py-samples", type=int, default=100, help="PyHessian trace(maxIter=...) probes")
    p.add_argument("--runs", type=int, default=3, help="seeds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--timing-k", type=int, default=16, help="vectors of the matmat timing (0: skip)")
    p.add_argument("--timing-batches", type=int, default=2)
    p.add_argument("--timing-repeats", type=int, default=3)
    p.add_argument("--slq-vectors", type=int, default=4, help="SLQ probe vectors of the lockstep timing (0: skip)")
    p.add_argument("--slq-steps", type=int, default=30)
    p.add_argument("--slq-repeats", type=int, default=3)
    p.add_argument("--slq-only", action="store_true", help="only the SLQ timing (d)")
    return p.parse_args()


def pyhessian_samples(ph, model, criterion, x, y, n: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    try:
        hc = ph.hessian(model, criterion, data=(x, y), cuda=False)
        return np.array(hc.trace(maxIter=n, tol=0.0))
    finally:
        model.zero_grad(set_to_none=True)  # PyHessian leaves the create_graph gradients there


def timing(model, per_sample, x, y, k: int, batches: int, repeats: int) -> None:
    """Median seconds of k matvecs vs one matmat (looped backwards, and vmapped), same vectors."""
    V = torch.randn(k, sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(7))
    per_batch = -(-len(x) // batches)
    for label, bs, method in (("one batch", None, "auto"), (f"{batches} batches", per_batch, "auto"),
                              (f"{batches} batches", per_batch, "double_backward")):
        op = HessianOperator(model, per_sample, x, y, batch_size=bs, method=method)
        runs = {"k × matvec": lambda op=op: torch.stack([op.matvec(v) for v in V]),
                "matmat (loop)": lambda op=op: op.matmat(V),
                "matmat (vmap)": lambda op=op: op.matmat(V, batched=True)}
        ref = runs["k × matvec"]()  # warm up (and build the cached graph)
        err = {n: float((f() - ref).abs().max() / ref.abs().max()) for n, f in runs.items()}
        times: dict[str, list[float]] = {n: [] for n in runs}
        names = list(runs)
        for r in range(repeats):
            for n in names[r % 3:] + names[: r % 3]:
                t0 = time.perf_counter()
                runs[n]()
                times[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(t) for n, t in times.items()}
        print(f"  {label} [{op.hvp_info()['hvp_method']}], k = {k}: "
              + "; ".join(f"{n} {1e3 * med[n]:.0f} ms (rel err {err[n]:.0e})" for n in names)
              + f" → looped / matmat(loop) ×{med['k × matvec'] / med['matmat (loop)']:.2f}, "
              f"looped / matmat(vmap) ×{med['k × matvec'] / med['matmat (vmap)']:.2f}")


def slq_timing(model, per_sample, x, y, vectors: int, steps: int, batches: int, repeats: int) -> None:
    """Median seconds of SLQ one vector at a time vs in lockstep (one matmat per step), alternated."""
    per_batch = -(-len(x) // batches)
    for label, bs, method in (("one batch", None, "auto"), (f"{batches} batches", per_batch, "auto"),
                              (f"{batches} batches", per_batch, "double_backward")):
        op = HessianOperator(model, per_sample, x, y, batch_size=bs, method=method)
        runs = {"sequential": lambda op=op: stochastic_lanczos_quadrature(op.matvec, op.size, vectors=vectors,
                                                                          steps=steps),
                "lockstep": lambda op=op: stochastic_lanczos_quadrature(op.matvec, op.size, vectors=vectors,
                                                                        steps=steps, matmat=op.matmat)}
        ref, lock = runs["sequential"](), runs["lockstep"]()  # warm-up (and the cached graphs built)
        err = float(np.abs(lock.nodes - ref.nodes).max() / np.abs(ref.nodes).max())
        times: dict[str, list[float]] = {n: [] for n in runs}
        for r in range(repeats):
            for n in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                t0 = time.perf_counter()
                runs[n]()
                times[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(t) for n, t in times.items()}
        print(f"  SLQ {vectors} vectors × {steps} steps, {label} [{op.hvp_info()['hvp_method']}]: sequential "
              f"{med['sequential']:.2f} s, lockstep {med['lockstep']:.2f} s → sequential / lockstep "
              f"×{med['sequential'] / med['lockstep']:.2f} (nodes max rel diff {err:.0e}; "
              f"runs: {', '.join(f'{a / b:.2f}' for a, b in zip(times['sequential'], times['lockstep'], strict=True))})",
              flush=True)


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ph = importlib.import_module("pyhessian.hessian")
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    args.dataset = "digits" if args.model == "mlp" else "gaussian_mixture"
    torch.manual_seed(args.seed)
    x, y, shape, num_classes = load_data(args)
    model = build_model(args.model, input_shape=shape, num_classes=num_classes)
    per_sample = build_loss("ce").per_sample
    before, after = train(model, per_sample, x, y, args, torch.device("cpu")) if args.train_steps else (None, None)
    model.eval()

    def criterion(out, target):
        return per_sample(out, target).mean()

    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in TRACE_ESTIMATORS:
            raise SystemExit(f"unknown method {m!r}; one of {', '.join(TRACE_ESTIMATORS)}")
    print(f"model={args.model} params={count_parameters(model):,} dataset={args.dataset} samples={len(x)} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} load={os.getloadavg()}")
    if before is not None:
        print(f"SGD {args.train_steps} steps: loss {before:.4f} → {after:.4f}")
    if args.slq_only:
        slq(args, model, per_sample, x, y)
        return
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    ses: dict[str, list[float]] = {m: [] for m in methods}
    sigmas = []
    for r in range(args.runs):
        seed = args.seed + r
        t0 = time.perf_counter()
        vals = pyhessian_samples(ph, model, criterion, x, y, args.py_samples, seed)
        t_py = time.perf_counter() - t0
        sigma = float(vals.std(ddof=1))
        sigmas.append(sigma)
        line = [f"seed {seed}: PyHessian {vals.mean():.4g} ± {sigma / np.sqrt(len(vals)):.3g} "
                f"({len(vals)} HVPs, {t_py:.1f} s, σ = {sigma:.4g})"]
        for m in methods:
            op = HessianOperator(model, per_sample, x, y)
            t0 = time.perf_counter()
            est = estimate_trace(m, op.matvec, op.size, matvecs=args.budget, seed=seed, matmat=op.matmat)
            t = time.perf_counter() - t0
            needed = (sigma / est.standard_error) ** 2
            ratios[m].append(needed / est.matvecs)
            ses[m].append(est.standard_error)
            line.append(f"{m} {est.estimate:.4g} ± {est.standard_error:.3g} ({est.matvecs} HVPs, {t:.1f} s; "
                        f"PyHessian needs {needed:.0f} HVPs for this SE: ×{needed / est.matvecs:.2f})")
        print("\n  ".join(line), flush=True)
    pooled = float(np.sqrt(np.mean(np.square(sigmas))))  # σ from all of PyHessian's samples
    print(f"summary {args.model} (median of {args.runs} seeds; at our budget of {args.budget} HVPs; PyHessian's "
          f"σ pooled over its {args.runs * args.py_samples} samples: {pooled:.4g}), load {os.getloadavg()}:")
    for m in methods:
        pooled_ratios = [(pooled / se) ** 2 / args.budget for se in ses[m]]
        print(f"  {m:<11} SE {statistics.median(ses[m]):.4g}; PyHessian's Hutchinson needs "
              f"×{statistics.median(pooled_ratios):.2f} the HVPs for the same SE "
              f"(seeds: {', '.join(f'{v:.2f}' for v in pooled_ratios)}; with each seed's own σ: "
              f"×{statistics.median(ratios[m]):.2f})")
    if args.timing_k:
        print(f"k-vector products ({args.timing_repeats} interleaved rounds, medians):")
        timing(model, per_sample, x, y, args.timing_k, args.timing_batches, args.timing_repeats)
    slq(args, model, per_sample, x, y)


def slq(args: argparse.Namespace, model, per_sample, x, y) -> None:
    if args.slq_vectors:
        print(f"SLQ in lockstep ({args.slq_repeats} alternated rounds, medians; load {os.getloadavg()}):")
        slq_timing(model, per_sample, x, y, args.slq_vectors, args.slq_steps, args.timing_batches, args.slq_repeats)


if __name__ == "__main__":
    main()
