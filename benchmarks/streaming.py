"""Streaming: a probe over a DataLoader holds one batch of inputs at a time, not the dataset.

    python benchmarks/streaming.py                                   # hessian, 20,000 images, batch 250
    python benchmarks/streaming.py --probe surface
    python benchmarks/streaming.py --model cnn --device cuda --lanczos-steps 20

The data are ``--n`` synthetic 3×32×32 float32 images from a map-style ``Dataset`` that draws
image ``i`` (standard normal) and its label from a generator seeded with ``i`` when it is asked
for, so nothing is held in memory up front (gathered, 20,000 images are 234 MiB). A
``DataLoader`` (``--batch-size`` 250, no workers: everything happens in the measured process)
reads them. The model is ``landscape.models.build_model`` ``mlp`` (one hidden layer of 32: its
activations are small, so what a probe holds of the data shows) or ``cnn`` (channels 8).

Each measurement runs in its own subprocess, so that peaks do not mix. The baseline is taken
after the model is built and the same probe has run once on a 2-batch loader (a warm-up: the
first call imports modules and fills allocator pools, ~80 MiB that are not the data's); then
the peak-RSS counter is reset (``/proc/self/clear_refs``, ``5``) and the probe runs; the
growth is ``VmHWM`` after it minus ``VmRSS`` at the baseline (on a GPU also the growth of
``torch.cuda.max_memory_allocated``). Measured, the same probe (``ls.hessian`` with
``top_k=1, bottom_k=0, trace=False, density=False``, ``--lanczos-steps`` 8 so that the whole
run takes a couple of minutes on 2 CPU cores; or ``ls.surface``, 1D, ``--points`` 3):

(a) stream: the probe on the DataLoader of ``--n`` images (the façade streams it);
(b) stream, 2 batches: the same on a DataLoader of ``2 × --batch-size`` images; with streaming
    the peak does not depend on ``n``, so (a) ≈ (b);
(c) gathered: the same images first copied into one ``(x, y)`` pair of tensors (preallocated,
    filled batch by batch: one copy of the dataset), then the probe on them with
    ``batch_size = --batch-size``; its growth includes the gathered tensors.

Reported against one batch of inputs plus the model's parameters, and against the dataset's
size gathered: the largest growth of ``--repeats`` (3) fresh subprocesses per run (the
allocator's slack varies by a few MiB from one process to the next). The seconds are not a
speed comparison: a stream draws every image again at each pass (a Hessian makes one pass per
Lanczos step), the gathered run draws them once. Both runs of a probe compute the same number
(the eigenvalue or the loss at the origin), printed as a check. Peak RSS also counts allocator
slack and the probe's own work
(Lanczos vectors: ``steps × parameters``; autograd buffers of one batch), so (a) is some
multiple of one batch + model, never a multiple of the dataset.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

import torch
from torch import nn

import landscape as ls
from landscape.models import build_model, count_parameters

MiB = 2**20
IMAGE = (3, 32, 32)
MODES = ("stream", "stream-2", "gathered")


class SyntheticImages(torch.utils.data.Dataset):
    """``n`` standard-normal 3×32×32 float32 images with labels in ``0…classes-1``, image ``i``
    drawn from a generator seeded with ``seed + i`` when it is asked for (nothing held)."""

    def __init__(self, n: int, classes: int = 10, seed: int = 0) -> None:
        self.n, self.classes, self.seed = n, classes, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed + int(i))
        x = torch.randn(IMAGE, generator=g)
        return x, int(torch.randint(self.classes, (), generator=g))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20_000, help="images in the DataLoader")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--probe", default="hessian", choices=["hessian", "surface"])
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--lanczos-steps", type=int, default=8, help="hessian: Lanczos steps (= HVPs, = passes)")
    p.add_argument("--points", type=int, default=3, help="surface: grid points on -1:1 (1D)")
    p.add_argument("--repeats", type=int, default=3, help="subprocesses per run; the largest growth is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", default=None, choices=MODES, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def make_model(args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(args.seed)
    params = {"width": 32, "depth": 1} if args.model == "mlp" else {"channels": 8, "width": 32}
    return build_model(args.model, input_shape=IMAGE, num_classes=10, **params).eval()


def probe(args: argparse.Namespace, model: nn.Module, data, batch_size: int | None) -> float:
    """The probe through the façade; returns the number both runs must agree on."""
    extra = {} if batch_size is None else {"batch_size": batch_size}
    if args.probe == "hessian":
        res = ls.hessian(model, nn.CrossEntropyLoss(), data, top_k=1, bottom_k=0, trace=False, density=False,
                         lanczos_steps=args.lanczos_steps, tol=0.0, seed=args.seed, device=args.device, **extra)
        return float(res["eigenvalues"][0])
    res = ls.surface(model, nn.CrossEntropyLoss(), data, dim=1, x=f"-1:1:{args.points}", vectorize="loop",
                     seed=args.seed, device=args.device, **extra)
    return float(res["train_loss"][args.points // 2])


def gather(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """The loader's images as one ``(x, y)`` pair: preallocated, filled batch by batch."""
    n = len(loader.dataset)
    x, y = torch.empty((n, *IMAGE)), torch.empty(n, dtype=torch.long)
    start = 0
    for xb, yb in loader:
        x[start : start + len(yb)], y[start : start + len(yb)] = xb, yb
        start += len(yb)
    return x, y


def run_mode(args: argparse.Namespace, model: nn.Module, n: int) -> tuple[float, int | None]:
    """The probe in this measurement's mode on ``n`` images; returns (value, KiB of RSS growth
    after gathering, for ``gathered``)."""
    loader = torch.utils.data.DataLoader(SyntheticImages(n, seed=args.seed), batch_size=args.batch_size)
    if args.child != "gathered":
        return probe(args, model, loader, None), None
    before = status_kib("VmRSS")
    x, y = gather(loader)
    grown = status_kib("VmRSS") - before
    return probe(args, model, (x, y), args.batch_size), grown


def child(args: argparse.Namespace) -> dict:
    """One measurement in this process (see the module docstring); returns its numbers."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    n = 2 * args.batch_size if args.child == "stream-2" else args.n
    model = make_model(args).to(dev)
    run_mode(args, model, 2 * args.batch_size)  # warm-up: imports, kernels, allocator pools
    gc.collect()
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        cuda_base = torch.cuda.memory_allocated(dev)
    base = status_kib("VmRSS")
    reset_peak()
    t0 = time.perf_counter()
    value, after_gather = run_mode(args, model, n)
    if cuda:
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    out = {"mode": args.child, "n": n, "growth_kib": status_kib("VmHWM") - base, "base_kib": base,
           "after_gather_kib": after_gather, "seconds": seconds, "value": value,
           "params": count_parameters(model), "threads": torch.get_num_threads()}
    if cuda:
        out["cuda_growth"] = torch.cuda.max_memory_allocated(dev) - cuda_base
    return out


def measure(mode: str, argv: list[str]) -> dict:
    """Run one measurement in a fresh subprocess."""
    proc = subprocess.run([sys.executable, __file__, *argv, "--child", mode], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    argv = sys.argv[1:]
    batch = args.batch_size * 3 * 32 * 32 * 4
    data = args.n * (3 * 32 * 32 * 4 + 8)
    runs = []
    for mode in MODES:
        tries = [measure(mode, argv) for _ in range(max(args.repeats, 1))]
        worst = max(tries, key=lambda r: r["growth_kib"])
        worst["min_kib"] = min(r["growth_kib"] for r in tries)
        runs.append(worst)
    params = runs[0]["params"]
    model_bytes = params * 4
    what = (f"top-1 eigenvalue, {args.lanczos_steps} Lanczos steps" if args.probe == "hessian"
            else f"1D surface, {args.points} points")
    print(f"probe {args.probe} ({what}); model {args.model}, {params:,} parameters; device {args.device}; "
          f"threads {runs[0]['threads']}; torch {torch.__version__}")
    print(f"one batch of inputs ({args.batch_size} × 3×32×32 float32): {batch / MiB:.2f} MiB; model parameters: "
          f"{model_bytes / MiB:.2f} MiB; one batch + model: {(batch + model_bytes) / MiB:.2f} MiB; "
          f"the {args.n:,} images gathered: {data / MiB:.1f} MiB")
    cuda = "cuda_growth" in runs[0]
    print(f"peak RSS growth: the largest of {max(args.repeats, 1)} fresh subprocesses (the smallest in brackets)")
    print(f"{'run':<26}{'samples':>8}{'s':>7}{'peak RSS growth MiB':>24}{'× (batch+model)':>17}"
          f"{'× dataset':>11}{'  GPU MiB' if cuda else ''}  value")
    labels = {"stream": "(a) stream (DataLoader)", "stream-2": "(b) stream, 2 batches",
              "gathered": "(c) gathered (x, y)"}
    for r in runs:
        g = r["growth_kib"] * 1024
        gpu = f"{r['cuda_growth'] / MiB:>9.1f}" if cuda else ""
        spread = f"{g / MiB:.1f} ({r['min_kib'] / 1024:.1f})"
        print(f"{labels[r['mode']]:<26}{r['n']:>8,}{r['seconds']:>7.1f}{spread:>24}"
              f"{g / (batch + model_bytes):>17.2f}{g / data:>11.3f}{gpu}  {r['value']:.6g}")
    gathered = next(r for r in runs if r["mode"] == "gathered")
    stream = next(r for r in runs if r["mode"] == "stream")
    print(f"(c) holds {gathered['after_gather_kib'] / 1024:.1f} MiB after gathering, before the probe; "
          f"peak (c) / peak (a) ×{gathered['growth_kib'] / max(stream['growth_kib'], 1):.1f}; "
          f"value (a) − (c) = {stream['value'] - gathered['value']:.2g}")


if __name__ == "__main__":
    main()
