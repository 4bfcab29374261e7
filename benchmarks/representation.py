"""Time our diffusion spectral entropy / mutual information against the reference ``dse-dsmi``.

    python benchmarks/representation.py --sizes 2000,10000 --dim 64 --device auto

Both get the same seeded features: ``N × D`` points around ``--clusters`` Gaussian centres
(centres spread ``--spread`` per coordinate, unit noise), so that with σ = ``--sigma`` the
diffusion spectrum is neither the identity (points far apart) nor rank one (points
coincide). ``max_n`` / ``max_N`` is set to ``N`` so that neither subsamples: both
diagonalize the same ``N × N`` matrix. Ours (``landscape.probes.dse``, torch float64) runs on
``--device`` with the features already there; ``dse_dsmi`` is numpy and always runs on the
CPU. ``--threads`` sets both torch's and the BLAS/LAPACK thread pools (threadpoolctl) so
the two use the same number of cores. Each timing is the median of ``--repeats`` calls
(after one untimed warm-up call of ours on a small input, which on a GPU initializes
cuSOLVER). DSMI(Z; Y) with the cluster labels as Y is timed at the smallest size only.
On a small shared machine use ``--threads 1``: multi-threaded LAPACK spin-waits when the
cores are busy, and the timings of both sides become several times slower and erratic.

Memory is O(N²) for both: at N = 10,000 about 4 GB (ours) and 5 GB (dse_dsmi) of float64.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from landscape.probes.dse import (
    DSEConfig,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)
from landscape.utils import resolve_device


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=None,
                   help="comma-separated N (default: 2000,10000 on CUDA, 2000,5000 on CPU; "
                        "10000 is the reference's max_N)")  # fmt: skip
    p.add_argument("--dim", type=int, default=64, help="feature dimension D")
    p.add_argument("--device", default="auto", help="where ours runs: auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch and BLAS (0: the libraries' defaults)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=1, help="timed calls per measurement (median)")
    p.add_argument("--sigma", type=float, default=10.0, help="Gaussian kernel bandwidth σ")
    p.add_argument("--t", type=int, default=1, help="diffusion time")
    p.add_argument(
        "--clusters", type=int, default=10, help="Gaussian clusters (= classes for DSMI)"
    )
    p.add_argument("--spread", type=float, default=3.0, help="std of the cluster centres")
    p.add_argument("--no-dsmi", action="store_true", help="skip the DSMI timing")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def make_features(
    n: int, d: int, clusters: int, spread: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, clusters, size=n)
    centres = rng.standard_normal((clusters, d)) * spread
    return centres[y] + rng.standard_normal((n, d)), y


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], float], repeats: int, device: torch.device) -> tuple[float, float]:
    """(median seconds, value of the last call)."""
    times, value = [], float("nan")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        value = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    args = parse_args()
    import dse_dsmi  # the reference (pip install dse-dsmi); imported here for a clear error

    device = resolve_device(args.device)
    sizes = [
        int(s)
        for s in (args.sizes or ("2000,10000" if device.type == "cuda" else "2000,5000")).split(",")
    ]
    cpu = torch.device("cpu")
    limits: contextlib.AbstractContextManager = contextlib.nullcontext()
    if args.threads > 0:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        limits = threadpool_limits(args.threads)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    print(f"torch {torch.__version__}, numpy {np.__version__}, {platform.processor() or platform.machine()}, "
          f"torch threads {torch.get_num_threads()}; ours on {device} {gpu}".rstrip())  # fmt: skip
    print(f"D = {args.dim}, {args.clusters} clusters (spread {args.spread}), σ = {args.sigma}, "
          f"t = {args.t}, repeats = {args.repeats}, no subsampling (max_n = N)")  # fmt: skip

    with limits:
        warm = torch.randn(64, args.dim, dtype=torch.float64, device=device)
        diffusion_spectral_entropy(warm, DSEConfig(sigma=args.sigma))
        sync(device)

        print(f"\nDSE{'':>6}{'N':>7} {'ours (s)':>10} {'dse_dsmi (s)':>13} {'ratio':>7}"
              f" {'DSE ours':>10} {'|diff|':>9}")  # fmt: skip
        for n in sizes:
            z, _ = make_features(n, args.dim, args.clusters, args.spread, args.seed)
            zt = torch.from_numpy(z).to(device)
            cfg = DSEConfig(sigma=args.sigma, t=args.t, max_n=n)
            t_ours, v_ours = timed(lambda zt=zt, cfg=cfg: diffusion_spectral_entropy(zt, cfg)["dse"],
                                   args.repeats, device)  # fmt: skip
            del zt
            if device.type == "cuda":
                torch.cuda.empty_cache()
            t_ref, v_ref = timed(
                lambda z=z, n=n: float(dse_dsmi.diffusion_spectral_entropy(
                    z, gaussian_kernel_sigma=args.sigma, t=args.t, max_N=n)),
                args.repeats, cpu)  # fmt: skip
            print(f"{'':9}{n:>7} {t_ours:>10.3f} {t_ref:>13.3f} {t_ref / t_ours:>6.1f}×"
                  f" {v_ours:>10.5f} {abs(v_ours - v_ref):>9.2e}", flush=True)  # fmt: skip

        if not args.no_dsmi:
            n = min(sizes)
            z, y = make_features(n, args.dim, args.clusters, args.spread, args.seed)
            zt, yt = torch.from_numpy(z).to(device), torch.from_numpy(y)
            cfg = DSEConfig(sigma=args.sigma, t=args.t, max_n=n)
            t_ours, v_ours = timed(lambda: diffusion_spectral_mutual_information(zt, yt, cfg)["dsmi"],
                                   args.repeats, device)  # fmt: skip
            t_ref, v_ref = timed(
                lambda: float(dse_dsmi.diffusion_spectral_mutual_information(
                    z, y.reshape(-1, 1), gaussian_kernel_sigma=args.sigma, t=args.t)[0]),
                args.repeats, cpu)  # fmt: skip
            print(f"DSMI(Z;Y){n:>7} {t_ours:>10.3f} {t_ref:>13.3f} {t_ref / t_ours:>6.1f}×"
                  f" {v_ours:>10.5f} {abs(v_ours - v_ref):>9.2e}")  # fmt: skip
    print("\nratio = dse_dsmi time / ours (> 1: ours is faster); |diff| in bits")


if __name__ == "__main__":
    main()
