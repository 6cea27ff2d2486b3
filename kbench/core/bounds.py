"""Declared ranges and choices of config fields: each numeric field states its range, each named choice its set,
beside the field (as dataclass field metadata); ``check_bounds`` holds a built section to them, so a value no trial
could use is refused on the driver in one line instead of failing, or silently running, inside a trial."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kbench.core.errors import KbenchError, did_you_mean

BOUND = "kbench.bound"  # the field metadata key a Bound is stored under


@dataclass(frozen=True)
class Bound:
    """A closed or half-open interval (``low``/``high``, either end may be open or absent), or a set of choices;
    ``note`` says what to do instead, for values that look meaningful but are not (``epochs=0``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    note: str = ""

    def admits(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        """``one of a, b``, ``in [0, 1)``, ``>= 1``, ``> 0``."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"

    def check(self, value: Any, key: str) -> None:
        """Refuse ``value`` of config key ``key`` when it is outside the bound."""
        if self.admits(value):
            return
        if self.choices:
            raise KbenchError(
                f"{key} must be {self.describe()}, got {value!r}{did_you_mean(str(value), self.choices)}"
            )
        note = f"; {self.note}" if self.note else ""
        raise KbenchError(f"{key} must be {self.describe()}, got {value:g}{note}")


def bounded(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: Sequence[str] = (),
    note: str = "",
) -> Any:
    """A dataclass field with ``default`` and its declared bound."""
    bound = Bound(low, high, low_open, high_open, tuple(choices), note)
    return dataclasses.field(default=default, metadata={BOUND: bound})


def bound_of(section: type | Any, name: str) -> Bound | None:
    """The declared bound of field ``name`` of a dataclass (or its instance), None when it declares none."""
    found = {f.name: f for f in dataclasses.fields(section)}[name]
    return found.metadata.get(BOUND)


def check_bounds(section: Any, where: str) -> None:
    """Check every field of dataclass instance ``section`` (named ``where`` in messages) and of its sub-sections
    against its bound; every float must also be finite (no nan, no inf)."""
    for f in dataclasses.fields(section):
        value, key = getattr(section, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check_bounds(value, key)
            continue
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise KbenchError(f"{key} must be a finite number, got {value}")
        bound = f.metadata.get(BOUND)
        if bound is not None:
            bound.check(value, key)
