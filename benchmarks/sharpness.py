"""Cost of worst-case sharpness (Auto-PGD) as a multiple of one gradient evaluation per iteration.

    python benchmarks/sharpness.py                      # MLP and CNN on digits, CPU
    python benchmarks/sharpness.py --models mlp --threads 1 --norm l2
    python benchmarks/sharpness.py --threads 1 --clock thread   # on a shared, busy machine
    python benchmarks/sharpness.py --device cuda

For each model (``landscape.models.build_model`` on digits, untrained: the cost does not depend on
the weights) and one batch of ``m`` training points, it times

(a) ``sharpness(kind="worst", rhos=(ρ,), iters=20, subset=m)`` (one ρ, one batch, first-order
    and PAC-Bayes flatness off): 20 gradient evaluations through ``functional_call``, plus the
    clean forward pass and one forward pass at the last iterate, plus the projections;
(b) one gradient evaluation: ``model.zero_grad(); loss(model(x), y).mean().backward()`` on the
    same batch.

and prints ``time(a) / (iters × time(b))`` (target ≤ 1.2) from the medians over ``--repeats``
interleaved rounds after one warm-up, and from the minima (robust to other processes on a shared
machine), with ``torch.cuda.synchronize`` on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from landscape.datasets import load_dataset
from landscape.models import build_model, count_parameters
from landscape.probes.sharpness import SharpnessConfig, sharpness
from landscape.train.losses import build_loss


def timed(fn, device: torch.device, clock=time.perf_counter) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--norm", default="linf", choices=["linf", "l2"])
    ap.add_argument("--rho", type=float, default=None, help="default: 0.002 (linf) / 0.5 (l2), adaptive")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", default="wall", choices=["wall", "thread"],
                    help="thread: CPU time of this thread (CPU with --threads 1; immune to other processes)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "thread" and (device.type != "cpu" or torch.get_num_threads() != 1):
        ap.error("--clock thread needs --device cpu --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    rho = args.rho if args.rho is not None else (0.002 if args.norm == "linf" else 0.5)
    data = load_dataset("digits", seed=0)
    x, y = data.train.x[: args.m].to(device), data.train.y[: args.m].to(device)
    loss = build_loss("ce").per_sample
    print(f"digits, m={args.m}, iters={args.iters}, norm={args.norm} adaptive, ρ={rho}, device={device}, "
          f"threads={torch.get_num_threads()}, clock={args.clock}")
    print(f"{'model':6} {'params':>8} {'grad eval (ms)':>15} {'sharpness (ms)':>15} {'ratio / iter':>13} {'(min/min)':>11}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, data.input_shape, data.num_classes).to(device).eval()
        cfg = SharpnessConfig(kind="worst", norm=args.norm, adaptive=True, rhos=(rho,), m=args.m, subset=args.m,
                              iters=args.iters, first_order_rho=None, pac_bayes=False)

        def grad_eval(model=model) -> None:
            model.zero_grad(set_to_none=True)
            loss(model(x), y).mean().backward()

        def probe(model=model, cfg=cfg) -> None:
            out = sharpness(model, loss, x, y, cfg, device=device)
            assert out["num_gradients"] == args.iters

        grad_eval()
        probe()
        g_times, s_times = [], []
        for _ in range(args.repeats):
            g_times.append(timed(grad_eval, device, clock))
            s_times.append(timed(probe, device, clock))
        g, s = statistics.median(g_times), statistics.median(s_times)
        ratio_min = min(s_times) / (args.iters * min(g_times))
        print(f"{name:6} {count_parameters(model):>8} {1e3 * g:>15.3f} {1e3 * s:>15.2f} {s / (args.iters * g):>13.3f}"
              f" {ratio_min:>11.3f}")


if __name__ == "__main__":
    main()
