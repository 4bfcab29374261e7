"""The training commands: ``train`` (one run), ``demo`` (train, probe and draw on sklearn's digits)
and ``sweep`` (a grid of runs). Each is one library call: :func:`landscape.train.trainer.train`,
:func:`landscape.demo.run_demo`, :func:`landscape.sweep.sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from landscape.checkpoints import RunDir
from landscape.demo import run_demo
from landscape.sweep import expand_grid, read_grid
from landscape.sweep import sweep as run_sweep
from landscape.train.config import TrainConfig
from landscape.train.trainer import train as run_training
from landscape_cli.app import console, end_with_failures, err_console, lit
from landscape_cli.options import DEVICE, PROGRESS, parse_key_values
from landscape_cli.printing import failed_tasks, print_summary, progress_bar


def build_train_config(config_file: Path | None, overrides: dict[str, Any], params: dict[str, dict[str, Any]]):
    """The config from ``--config`` (or the defaults), with explicitly given flags applied on top."""
    base = TrainConfig.from_json(config_file) if config_file else TrainConfig()
    changes = {k: v for k, v in overrides.items() if v is not None}
    for key, extra in params.items():
        if extra:
            changes[key] = {**getattr(base, key), **extra}
    return base.replace(**changes) if changes else base


def train(
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
    config: Path | None = typer.Option(None, "--config", "-c", help="JSON config (flags override it)."),
    model: str | None = typer.Option(None, help="Model name (see `landscape models`)."),
    width: int | None = typer.Option(None, help="Model width (shortcut for --model-param width=…)."),
    depth: int | None = typer.Option(None, help="Model depth (shortcut for --model-param depth=…)."),
    model_param: list[str] | None = typer.Option(None, "--model-param", help="KEY=VALUE, repeatable."),
    dataset: str | None = typer.Option(None, help="Dataset name (see `landscape datasets`)."),
    dataset_param: list[str] | None = typer.Option(None, "--dataset-param", help="KEY=VALUE, repeatable."),
    context: int | None = typer.Option(None, help="Sequence length of a text dataset (shortcut for "
                                       "--dataset-param context=…, e.g. shakespeare_chars)."),
    train_size: int | None = typer.Option(None, help="Use a subset of this many training samples."),
    label_noise: float | None = typer.Option(None, help="Fraction of training labels flipped."),
    random_labels: bool | None = typer.Option(None, "--random-labels/--real-labels", help="Replace all training labels."),
    imbalance_ratio: float | None = typer.Option(None, help="Long-tail ratio n_max/n_min (1 = balanced)."),
    data_seed: int | None = typer.Option(None, help="Seed of the split, subset and label noise."),
    loss: str | None = typer.Option(None, help="Loss name (see `landscape losses`)."),
    loss_param: list[str] | None = typer.Option(None, "--loss-param", help="KEY=VALUE, repeatable."),
    z_loss: float | None = typer.Option(None, help="Coefficient of the logit z-loss term."),
    flooding: float | None = typer.Option(None, help="Flooding level b: |L − b| + b."),
    optimizer: str | None = typer.Option(None, help="Optimizer name (see `landscape optimizers`)."),
    base_optimizer: str | None = typer.Option(None, help="Base optimizer of the sharpness-aware family."),
    rho: float | None = typer.Option(None, help="Perturbation radius of SAM-type optimizers."),
    momentum: float | None = typer.Option(None, help="SGD momentum."),
    optimizer_param: list[str] | None = typer.Option(None, "--optimizer-param", help="KEY=VALUE, repeatable."),
    lr: float | None = typer.Option(None, help="Learning rate."),
    weight_decay: float | None = typer.Option(None, help="Weight decay."),
    decoupled_weight_decay: bool | None = typer.Option(
        None, "--decoupled-wd/--coupled-wd", help="Decoupled (AdamW-style) or coupled (L2) decay."
    ),
    schedule: str | None = typer.Option(None, help="LR schedule: constant, step, cosine, linear."),
    schedule_param: list[str] | None = typer.Option(None, "--schedule-param", help="KEY=VALUE, repeatable."),
    warmup_epochs: float | None = typer.Option(None, help="Linear warmup length in epochs."),
    epochs: int | None = typer.Option(None, help="Training epochs."),
    batch_size: int | None = typer.Option(None, help="Mini-batch size."),
    seed: int | None = typer.Option(None, help="Seed of the initialization and batch order."),
    checkpoints: str | None = typer.Option(
        None, help="Checkpoint schedule: every:K, epochs:1,2,5, steps:100,500, log:N, none."
    ),
    stop_at_train_loss: float | None = typer.Option(
        None, "--stop-at-train-loss", help="Stop at the first epoch whose full train-set loss is ≤ X "
        "(checkpointed there and recorded in metrics.jsonl); Jiang et al.'s equal-loss protocol."
    ),
    monitor: list[str] | None = typer.Option(
        None, "--monitor", help="NAME[:every=K,subset=N,KEY=VALUE,...], repeatable: a monitor measured while "
        "training, into metrics.jsonl (lambda_max, adam_sharpness, grad_norm, weight_norm, update_norm, "
        "logit_stats, softmax_collapse, nlm_cosine, per_sample_loss, coherence, attention_logits)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in --out."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a model and write a run directory (config.json, checkpoints/, metrics.jsonl)."""
    overrides = dict(
        model=model, dataset=dataset, train_size=train_size, label_noise=label_noise,
        random_labels=random_labels, imbalance_ratio=imbalance_ratio, data_seed=data_seed, loss=loss,
        z_loss=z_loss, flooding=flooding, optimizer=optimizer, base_optimizer=base_optimizer, lr=lr,
        weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay, schedule=schedule,
        warmup_epochs=warmup_epochs, epochs=epochs, batch_size=batch_size, seed=seed, checkpoints=checkpoints,
        stop_at_train_loss=stop_at_train_loss,
    )  # fmt: skip
    shortcuts = {"width": width, "depth": depth}
    model_params = {**{k: v for k, v in shortcuts.items() if v is not None}, **parse_key_values(model_param, "--model-param")}
    optim_shortcuts = {"rho": rho, "momentum": momentum}
    optimizer_params = {
        **{k: v for k, v in optim_shortcuts.items() if v is not None},
        **parse_key_values(optimizer_param, "--optimizer-param"),
    }
    params = {
        "model_params": model_params,
        "dataset_params": {**({"context": context} if context is not None else {}),
                           **parse_key_values(dataset_param, "--dataset-param")},
        "loss_params": parse_key_values(loss_param, "--loss-param"),
        "optimizer_params": optimizer_params,
        "schedule_params": parse_key_values(schedule_param, "--schedule-param"),
    }
    given = config is not None or any(v is not None for v in overrides.values()) or any(params.values())
    if resume and not given and (out / "config.json").is_file():
        cfg = TrainConfig.from_run(RunDir(out))  # `landscape train --out RUN --resume` continues the stored config
    else:
        cfg = build_train_config(config, overrides, params)
    result = run_training(cfg, out, resume=resume, overwrite=overwrite, device=device, progress=progress,
                          monitors=monitor)
    final = result.final
    console.print(
        f"run directory: [bold]{lit(result.run_dir)}[/]  steps {result.steps}  "
        f"train acc {final.get('train_acc', float('nan')):.4f}  test acc {final.get('test_acc', float('nan')):.4f}"
    )
    if result.stopped is not None:
        console.print(f"stopped at step {result.stopped['step']} (epoch {result.stopped['epoch']:g}): "
                      f"train loss {result.stopped['value']:.4g} ≤ {result.stopped['threshold']:g}")


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run directory to write (replaced if it holds a run)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    epochs: int = typer.Option(30, help="Training epochs."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train an MLP with SAM on sklearn's digits, then run every probe on it and draw the figures."""
    result = run_demo(out, device=device, epochs=epochs, progress=progress)
    run_dir = result.training.run_dir
    table = Table(title=f"training: {lit(run_dir)}")
    for col in ("epoch", "train loss", "train acc", "test loss", "test acc"):
        table.add_column(col, justify="right")
    for r in RunDir(run_dir).metrics():
        if "train_loss" in r and float(r["epoch"]).is_integer() and int(r["epoch"]) % 5 == 0:
            table.add_row(
                f"{r['epoch']:.0f}", f"{r['train_loss']:.4f}", f"{r['train_acc']:.4f}",
                f"{r['test_loss']:.4f}", f"{r['test_acc']:.4f}",
            )  # fmt: skip
    console.print(table)
    for probe, records in result.results.items():
        print_summary(probe, records)
    for probe, error in result.failures.items():
        err_console.print(f"[bold red]{lit(probe)} failed:[/] {lit(error)}", highlight=False, soft_wrap=True)
    console.print(f"run directory: [bold]{lit(run_dir)}[/]  results: {lit(run_dir / 'analysis.h5')}  "
                  f"figures: {lit(run_dir / 'plots')} ({len(result.figures)} files)")
    if result.failures:  # after everything else is stored and printed: a script can tell
        n_probes = len({*result.results, *(key.partition(" ")[0] for key in result.failures)})
        end_with_failures(f"{failed_tasks(result.failures, n_probes, None)} "
                          f"(recorded under /failures in {run_dir / 'analysis.h5'}); the others are stored")


def sweep(
    grid: Path = typer.Argument(..., help="Grid file (JSON or YAML): {'base': {...}, 'grid': {key: [values]}}."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder of the runs (one RUN_DIR per combination)."),
    device: str = DEVICE,
    executor: str = typer.Option("local", "--executor", help="local, process (a pool of --workers) or ray."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (process/ray)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: a local Ray)."),
    progress: bool = PROGRESS,
) -> None:
    """Train the cartesian product of a grid of hyper-parameters; finished runs are skipped, interrupted ones resume."""
    spec = read_grid(grid)
    n = len(expand_grid(spec))  # a malformed grid fails here, before anything is trained
    with progress_bar(progress) as bar:
        bar.add_task(f"sweep: {n} runs", total=None, work=f"executor {executor}")
        results = run_sweep(spec, out, device=device, executor=executor, workers=workers, address=address)
    table = Table(title=f"sweep {lit(grid)} → {lit(out)}")
    for c in ("run", "status", "test acc"):
        table.add_column(c, justify="left" if c == "run" else "right", overflow="fold")  # names never cut
    for r in results:
        table.add_row(lit(r.name), lit(r.status), "–" if r.test_acc is None else f"{r.test_acc:.4f}")
    console.print(table)
