"""Executors: analyzing the same checkpoints in-process, with the warm process pool, with Ray, and auto.

    python benchmarks/analyze.py                  # 8 checkpoints of an MLP on digits, the Hessian probe
    python benchmarks/analyze.py --executors process --light-repeats 5

Trains one small run (8 checkpoints), then times ``landscape.analyze.analyze`` on all of them
(every timing writes a fresh results file):

* heavy (top-5, 100 trace samples, density, per-layer spectra): in-process with one thread (as
  each worker has), then each executor at 1 and at 2 workers, each twice: *cold* (a fresh pool,
  whose start-up — spawning workers that import torch and warm up — is part of the timing, as it
  is for a user's first call) and *warm* (the same pool again, as for a later call in the same
  process; the pool of 2 serves the 1-worker rounds too, with one task in flight, alternated
  ``--heavy-repeats`` times). Prints the speed-up of 2 workers over 1, cold and warm (medians;
  target ≥ 1.8×; the ideal is n / ⌈n / 2⌉ for n equal tasks), and the executor's overhead per task: (time with 1 warm
  worker − in-process time) / tasks, relative to the in-process time per task. Ray's local
  cluster is started outside its timings.
* light (top-5, 20 trace samples): in-process (default threads, as a user runs it) against
  ``--executor auto`` with no pool started, alternated ``--light-repeats`` times; prints the
  medians, their ratio (target ≤ 1.0: auto never slower) and what auto chose, and why.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from landscape import executors
from landscape.analyze import analyze
from landscape.train.config import TrainConfig
from landscape.train.trainer import train

HEAVY = {"top_k": 5, "trace_samples": 100, "density": True, "per_layer": True}
LIGHT = {"top_k": 5, "trace_samples": 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe", default="hessian")
    parser.add_argument("--executors", default="process,ray")
    parser.add_argument("--epochs", type=int, default=7, help="checkpoints = epochs + 1")
    parser.add_argument("--light-repeats", type=int, default=3)
    parser.add_argument("--heavy-repeats", type=int, default=3, help="warm rounds, 1 and 2 workers alternated")
    parser.add_argument("--skip-heavy", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train(TrainConfig(epochs=args.epochs, checkpoints="every:1", optimizer_params={"momentum": 0.9}), run,
              progress=False, device="cpu")
        count = iter(range(10**6))

        def timed(settings: dict, **kw):
            t = time.perf_counter()
            report = analyze(run, args.probe, settings={args.probe: settings}, checkpoints="all", device="cpu",
                             out=Path(tmp) / f"{next(count)}.h5", **kw)
            assert not report.failures, report.failures
            return time.perf_counter() - t, report

        n = args.epochs + 1
        if not args.skip_heavy:
            heavy(timed, n, args)
        light(timed, n, args.light_repeats)


def heavy(timed, n: int, args) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each worker, so that the overhead is the executor's alone
    local, _ = timed(HEAVY)
    torch.set_num_threads(threads)
    print(f"heavy: {n} checkpoints, probe {args.probe}: in-process (1 thread, like a worker) {local:.2f} s "
          f"({local / n:.3f} s per task)")
    ideal = n / math.ceil(n / 2)
    for executor in args.executors.split(","):
        cold: dict[int, float] = {}
        warm: dict[int, list[float]] = {1: [], 2: []}
        try:
            for workers in (1, 2):  # cold: this call starts the pool (or Ray's local cluster)
                _fresh(executor, workers)
                cold[workers] = timed(HEAVY, executor=executor, workers=workers)[0]
            # warm: the 2-worker pool started above serves both, alternated, so that a change in
            # the machine's load hits both (1 worker: at most one task in flight on it)
            for _ in range(args.heavy_repeats):
                for workers in (1, 2):
                    if executor == "ray":  # Ray runs what it has CPUs for: a cluster of that many
                        _fresh(executor, workers)
                    warm[workers].append(timed(HEAVY, executor=executor, workers=workers)[0])
        except Exception as exc:  # e.g. Ray not installed
            print(f"{executor}: skipped ({type(exc).__name__}: {exc})")
            continue
        print(f"{executor:8s} cold: 1 worker {cold[1]:6.2f} s   2 workers {cold[2]:6.2f} s   "
              f"speed-up ×{cold[1] / cold[2]:.2f} (start-up included; ideal ×{ideal:.2f} without it)")
        one, two = statistics.median(warm[1]), statistics.median(warm[2])
        pairs = ", ".join(f"×{a / b:.2f}" for a, b in zip(warm[1], warm[2], strict=True))
        print(f"{executor:8s} warm: 1 worker {one:6.2f} s   2 workers {two:6.2f} s   speed-up ×{one / two:.2f} "
              f"(medians of {args.heavy_repeats}, alternated; per round {pairs}; target ≥ 1.8, ideal ×{ideal:.2f})")
        overhead = (one - local) / n
        print(f"{executor:8s} overhead with a warm worker {overhead:+.3f} s/task = {overhead / (local / n):+.0%} "
              f"of a task; start-up of a cold pool ≈ {cold[1] - one:+.2f} s (1 worker), "
              f"{cold[2] - two:+.2f} s (2 workers)")
    executors.shutdown_pool()


def _fresh(executor: str, workers: int) -> None:
    """No pool (or a Ray cluster of ``workers`` CPUs, started outside the timing)."""
    if executor == "ray":
        import ray

        ray.shutdown()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    else:
        executors.shutdown_pool()


def light(timed, n: int, repeats: int) -> None:
    here, auto, chosen = [], [], set()
    for _ in range(repeats):  # alternated, so that a change in the machine's load hits both
        here.append(timed(LIGHT)[0])
        executors.shutdown_pool()  # auto as on a first call: no pool to reuse
        seconds, report = timed(LIGHT, executor="auto")
        auto.append(seconds)
        chosen.add(f"{report.executor} ({report.executor_reason})")
    a, b = statistics.median(here), statistics.median(auto)
    print(f"light: {n} checkpoints, top-5 + 20 trace samples: in-process {a:.2f} s, auto {b:.2f} s "
          f"(medians of {repeats}; runs {', '.join(f'{x:.2f}' for x in here)} / {', '.join(f'{x:.2f}' for x in auto)})"
          f"   auto / in-process ×{b / a:.2f} (target ≤ 1.0)")
    for line in sorted(chosen):
        print(f"  auto chose {line}")


if __name__ == "__main__":
    main()
