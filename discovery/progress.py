"""Rich progress bars for long commands: one bar per stage, fed by ``progress(stage, done, total, info)``
callbacks (`discovery train`, `discovery dataset build`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def describe_all(info: dict[str, Any]) -> str:
    """Every ``key value`` of a progress callback's ``info``."""
    return ", ".join(f"{k} {v}" for k, v in info.items())


class StageProgress:
    """One rich progress bar per stage; ``describe(info)`` is the text beside it."""

    def __init__(self, console, stages: tuple[tuple[str, str], ...],
                 describe: Callable[[dict[str, Any]], str] = describe_all):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("[bold]{task.fields[label]:<13}"), BarColumn(bar_width=24),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.description}"), console=console, transient=False)
        self.labels = dict(stages)
        self.describe = describe
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def __call__(self, stage: str, done: int, total: int, info: dict[str, Any]) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task("", total=max(total, 1), label=self.labels.get(stage, stage))
        self.progress.update(self.tasks[stage], completed=done, total=max(total, 1), description=self.describe(info))
