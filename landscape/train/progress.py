"""The progress bar of a training run (over optimizer steps), or nothing."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class _Progress:
    """A rich progress bar over optimizer steps, or nothing."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self.bar = None
        if enabled:
            self.bar = Progress(
                TextColumn("[bold]train[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("train", total=total, completed=completed, status="")
            self.bar.start()

    def update(self, completed: int, status: str | None = None) -> None:
        if self.bar is not None:
            fields = {"status": status} if status is not None else {}
            self.bar.update(self.task, completed=completed, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

