"""Cost of worst-case sharpness (Auto-PGD) as a multiple of one gradient evaluation per iteration.

    python benchmarks/sharpness.py                      # MLP and CNN on digits, CPU
    python benchmarks/sharpness.py --models mlp --threads 1 --norm l2
    python benchmarks/sharpness.py --threads 1 --clock thread   # on a shared, busy machine
    python benchmarks/sharpness.py --device cuda

For each model (``landscape.models.build_model`` on digits, untrained: the cost does not depend on
the weights) and one batch of ``m`` training points it runs

(a) ``sharpness(kind="worst", rhos=(ρ,), iters=20, subset=m)`` (one ρ, one batch, first-order
    and PAC-Bayes flatness off): 20 gradient evaluations through ``functional_call``, the forward
    pass at the last iterate, plus the projections (the clean loss is the forward pass of the
    first gradient, at δ = 0);
(b) one gradient evaluation: ``model.zero_grad(); loss(model(x), y).mean().backward()`` on the
    same batch.

**Counted** (instrumentation, not a clock; the target is on this number): a forward hook on the
model counts its forward passes, a hook on its output counts the backward passes through it, and
``torch.utils.flop_counter.FlopCounterMode`` counts the floating-point operations of every
matmul / convolution (forward and backward) of (a) and of (b). "gradients per iteration" is
``FLOPs(a) / (iters × FLOPs(b))`` (target ≤ 1.2); pooling, activations and the vector updates of
the ascent have no FLOP formula there and are not counted, which is what the timed ratio adds.

**Timed**: ``time(a) / (iters × time(b))`` from the medians over ``--repeats`` interleaved rounds
after one warm-up, and from the minima (robust to other processes on a shared machine), with
``torch.cuda.synchronize`` on a GPU; ``--repeats 0`` skips it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from landscape.datasets import load_dataset
from landscape.models import build_model, count_parameters
from landscape.probes.sharpness import SharpnessConfig, sharpness
from landscape.train.losses import build_loss

TARGET = 1.2


def timed(fn, device: torch.device, clock=time.perf_counter) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - t0


@contextlib.contextmanager
def counting(model: torch.nn.Module) -> Iterator[dict[str, int]]:
    """``{"forward": n, "backward": n, "flops": n}`` of what runs inside (passes through ``model``)."""
    counts = {"forward": 0, "backward": 0, "flops": 0}

    def on_backward(grad: torch.Tensor) -> None:
        counts["backward"] += 1

    def on_forward(module, inputs, output) -> None:
        counts["forward"] += 1
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(on_backward)

    handle = model.register_forward_hook(on_forward)
    flops = FlopCounterMode(display=False)
    try:
        with flops:
            yield counts
    finally:
        handle.remove()
        counts["flops"] = flops.get_total_flops()


def count(model: torch.nn.Module, fn: Callable[[], object]) -> dict[str, int]:
    with counting(model) as counts:
        fn()
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--norm", default="linf", choices=["linf", "l2"])
    ap.add_argument("--rho", type=float, default=None, help="default: 0.002 (linf) / 0.5 (l2), adaptive")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (0: counts only)")
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
    print(f"{'model':6} {'params':>8} {'forwards':>9} {'backwards':>10} {'gradients per iteration':>24} "
          f"{'target':>7} {'timed: grad (ms)':>17} {'probe (ms)':>11} {'ratio / iter':>13} {'(min/min)':>10}")
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

        unit, counted = count(model, grad_eval), count(model, probe)
        assert unit["forward"] == unit["backward"] == 1
        per_iter = counted["flops"] / (args.iters * unit["flops"])
        timing = ""
        if args.repeats > 0:
            grad_eval()
            probe()
            g_times, s_times = [], []
            for _ in range(args.repeats):
                g_times.append(timed(grad_eval, device, clock))
                s_times.append(timed(probe, device, clock))
            g, s = statistics.median(g_times), statistics.median(s_times)
            ratio_min = min(s_times) / (args.iters * min(g_times))
            timing = f"{1e3 * g:>17.3f} {1e3 * s:>11.2f} {s / (args.iters * g):>13.3f} {ratio_min:>10.3f}"
        print(f"{name:6} {count_parameters(model):>8} {counted['forward']:>9} {counted['backward']:>10} "
              f"{per_iter:>24.3f} {'≤ ' + str(TARGET):>7} {timing}  {'ok' if per_iter <= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
