"""Time every training monitor as a fraction of one training step, and count lambda_max's HVPs warm vs cold.

A step is one Adam step of a small MLP on a digits mini-batch (zero grads, forward, backward,
``optimizer.step()``). Each round takes one step, then calls every monitor once (``every=1``, in
a rotating order) on a fixed set of ``--monitor-samples`` training samples (the monitors'
defaults otherwise: ``per_sample_loss`` 32 samples, ``coherence`` 128), so the warm-started
monitors see the weights move as they do in training. The table reports the median over
rounds after ``--warmup`` untimed ones, and the ratio to the median step.
``attention_logits`` needs a transformer: it is timed on a small decoder-only transformer on
random token ids, against that model's own step (said so in the table).

    python benchmarks/monitors.py --device cpu --threads 2

The second table runs ``lambda_max`` and ``adam_sharpness`` with warm starts (the default,
which moves the previous Ritz vector along its steady drift; and plain, ``extrapolate=false``)
and with cold starts side by side along the same trajectory (the Adam mini-batch one; and ``lambda_max``
along full-batch GD on the monitor samples, the edge-of-stability setting) (same ``tol``, same stopping rule), sums their
HVPs after the first measurement (a cold start either way), and checks both against a float64
reference (Lanczos to 1e-10) at the last step: warm / cold is the HVP ratio at the same accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from landscape.models import build_model, count_parameters
from landscape.params import select_parameters
from landscape.train.config import TrainConfig
from landscape.train.monitors import (
    MONITORS,
    MonitorInputs,
    MonitorSet,
    adam_preconditioner,
    top_eigenpair,
)
from landscape.train.trainer import load_data
from landscape.utils import resolve_device


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--width", type=int, default=64, help="MLP width (2 hidden layers)")
    p.add_argument("--batch-size", type=int, default=128, help="training mini-batch")
    p.add_argument("--monitor-samples", type=int, default=512, help="the fixed set the monitors read")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--hvp-steps", type=int, default=30, help="training steps of the warm/cold comparison")
    p.add_argument("--hvp-every", type=int, default=1, help="training steps between two calls there")
    p.add_argument("--gd-lr", type=float, default=0.05, help="step of the full-batch GD trajectory")
    p.add_argument("--tol", type=float, default=1e-3, help="lambda_max / adam_sharpness tolerance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(z, t, reduction="none")


class Setup:
    """A model, its Adam optimizer, a mini-batch stream and the monitors' fixed samples."""

    def __init__(self, model, x, y, batch_size: int, samples: int, lr: float, seed: int) -> None:
        self.model, self.x, self.y, self.batch_size = model, x, y, batch_size
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)
        self.gen = torch.Generator().manual_seed(seed)
        self.mx, self.my = x[:samples], y[:samples]

    def step(self) -> None:
        idx = torch.randint(0, len(self.x), (self.batch_size,), generator=self.gen).to(self.x.device)
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x[idx]), self.y[idx]).backward()
        self.opt.step()


class FullBatchGD(Setup):
    """Full-batch gradient descent on the monitor samples (the edge-of-stability setting)."""

    def __init__(self, model, x, y, samples: int, lr: float) -> None:
        super().__init__(model, x, y, samples, samples, lr, 0)
        self.opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.mx), self.my).backward()
        self.opt.step()


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def overheads(setups: dict[str, Setup], names: list[str], args, device) -> dict[str, tuple[float, float]]:
    """Per monitor: (median seconds, median seconds of its model's step)."""
    home = {n: ("transformer" if n == "attention_logits" else "mlp") for n in names}
    sets = {n: MonitorSet([f"{n}:every=1"], ce, setups[home[n]].mx, setups[home[n]].my) for n in names}
    times: dict[str, list[float]] = {n: [] for n in [*names, "step:mlp", "step:transformer"]}
    for r in range(args.warmup + args.repeats):
        keep = r >= args.warmup
        for kind in ("mlp", "transformer"):
            if any(home[n] == kind for n in names):
                t = timed(setups[kind].step, device)
                if keep:
                    times[f"step:{kind}"].append(t)
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            s = setups[home[n]]
            t = timed(lambda s=s, n=n, r=r: sets[n].run(r, s.model, s.opt), device)
            if keep:
                times[n].append(t)
    return {n: (statistics.median(times[n]), statistics.median(times[f"step:{home[n]}"])) for n in names}


def warm_vs_cold(args, model, s: Setup, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    out = {}
    for name in names:
        spec = f"{name}:every=1,steps=200,tol={args.tol}"
        sets = {"warm": MonitorSet([spec], ce, s.mx, s.my),
                "plain": MonitorSet([spec + ",extrapolate=false"], ce, s.mx, s.my),
                "cold": MonitorSet([spec + ",warm=false"], ce, s.mx, s.my)}
        out[name] = {"warm": 0, "plain": 0, "cold": 0, "calls": 0}
        out[name]["first"] = None
        last = {}
        for step in range(args.hvp_steps + 2):
            for _ in range(args.hvp_every):
                s.step()
            got = {kind: m.run(step, model, s.opt) for kind, m in sets.items()}
            if out[name]["first"] is None:
                out[name]["first"] = got["warm"][f"{name}_hvps"]
            else:
                for kind in sets:
                    out[name][kind] += got[kind][f"{name}_hvps"]
                out[name]["calls"] += 1
            last = {kind: got[kind][name] for kind in sets}
        inp = MonitorInputs(model, ce, s.mx, s.my, 0, s.opt)
        scale = None
        if name == "adam_sharpness":
            d = adam_preconditioner(model, s.opt, select_parameters(model).names).rsqrt()

            def scale(op, d=d):
                return d

        ref = top_eigenpair(inp, steps=400, tol=1e-10, rule="residual", dtype=torch.float64,
                            scale=scale)["lambda_max"]
        out[name]["ref"] = ref
        for kind in sets:
            out[name][f"err_{kind}"] = abs(last[kind] - ref) / abs(ref)
    return out


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load_data(TrainConfig(train_size=1200))
    x, y = data.train.x.to(device), data.train.y.to(device)
    mlp = build_model("mlp", data.input_shape, data.num_classes, width=args.width, depth=2).to(device)
    ids = torch.randint(0, 16, (len(x), 16), generator=torch.Generator().manual_seed(args.seed)).to(device)
    tokens_y = torch.randint(0, 16, (len(x),), generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    tf = build_model("transformer", (16,), 16, vocab=16, layers=2, width=64, heads=4).to(device)
    setups = {
        "mlp": Setup(mlp, x, y, args.batch_size, args.monitor_samples, args.lr, args.seed),
        "transformer": Setup(tf, ids, tokens_y, args.batch_size, args.monitor_samples, args.lr, args.seed),
    }
    names = list(MONITORS.names())
    med = overheads(setups, names, args, device)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"mlp: digits 8x8, width {args.width}, depth 2, params={count_parameters(mlp):,}; "
          f"transformer (attention_logits only): 2 layers, width 64, T=16, params={count_parameters(tf):,}")
    print(f"step: Adam lr={args.lr}, batch {args.batch_size}; monitor samples {args.monitor_samples}; "
          f"device={dev} torch={torch.__version__} repeats={args.repeats} warmup={args.warmup}")
    print(f"{'monitor':<18}{'model':<13}{'ms':>9}{'step ms':>9}{'× step':>9}  cost")
    for n in names:
        m, st = med[n]
        kind = "transformer" if n == "attention_logits" else "mlp"
        print(f"{n:<18}{kind:<13}{1e3 * m:>9.2f}{1e3 * st:>9.2f}{m / st:>9.2f}  {MONITORS[n].cost}")

    rows = []
    for label, make, names_ in (
        (f"adam lr={args.lr}, batch {args.batch_size}",
         lambda m: Setup(m, x, y, args.batch_size, args.monitor_samples, args.lr, args.seed),
         ("lambda_max", "adam_sharpness")),
        (f"full-batch GD lr={args.gd_lr}", lambda m: FullBatchGD(m, x, y, args.monitor_samples, args.gd_lr),
         ("lambda_max",)),
    ):
        torch.manual_seed(args.seed)
        model = build_model("mlp", data.input_shape, data.num_classes, width=args.width, depth=2).to(device)
        rows += [(label, n, r) for n, r in warm_vs_cold(args, model, make(model), names_).items()]
    print(f"\nwarm vs cold starts over {args.hvp_steps + 1} calls after the first ({args.hvp_every} training "
          f"step(s) between calls), tol {args.tol}, rule 'error'; relative error vs a float64 reference at the "
          "last call")
    print("warm: from the previous Ritz vector moved along its steady drift (extrapolate=true, the default); "
          "plain: from the previous Ritz vector (extrapolate=false); cold: warm=false")
    print(f"{'trajectory':<26}{'monitor':<16}{'first':>7}{'warm':>7}{'plain':>7}{'cold':>7}{'warm/cold':>11}"
          f"{'plain/cold':>12}{'err warm':>10}{'err plain':>11}{'err cold':>10}")
    for label, n, r in rows:
        print(f"{label:<26}{n:<16}{r['first']:>7}{r['warm']:>7}{r['plain']:>7}{r['cold']:>7}"
              f"{r['warm'] / r['cold']:>11.3f}{r['plain'] / r['cold']:>12.3f}"
              f"{r['err_warm']:>10.1e}{r['err_plain']:>11.1e}{r['err_cold']:>10.1e}")


if __name__ == "__main__":
    main()
