"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class KbenchError(Exception):
    """A problem with the user's input (a file, a key, a name or a value), stated in one line."""


def unknown_choice(kind: str, name: str, choices: Sequence[str]) -> KbenchError:
    """The error for a ``name`` that is none of ``choices``: the closest choice, else all of them."""
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(choices)}"
    return KbenchError(f"unknown {kind} {name!r}{hint}")
