"""`landscape` command-line entry point: the table of commands, and :func:`main` / :func:`entry`.

Every command is one library call, defined in the module of its concept — :mod:`.train` (train,
demo, sweep), :mod:`.probes` (one command per registered probe, generated from its config),
:mod:`.analyze`, :mod:`.study` (correlate), :mod:`.files` (export, plot, repack) and
:mod:`.registry` (models, datasets, losses, optimizers) — on the one typer app of :mod:`.app`,
with the options of :mod:`.options`. User mistakes (``LandscapeError``) end in one line on stderr
and exit code 2, without a traceback.
"""

from __future__ import annotations

import sys

import typer

from landscape_cli import analyze as _analyze
from landscape_cli import files as _files
from landscape_cli import registry as _registry
from landscape_cli import study as _study
from landscape_cli import train as _train
from landscape_cli.app import app, run_guarded
from landscape_cli.options import parse_key_values, parse_setting
from landscape_cli.probes import add_probe_command, add_probe_commands
from landscape_cli.train import build_train_config

__all__ = ["add_probe_command", "add_probe_commands", "app", "build_train_config", "entry", "main",
           "parse_key_values", "parse_setting"]

# the order of `landscape --help`
if not any(c.name == "train" for c in app.registered_commands):  # once, also when imported as cli.main too
    app.command("train")(_train.train)
    app.command("demo")(_train.demo)
    add_probe_commands()  # hessian, surface, …: every registered probe, in probe order
    app.command("analyze")(_analyze.analyze)
    app.command("correlate")(_study.correlate)
    app.command("sweep")(_train.sweep)
    app.command("export")(_files.export)
    app.command("plot")(_files.plot)
    app.command("repack")(_files.repack)
    for _kind in _registry.REGISTRIES:
        app.command(_kind)(_registry.listing_command(_kind))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code.

    Usage errors are typer's own (a message and exit code 2); a LandscapeError — a user mistake
    such as an unknown name or a missing file — ends in one line on stderr and exit code 2,
    without a traceback.
    """

    def run() -> None:
        if isinstance(app, typer.Typer):  # a probe registered since import (a plugin) gets its command
            add_probe_commands()
        app(args=argv, prog_name="landscape")  # standalone: ends in SystemExit

    return run_guarded(run)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
