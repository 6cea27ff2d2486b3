"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class KbenchError(Exception):
    """A problem with the user's input (a file, a key, a name or a value), stated in one line."""


def did_you_mean(name: str, choices: Sequence[str], *, n: int = 3, cutoff: float = 0.6, otherwise: str = "") -> str:
    """``"; did you mean a, b?"`` naming the (at most ``n``) choices closest to ``name``, else ``otherwise``."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(close)}?" if close else otherwise


def unknown_choice(kind: str, name: str, choices: Sequence[str], *, n: int = 1, cutoff: float = 0.6) -> KbenchError:
    """The error for a ``name`` that is none of ``choices``: the closest choices, else all of them."""
    known = f"; known: {', '.join(choices)}"
    return KbenchError(f"unknown {kind} {name!r}{did_you_mean(name, choices, n=n, cutoff=cutoff, otherwise=known)}")
