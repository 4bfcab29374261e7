"""Top-k Hessian eigenvalues: our Lanczos against PyHessian's power iteration, same model and data.

    python benchmarks/hessian.py --model mlp --dataset digits --samples 512 --top-k 1,5 --threads 2
    python benchmarks/hessian.py --model cnn --threads 1
    python benchmarks/hessian.py --model resnet20 --dataset gaussian_mixture --device cuda

One run builds one model (``landscape.models.build_model``), trains it briefly with plain SGD
(``--train-steps``, so that the spectrum is that of a partly trained net rather than of the
initialization), and measures on that model and the same ``--samples`` training points:

(a) ours: ``HessianOperator`` (its default HVP: the cached graph; all samples in one batch unless
    ``--batch-size``) and ``lanczos(top_k=k)``, the Ritz pairs checked after every step, with its
    default stopping rule (every wanted Ritz pair has residual ≤ tol·max|θ|, tol = 1e-4 in float32,
    1e-9 in float64: an eigenvalue lies within it), and with ``rule="error"`` at tol = ``--match``
    (the estimate min(r, r²/gap) ≤ tol·max|θ|, the gap to the next Ritz value). HVPs = steps.
(b) PyHessian (Yao et al. 2020): ``hessian(model, criterion, data=(x, y)).eigenvalues(top_n=k)``
    with its defaults ``tol=1e-3, maxIter=100`` (power iteration with deflation, one eigenvalue
    after another; it finds the largest-MAGNITUDE eigenvalues). HVPs are counted by wrapping
    ``pyhessian.hessian.hessian_vector_product``, which its power iteration calls once per step
    for ``data=``. Its time includes the constructor (one forward and a backward with
    ``create_graph=True``), as ours includes building the operator.
(c) the cost of one HVP as a multiple of one gradient evaluation (forward + backward of the mean
    loss), all samples in one batch, for each of our ``HessianOperator`` methods
    (``landscape.linalg.HVP_METHODS``: forward-over-reverse ``jvp(grad)``, double backward with
    the graph rebuilt per vector, and with it cached) and for PyHessian's HVP (one backward
    through the retained gradient graph, no forward pass; the graph stays in memory).

(d) matched accuracy: PyHessian's tol is tightened (1e-3, 1e-4, …, maxIter 2000) until its top-k
    are within ``--match`` (1e-4) relative error of the reference (an untimed search), then timed
    with the others; time and HVP ratios against both of our rules (which must reach ``--match``
    too: the table says their errors).
(e) spectral density: our SLQ against PyHessian's ``density()`` at equal steps, one probe vector
    (PyHessian 0.1 calls ``torch.eig``, removed in torch 2.0: the benchmark patches that one call
    with an ``eigh``-based stand-in, T being symmetric).

Each ``--top-k`` (default ``1,5``) is one comparison (a)–(b)–(d), timed in its own interleaved
rounds; a summary prints the matched-accuracy ratios of every k. Every set of eigenvalues is
compared with a reference: our Lanczos in float64 with tol 1e-10
(untimed; ``--ref-steps 0`` skips it and compares with ours). Timings are medians over
``--repeats`` interleaved rounds after ``--warmup`` untimed ones, with ``torch.cuda.synchronize``
around every timed call on a GPU; every round reseeds both methods, so the HVP counts repeat.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from landscape import linalg
from landscape.datasets import load_dataset
from landscape.linalg import HessianOperator, lanczos
from landscape.models import build_model, count_parameters
from landscape.train.losses import build_loss
from landscape.utils import resolve_device

DTYPES = {"float32": torch.float32, "float64": torch.float64}
HVP_LABELS = {
    "forward_over_reverse": "jvp(grad) (forward-over-reverse)",
    "double_backward": "double backward (graph per v)",
    "cached_graph": "double backward (cached graph)",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn", "resnet20"])
    p.add_argument("--dataset", default="digits", choices=["digits", "gaussian_mixture"])
    p.add_argument("--samples", type=int, default=512, help="training points the Hessian is taken over")
    p.add_argument("--image-shape", default="3,32,32",
                   help="gaussian_mixture inputs for cnn/resnet20 (the mlp gets 32 features)")
    p.add_argument("--batchnorm", action="store_true",
                   help="mlp/cnn with BatchNorm (used in eval mode; resnet20 always has it)")
    p.add_argument("--top-k", default="1,5", help="comma-separated k's, one comparison each")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--train-steps", type=int, default=300, help="plain SGD steps first (0: at init)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=0, help="our HVP batch (0: all samples at once)")
    p.add_argument("--hvp-method", default=None, choices=list(linalg.HVP_METHODS),
                   help="our HVP (default: HessianOperator's default)")
    p.add_argument("--max-steps", type=int, default=100, help="our Lanczos step limit")
    p.add_argument("--py-tol", type=float, default=1e-3, help="PyHessian eigenvalues(tol=...)")
    p.add_argument("--py-max-iter", type=int, default=100, help="PyHessian eigenvalues(maxIter=...)")
    p.add_argument("--ref-steps", type=int, default=200, help="float64 reference Lanczos steps (0: none)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--hvp-repeats", type=int, default=10, help="timed calls per entry of the HVP-cost table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--match", type=float, default=1e-4,
                   help="matched accuracy: tighten PyHessian's tol until its max rel error ≤ this")
    p.add_argument("--slq-steps", type=int, default=100, help="Lanczos steps of the SLQ comparison (0: skip)")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """PyHessian draws its vectors with torch's default dtype."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def load_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], int]:
    params: dict = {}
    if args.dataset == "gaussian_mixture":
        params["n_train"] = max(args.samples, 2000)
        if args.model != "mlp":
            params["image_shape"] = [int(s) for s in args.image_shape.split(",")]
    data = load_dataset(args.dataset, train_size=args.samples, seed=args.seed, **params)
    return data.train.x, data.train.y, data.input_shape, data.num_classes


def train(model: torch.nn.Module, loss, x, y, args, device) -> tuple[float, float]:
    """Plain SGD on the same samples; returns the mean loss before and after."""
    g = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)

    def full_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(loss(model(x), y).mean())

    before = full_loss()
    model.train()
    for _ in range(args.train_steps):
        idx = torch.randint(0, len(x), (min(args.train_batch, len(x)),), generator=g).to(device)
        opt.zero_grad(set_to_none=True)
        loss(model(x[idx]), y[idx]).mean().backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    after = full_loss()
    return before, after


def hvp_costs(model, per_sample, criterion, x, y, dtype, device, repeats: int, make_pyhessian,
              pyhessian_hvp) -> dict[str, float]:
    """Median seconds of one gradient and of one HVP by each method, all samples in one batch."""

    def median_time(fn: Callable[[], object]) -> float:
        fn()  # warm up (and build a cached graph)
        return statistics.median(timed(fn, device)[0] for _ in range(repeats))

    costs: dict[str, float] = {}
    probe = HessianOperator(model, per_sample, x, y, dtype=dtype, device=device)
    v = torch.randn(probe.size, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
    costs["gradient"] = median_time(probe.loss_and_gradient)
    for name in [m for m in linalg.HVP_METHODS if m in HVP_LABELS]:
        op = HessianOperator(model, per_sample, x, y, dtype=dtype, device=device, method=name)
        label = f"ours: {HVP_LABELS[name]}"
        costs[label] = median_time(partial(op.matvec, v))
        if op.method != name:  # forward-over-reverse fell back: a layer without a forward-mode rule
            costs[label] = float("nan")
    with default_dtype(dtype):
        hc = make_pyhessian()
        vs = list(probe.layout.unflatten(v).values())
        costs["PyHessian: retained graph"] = median_time(partial(pyhessian_hvp, hc.gradsH, hc.params, vs))
    model.zero_grad(set_to_none=True)  # PyHessian leaves the create_graph gradients there
    return costs


def compare_top_k(k: int, args, ours, pyhessian, ref, lam_min, default_tol: float, device, fmt) -> str:
    """One top-k comparison: our Lanczos (residual rule at its default tol, and the error rule at
    tol = ``--match``) against PyHessian at its defaults and at the loosest tol (of 1e-3 … 1e-8,
    maxIter 2000) whose top-k reach ``--match`` against the reference; all timed in interleaved
    rounds. Returns the summary line."""
    runs: dict[str, Callable[[], tuple]] = {
        "ours": partial(ours, k),
        "ours_error": partial(ours, k, args.match, "error"),
        "pyhessian": partial(pyhessian, k, args.py_tol, args.py_max_iter),
    }
    labels = {"ours": f"ours: Lanczos, residual rule (tol {default_tol:g})",
              "ours_error": f"ours: Lanczos, error rule (tol {args.match:g})",
              "pyhessian": f"PyHessian: power (tol {args.py_tol:g}, ≤{args.py_max_iter})"}
    compare = ref
    if ref is not None:  # the loosest PyHessian tol that reaches --match (untimed search)
        for tol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
            evals, hvps, _ = pyhessian(k, tol, 2000)
            err = float(np.max(np.abs(evals - ref) / np.abs(ref)))
            if err <= args.match:
                runs["pyhessian_matched"] = partial(pyhessian, k, tol, 2000)
                labels["pyhessian_matched"] = f"PyHessian: power (tol {tol:g}, ≤2000)"
                break
    for _ in range(args.warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, tuple] = {}
    names = list(runs)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate which one goes first
            t, results[name] = timed(runs[name], device)
            times[name].append(t)
    median = {n: statistics.median(ts) for n, ts in times.items()}
    if compare is None:
        compare = results["ours"][0]
    print(f"\n== top-{k} ==")
    if lam_min is not None and abs(lam_min) > compare[-1]:
        print(f"note: |λmin| > λ{k}: PyHessian (largest magnitude) finds a negative eigenvalue among its {k}")
    print(f"{'method':<46}{'s (median)':>11}{'q25':>9}{'q75':>9}{'HVPs':>7}{'ms/HVP':>9}{'max rel err':>13}")
    errs = {}
    for name, ts in times.items():
        evals, hvps, _ = results[name]
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [median[name]] * 3
        errs[name] = float(np.max(np.abs(evals - compare) / np.abs(compare)))
        print(f"{labels[name]:<46}{median[name]:>11.3f}{q[0]:>9.3f}{q[2]:>9.3f}{hvps:>7}"
              f"{1e3 * median[name] / hvps:>9.2f}{errs[name]:>13.2e}")
    for name in runs:
        print(f"  {name} eigenvalues: {fmt(results[name][0])}")
    if not results["ours"][2]:
        print(f"  warning: our Lanczos hit --max-steps {args.max_steps} before converging")

    def ratio(py: str, our: str) -> str:
        return (f"time ×{median[py] / median[our]:.2f}, HVPs ×{results[py][1] / results[our][1]:.2f}"
                + ("" if ref is None or errs[our] <= args.match else " (ours did NOT reach --match)"))

    print(f"at PyHessian's defaults: PyHessian / ours {ratio('pyhessian', 'ours')}")
    if "pyhessian_matched" not in runs:
        line = (f"top-{k}: PyHessian did not reach {args.match:g} at tol 1e-8" if ref is not None
                else f"top-{k}: no reference (--ref-steps 0), no matched-accuracy ratio")
        print(line)
        return line
    print(f"at matched accuracy (max rel error ≤ {args.match:g}, {labels['pyhessian_matched']}):")
    print(f"  PyHessian / ours (residual rule): {ratio('pyhessian_matched', 'ours')}")
    print(f"  PyHessian / ours (error rule):    {ratio('pyhessian_matched', 'ours_error')}")
    return (f"top-{k} at matched accuracy ≤ {args.match:g}: residual rule {ratio('pyhessian_matched', 'ours')}; "
            f"error rule {ratio('pyhessian_matched', 'ours_error')}")


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        from pyhessian import hessian as PyHessian
    except ImportError as exc:
        raise SystemExit("needs PyHessian: pip install pyhessian --no-deps (or the 'pyhessian' extra)") from exc
    ph_module = importlib.import_module("pyhessian.hessian")
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)

    x, y, shape, num_classes = load_data(args)
    x, y = x.to(device, dtype), y.to(device)
    norm = {"mlp": {"norm": "batchnorm"}, "cnn": {"batchnorm": True}}.get(args.model, {}) if args.batchnorm else {}
    model = build_model(args.model, input_shape=shape, num_classes=num_classes, **norm).to(device, dtype)
    per_sample = build_loss("ce").per_sample
    loss_before, loss_after = train(model, per_sample, x, y, args, device) if args.train_steps else (None, None)
    model.eval()

    def criterion(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return per_sample(out, target).mean()

    ks = [int(v) for v in str(args.top_k).split(",")]
    method = {"method": args.hvp_method} if args.hvp_method else {}
    used: dict[str, str] = {}
    default_tol = 1e-4 if dtype == torch.float32 else 1e-9

    # ---- (a) ours ------------------------------------------------------------------------------
    def ours(k: int, tol: float | None = None, rule: str = "residual"):
        op = HessianOperator(model, per_sample, x, y, batch_size=args.batch_size or None,
                             dtype=dtype, device=device, **method)
        res = lanczos(op.matvec, op.size, max_steps=args.max_steps, top_k=k, seed=args.seed,
                      dtype=dtype, device=device, tol=tol, rule=rule)
        used["method"] = op.method
        return res.eigenvalues.numpy()[::-1][:k].copy(), op.num_matvecs, res.converged

    # ---- (b) PyHessian -------------------------------------------------------------------------
    count = {"hvps": 0}
    inner_hvp = ph_module.hessian_vector_product

    def counted_hvp(*a, **kw):
        count["hvps"] += 1
        return inner_hvp(*a, **kw)

    def pyhessian(k: int, tol: float, max_iter: int):
        count["hvps"] = 0
        torch.manual_seed(args.seed)
        ph_module.hessian_vector_product = counted_hvp
        try:
            with default_dtype(dtype):
                hc = PyHessian(model, criterion, data=(x, y), cuda=device.type == "cuda")
                top, _ = hc.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
        finally:
            ph_module.hessian_vector_product = inner_hvp
            model.zero_grad(set_to_none=True)  # PyHessian leaves the create_graph gradients there
        return np.array(sorted(top, reverse=True)), count["hvps"], None

    # ---- (c) the cost of one HVP in gradient evaluations ---------------------------------------
    costs = hvp_costs(model, per_sample, criterion, x, y, dtype, device, args.hvp_repeats,
                      lambda: PyHessian(model, criterion, data=(x, y), cuda=device.type == "cuda"),
                      inner_hvp)

    # ---- reference -----------------------------------------------------------------------------
    refs, lam_min, ref_steps = {}, None, 0
    if args.ref_steps:
        op64 = HessianOperator(model, per_sample, x, y, batch_size=args.batch_size or None,
                               dtype=torch.float64, device=device)
        res = lanczos(op64.matvec, op64.size, max_steps=args.ref_steps, top_k=max(ks), bottom_k=1, tol=1e-10,
                      seed=args.seed + 1, dtype=torch.float64, device=device)
        full = res.eigenvalues.numpy()[::-1].copy()
        refs = {k: full[:k] for k in ks}
        lam_min, ref_steps = float(res.eigenvalues[0]), res.steps
        if not res.converged:
            print(f"warning: the reference did not converge in {res.steps} steps (raise --ref-steps)")

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    trained = (f"SGD {args.train_steps} steps lr={args.lr} batch={args.train_batch}: "
               f"loss {loss_before:.4f} → {loss_after:.4f}") if args.train_steps else "untrained"
    print(f"model={args.model} params={count_parameters(model):,} dataset={args.dataset} samples={len(x)} "
          f"dtype={args.dtype} device={dev} torch={torch.__version__}")
    print(f"{trained}; top-k={','.join(map(str, ks))}; repeats={args.repeats} warmup={args.warmup}")
    fmt = lambda a: "[" + ", ".join(f"{e:.6g}" for e in a) + "]"  # noqa: E731
    if refs:
        print(f"reference (float64 Lanczos, tol 1e-10, {ref_steps} steps): top-{max(ks)} "
              f"{fmt(refs[max(ks)])}, λmin {lam_min:.4g}")
    summary = []
    for k in ks:
        summary.append(compare_top_k(k, args, ours, pyhessian, refs.get(k), lam_min, default_tol, device, fmt))
    print(f"  our HVP method: {used['method']}; PyHessian: double backward on its retained graph")
    print("summary (PyHessian / ours, median times of interleaved rounds):")
    for line in summary:
        print("  " + line)

    # ---- (e) spectral density: our SLQ vs PyHessian density() at equal steps ---------------------
    if args.slq_steps:
        from landscape.linalg import stochastic_lanczos_quadrature

        op = HessianOperator(model, per_sample, x, y, dtype=dtype, device=device)
        t_ours, sd = timed(lambda: stochastic_lanczos_quadrature(op.matvec, op.size, vectors=1,
                                                                 steps=args.slq_steps, dtype=dtype, device=device), device)

        def eig_standin(t, eigenvectors=False):  # torch.eig was removed in torch 2.0; T is symmetric
            vals, vecs = torch.linalg.eigh(t)
            return torch.stack([vals, torch.zeros_like(vals)], dim=1), vecs

        had = hasattr(torch, "eig")
        old_eig = getattr(torch, "eig", None)
        torch.eig = eig_standin
        try:
            with default_dtype(dtype):
                torch.manual_seed(args.seed)
                t_py, _ = timed(lambda: PyHessian(model, criterion, data=(x, y), cuda=device.type == "cuda")
                                .density(iter=args.slq_steps, n_v=1), device)
        finally:
            model.zero_grad(set_to_none=True)
            if had:
                torch.eig = old_eig
            else:
                del torch.eig
        print(f"SLQ, 1 vector × {args.slq_steps} steps: ours {t_ours:.3f} s, PyHessian density() {t_py:.3f} s "
              f"(torch.eig patched with an eigh stand-in) → PyHessian / ours ×{t_py / t_ours:.2f}; "
              f"ours Σw·θ = {sd.moment(1):.4g}")

    g = costs["gradient"]
    print(f"one HVP in gradient evaluations (all samples in one batch; gradient = {1e3 * g:.2f} ms, "
          f"median of {args.hvp_repeats}):")
    for name, c in costs.items():
        if name != "gradient":
            print(f"  {name:<40}{1e3 * c:>9.2f} ms {c / g:>7.2f}×")


if __name__ == "__main__":
    main()
