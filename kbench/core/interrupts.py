"""SIGINT, SIGTERM and SIGHUP end a run one way: a running Ray Tune experiment stops its trials, then
``Interrupted`` (a ``KeyboardInterrupt``) unwinds the invocation, its MLflow runs are marked KILLED, and the
command exits with 128 + the signal's number."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_received: int | None = None  # the signal that asked the running experiment to stop
_stop: Callable[[], bool] | None = None  # asks the running experiment to stop; False when none is running yet


class Interrupted(KeyboardInterrupt):
    """A run ended by a signal; ``stopped`` is how many trials the interruption stopped, once known."""

    def __init__(self, signum: int = signal.SIGINT, stopped: int | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.stopped = stopped

    @property
    def exit_status(self) -> int:
        """The shell's status of a process the signal ended: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP."""
        return 128 + self.signum


def _handle(signum: int, frame: FrameType | None) -> None:
    """The first signal during ``stopping`` asks the experiment to stop; any other raises ``Interrupted`` here."""
    global _received
    first = _received is None
    if first and _stop is not None:
        _received = signum
        if _stop():
            return
    raise Interrupted(_received or signum)


def install() -> None:
    """Handle the three signals with ``_handle`` (only the main thread can)."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handle)


@contextmanager
def kept() -> Iterator[None]:
    """The signal handlers as they were before the block (``ray.init`` replaces the SIGTERM handler with one that
    exits on the spot)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved: dict[int, Any] = {signum: signal.getsignal(signum) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:
                signal.signal(signum, handler)


@contextmanager
def hangup_deferred() -> Iterator[None]:
    """SIGHUP waits until the block ends: the processes it starts (Ray's) inherit the blocked SIGHUP, so that a
    hangup of the terminal ends the run through this process rather than by killing Ray under it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


@contextmanager
def stopping(stop: Callable[[], bool]) -> Iterator[None]:
    """While the block runs, the first signal calls ``stop`` (which returns False if there is nothing to stop yet,
    and the signal then raises at once), and the block ends with ``Interrupted`` once it returns; an error it raises
    after the signal is the interruption too. A second signal raises at once."""
    global _received, _stop
    _received, _stop = None, stop
    with kept():
        install()
        try:
            yield
        except Exception:
            if _received is None:
                raise
            raise Interrupted(_received) from None
        finally:
            _stop = None
    if _received is not None:
        raise Interrupted(_received)
