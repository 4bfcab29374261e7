"""HVPs over several batches (cached gradient graphs within a memory budget) and the cost of the
first product, against PyHessian, same model and data.

    python benchmarks/hvp_batches.py --model mlp --batch 512 --batches 3 --threads 2
    python benchmarks/hvp_batches.py --model resnet20 --batch 256 --batches 2 --threads 2

(a) Multi-batch HVP cost per sample. ``single``: ``HessianOperator`` on ``--batch`` samples (one
    batch, its graph cached). ``multi``: on ``--batches × --batch`` samples in batches of
    ``--batch``, each batch's gradient graph kept while ``memory_budget_mb`` allows (``--budgets``,
    default ``1024`` — the probe's default — and ``inf``); ``double_backward``: the same batches
    with the graph rebuilt per product (what ``method="auto"`` did before for more than one batch);
    ``pyhessian``: PyHessian's ``dataloader_hv_product`` on the same batches (it rebuilds each
    batch's graph per product). Each is warmed up (graphs built), then timed on ``--repeats`` ×
    ``--hvps`` products, the operators alternating product by product; the ratio printed is
    (median seconds per product / samples) ÷ that of ``single`` (target ≤ 1.1). The products
    are compared with each other.
(b) First call, each in a fresh process (lazy imports count; torch itself is imported before the
    clock starts), on ``--first-samples`` samples in one batch. Ours as the Hessian probe runs it:
    ``HessianOperator(...)`` and ``loss_and_gradient(keep_graphs=True)`` (a forward and a
    ``create_graph`` backward: the graph), then the first ``matvec``; PyHessian: its constructor
    (a forward and ``backward(create_graph=True)``: the same work), then its first HVP. Target:
    our first-call overhead (the graph build) ≤ 1.5 × PyHessian's constructor; also printed: the
    time to the first product, and the first product's excess over a steady-state one (build +
    first-touch warm-up), each against PyHessian's. ``--first-repeats`` processes each,
    alternated; medians.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch

from landscape.datasets import load_dataset
from landscape.linalg import HessianOperator
from landscape.models import build_model
from landscape.train.losses import build_loss

CE = build_loss("ce").per_sample


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp", choices=["mlp", "resnet20"])
    p.add_argument("--batch", type=int, default=512, help="samples per batch")
    p.add_argument("--batches", type=int, default=3, help="batches of the multi-batch operator")
    p.add_argument("--budgets", default="1024,inf", help="memory_budget_mb values of the multi-batch operator")
    p.add_argument("--first-samples", type=int, default=500, help="samples of the first-call comparison (0: skip)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hvps", type=int, default=3, help="timed products per repeat (alternated)")
    p.add_argument("--first-repeats", type=int, default=3)
    p.add_argument("--no-pyhessian", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", choices=["ours", "pyhessian"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def problem(args: argparse.Namespace, n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model (at its seeded initialization, eval mode) and ``n`` samples: digits for the MLP,
    Gaussian-mixture 3×32×32 images for ResNet-20."""
    if args.model == "mlp":
        data = load_dataset("digits", train_size=min(n, 1347), seed=args.seed)
        x, y = data.train.x, data.train.y
        if len(x) < n:
            raise SystemExit(f"digits has {len(x)} training samples; ask for ≤ {len(x)}")
        shape, classes = data.input_shape, data.num_classes
    else:
        data = load_dataset("gaussian_mixture", train_size=n, seed=args.seed, n_train=max(n, 2000),
                            image_shape=[3, 32, 32])
        x, y, shape, classes = data.train.x, data.train.y, data.input_shape, data.num_classes
    torch.manual_seed(args.seed)
    model = build_model(args.model, shape, classes).eval()
    return model, x[:n], y[:n]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _pyhessian_module():
    return importlib.import_module("pyhessian.hessian")  # pyhessian/__init__ shadows the module name


def multi_batch(args: argparse.Namespace) -> None:
    b, k = args.batch, args.batches
    model, x, y = problem(args, b * k)
    torch.manual_seed(args.seed + 1)
    ops: dict[str, object] = {"single": HessianOperator(model, CE, x[:b], y[:b])}
    budgets = [float(s) for s in args.budgets.split(",")]
    for budget in budgets:
        ops[f"multi, budget {budget:g} MB"] = HessianOperator(model, CE, x, y, batch_size=b, memory_budget_mb=budget)
    ops["double_backward"] = HessianOperator(model, CE, x, y, batch_size=b, method="double_backward")
    size = ops["single"].size
    v = torch.randn(size)
    products = {name: op.matvec for name, op in ops.items()}
    if not args.no_pyhessian:
        ph = _pyhessian_module()
        hc = ph.hessian(model, lambda out, t: CE(out, t).mean(),
                        dataloader=[(x[i : i + b], y[i : i + b]) for i in range(0, b * k, b)], cuda=False)
        layout = ops["single"].layout
        v_list = [t.clone() for t in layout.unflatten(v).values()]
        products["pyhessian (dataloader)"] = lambda _v: torch.cat(
            [t.reshape(-1) for t in hc.dataloader_hv_product(v_list)[1]])
    samples = {name: (b if name == "single" else b * k) for name in products}
    results = {name: fn(v) for name, fn in products.items()}  # warm-up: graphs built
    ref = results["double_backward"]
    times: dict[str, list[float]] = {name: [] for name in products}
    for _ in range(args.repeats * args.hvps):  # the operators alternate product by product
        for name, fn in products.items():
            times[name].append(timed(lambda fn=fn: fn(v)))
    single = statistics.median(times["single"]) / samples["single"]
    print(f"\n(a) {args.model}: {size:,} parameters, batches of {b}, {k} batches "
          f"(medians of {args.repeats * args.hvps} HVPs each, alternated, {torch.get_num_threads()} threads)")
    print(f"{'operator':<28} {'s / HVP':>9} {'µs / sample':>12} {'ratio':>7}  cached  max rel diff")
    for name in products:
        t = statistics.median(times[name])
        per = t / samples[name]
        op = ops.get(name)
        info = op.hvp_info() if isinstance(op, HessianOperator) else {}
        cached = f"{info['hvp_cached_batches']}/{info['hvp_batches']}" if info else "-"
        diff = float((results[name] - ref).norm() / ref.norm()) if name != "single" else float("nan")
        print(f"{name:<28} {t:9.4f} {per * 1e6:12.2f} {per / single:7.3f}  {cached:>6}  {diff:.1e}")
    for name in products:
        if name.startswith("multi"):
            ratio = statistics.median(times[name]) / samples[name] / single
            ok = "meets" if ratio <= 1.1 else "MISSES"
            print(f"TARGET multi-batch/single-batch per sample ({name}): {ratio:.3f} (≤ 1.1: {ok})")


# ---- (b) first call, in fresh processes ---------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    model, x, y = problem(args, args.first_samples)
    torch.manual_seed(args.seed + 1)
    n_params = sum(p.numel() for p in model.parameters())
    v = torch.randn(n_params)
    out: dict[str, float] = {}
    if args.child == "ours":  # as the Hessian probe calls it: loss and gradient first, then products
        t0 = time.perf_counter()
        op = HessianOperator(model, CE, x, y)
        op.loss_and_gradient(keep_graphs=True)  # the forward and backward(create_graph) of the graph
        out["build"] = time.perf_counter() - t0
        out["first_hvp"] = timed(lambda: op.matvec(v))
        out["steady"] = statistics.median(timed(lambda: op.matvec(v)) for _ in range(3))
    else:
        ph = _pyhessian_module()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            t0 = time.perf_counter()
            hc = ph.hessian(model, lambda o, t: CE(o, t).mean(), data=(x, y), cuda=False)
            out["constructor"] = time.perf_counter() - t0
        v_list = [t.clone() for t in HessianOperator(model, CE, x, y).layout.unflatten(v).values()]
        out["first_hvp"] = timed(lambda: ph.hessian_vector_product(hc.gradsH, hc.params, v_list))
        out["steady"] = statistics.median(
            timed(lambda: ph.hessian_vector_product(hc.gradsH, hc.params, v_list)) for _ in range(3))
    print(json.dumps(out))


def first_call(args: argparse.Namespace) -> None:
    base = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--first-samples",
            str(args.first_samples), "--threads", str(args.threads), "--seed", str(args.seed)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    runs: dict[str, list[dict]] = {"ours": [], "pyhessian": []}
    for _ in range(args.first_repeats):
        for who in runs:
            done = subprocess.run([*base, "--child", who], capture_output=True, text=True, env=env, check=True)
            runs[who].append(json.loads(done.stdout.strip().splitlines()[-1]))

    def med(who: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[who])

    build, first_hvp, steady = med("ours", "build"), med("ours", "first_hvp"), med("ours", "steady")
    ctor, py_first, py_steady = med("pyhessian", "constructor"), med("pyhessian", "first_hvp"), med("pyhessian", "steady")
    print(f"\n(b) {args.model}, first call on {args.first_samples} samples (fresh processes, medians of "
          f"{args.first_repeats})")
    print(f"ours:      operator + loss/gradient with graph {build:.3f} s, first HVP {first_hvp:.3f} s, "
          f"steady HVP {steady:.3f} s")
    print(f"PyHessian: constructor (the same work) {ctor:.3f} s, first HVP {py_first:.3f} s, steady HVP {py_steady:.3f} s")
    ours_total = statistics.median(r["build"] + r["first_hvp"] for r in runs["ours"])
    ours_excess = statistics.median(r["build"] + r["first_hvp"] - r["steady"] for r in runs["ours"])
    py_excess = statistics.median(r["constructor"] + r["first_hvp"] - r["steady"] for r in runs["pyhessian"])
    print(f"time to the first product, ours / PyHessian: {ours_total / (ctor + py_first):.3f} "
          f"({ours_total:.3f} s vs {ctor + py_first:.3f} s)")
    print(f"first product's excess over a steady one (build + warm-up), ours / PyHessian: "
          f"{ours_excess / py_excess:.3f} ({ours_excess:.3f} s vs {py_excess:.3f} s); ours / PyHessian's "
          f"constructor: {ours_excess / ctor:.3f}")
    ratio = build / ctor
    print(f"TARGET first-call overhead (graph build) / PyHessian constructor: {ratio:.3f} (≤ 1.5: "
          f"{'meets' if ratio <= 1.5 else 'MISSES'})")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1, 5, 15 min)")
    multi_batch(args)
    if args.first_samples and not args.no_pyhessian:
        first_call(args)
    print(f"load: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
