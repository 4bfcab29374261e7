"""Time one training step per optimizer, as a ratio to the SGD step measured in the same run.

A step is ``optimizer.step(closure)`` with the closure the trainer uses
(zero grads, forward, backward; BatchNorm statistics from the first pass
only), so it includes every forward/backward pass the optimizer needs:
1 for SGD, 2 for SAM / ASAM / GNR / SAM-ON, 4 for GAM.

    python benchmarks/train_step.py --device auto --model resnet20 --batch-size 128

All optimizers get the same initial model and batch. Rounds are interleaved
(every optimizer once per round, in a rotating order) so that slow drifts of
the machine hit all of them alike; the table reports the median over rounds.
By default the MLP and CNN are built with BatchNorm so that SAM-ON has
normalization parameters to perturb; ``--plain`` uses the models' defaults
(SAM-ON is then skipped when the model has no normalization layer).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from landscape.models import build_model, count_parameters
from landscape.train.optim import bn_first_pass_only, build_optimizer, normalization_parameters
from landscape.utils import resolve_device

OPTIMIZERS = ["sgd", "sam", "asam", "gam", "gnr", "sam_on"]
MODELS = {
    # name: (input shape, parameters that add normalization layers)
    "mlp": ((1, 8, 8), {"norm": "batchnorm"}),
    "cnn": ((3, 32, 32), {"batchnorm": True}),
    "resnet20": ((3, 32, 32), {}),
}
NUM_CLASSES = 10


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=30, help="timed steps per optimizer")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per optimizer first")
    p.add_argument("--plain", action="store_true", help="the models' default parameters")
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)"
    )
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    shape, norm_params = MODELS[args.model]
    model0 = build_model(
        args.model,
        input_shape=shape,
        num_classes=NUM_CLASSES,
        **({} if args.plain else norm_params),
    )
    x = torch.randn(args.batch_size, *shape, device=device)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)

    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    if "sgd" not in names:
        names.insert(0, "sgd")
    if "sam_on" in names and not normalization_parameters(model0):
        print("model has no normalization layers: skipping sam_on (drop --plain to add BatchNorm)")
        names.remove("sam_on")

    runs = {}
    for name in names:
        model = copy.deepcopy(model0).to(device).train()
        opt = build_optimizer(name, model, lr=0.01, weight_decay=5e-4, momentum=0.9)
        runs[name] = (model, opt)

    def one_step(name: str) -> None:
        model, opt = runs[name]

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss.detach()

        opt.step(bn_first_pass_only(model, closure))

    for name in names:
        for _ in range(args.warmup):
            one_step(name)
    sync(device)

    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            one_step(name)
            sync(device)
            times[name].append(time.perf_counter() - t0)

    median = {n: statistics.median(ts) for n, ts in times.items()}
    dev = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"model={args.model} params={count_parameters(model0):,} batch={args.batch_size} "
        f"device={dev} torch={torch.__version__} repeats={args.repeats} warmup={args.warmup}"
    )
    print(f"{'optimizer':<10}{'passes':>7}{'ms/step':>11}{'q25':>11}{'q75':>11}{'× sgd':>8}")
    for name in names:
        q = statistics.quantiles(times[name], n=4) if len(times[name]) > 1 else [median[name]] * 3
        passes = type(runs[name][1]).closure_calls
        print(
            f"{name:<10}{passes:>7}{1e3 * median[name]:>11.3f}{1e3 * q[0]:>11.3f}{1e3 * q[2]:>11.3f}"
            f"{median[name] / median['sgd']:>8.2f}"
        )


if __name__ == "__main__":
    main()
