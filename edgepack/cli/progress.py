"""Progress on stderr: rich bars with elapsed time and ETA on a terminal, one plain line per stage elsewhere.

`EDGEPACK_PROGRESS` chooses instead of the terminal test: `bars`, `plain`, or `none` (the test suite's
default, so that a refusal's stderr is its one error line)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgepack.cli.console import err
from edgepack.progress import ProgressEvent


def as_event(event: ProgressEvent | str) -> ProgressEvent:
    """Events pass through; a text line "stage: step" from an older callback becomes one."""
    if isinstance(event, ProgressEvent):
        return event
    stage, _, message = str(event).partition(": ")
    return ProgressEvent(stage, message)


class PlainStages:
    """When stderr is not a terminal (CI, a log file): one line as each stage ends, with how long it took, and
    for counted work (tuning trials, epochs) a line at most every `every_s` seconds, so a long stage is never silent."""

    def __init__(self, title: str, write: Callable[[str], None], every_s: float = 30.0):
        self.title, self.write, self.every_s = title, write, every_s
        self.stage: str | None = None
        self.started = self.began = self.last_line = time.perf_counter()

    def __call__(self, event: ProgressEvent | str) -> None:
        event = as_event(event)
        if event.stage != self.stage:
            self.finish_stage()
            self.stage, self.started = event.stage, time.perf_counter()
        now = time.perf_counter()
        if event.total is not None and event.message and now - self.last_line >= self.every_s:
            self.last_line = now
            self.write(f"{self.title}: {event} ({now - self.started:.0f} s)")

    def finish_stage(self) -> None:
        if self.stage is not None:
            self.write(f"{self.title}: {self.stage} done in {time.perf_counter() - self.started:.1f} s")
        self.stage = None

    def close(self, ok: bool) -> None:
        if ok:
            self.finish_stage()
            self.write(f"{self.title}: finished in {time.perf_counter() - self.began:.1f} s")


@contextlib.contextmanager
def progress_reporter(title: str) -> Iterator[Callable[[ProgressEvent | str], None]]:
    """A progress callback for the library's events, shown the way stderr can show it."""
    mode = os.environ.get("EDGEPACK_PROGRESS", "auto")
    if mode == "none":
        yield lambda event: None
        return
    if mode == "plain" or (mode != "bars" and not err.is_terminal):
        plain = PlainStages(title, lambda line: print(line, file=sys.stderr, flush=True))
        ok = False
        try:
            yield plain
            ok = True
        finally:
            plain.close(ok)
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bars:
        task = bars.add_task(title, total=None)

        def report(event: ProgressEvent | str) -> None:
            event = as_event(event)
            counted = event.total is not None
            bars.update(task, description=f"{title}: {event}", total=event.total if counted else None,
                        completed=event.done or 0 if counted else 0)

        yield report
