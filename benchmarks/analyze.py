"""Executors: analyzing the same checkpoints in-process, with a process pool and with Ray.

    python benchmarks/analyze.py                  # 9 checkpoints of an MLP on digits, the Hessian probe
    python benchmarks/analyze.py --probe rankme --executors process

Trains one small run (9 checkpoints), then times ``landscape.analyze.analyze`` on all of them:
in-process, and with each executor at 1 and at 2 workers (every timing writes a fresh results
file). Prints the speed-up of 2 workers over 1 (target ≥ 1.7× on 2 cores) and the executor's
overhead per task: (time with 1 worker − in-process time) / tasks, relative to the in-process
time per task. Ray's local cluster is started before its timings; a process pool's start-up
(spawning workers that import torch) is part of its timings, as it is for a user.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from landscape.analyze import analyze
from landscape.train.config import TrainConfig
from landscape.train.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe", default="hessian")
    parser.add_argument("--executors", default="process,ray")
    parser.add_argument("--epochs", type=int, default=8, help="checkpoints = epochs + 1")
    args = parser.parse_args()
    settings = {"hessian": {"top_k": 5, "trace_samples": 100, "density": True, "per_layer": True}}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train(TrainConfig(epochs=args.epochs, checkpoints="every:1", optimizer_params={"momentum": 0.9}), run,
              progress=False, device="cpu")

        def timed(name: str, **kw) -> float:
            t = time.perf_counter()
            report = analyze(run, args.probe, settings=settings, checkpoints="all", device="cpu",
                             out=Path(tmp) / f"{name}.h5", **kw)
            assert not report.failures, report.failures
            return time.perf_counter() - t

        n = args.epochs + 1
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in each worker, so that the overhead is the executor's alone
        local = timed("local")
        torch.set_num_threads(threads)
        print(f"{n} checkpoints, probe {args.probe}: in-process (1 thread, like a worker) {local:.2f} s "
              f"({local / n:.3f} s per task)")
        for executor in args.executors.split(","):
            times = {}
            try:
                for workers in (1, 2):
                    if executor == "ray":  # a local cluster of that many CPUs, started outside the timing
                        import ray

                        ray.shutdown()
                        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
                    times[workers] = timed(f"{executor}{workers}", executor=executor, workers=workers)
            except Exception as exc:  # e.g. Ray not installed
                print(f"{executor}: skipped ({exc})")
                continue
            one, two = times[1], times[2]
            overhead = (one - local) / n
            print(f"{executor:8s} 1 worker {one:6.2f} s   2 workers {two:6.2f} s   speed-up ×{one / two:.2f} "
                  f"(target ≥ 1.7)   overhead {overhead:+.3f} s/task = {overhead / (local / n):+.0%} of a task")


if __name__ == "__main__":
    main()
