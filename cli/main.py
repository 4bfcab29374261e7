"""`landscape` command-line entry point.

Every command is one library call; user mistakes (``LandscapeError``) end in one line on stderr
and exit code 2, without a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from landscape.errors import ConfigError, LandscapeError
from landscape.probes.base import default_probes, probe_order

app = typer.Typer(
    name="landscape",
    help="Train networks with the losses and optimizers the generalization literature studies, "
    "then measure the geometry of what was trained.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# User text (paths, names, settings) is printed literally: no emoji codes anywhere, and every
# piece of it inside a markup string goes through _lit (rich.markup.escape).
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


def _lit(value: Any) -> str:
    """``value`` as text that rich prints literally inside a markup string."""
    return escape(str(value))


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["width=256", "activation=gelu"]`` → ``{"width": 256, "activation": "gelu"}`` (values parsed as JSON when they can be)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def build_train_config(config_file: Path | None, overrides: dict[str, Any], params: dict[str, dict[str, Any]]):
    """The config from ``--config`` (or the defaults), with explicitly given flags applied on top."""
    from landscape.train.config import TrainConfig

    base = TrainConfig.from_json(config_file) if config_file else TrainConfig()
    changes = {k: v for k, v in overrides.items() if v is not None}
    for key, extra in params.items():
        if extra:
            changes[key] = {**getattr(base, key), **extra}
    return base.replace(**changes) if changes else base


@app.command()
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
    from landscape.checkpoints import RunDir
    from landscape.train.config import TrainConfig
    from landscape.train.trainer import train as run_training

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
        f"run directory: [bold]{_lit(result.run_dir)}[/]  steps {result.steps}  "
        f"train acc {final.get('train_acc', float('nan')):.4f}  test acc {final.get('test_acc', float('nan')):.4f}"
    )
    if result.stopped is not None:
        console.print(f"stopped at step {result.stopped['step']} (epoch {result.stopped['epoch']:g}): "
                      f"train loss {result.stopped['value']:.4g} ≤ {result.stopped['threshold']:g}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run directory to write (replaced if it holds a run)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    epochs: int = typer.Option(30, help="Training epochs."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train an MLP with SAM on sklearn's digits, then run every probe on it and draw the figures."""
    from landscape.checkpoints import RunDir
    from landscape.demo import run_demo

    result = run_demo(out, device=device, epochs=epochs, progress=progress)
    run_dir = result.training.run_dir
    table = Table(title=f"training: {_lit(run_dir)}")
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
        _print_summary(probe, records)
    for probe, error in result.failures.items():
        err_console.print(f"[bold red]{_lit(probe)} failed:[/] {_lit(error)}", highlight=False, soft_wrap=True)
    console.print(f"run directory: [bold]{_lit(run_dir)}[/]  results: {_lit(run_dir / 'analysis.h5')}  "
                  f"figures: {_lit(run_dir / 'plots')} ({len(result.figures)} files)")


# ---- probes ------------------------------------------------------------------------------------

TARGET = typer.Argument(..., help="RUN_DIR, one of its checkpoint files, or a foreign checkpoint file/folder.")
CHECKPOINTS_HELP = ("last, first, all, every:N, a step (or epoch), step:S, epoch:E, a name or a glob (epoch_1*); "
                    "comma lists mix them. Checkpoints are in training order (epoch_5 before epoch_10).")
CHECKPOINTS = typer.Option("last", "--checkpoints", help=CHECKPOINTS_HELP)
STRIP_PREFIX = typer.Option(None, "--strip-prefix", help="Load the weights under this key prefix, without it "
                            "(e.g. model. for a Lightning module's self.model); a prefix every key shares and the "
                            "model lacks is stripped by itself.")
DATA_FACTORY = typer.Option(None, "--data-factory", help="pkg.module:fn (or file.py:fn) returning your (train, test) "
                            "data: (x, y) arrays, a Dataset or a DataLoader each; called with the --dataset-param values.")
TASK = typer.Option("classification", "--task", help="What the --data-factory targets are: classification "
                    "(labels (N,)), causal_lm or token_classification (token ids (N, T), -100 ignored; the loss is "
                    "per token, token-weighted), regression (values; squared error, no accuracy).")
TARGET_KEY = typer.Option("labels", "--target-key", help="The key of a dict batch that holds the targets "
                          "(the other keys are the model's keyword inputs).")
OUTSIDE_LINKS = typer.Option(False, "--allow-outside-links", help="Follow checkpoints of a run that are symlinks "
                             "to files outside it (refused by default).")
WEIGHTS = typer.Option("auto", "--weights", help="ema, raw, or auto (EMA weights where the checkpoint has them); "
                       "the choice is recorded with the results.")
OUT = typer.Option(None, "--out", "-o", help="Results file (default RUN_DIR/analysis.h5).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N.")
MODEL = typer.Option(None, "--model", help="Model name, for a checkpoint outside a RUN_DIR.")
MODEL_PARAM = typer.Option(None, "--model-param", help="KEY=VALUE for --model, repeatable.")
NUM_CLASSES = typer.Option(None, "--num-classes", help="Class count, for --model.")
INPUT_SHAPE = typer.Option(None, "--input-shape", help="Input shape C,H,W (or D), for --model.")
FACTORY = typer.Option(None, "--model-factory", help="pkg.module:function building the model.")
DATASET = typer.Option(None, "--dataset", help="Dataset, required for a checkpoint outside a RUN_DIR, e.g. "
                       "npz with --dataset-param path=FILE.npz (used as given; normalize=standardize to standardize).")
DATASET_PARAM = typer.Option(None, "--dataset-param", help="KEY=VALUE for --dataset, repeatable.")
LOSS = typer.Option(None, "--loss", help="Loss, for a checkpoint outside a RUN_DIR (default ce).")
FORCE = typer.Option(False, "--force", help="Recompute results already stored with the same settings.")
PLOTS = typer.Option(True, "--plots/--no-plots", help="Write figures to the plots/ folder beside the results.")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress.")


def _foreign_specs(model, model_param, num_classes, input_shape, factory, dataset, dataset_param, loss,
                   data_factory=None, task="classification", target_key="labels"):
    """Model and data specs for checkpoints outside a RUN_DIR (ignored for a RUN_DIR)."""
    from landscape.checkpoints import ModelSpec
    from landscape.targets import DataSpec

    shape = None
    if input_shape:
        try:
            shape = tuple(int(s) for s in input_shape.split(","))
        except ValueError:
            raise ConfigError(f"--input-shape takes integers like 3,32,32, got {input_shape!r}") from None
    model_spec = None
    if model or factory:
        model_spec = ModelSpec(name=model, input_shape=shape, num_classes=num_classes,
                               params=parse_key_values(model_param, "--model-param"), factory=factory)
    if dataset is not None and data_factory is not None:
        raise ConfigError("give --dataset or --data-factory, not both")
    data_spec = DataSpec(dataset=dataset, dataset_params=parse_key_values(dataset_param, "--dataset-param"),
                         loss=loss or "ce", factory=data_factory, task=task, target_key=target_key)
    # without --dataset the spec stays incomplete: a RUN_DIR ignores it, a foreign checkpoint is refused
    if (model_spec is not None and model_spec.factory is None and (shape is None or num_classes is None)
            and dataset is not None):
        from landscape.datasets import load_dataset

        data = load_dataset(data_spec.dataset, **data_spec.dataset_params)
        model_spec = ModelSpec(name=model, input_shape=shape or data.input_shape,
                               num_classes=num_classes or data.num_classes, params=model_spec.params)
    return model_spec, data_spec


def _run_probe_cli(probe: str, cfg, target: Path, checkpoints: str, out: Path | None, device: str, foreign,
                   force: bool, plots: bool, progress: bool, unit: str = "", work_per_target: int = 0,
                   weights: str = "auto", strip_prefix: str | None = None,
                   allow_outside_links: bool = False) -> None:
    """Run a probe with a progress bar: over checkpoints, or over units of work (``work_per_target``
    per checkpoint, e.g. grid points) with an ETA; then a summary table and the figures."""
    from landscape.analyze import check_model_specs, default_output, run_probe
    from landscape.targets import resolve_targets

    model_spec, data_spec = foreign
    targets = resolve_targets(target, checkpoints, weights=weights, strip_prefix=strip_prefix)  # fails first
    n_targets = len(targets)
    out_path = out if out is not None else default_output(target)
    check_model_specs(targets, model_spec)  # so does a factory that cannot (or may not) be used
    with _analysis_progress(progress) as bar:
        total = n_targets * work_per_target if work_per_target else n_targets
        task = bar.add_task(probe, total=total, work="")
        finished = {"targets": 0}
        failures: dict[str, str] = {}
        data_lines: list[str] = []

        def on_failure(t, error):
            failures[t.name] = error

        def on_target(t, state):
            if state in ("done", "stored", "failed"):
                finished["targets"] += 1
                bar.update(task, completed=finished["targets"] * (work_per_target or 1))
            bar.update(task, description=f"{probe} {t.name}", work="(stored)" if state == "stored" else "")

        def on_progress(t, n):
            if work_per_target:
                bar.update(task, completed=finished["targets"] * work_per_target + n, work=unit)
            else:
                bar.update(task, work=f"{n} {unit}" if unit else "")

        records = run_probe(target, probe, cfg, checkpoints=checkpoints, out=out_path, device=device,
                            model_spec=model_spec, data_spec=data_spec, force=force,
                            weights=weights, strip_prefix=strip_prefix,
                            allow_outside_links=allow_outside_links, on_failure=on_failure,
                            on_progress=on_progress, on_target=on_target, on_data=data_lines.append)
    if failures and not records:  # nothing could be loaded: the error itself, one line, exit 2
        errors = set(failures.values())
        if len(errors) == 1:
            raise LandscapeError(errors.pop())
        _print_failures({f"{probe} {name}": error for name, error in failures.items()})
        raise typer.Exit(2)
    _print_data(data_lines)
    _print_summary(probe, records)
    _print_failures({f"{probe} {name}": error for name, error in failures.items()})
    console.print(f"results: [bold]{_lit(out_path)}[/]")
    if plots:
        from landscape.figures import plots_dir_for, probe_figures

        folder = plots_dir_for(out_path)
        written = probe_figures(out_path, probe, folder)
        if written:
            console.print(f"figures: [bold]{_lit(folder)}[/] ({len(written)} files)")


def _print_summary(probe: str, records) -> None:
    """One row per (checkpoint, split) with the probe's summary values."""
    import numpy as np

    from landscape.probes import PROBES

    keys = PROBES[probe].summary
    table = Table(title=_lit(probe))
    table.add_column("checkpoint", style="bold", no_wrap=True)
    has_splits = any(isinstance(r.result.get("train"), dict) or isinstance(r.result.get("test"), dict) for r in records)
    if has_splits:
        table.add_column("split")
    for k in keys:
        table.add_column(k, justify="right")
    for r in records:
        splits = {k: v for k, v in r.result.items() if k in ("train", "test") and isinstance(v, dict)}
        for split, values in (splits or {"": r.result}).items():
            cells = []
            for k in keys:
                v = values.get(k)
                arr = None if v is None else np.atleast_1d(np.asarray(v, dtype=float))
                cells.append("–" if arr is None else ", ".join(f"{a:.4g}" for a in arr[:5]))
            name = r.target.name + (" (stored)" if r.skipped else "")
            table.add_row(_lit(name), *([split] if has_splits else []), *cells)
    console.print(table)


# ---- probe commands, generated from the probes' declarations ------------------------------------
# ``landscape PROBE TARGET [--KEY VALUE ...] [--setting KEY=VALUE ...] [shared options]``: one
# ``--KEY`` per field of the probe's config (help from the field's metadata, default shown), plus
# the options every probe command shares, declared here once and handled by _run_probe_cli.


def _shared_options(checkpoints: str) -> list[tuple[str, Any, Any]]:
    return [
        ("checkpoints", str, typer.Option(checkpoints, "--checkpoints", help=CHECKPOINTS_HELP)),
        ("out", Optional[Path], OUT), ("device", str, DEVICE), ("model", Optional[str], MODEL),
        ("model_param", Optional[list[str]], MODEL_PARAM), ("num_classes", Optional[int], NUM_CLASSES),
        ("input_shape", Optional[str], INPUT_SHAPE), ("model_factory", Optional[str], FACTORY),
        ("dataset", Optional[str], DATASET), ("dataset_param", Optional[list[str]], DATASET_PARAM),
        ("loss", Optional[str], LOSS), ("force", bool, FORCE), ("plots", bool, PLOTS), ("progress", bool, PROGRESS),
        ("weights", str, WEIGHTS), ("strip_prefix", Optional[str], STRIP_PREFIX),
        ("allow_outside_links", bool, OUTSIDE_LINKS), ("data_factory", Optional[str], DATA_FACTORY),
        ("task", str, TASK), ("target_key", str, TARGET_KEY),
    ]


_RESERVED = {"ctx", "target", "setting", *(name for name, _, _ in _shared_options("last"))}


def _scalar(tp: Any) -> Any:
    """``int``/``float``/``str`` for ``T`` or ``T | None`` (a type typer parses itself), else None."""
    if tp in (int, float, str):
        return tp
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) in (Union, UnionType) and len(args) == 1 and args[0] in (int, float, str):
        return args[0]
    return None


def _describe_type(tp: Any) -> str:
    parts = []
    for a in (get_args(tp) if get_origin(tp) in (Union, UnionType) else (tp,)):
        if a is type(None):
            parts.append("none")
        elif get_origin(a) is tuple:
            items = get_args(a)
            n = "" if items[-1] is Ellipsis else f"{len(items)} "
            parts.append(f"{n}comma-separated {items[0].__name__} values (e.g. 0.1,0.2)")
        else:
            parts.append(getattr(a, "__name__", str(a)))
    return " or ".join(parts)


def parse_setting(tp: Any, flag: str, text: str) -> Any:
    """The value of a setting of type ``tp`` (a tuple, a union such as ``float | str``) given as
    text: ``0.1,0.2`` for a tuple, ``none`` for None, each alternative of a union tried in order."""
    options = get_args(tp) if get_origin(tp) in (Union, UnionType) else (tp,)
    if type(None) in options and text.strip().lower() in ("none", "null"):
        return None
    for a in options:
        try:
            if get_origin(a) is tuple:
                items = get_args(a)
                values = tuple(items[0](v.strip()) for v in text.split(",") if v.strip())
                if values and (items[-1] is Ellipsis or len(values) == len(items)):
                    return values
            elif a is bool:
                if text.strip().lower() in ("true", "false", "1", "0"):
                    return text.strip().lower() in ("true", "1")
            elif a in (int, float, str):
                return a(text)
        except ValueError:
            continue
    raise ConfigError(f"{flag} takes {_describe_type(tp)}, got {text!r}")


def _setting_params(probe) -> list[tuple[inspect.Parameter, Callable[[Any], Any] | None]]:
    """One keyword parameter (a typer option) per config field, and how to read its value."""
    hints = get_type_hints(probe.config)
    kw = inspect.Parameter.KEYWORD_ONLY
    out = []
    for f in dataclasses.fields(probe.config):
        if f.name in _RESERVED:
            raise ValueError(f"probe {probe.name!r}: setting {f.name!r} clashes with an option every probe "
                             "command has; rename the field")
        tp, flag = hints[f.name], "--" + f.name.replace("_", "-")
        names = (flag, *probe.cli_names.get(f.name, ()))
        help_text = str(f.metadata.get("help", ""))
        default = None if f.default is dataclasses.MISSING else f.default
        parse = None
        if tp is bool:
            option = typer.Option(default, f"{flag}/--no-{flag[2:]}", *names[1:], help=help_text)
            ann: Any = bool
        elif _scalar(tp) is not None:
            option, ann = typer.Option(default, *names, help=help_text), (tp if tp is _scalar(tp) else Optional[_scalar(tp)])
        else:  # a tuple or a union: text, parsed here
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
            option = typer.Option(None, *names, help=help_text, show_default=shown if default is not None else False,
                                  metavar="TEXT")
            ann = Optional[str]
            parse = functools.partial(parse_setting, tp, flag)
        out.append((inspect.Parameter(f.name, kw, default=option, annotation=ann), parse))
    return out


def add_probe_command(name: str) -> None:
    """Register ``landscape NAME``: the probe's settings as ``--KEY VALUE`` options generated from
    its config, ``--setting KEY=VALUE`` as an alternative, and the shared options."""
    from landscape.probes import PROBES, make_config

    probe = PROBES[name]
    settings = _setting_params(probe)
    shared = _shared_options(probe.checkpoints)
    kw = inspect.Parameter.KEYWORD_ONLY

    def command(ctx: typer.Context, target: Path, **kwargs: Any) -> None:
        opts = {key: kwargs.pop(key) for key, _, _ in shared}
        given: dict[str, Any] = {}
        for param, parse in settings:
            value = kwargs.pop(param.name)
            source = ctx.get_parameter_source(param.name)  # only what the user gave overrides the config
            if source is not None and source.name != "DEFAULT":
                given[param.name] = parse(value) if parse is not None else value
        extra = parse_key_values(kwargs.pop("setting"), "--setting")
        twice = sorted(set(given) & set(extra))
        if twice:
            raise ConfigError(f"{twice[0]} is given twice (--{twice[0].replace('_', '-')} and --setting "
                              f"{twice[0]}=…); give it once")
        cfg = make_config(name, **given, **extra)
        foreign = _foreign_specs(opts["model"], opts["model_param"], opts["num_classes"], opts["input_shape"],
                                 opts["model_factory"], opts["dataset"], opts["dataset_param"], opts["loss"],
                                 opts["data_factory"], opts["task"], opts["target_key"])
        _run_probe_cli(name, cfg, target, opts["checkpoints"], opts["out"], opts["device"], foreign,
                       opts["force"], opts["plots"], opts["progress"], unit=probe.unit,
                       work_per_target=probe.work(cfg) if probe.work else 0, weights=opts["weights"],
                       strip_prefix=opts["strip_prefix"], allow_outside_links=opts["allow_outside_links"])

    setting = typer.Option(None, "--setting", help="KEY=VALUE probe setting, repeatable (an alternative to --KEY VALUE).")
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
         inspect.Parameter("target", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=TARGET, annotation=Path),
         *(param for param, _ in settings),
         inspect.Parameter("setting", kw, default=setting, annotation=Optional[list[str]]),
         *(inspect.Parameter(key, kw, default=default, annotation=ann) for key, ann, default in shared)]
    )
    command.__doc__, command.__name__ = probe.cli_help, name
    app.command(name)(command)


def add_probe_commands() -> list[str]:
    """Give every registered probe without a command its ``landscape NAME`` (probe order); the
    names added. Run at import and again by :func:`main`, so a probe registered later (a plugin
    module) has its command too."""
    have = {c.name for c in app.registered_commands}
    added = [name for name in probe_order() if name not in have]
    for name in added:
        add_probe_command(name)
    return added


add_probe_commands()


@app.command()
def analyze(
    target: Path = TARGET,
    probes: str = typer.Option("default", "--probes", help=f"default ({','.join(default_probes())}), all, or a comma list."),
    setting: Optional[list[str]] = typer.Option(None, "--setting", help="PROBE.KEY=VALUE, repeatable (e.g. hessian.top_k=10)."),
    checkpoints: str = CHECKPOINTS, out: Optional[Path] = OUT, device: str = DEVICE,
    executor: str = typer.Option("local", "--executor", help=(
        "local; process (a pool of --workers warm processes, one task per checkpoint with all its probes); "
        "ray; or auto: times the first checkpoint in-process and uses the pool only when the rest is "
        "estimated clearly longer than starting it (the choice and why are printed).")),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (process/ray/auto; default: one per CPU)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: a local Ray)."),
    model: Optional[str] = MODEL, model_param: Optional[list[str]] = MODEL_PARAM, num_classes: Optional[int] = NUM_CLASSES,
    input_shape: Optional[str] = INPUT_SHAPE, model_factory: Optional[str] = FACTORY, dataset: Optional[str] = DATASET,
    dataset_param: Optional[list[str]] = DATASET_PARAM, loss: Optional[str] = LOSS,
    force: bool = FORCE, plots: bool = PLOTS, progress: bool = PROGRESS,
    weights: str = WEIGHTS, strip_prefix: Optional[str] = STRIP_PREFIX,
    allow_outside_links: bool = OUTSIDE_LINKS, data_factory: Optional[str] = typer.Option(
        None, "--data-factory", help="pkg.module:fn (or file.py:fn) returning your (train, test) data: "
        "(x, y) arrays, a Dataset or a DataLoader each; called with the --dataset-param values."),
    task: str = TASK, target_key: str = TARGET_KEY,
) -> None:
    """Run several probes on a run's checkpoints into one results file; a failing probe is reported and the others go on.

    TARGET may also be a folder of foreign .safetensors/.pt files with --model (or --model-factory) and --dataset."""
    from landscape.analyze import analyze as run_analysis
    from landscape.analyze import default_output
    from landscape.figures import plots_dir_for, probe_figures

    settings: dict[str, dict[str, Any]] = {}
    for key, value in parse_key_values(setting, "--setting").items():
        probe, dot, name = key.partition(".")
        if not dot or not name:
            raise ConfigError(f"--setting takes PROBE.KEY=VALUE, got {key!r}")
        settings.setdefault(probe, {})[name] = value
    from landscape.analyze import check_model_specs, parse_probes
    from landscape.probes import make_config
    from landscape.targets import resolve_targets

    targets = resolve_targets(target, checkpoints, weights=weights, strip_prefix=strip_prefix)  # fails first
    out_path = out if out is not None else default_output(target)
    names = parse_probes(probes)
    for name in names:  # argument mistakes fail here, before any progress output
        make_config(name, **settings.get(name, {}))
    from landscape.analyze import check_executor

    check_executor(executor, workers)
    model_spec, data_spec = _foreign_specs(model, model_param, num_classes, input_shape, model_factory,
                                           dataset, dataset_param, loss, data_factory, task, target_key)
    check_model_specs(targets, model_spec)  # a factory that cannot (or may not) be used: one line, once
    data_lines: list[str] = []
    with _analysis_progress(progress) as bar:
        task = bar.add_task("analyze", total=len(names) * len(targets), work="")
        now = {"probe": names[0], "finished": 0}

        def on_probe(name):
            now["probe"] = name
            bar.update(task, description=f"{name} ({names.index(name) + 1}/{len(names)})", work="")

        def on_target(t, state):
            if state in ("done", "stored", "failed"):
                now["finished"] += 1
                bar.update(task, completed=now["finished"])
            shown = {"start": "", "done": "done", "stored": "(stored)", "failed": "failed"}.get(state, state)
            bar.update(task, description=f"{now['probe']} ({names.index(now['probe']) + 1}/{len(names)}) {t.name}",
                       work=shown)

        def on_progress(t, n):
            bar.update(task, work=f"{n}")

        report = run_analysis(target, names, settings=settings, checkpoints=checkpoints, out=out_path,
                              device=device, force=force, on_target=on_target, on_progress=on_progress,
                              on_probe=on_probe, executor=executor, workers=workers, address=address,
                              model_spec=model_spec, data_spec=data_spec, weights=weights,
                              strip_prefix=strip_prefix, allow_outside_links=allow_outside_links,
                              on_data=data_lines.append)
    _print_data(data_lines)
    if executor == "auto":
        console.print(f"executor: {report.executor} ({report.executor_reason})", markup=False, highlight=False)
    for probe, records in report.results.items():
        _print_summary(probe, records)
    _print_failures(report.failures)
    console.print(f"results: [bold]{_lit(out_path)}[/]")
    if plots:
        folder = plots_dir_for(out_path)
        written = [p for probe in report.results for p in probe_figures(out_path, probe, folder)]
        console.print(f"figures: [bold]{_lit(folder)}[/] ({len(written)} files)")
    if report.failures and not report.results:
        raise typer.Exit(2)


def _print_data(lines: list[str]) -> None:
    """Each data description once (what the data are and what was done to them), after the work, so
    that a run ending in an error prints that one line only."""
    for line in dict.fromkeys(lines):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _print_failures(failures: dict[str, str]) -> None:
    """One line per failure; the same error for several checkpoints is printed once, with their names."""
    by_error: dict[str, list[str]] = {}
    for what, error in failures.items():
        by_error.setdefault(error, []).append(what)
    for error, whats in by_error.items():
        shown = ", ".join(whats[:3]) + (f" and {len(whats) - 3} more" if len(whats) > 3 else "")
        err_console.print(f"[bold red]{_lit(shown)} failed:[/] {_lit(error)}", highlight=False, soft_wrap=True)


def _analysis_progress(enabled: bool):
    """A bar over units of work ((probe × checkpoint) tasks, or grid points): what runs now (probe,
    checkpoint), its work, elapsed time and the ETA. User text is shown literally."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                    MofNCompleteColumn(), TextColumn("{task.fields[work]}", markup=False), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=err_console, disable=not enabled)


def _progress_bar(enabled: bool):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), TextColumn("{task.fields[work]}", markup=False),
                    TimeElapsedColumn(), console=err_console, disable=not enabled)


@app.command()
def correlate(
    runs: list[Path] = typer.Argument(..., help="RUN_DIRs already analyzed (landscape analyze), or folders holding them."),
    axes: Optional[str] = typer.Option(None, "--axes", help="Hyper-parameter axes of Ψ (default: those that vary across the runs)."),
    gap: str = typer.Option("acc", "--gap", help="acc (train − test accuracy) or loss (test − train loss)."),
    cmi: bool = typer.Option(False, "--cmi", help="Also the conditional-mutual-information score (PGDL)."),
    cmi_variant: str = typer.Option("pgdl", "--cmi-variant", help="pgdl: the PGDL 2020 scorer (pairs of axes, "
                                    "self-pairs, cells averaged uniformly); landscape: sets of 0–2 axes, distinct "
                                    "pairs, cells weighted by their pairs."),
    checkpoint: str = typer.Option("last", "--checkpoint", help="Which checkpoint of each run: last, epoch=K, "
                                   "step=S, or stop_at_train_loss=X (each run's first checkpoint whose logged "
                                   "train loss is ≤ X: Jiang et al.'s equal-loss protocol; runs that never reach "
                                   "it are skipped and listed)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the table here (.json or .csv) and scatter plots beside it."),
    runs_table_out: Optional[Path] = typer.Option(None, "--runs-table", help="Write the per-run table (one row per run: "
                                                  "hyper-parameters, gaps, every measure) here, .csv or .json "
                                                  "(default with a .csv --out: OUT_runs.csv beside it)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Kendall τ (bootstrap 95% CI), Spearman, granulated Ψ (and CMI) of every stored measure against the generalization gap, ranked.

    Seeds are not an axis unless named in --axes: runs that differ only in their seed are averaged into one configuration."""
    from landscape.correlate import generalization_gap
    from landscape.plots import plot_correlation_panels, plot_measure_scatter, save_figure
    from landscape.study import collect_runs, correlation_table, measure_family, varying_axes
    from landscape.utils import atomic_write, atomic_write_json

    if runs_table_out is not None and runs_table_out.suffix not in (".csv", ".json"):
        raise ConfigError(f"--runs-table {runs_table_out} must end in .csv or .json")
    runs_out = runs_table_out or (out.with_name(f"{out.stem}_runs.csv") if out is not None and out.suffix == ".csv" else None)
    if out is not None and runs_out is not None and out.resolve() == runs_out.resolve():
        raise ConfigError(f"--out and --runs-table are both {out}; name two files")
    for path in (out, runs_out):
        if path is not None and path.exists() and not overwrite:
            raise ConfigError(f"{path} already exists; pass --overwrite to replace it, or name another file")
    run_dirs = []
    for r in runs:  # a folder of runs (a sweep's --out) stands for every RUN_DIR inside it
        if not r.is_dir():
            raise ConfigError(f"{r} is not a directory; give RUN_DIRs (or folders of them)")
        inner = sorted(p for p in r.iterdir() if (p / "config.json").is_file())
        run_dirs += [r] if (r / "config.json").is_file() or not inner else inner
    records = collect_runs(run_dirs, checkpoint,
                           on_skip=lambda run, why: console.print(f"skipped {_lit(run)}: {_lit(why)}"))
    axis_list = [a.strip() for a in axes.split(",")] if axes else varying_axes(records)
    rows = correlation_table(records, gap=gap, axes=axis_list, cmi=cmi, cmi_variant=cmi_variant)
    if not rows:
        raise ConfigError("no measure is stored for every run; run `landscape analyze` on each RUN_DIR first")
    n_configs, seeds = rows[0]["n"], rows[0]["seeds_per_config"]
    console.print(f"axes: {_lit(', '.join(axis_list) or '–')}")
    if seeds != 1:
        console.print(f"{_lit(seeds)} seeds averaged per configuration ({len(records)} runs → {n_configs} configurations)")
    if cmi:
        note = " (needs ≥ 2 axes)" if cmi_variant == "pgdl" and len(axis_list) < 2 else ""
        if not note and all(math.isnan(row["cmi"]) for row in rows):
            note = " (undefined here: the conditioning axes fix the gap's order in every cell)"
        console.print(f"CMI: {_lit(cmi_variant)} variant{note}")
    table = Table(title=f"measures vs generalization gap ({_lit(gap)}), {n_configs} configurations of {len(records)} runs, "
                        f"axes: {_lit(', '.join(axis_list) or '–')}")
    extra = [c for c in rows[0] if c.startswith("psi") or c == "cmi"]
    for c in ["measure", "τ", "τ 95% CI", "Spearman", *extra]:
        table.add_column(c.replace("psi", "Ψ"), justify="left" if c == "measure" else "right", overflow="fold")
    for row in rows:
        table.add_row(_lit(row["measure"]), f"{row['tau']:+.2f}", _lit(f"[{row['tau_low']:+.2f}, {row['tau_high']:+.2f}]"),
                      f"{row['spearman']:+.2f}", *(f"{row[c]:+.2f}" for c in extra))
    console.print(table)
    runs_table = _runs_table(records)
    for path, write in ((out, "rows"), (runs_out, "runs")):
        if path is None:
            continue
        try:
            if path.suffix == ".csv":  # the correlations, and the per-run measures and gaps
                atomic_write(path, lambda fh, w=write: _write_csv(fh, rows if w == "rows" else runs_table))
            elif write == "rows":
                atomic_write_json(path, {"gap": gap, "axes": axis_list, "cmi_variant": cmi_variant if cmi else None,
                                         "configurations": n_configs, "seeds_per_config": seeds,
                                         "runs": [str(r) for r in run_dirs], "rows": rows, "runs_table": runs_table})
            else:
                atomic_write_json(path, runs_table)
        except OSError as exc:
            flag = "--out" if write == "rows" else "--runs-table"
            raise ConfigError(f"cannot write {path} ({exc.strerror}); choose another {flag}") from exc
    if runs_out is not None and out is None:
        console.print(f"per-run table: [bold]{_lit(runs_out)}[/]")
    if out is not None:
        g = generalization_gap(records, kind=gap)
        color = axis_list[0] if axis_list else None
        folder = out.parent / f"{out.stem}_plots"
        for row in rows:
            fig = plot_measure_scatter([r[row["measure"]] for r in records], g,
                                       [r.get(color) for r in records] if color else None, xlabel=row["measure"],
                                       ylabel=f"gap ({gap})", group_label=color or "",
                                       title=f"τ = {row['tau']:+.2f}")
            save_figure(fig, folder / row["measure"].replace("@", "_at_"))
        families = {row["measure"]: measure_family(row["measure"]) for row in rows}
        save_figure(plot_correlation_panels(rows, families, title=f"Kendall τ and Ψ with the {gap} gap, "
                                            f"{n_configs} configurations"), folder / "families")
        beside = f"  per-run table: [bold]{_lit(runs_out)}[/]" if runs_out is not None else ""
        console.print(f"table: [bold]{_lit(out)}[/]{beside}  scatter plots and families.png: [bold]{_lit(folder)}[/]")


def _runs_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: what :func:`landscape.study.collect_runs` found (hyper-parameters, metrics,
    measures) plus ``gap_acc`` = train − test accuracy and ``gap_loss`` = test − train loss."""
    table = []
    for r in records:
        row = dict(r)
        for name, (a, b) in {"gap_acc": ("train_acc", "test_acc"), "gap_loss": ("test_loss", "train_loss")}.items():
            if isinstance(r.get(a), int | float) and isinstance(r.get(b), int | float):
                row[name] = float(r[a]) - float(r[b])
        table.append(row)
    return table


def _write_csv(fh, rows: list[dict[str, Any]]) -> None:
    """Rows (dicts) as CSV: the union of their keys as columns, empty cells where a row has none,
    lists and dicts as JSON."""
    import csv

    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = (row.get(c) for c in columns)
        writer.writerow(["" if v is None else json.dumps(v) if isinstance(v, list | dict) else v for v in cells])


@app.command()
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
    from landscape.sweep import expand_grid, read_grid
    from landscape.sweep import sweep as run_sweep

    spec = read_grid(grid)
    n = len(expand_grid(spec))  # a malformed grid fails here, before anything is trained
    with _progress_bar(progress) as bar:
        bar.add_task(f"sweep: {n} runs", total=None, work=f"executor {executor}")
        results = run_sweep(spec, out, device=device, executor=executor, workers=workers, address=address)
    table = Table(title=f"sweep {_lit(grid)} → {_lit(out)}")
    for c in ("run", "status", "test acc"):
        table.add_column(c, justify="left" if c == "run" else "right")
    for r in results:
        table.add_row(_lit(r.name), _lit(r.status), "–" if r.test_acc is None else f"{r.test_acc:.4f}")
    console.print(table)


@app.command()
def export(
    results: Path = typer.Argument(..., help="A results file (analysis.h5)."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the tidy table here as CSV (needs no pandas)."),
    parquet: Optional[Path] = typer.Option(None, "--parquet", help="Write it here as Parquet (needs pandas and pyarrow)."),
    max_vector: int = typer.Option(32, "--max-vector", help="1-D arrays up to this length become rows (0: all)."),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="Include the training metrics of each checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """One row per checkpoint × probe × measure (× split, × index): step, epoch, value, settings hash (docs/schema.md)."""
    from landscape.results import load_results

    if csv is None and parquet is None:
        raise ConfigError("name the output: --csv OUT.csv and/or --parquet OUT.parquet")

    if max_vector < 0:
        raise ConfigError(f"--max-vector must be ≥ 0, got {max_vector}")
    res = load_results(results)
    for path in (csv, parquet):
        if path is not None and path.exists() and not overwrite and path.resolve() != results.resolve():
            raise ConfigError(f"{path} already exists; pass --overwrite to replace it, or name another file")
    options = {"max_vector": max_vector or None, "metrics": metrics}
    for path, write in ((csv, res.to_csv), (parquet, res.to_parquet)):
        if path is not None:
            n = write(path, **options)
            console.print(f"table: [bold]{_lit(path)}[/] ({n} rows)")


@app.command()
def plot(
    results: Path = typer.Argument(..., help="A results file (analysis.h5), or a RUN_DIR (its analysis.h5, "
                                   "and its monitors over training)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the figures (default: plots/ beside the file)."),
    pdf: bool = typer.Option(False, "--pdf", help="Also write PDF."),
    vtp: bool = typer.Option(False, "--vtp", help="Also export 2D loss surfaces for ParaView (.vtp)."),
) -> None:
    """Draw every figure a results file (or a run directory) supports, from the files alone."""
    from landscape.figures import all_figures, monitor_figures, plots_dir_for, surface_vtps
    from landscape.store import Store

    formats = ("png", "pdf") if pdf else ("png",)
    if results.is_dir() and not (results / "analysis.h5").is_file():  # a RUN_DIR not analyzed yet
        if not (results / "metrics.jsonl").is_file():
            raise ConfigError(f"{results} holds neither analysis.h5 nor metrics.jsonl; give a results file or a RUN_DIR")
        folder = out if out is not None else results / "plots"
        written = monitor_figures(results, folder, formats)
        if not written:
            raise ConfigError(f"{results} has no results file and logged no monitor values (train with --monitor "
                              "lambda_max, …), so there is nothing to draw; run `landscape analyze` first")
        console.print(f"figures: [bold]{_lit(folder)}[/] ({len(written)} files)")
        return
    if results.is_dir():
        results = results / "analysis.h5"
    if not results.is_file():
        raise ConfigError(f"results file {results} does not exist")
    Store(results).groups()  # a clear error for a file that is not HDF5
    folder = out if out is not None else plots_dir_for(results)
    written = all_figures(results, folder, formats)
    if vtp:
        written += surface_vtps(results, folder)
    console.print(f"figures: [bold]{_lit(folder)}[/] ({len(written)} files)")


@app.command()
def repack(
    results: Path = typer.Argument(..., help="A results file (analysis.h5)."),
    allow_symlink: bool = typer.Option(False, "--allow-symlink", help="Compact the file a symlink points to."),
) -> None:
    """Compact a results file: rewrite it without the space earlier writes left unused (same contents)."""
    from landscape.store import Store

    before, after = Store(results, allow_symlink=allow_symlink).repack()
    console.print(f"repacked [bold]{_lit(results)}[/]: {before:,} → {after:,} bytes")


def _list_registry(kind: str, entries: list[tuple[str, str, str]]) -> None:
    table = Table(title=kind)
    table.add_column("name", style="bold")
    table.add_column("aliases")
    table.add_column("parameters / description")
    for row in entries:
        table.add_row(*row)
    console.print(table)


def _describe(registry, name: str) -> tuple[str, str, str]:
    import inspect

    obj = registry[name]
    try:
        sig = inspect.signature(obj)
        params = ", ".join(
            f"{k}={p.default!r}"
            for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
        )
    except (TypeError, ValueError):
        params = ""
    doc = " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())
    return name, ", ".join(registry.aliases(name)), f"{params}\n[dim]{doc}[/]" if params else f"[dim]{doc}[/]"


REGISTRIES = {  # command → (module, registry): `landscape models|datasets|losses|optimizers|probes`
    "models": ("landscape.models", "MODELS"),
    "datasets": ("landscape.datasets", "DATASETS"),
    "losses": ("landscape.train.losses", "LOSSES"),
    "optimizers": ("landscape.train.optim", "OPTIMIZERS"),
}


def _listing_command(kind: str, module: str, attr: str):
    def command() -> None:
        import importlib

        registry = getattr(importlib.import_module(module), attr)
        _list_registry(kind, [_describe(registry, n) for n in registry.names()])

    command.__doc__ = f"List the registered {kind} and their parameters."
    command.__name__ = f"list_{kind}"
    return command


for _kind, (_module, _attr) in REGISTRIES.items():
    app.command(_kind)(_listing_command(_kind, _module, _attr))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code.

    Usage errors are typer's own (a message and exit code 2); a LandscapeError — a user mistake
    such as an unknown name or a missing file — ends in one line on stderr and exit code 2,
    without a traceback.
    """
    interrupted = "interrupted: rerun the same command to resume (`landscape train`: add --resume)"
    try:
        if isinstance(app, typer.Typer):  # a probe registered since import (a plugin) gets its command
            add_probe_commands()
        app(args=argv, prog_name="landscape")  # standalone: ends in SystemExit
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 130:  # click turns Ctrl-C into a silent exit 130
            err_console.print(interrupted, markup=False, highlight=False, soft_wrap=True)
        return code
    except LandscapeError as exc:
        message = " ".join(str(exc).splitlines())  # one line, printed literally (no markup, no emoji)
        err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print(interrupted, markup=False, highlight=False, soft_wrap=True)
        return 130
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
