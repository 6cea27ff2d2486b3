"""Progress of a run: its first line, the overall line (trial k/N, what is happening, elapsed, ETA) over the bars
of long stages, shown in a terminal and forwarded to the driver from Ray trials."""

from __future__ import annotations

import contextlib
import datetime
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

from rich.console import Console, Group
from rich.live import Live
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

T = TypeVar("T")

# A sink receives (description, completed, total) updates; None means "draw bars on this process's terminal".
Sink = Callable[[str, float, float], None]
_sink: Sink | None = None
_verbose = False
_begun: float | None = None  # when the run's first line was printed
_display: RunProgress | None = None  # the run's display while one is shown; the driver's stages draw their bars in it


def begin(subject: str, profile: str | None, seeds: int, verbose: bool = False) -> None:
    """Print the first line of a run (what starts), before kbench's heavy imports and Ray; unless ``verbose``, keep
    libraries' chatter (Ray's, the trials' output, matplotlib's notices) out of the terminal for the run."""
    global _begun
    _begun = time.monotonic()
    seeds_text = f"{seeds} seed{'' if seeds == 1 else 's'}"
    print(f"kbench: {subject} · {profile} profile · {seeds_text} · starting…", file=sys.stderr, flush=True)
    set_verbose(verbose)


def set_verbose(verbose: bool) -> None:
    """Show Ray's and the trials' output on the terminal (``verbose``), or keep it and libraries' chatter (Ray's,
    matplotlib's notices) out of it, in the run's log file (``--verbose`` and the API's ``verbose=``)."""
    global _verbose
    _verbose = verbose
    if not verbose:
        logging.getLogger("matplotlib").setLevel(logging.ERROR)  # "Matplotlib is building the font cache..."


def verbose() -> bool:
    """Whether Ray's and the trials' output goes to the terminal (``--verbose``) rather than the run's log file."""
    return _verbose


def set_sink(sink: Sink | None) -> None:
    """Send progress updates to ``sink`` instead of drawing bars (used inside Ray trials)."""
    global _sink
    _sink = sink


class RateColumn(ProgressColumn):
    """Units per second of a stage (images/s of an extraction, steps/s of a training loop)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")


BAR_WIDTH, MIN_BAR_WIDTH = 30, 5
_FIXED = Column(no_wrap=True)  # a column the fitting never narrows
_WRAPPING = Column(overflow="fold")  # a description: wraps between words as a last resort, never cut


class FittedProgress(Progress):
    """Progress lines whose descriptions are never cut: where the terminal is too narrow for a line, its bar
    narrows, then its ``optional`` columns go, in order, and only then does the description wrap, between words
    (rich alone would cut every column short, the description with them)."""

    def __init__(self, *columns: ProgressColumn, optional: tuple[ProgressColumn, ...] = (), **kwargs: Any) -> None:
        self.every, self.optional = columns, optional
        self.bar = next(c for c in columns if isinstance(c, BarColumn))
        super().__init__(*columns, **kwargs)

    def make_tasks_table(self, tasks: Iterable[Task]) -> Table:
        shown = [t for t in tasks if t.visible]
        if not shown:
            return super().make_tasks_table(shown)
        columns = list(self.every)
        room = self.console.width - self._width(columns, shown)
        for column in self.optional:
            if room >= MIN_BAR_WIDTH:
                break
            columns.remove(column)
            room = self.console.width - self._width(columns, shown)
        self.bar.bar_width = max(MIN_BAR_WIDTH, min(BAR_WIDTH, room))
        self.columns = tuple(columns)
        return super().make_tasks_table(shown)

    def _width(self, columns: list[ProgressColumn], tasks: list[Task]) -> int:
        """The cells ``columns`` take on a line of ``tasks`` besides the bar, the spaces between columns included."""
        cells = [
            max((Measurement.get(self.console, self.console.options, c(t)).maximum for t in tasks), default=0)
            for c in columns
            if c is not self.bar
        ]
        return sum(cells) + len(columns) - 1


def stage_bars(**kwargs: Any) -> FittedProgress:
    """The bars of long stages, their labels whole at any terminal width; the elapsed time, then the rate, go where
    the terminal is narrow."""
    rate, elapsed = RateColumn(table_column=_FIXED), TimeElapsedColumn(table_column=_FIXED)
    columns = (
        TextColumn("{task.description}", table_column=_WRAPPING),
        BarColumn(bar_width=BAR_WIDTH, table_column=_FIXED),
        MofNCompleteColumn(table_column=_FIXED),
        rate,
        elapsed,
        TimeRemainingColumn(table_column=_FIXED),
    )
    return FittedProgress(*columns, optional=(elapsed, rate), **kwargs)


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
    if _display is not None:
        task = _display.bars.add_task(description, total=total)
        yield lambda n=1: _display.bars.advance(task, n)
        return
    with stage_bars(transient=not sys.stderr.isatty(), disable=not sys.stderr.isatty()) as bars:
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


class SinceBegin(ProgressColumn):
    """Time since the run's first line (the display's start where there was none)."""

    def render(self, task: Task) -> Text:
        elapsed = datetime.timedelta(seconds=int(time.monotonic() - task.fields["since"]))
        return Text(str(elapsed), style="progress.elapsed")


class RunProgress:
    """The overall line of a run of ``trials`` over the bars of their stages, on stderr: in a terminal, live; else a
    plain line per step and, at the end, the final state of every line."""

    def __init__(self, trials: int, noun: str = "trial") -> None:
        self.console = Console(stderr=True)
        self.noun, self.total, self.done = noun, trials, 0
        done = TextColumn(f"{noun}s done", table_column=_FIXED)
        self.overall = FittedProgress(
            TextColumn("{task.description}", table_column=_WRAPPING),
            BarColumn(bar_width=BAR_WIDTH, table_column=_FIXED),
            MofNCompleteColumn(table_column=_FIXED),
            done,
            SinceBegin(table_column=_FIXED),
            TextColumn("ETA", table_column=_FIXED),
            TimeRemainingColumn(table_column=_FIXED),
            optional=(done,),
            console=self.console,
        )
        self.bars = stage_bars(console=self.console)
        self.task = self.overall.add_task("", total=trials, since=_begun or time.monotonic())
        self.live = Live(Group(self.overall, self.bars), console=self.console, refresh_per_second=4)
        self.numbers: dict[str, int] = {}  # a trial's key -> its k, in the order trials started
        self.stages: dict[tuple[str, str], TaskID] = {}
        self.streams: list[tuple[logging.StreamHandler, IO[str]]] = []

    def __enter__(self) -> RunProgress:
        global _display
        self.live.start()
        _display = self
        if self.console.is_terminal:  # log lines go above the live lines, not through them
            self.streams = [(h, h.setStream(sys.stderr)) for h in _stream_handlers()]
        return self

    def __exit__(self, *exc: object) -> None:
        global _display
        _display = None
        for handler, stream in self.streams:
            handler.setStream(stream)
        self.live.stop()
        if not self.console.is_terminal:  # the final state ends without a newline there
            self.console.line()

    def status(self, text: str) -> None:
        """What the run is doing between trials' reports (starting Ray, extracting features, starting a trial)."""
        self.overall.update(self.task, description=text)
        if not self.console.is_terminal:
            self.console.print(f"kbench: {text}", highlight=False)

    def started(self, key: str, label: str) -> None:
        self.numbers.setdefault(key, len(self.numbers) + 1)
        self.status(f"{self._trial(key)} {label} · starting")

    def stage(self, key: str, label: str, stage: str, completed: float, total: float) -> None:
        """A trial reports ``completed`` of ``total`` units of its ``stage``."""
        self.numbers.setdefault(key, len(self.numbers) + 1)
        self.overall.update(self.task, description=f"{self._trial(key)} {label} · {stage}")
        if (key, stage) not in self.stages:
            self.stages[key, stage] = self.bars.add_task(f"{label} {stage}", total=total)
        self.bars.update(self.stages[key, stage], completed=completed, total=total)

    def finished(self, key: str, label: str, failed: bool = False) -> None:
        self.done += 1
        self.overall.advance(self.task)
        verb = "failed" if failed else "finished"
        rest = "" if self.done == self.total else f"; {self.total - self.done} to go"
        self.status(f"{self._trial(key)} {label} {verb}{rest}")

    def _trial(self, key: str) -> str:
        return f"{self.noun} {self.numbers[key]}/{self.total}"


def _stream_handlers() -> list[logging.StreamHandler]:
    """The root logger's handlers that write to stderr."""
    return [
        h
        for h in logging.getLogger().handlers
        if type(h) is logging.StreamHandler and getattr(h.stream, "name", None) == "<stderr>"
    ]
