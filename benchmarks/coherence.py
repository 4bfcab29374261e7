"""Gradient coherence + GSNR: the cost of the hook path, the vmap path and a per-example loop, as a
multiple of one batched gradient on the same data.

    python benchmarks/coherence.py                       # MLP and small CNN, 512 digits, CPU
    python benchmarks/coherence.py --threads 1 --repeats 9
    python benchmarks/coherence.py --threads 1 --clock thread --no-loop   # on a shared, busy machine
    python benchmarks/coherence.py --device cuda

For each model (``build_model("mlp", (64,), 10)`` and ``build_model("cnn", (1, 8, 8), 10)``, the
latter also with ``batchnorm=True``: BatchNorm γ/β go through hooks too; ``--layernorm`` adds an
MLP with LayerNorm, whose γ/β take the vmap fallback) on the
same ``--samples`` digits training points, after ``--train-steps`` SGD steps:

* ``gradient``: one batched forward + backward of the mean loss (``torch.autograd.grad``), the unit;
* ``hooks``: ``coherence(…, method="hooks")`` — Σg, Σg² from one forward/backward with hooks, then
  α, m·α (overall and per layer) and the GSNR summaries;
* ``vmap``: the same with ``method="vmap"`` (``vmap(grad)`` in chunks of ``--chunk``);
* ``loop``: m single-example ``autograd.grad`` calls accumulating Σg and Σg² (statistics only).

**Counted** (instrumentation, not a clock): a forward hook on the model counts its forward
passes, a hook on its output the backward passes through it, and
``torch.utils.flop_counter.FlopCounterMode`` the floating-point operations of every matmul /
convolution / batched matmul; "gradients" is ``FLOPs(method) / FLOPs(gradient)`` (target for
``hooks`` ≤ 3). The Σg² products of the hooks are in it; numpy's summaries (GSNR quantiles,
histogram) and elementwise work are not, which is what the timed column adds.

**Timed**: medians over ``--repeats`` interleaved rounds after ``--warmup`` untimed ones
(``torch.cuda.synchronize`` around each call on a GPU; ``--repeats 0`` skips them). Also printed:
m·α of the hooks path and of the loop (a sanity check).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from landscape.datasets import load_dataset
from landscape.models import build_model, count_parameters
from landscape.probes.coherence import CoherenceConfig, GradientStatistics, coherence, summarize
from landscape.utils import resolve_device


def ce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(z, t, reduction="none")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--train-steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--layernorm", action="store_true", help="also an MLP with LayerNorm (vmap fallback)")
    p.add_argument("--no-loop", action="store_true", help="skip the per-example loop")
    p.add_argument("--clock", default="wall", choices=["wall", "thread"],
                   help="thread: CPU time of this thread (CPU with --threads 1; immune to other processes)")
    return p.parse_args()


def timed(fn: Callable[[], object], dev: torch.device, clock=time.perf_counter) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = clock()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return clock() - t0


TARGET = 3.0


@contextlib.contextmanager
def counting(model: torch.nn.Module) -> Iterator[dict[str, int]]:
    """``{"forward", "backward", "flops"}`` of what runs inside (passes through ``model``; a vmap
    call over a chunk counts as one pass)."""
    counts = {"forward": 0, "backward": 0, "flops": 0}

    def on_backward(grad: torch.Tensor) -> None:
        counts["backward"] += 1

    def on_forward(module, inputs, output) -> None:
        counts["forward"] += 1
        if isinstance(output, torch.Tensor) and output.requires_grad and torch.is_grad_enabled():
            with contextlib.suppress(RuntimeError):  # no hook on a functorch-wrapped tensor (vmap path)
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


def loop_stats(model, x, y) -> GradientStatistics:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in zip(names, params, strict=True)}
    sq = {n: torch.zeros_like(t) for n, t in total.items()}
    for i in range(len(x)):
        for n, g in zip(names, torch.autograd.grad(ce(model(x[i:i + 1]), y[i:i + 1]).sum(), params), strict=True):
            total[n] += g.double()
            sq[n] += g.double() ** 2
    return GradientStatistics(len(x), total, sq)


def bench(label: str, model: torch.nn.Module, x, y, args, dev) -> None:
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(args.train_steps):
        b = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        ce(model(x[b]), y[b]).mean().backward()
        opt.step()
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = dict(subset=None, chunk=args.chunk)
    methods: dict[str, Callable[[], object]] = {
        "gradient": lambda: torch.autograd.grad(ce(model(x), y).mean(), params),
        "hooks": lambda: coherence(model, ce, x, y, CoherenceConfig(method="hooks", **cfg)),
        "vmap": lambda: coherence(model, ce, x, y, CoherenceConfig(method="vmap", **cfg)),
    }
    if not args.no_loop:
        methods["loop"] = lambda: summarize(loop_stats(model, x, y))
    counted = {k: count(model, fn) for k, fn in methods.items() if k != "loop"}
    times: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(args.warmup + args.repeats if args.repeats > 0 else 0):
        for k, fn in methods.items():
            t = timed(fn, dev, time.thread_time if args.clock == "thread" else time.perf_counter)
            if r >= args.warmup:
                times[k].append(t)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    hooks = coherence(model, ce, x, y, CoherenceConfig(method="hooks", **cfg))
    check = ""
    if not args.no_loop:
        ref = summarize(loop_stats(model, x, y))
        check = f"  m·α hooks {hooks['m_alpha']:.4f} vs loop {ref['m_alpha']:.4f}"
    print(f"\n{label}: {count_parameters(model):,} parameters, m = {len(x)}, "
          f"layers via vmap fallback: {sum(m == 'vmap' for m in hooks['layers']['method'])}{check}")
    print(f"  {'method':<9} {'forwards':>9} {'backwards':>10} {'gradients':>10} {'target':>7}"
          f" {'timed: median ms':>17} {'× gradient':>11}")
    unit = counted["gradient"]["flops"]
    for k in methods:
        c = counted.get(k)
        cols = (f"{c['forward']:>9} {c['backward']:>10} {c['flops'] / unit:>10.2f}"
                if c else f"{'':>9} {'':>10} {'':>10}")
        target = f"≤ {TARGET:g}" if k == "hooks" else ""
        timing = f"{1e3 * med[k]:>17.2f} {med[k] / med['gradient']:>11.2f}" if k in med else ""
        verdict = ("  ok" if c["flops"] / unit <= TARGET else "  MISSED") if k == "hooks" else ""
        print(f"  {k:<9} {cols} {target:>7} {timing}{verdict}")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    if args.clock == "thread" and (dev.type != "cpu" or torch.get_num_threads() != 1):
        raise SystemExit("--clock thread needs --device cpu --threads 1")
    data = load_dataset("digits", train_size=args.samples, seed=0)
    x, y = data.train.x.to(dev), data.train.y.to(dev)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"warmup {args.warmup}, repeats {args.repeats}, chunk {args.chunk}, clock {args.clock}")
    image = x.reshape(len(x), 1, 8, 8)
    torch.manual_seed(0)
    bench("mlp (64→128→128→10)", build_model("mlp", tuple(x.shape[1:]), 10).to(dev), x, y, args, dev)
    torch.manual_seed(0)
    bench("cnn (1,8,8)", build_model("cnn", (1, 8, 8), 10).to(dev), image, y, args, dev)
    if args.layernorm:
        torch.manual_seed(0)
        bench("mlp layernorm", build_model("mlp", tuple(x.shape[1:]), 10, norm="layernorm").to(dev), x, y, args, dev)
    torch.manual_seed(0)
    bench("cnn (1,8,8) batchnorm", build_model("cnn", (1, 8, 8), 10, batchnorm=True).to(dev), image, y, args, dev)


if __name__ == "__main__":
    main()
