"""``landscape analyze``: several probes on a run's checkpoints into one results file
(:func:`landscape.analyze.analyze`), with a progress bar over (probe × checkpoint) tasks, a summary
table per probe, the failures one line each, and the figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from landscape.analyze import analyze as run_analysis
from landscape.analyze import (
    check_executor,
    check_model_specs,
    default_output,
    parse_probes,
    probe_configs,
)
from landscape.errors import ConfigError
from landscape.figures import plots_dir_for, probe_figures
from landscape.probes import PROBES
from landscape.probes.base import coerce_setting, default_probes
from landscape.targets import resolve_targets
from landscape_cli.app import SOME_FAILED, console, end_with_failures, lit
from landscape_cli.options import (
    CHECKPOINTS,
    DATASET,
    DATASET_PARAM,
    DEVICE,
    FACTORY,
    FORCE,
    INPUT_SHAPE,
    LOSS,
    MODEL,
    MODEL_PARAM,
    NUM_CLASSES,
    OUT,
    OUTSIDE_LINKS,
    PLOTS,
    PROGRESS,
    STRIP_PREFIX,
    TARGET,
    TARGET_KEY,
    TASK,
    WEIGHTS,
    foreign_specs,
    parse_pairs,
)
from landscape_cli.printing import (
    analysis_progress,
    failed_tasks,
    print_data,
    print_failures,
    print_summary,
)


def probe_settings(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["hessian.top_k=10"]`` → ``{"hessian": {"top_k": 10}}``: each text read by its field's type."""
    settings: dict[str, dict[str, Any]] = {}
    for key, value in parse_pairs(items, "--setting").items():
        probe, dot, name = key.partition(".")
        if not dot or not name:
            raise ConfigError(f"--setting takes PROBE.KEY=VALUE, got {key!r}")
        if probe in PROBES:  # an unknown probe or key is refused by probe_configs, in one line
            value = coerce_setting(PROBES[probe].config, name, value, text=True)
        settings.setdefault(probe, {})[name] = value
    return settings


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

    TARGET may also be a folder of foreign .safetensors/.pt files with --model (or --model-factory) and --dataset.
    Exit code 1 when some (probe × checkpoint) tasks failed (the others are stored), 2 when none could be done."""
    settings = probe_settings(setting)
    targets = resolve_targets(target, checkpoints, weights=weights, strip_prefix=strip_prefix)  # fails first
    out_path = out if out is not None else default_output(target)
    names = parse_probes(probes)
    probe_configs(names, settings)  # argument mistakes fail here, before any progress output
    check_executor(executor, workers)
    model_spec, data_spec = foreign_specs(model, model_param, num_classes, input_shape, model_factory,
                                          dataset, dataset_param, loss, data_factory, task, target_key)
    check_model_specs(targets, model_spec)  # a factory that cannot (or may not) be used: one line, once
    data_lines: list[str] = []
    with analysis_progress(progress) as bar:
        bar_task = bar.add_task("analyze", total=len(names) * len(targets), work="")
        now = {"probe": names[0], "finished": 0}

        def on_probe(name):
            now["probe"] = name
            bar.update(bar_task, description=f"{name} ({names.index(name) + 1}/{len(names)})", work="")

        def on_target(t, state):
            if state in ("done", "stored", "failed"):
                now["finished"] += 1
                bar.update(bar_task, completed=now["finished"])
            shown = {"start": "", "done": "done", "stored": "(stored)", "failed": "failed"}.get(state, state)
            bar.update(bar_task, description=f"{now['probe']} ({names.index(now['probe']) + 1}/{len(names)}) {t.name}",
                       work=shown)

        def on_progress(t, n):
            bar.update(bar_task, work=f"{n}")

        report = run_analysis(target, names, settings=settings, checkpoints=checkpoints, out=out_path,
                              device=device, force=force, on_target=on_target, on_progress=on_progress,
                              on_probe=on_probe, executor=executor, workers=workers, address=address,
                              model_spec=model_spec, data_spec=data_spec, weights=weights,
                              strip_prefix=strip_prefix, allow_outside_links=allow_outside_links,
                              on_data=data_lines.append)
    print_data(data_lines)
    if executor == "auto":
        console.print(f"executor: {report.executor} ({report.executor_reason})", markup=False, highlight=False)
    for probe, records in report.results.items():
        print_summary(probe, records)
    print_failures(report.failures)
    console.print(f"results: [bold]{lit(out_path)}[/]")
    if plots:
        folder = plots_dir_for(out_path)
        written = [p for probe in report.results for p in probe_figures(out_path, probe, folder)]
        console.print(f"figures: [bold]{lit(folder)}[/] ({len(written)} files)")
    if report.failures:  # after everything else is stored and printed: a script can tell
        stored = any(report.results.values())
        end_with_failures(f"{failed_tasks(report.failures, len(names), len(names) * len(targets))} (recorded "
                          f"under /failures in {out_path}); "
                          + ("the others are stored" if stored else "nothing was analyzed"),
                          SOME_FAILED if stored else 2)
