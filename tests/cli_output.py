"""What the CLI prints on stderr, less the line a run, ablate or tune starts with (what starts, before any check)."""

from __future__ import annotations


def error_lines(err: str) -> list[str]:
    """``err``'s lines after the starting line, which must come first when there is one."""
    lines = err.strip().splitlines()
    if lines and lines[0].endswith("starting…"):
        assert lines[0].startswith("kbench: "), lines
        return lines[1:]
    return lines
