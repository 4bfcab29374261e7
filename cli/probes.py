"""The probe commands, generated from the probes' declarations (:data:`landscape.probes.PROBES`).

``landscape PROBE TARGET [--KEY VALUE ...] [--setting KEY=VALUE ...] [shared options]``: one
``--KEY`` per field of the probe's config (help from the field's metadata, default shown), plus the
options every probe command shares (:func:`landscape_cli.options.probe_options`), handled by
:func:`run_probe_cli`. A probe registered later (a plugin module) gets its command from
:func:`add_probe_commands`, which :func:`landscape_cli.main.main` runs before every command.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, get_type_hints

import typer

from landscape.analyze import check_model_specs, default_output, run_probe
from landscape.errors import ConfigError, LandscapeError
from landscape.figures import plots_dir_for, probe_figures
from landscape.probes import PROBES, make_config
from landscape.probes.base import coerce_setting, probe_order
from landscape.targets import resolve_targets
from landscape_cli.app import app, console, end_with_failures, lit
from landscape_cli.options import (
    TARGET,
    foreign_specs,
    parse_pairs,
    parse_setting,
    probe_options,
    scalar_type,
)
from landscape_cli.printing import analysis_progress, print_data, print_failures, print_summary

RESERVED = {"ctx", "target", "setting", *(name for name, _, _ in probe_options("last"))}
"""Parameter names of every probe command: no config field may take one."""


def run_probe_cli(probe: str, cfg, target: Path, checkpoints: str, out: Path | None, device: str, foreign,
                  force: bool, plots: bool, progress: bool, unit: str = "", work_per_target: int = 0,
                  weights: str = "auto", strip_prefix: str | None = None,
                  allow_outside_links: bool = False) -> None:
    """Run a probe with a progress bar: over checkpoints, or over units of work (``work_per_target``
    per checkpoint, e.g. grid points) with an ETA; then a summary table and the figures. Checkpoints
    that failed end it with exit code 1 (some) or 2 (all)."""
    model_spec, data_spec = foreign
    targets = resolve_targets(target, checkpoints, weights=weights, strip_prefix=strip_prefix)  # fails first
    n_targets = len(targets)
    out_path = out if out is not None else default_output(target)
    check_model_specs(targets, model_spec)  # so does a factory that cannot (or may not) be used
    with analysis_progress(progress) as bar:
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
        print_failures({f"{probe} {name}": error for name, error in failures.items()})
        end_with_failures(f"{len(failures)} of {n_targets} checkpoints failed (each named above); nothing was analyzed",
                          2)
    print_data(data_lines)
    print_summary(probe, records)
    print_failures({f"{probe} {name}": error for name, error in failures.items()})
    console.print(f"results: [bold]{lit(out_path)}[/]")
    if plots:
        folder = plots_dir_for(out_path)
        written = probe_figures(out_path, probe, folder)
        if written:
            console.print(f"figures: [bold]{lit(folder)}[/] ({len(written)} files)")
    if failures:  # after everything else is stored and printed: a script can tell
        end_with_failures(f"{len(failures)} of {n_targets} checkpoints failed (each named above); "
                          f"the others are stored in {out_path}")


def setting_params(probe) -> list[tuple[inspect.Parameter, Callable[[Any], Any] | None]]:
    """One keyword parameter (a typer option) per config field, and how to read its value."""
    hints = get_type_hints(probe.config)
    kw = inspect.Parameter.KEYWORD_ONLY
    out = []
    for f in dataclasses.fields(probe.config):
        if f.name in RESERVED:
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
        elif scalar_type(tp) is not None:
            option = typer.Option(default, *names, help=help_text)
            ann = tp if tp is scalar_type(tp) else Optional[scalar_type(tp)]
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
    probe = PROBES[name]
    settings = setting_params(probe)
    shared = probe_options(probe.checkpoints)
    kw = inspect.Parameter.KEYWORD_ONLY

    def command(ctx: typer.Context, target: Path, **kwargs: Any) -> None:
        opts = {key: kwargs.pop(key) for key, _, _ in shared}
        given: dict[str, Any] = {}
        for param, parse in settings:
            value = kwargs.pop(param.name)
            source = ctx.get_parameter_source(param.name)  # only what the user gave overrides the config
            if source is not None and source.name != "DEFAULT":
                given[param.name] = parse(value) if parse is not None else value
        extra = {key: coerce_setting(probe.config, key, text, text=True)  # the text, read by the field's type
                 for key, text in parse_pairs(kwargs.pop("setting"), "--setting").items()}
        twice = sorted(set(given) & set(extra))
        if twice:
            raise ConfigError(f"{twice[0]} is given twice (--{twice[0].replace('_', '-')} and --setting "
                              f"{twice[0]}=…); give it once")
        cfg = make_config(name, **given, **extra)
        foreign = foreign_specs(opts["model"], opts["model_param"], opts["num_classes"], opts["input_shape"],
                                opts["model_factory"], opts["dataset"], opts["dataset_param"], opts["loss"],
                                opts["data_factory"], opts["task"], opts["target_key"])
        run_probe_cli(name, cfg, target, opts["checkpoints"], opts["out"], opts["device"], foreign,
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
    names added. Run when the CLI is built and again by :func:`landscape_cli.main.main`, so a probe
    registered later (a plugin module) has its command too."""
    have = {c.name for c in app.registered_commands}
    added = [name for name in probe_order() if name not in have]
    for name in added:
        add_probe_command(name)
    return added
