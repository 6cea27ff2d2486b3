"""Progress of long stages, shown as bars in a terminal and forwarded to the driver from Ray trials."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")

# A sink receives (description, completed, total) updates; None means "draw bars on this process's terminal".
Sink = Callable[[str, float, float], None]
_sink: Sink | None = None


def set_sink(sink: Sink | None) -> None:
    """Send progress updates to ``sink`` instead of drawing bars (used inside Ray trials)."""
    global _sink
    _sink = sink


class RateColumn(ProgressColumn):
    """Units per second of a stage (images/s of an extraction, steps/s of a training loop)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")


def bar_columns() -> tuple:
    return (
        TextColumn("{task.description:<34}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


@contextlib.contextmanager
def stage(description: str, total: float) -> Iterator[Callable[[float], None]]:
    """A long stage of ``total`` units; yields ``advance(n)``."""
    if _sink is not None:
        done = 0.0
        last = 0.0

        def advance(n: float = 1) -> None:
            nonlocal done, last
            done += n
            now = time.monotonic()
            if now - last > 1.0 or done >= total:
                last = now
                _sink(description, done, total)

        _sink(description, 0, total)
        yield advance
        if done < total:
            _sink(description, total, total)
        return
    with Progress(*bar_columns(), transient=not sys.stderr.isatty(), disable=not sys.stderr.isatty()) as bars:
        task = bars.add_task(description, total=total)
        yield lambda n=1: bars.advance(task, n)


def track(iterable: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    """Iterate ``iterable`` inside a stage of ``total`` (default ``len(iterable)``) units."""
    if total is None:
        total = len(iterable)  # type: ignore[arg-type]
    with stage(description, total) as advance:
        for item in iterable:
            yield item
            advance(1)
