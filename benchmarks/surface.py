"""Loss-surface evaluation speed, measured in one run.

    python benchmarks/surface.py                       # MLP on digits + ResNet-20 on synthetic 3×32×32
    python benchmarks/surface.py --device cuda --points 64

(a) ours (``landscape.probes.surface.evaluate_points``: ``functional_call`` with the perturbed
    tensors, the whole split in one batch; and ``evaluate_points_vmapped``, 8 grid points per
    vectorized call) against the reference method of
    tomgoldstein/loss-landscape (copy the perturbed weights into the model for every grid point,
    then loop over the data in batches of 128), on an MLP on digits, same points, same values.
(b) ResNet-20 on 32×32 synthetic data: our time per grid point divided by the time of one plain
    forward pass of the unperturbed model over the same data (the overhead of the probe).
Timings: median of ``--repeats`` after a warmup, ``torch.cuda.synchronize`` on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from landscape.datasets import load_dataset
from landscape.directions import filter_normalized_direction
from landscape.models import build_model
from landscape.probes.surface import evaluate_points, evaluate_points_vmapped
from landscape.train.losses import build_loss
from landscape.utils import resolve_device


def _timed(fn, device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def reference_method(model, base, d0, d1, coords, x, y, loss, batch_size=128):
    """loss-landscape's way: load θ + a d0 + b d1 into the model, then batches of 128."""
    out = []
    with torch.no_grad():
        for a, b in coords:
            for name, p in model.named_parameters():
                p.copy_(base[name] + float(a) * d0[name] + float(b) * d1[name])
            total, correct = 0.0, 0
            for s in range(0, len(x), batch_size):
                logits = model(x[s : s + batch_size])
                total += float(loss(logits, y[s : s + batch_size]).double().sum())
                correct += int((logits.argmax(1) == y[s : s + batch_size]).sum())
            out.append(total / len(x))
        for name, p in model.named_parameters():
            p.copy_(base[name])
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--points", type=int, default=16, help="grid points timed per method")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--resnet-samples", type=int, default=512)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    ce = build_loss("ce").per_sample
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    # (a) MLP on digits: ours vs the reference method
    data = load_dataset("digits")
    x, y = data.train.x.to(dev), data.train.y.to(dev)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes).to(dev).eval()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    d0, d1 = (filter_normalized_direction(model, seed=s) for s in (0, 1))
    coords = np.random.default_rng(0).uniform(-1, 1, (args.points, 2))
    ours = lambda: evaluate_points(model, base, [d0, d1], coords, x, y, ce)[0]  # noqa: E731
    ref = lambda: reference_method(model, base, d0, d1, coords, x, y, ce)  # noqa: E731
    vmapped = lambda: evaluate_points_vmapped(model, base, [d0, d1], coords, x, y, ce, points_per_call=8)[0]  # noqa: E731
    diff = float(max(np.max(np.abs(ours() - ref())), np.max(np.abs(vmapped() - ref()))))
    t_ours, t_ref = _timed(ours, dev, args.repeats), _timed(ref, dev, args.repeats)
    t_vmap = _timed(vmapped, dev, args.repeats)
    print(f"\n(a) MLP on digits ({len(x)} samples, {args.points} grid points), max |Δloss| = {diff:.2e}")
    print(f"    reference (load weights + batches of 128): {t_ref / args.points * 1e3:8.2f} ms/point")
    print(f"    ours (functional_call, one batch):         {t_ours / args.points * 1e3:8.2f} ms/point")
    print(f"    ours (vmap over 8 points per call):        {t_vmap / args.points * 1e3:8.2f} ms/point")
    print(f"    speed-up ours (loop) vs reference:          {t_ref / t_ours:8.2f}x")
    print(f"    speed-up ours (vmap) vs reference:          {t_ref / t_vmap:8.2f}x")

    # (b) ResNet-20 on synthetic 3×32×32: overhead per grid point vs one forward pass
    syn = load_dataset("gaussian_mixture", image_shape=(3, 32, 32), n_train=args.resnet_samples, n_test=10)
    x, y = syn.train.x.to(dev), syn.train.y.to(dev)
    model = build_model("resnet20", syn.input_shape, syn.num_classes).to(dev).eval()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    d0, d1 = (filter_normalized_direction(model, seed=s) for s in (0, 1))
    few = coords[: max(2, args.points // 4)]

    def forward():
        with torch.no_grad():
            logits = model(x)
            return float(ce(logits, y).mean())

    t_fwd = _timed(forward, dev, args.repeats)
    t_pts = _timed(lambda: evaluate_points(model, base, [d0, d1], few, x, y, ce), dev, args.repeats) / len(few)
    print(f"\n(b) ResNet-20 on synthetic 3×32×32 ({len(x)} samples)")
    print(f"    one plain forward pass: {t_fwd * 1e3:8.1f} ms")
    print(f"    ours per grid point:    {t_pts * 1e3:8.1f} ms")
    print(f"    ratio (target ≤ 1.2):   {t_pts / t_fwd:8.2f}")


if __name__ == "__main__":
    main()
