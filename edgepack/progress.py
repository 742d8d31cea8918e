"""The one progress event the library reports: which stage runs, what it is doing, how far it is.

Every long-running call takes `progress: Callable[[ProgressEvent], None]`. `str(event)` is the line
older callers printed ("tune: 32/64 trials ..."), so a callback that only formats text keeps working.
The CLI turns events into rich bars on a terminal and one plain line per stage elsewhere
(edgepack.cli.progress)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ProgressEvent:
    """A stage started (no message), or a step inside it; `done`/`total` when it counts (trials, batches, epochs)."""

    stage: str
    message: str = ""
    done: int | None = None
    total: int | None = None

    def __str__(self) -> str:
        return f"{self.stage}: {self.message}" if self.message else self.stage


Progress = Callable[[ProgressEvent], None]


def ignore(event: ProgressEvent) -> None:
    """The default progress callback: report nothing."""


def step_reporter(stage: str, progress: Progress) -> Callable[[str], None]:
    """A text callback for a stage's own steps (passes report lines) that forwards them as events of `stage`."""
    return lambda line: progress(ProgressEvent(stage, str(line)))
