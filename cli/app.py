"""The typer application every command registers on, its consoles, and how a run ends.

User text (paths, names, settings) is printed literally: no emoji codes anywhere, and every piece
of it inside a markup string goes through :func:`lit` (rich.markup.escape). A user mistake (a
:class:`~landscape.errors.LandscapeError`) ends in one line on stderr and exit code 2, without a
traceback (:func:`run_guarded`). A command that finished but could not do every one of its tasks
(a checkpoint that cannot be loaded, a probe that fails) stores the others, says so in a closing
line and exits with :data:`SOME_FAILED` (1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from landscape.errors import LandscapeError

app = typer.Typer(
    name="landscape",
    help="Train networks with the losses and optimizers the generalization literature studies, "
    "then measure the geometry of what was trained.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

SOME_FAILED = 1
"""The exit code of a command that finished, stored what it could, and had failed tasks."""
INTERRUPTED = "interrupted: rerun the same command to resume (`landscape train`: add --resume)"


def lit(value: Any) -> str:
    """``value`` as text that rich prints literally inside a markup string."""
    return escape(str(value))


def end_with_failures(line: str, code: int = SOME_FAILED) -> NoReturn:
    """The closing line of a command some of whose tasks failed (after everything else is stored
    and printed), on stderr, and its exit code."""
    err_console.print(Text(line, style="bold red"), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_guarded(run: Callable[[], None]) -> int:
    """Call ``run`` (which runs the typer app standalone, ending in ``SystemExit``) and return the
    exit code.

    Usage errors are typer's own (a message and exit code 2); a LandscapeError — a user mistake
    such as an unknown name or a missing file — ends in one line on stderr and exit code 2,
    without a traceback; Ctrl-C in one line and exit code 130. A command that finished with failed
    tasks ends with :data:`SOME_FAILED` itself (``typer.Exit``).
    """
    try:
        run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 130:  # click turns Ctrl-C into a silent exit 130
            err_console.print(INTERRUPTED, markup=False, highlight=False, soft_wrap=True)
        return code
    except LandscapeError as exc:
        message = " ".join(str(exc).splitlines())  # one line, printed literally (no markup, no emoji)
        err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print(INTERRUPTED, markup=False, highlight=False, soft_wrap=True)
        return 130
    return 0
