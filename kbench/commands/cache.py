"""``kbench cache verify|clear``: check every cache entry under ``KBENCH_HOME`` against its checksums (hashing all of
its bytes), or remove the caches of one kind or all of them."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from kbench.core.integrity import SIDECAR_SUFFIX, check_dir, check_file
from kbench.core.paths import kbench_home

log = logging.getLogger(__name__)

# Each kind of cache and the directories under KBENCH_HOME it lives in.
KINDS: dict[str, tuple[str, ...]] = {
    "synth": ("synth",),
    "features": ("features",),
    "checkpoints": ("checkpoints",),
    "protocols": ("protocols",),
    "aag": ("alignments", "aag-grids"),
    "codebooks": ("codebooks",),
    "fingerprints": ("fingerprints",),
}
STORES = ("features", "aag-grids")  # sharded stores: a manifest per shard
SINGLE_FILES = ("protocols", "alignments", "codebooks")  # one file per entry and its checksum sidecar
Check = Callable[[], str | None]


def verify(what: str = "all") -> tuple[int, str]:
    """Exit status (1 if any entry is damaged) and the report: one line per damaged entry, then a summary."""
    home, lines, checked = kbench_home(), [], 0
    for kind in _kinds(what):
        for directory in KINDS[kind]:
            root = home / directory
            if not root.is_dir():
                continue
            log.info("verifying %s", root)
            for path, check in _entries(directory, root):
                checked += 1
                problem = check()
                if problem is not None:
                    lines.append(f"damaged: {path}: {problem}")
    summary = f"{checked} cache entries under {home} verified, {len(lines)} damaged"
    if lines:
        summary += (
            "; runs rebuild damaged stores, checkpoints, alignments, codebooks and SynthFashion, and refuse damaged "
            "candidate lists (kbench cache clear protocols)"
        )
    return (1 if lines else 0), "\n".join([*lines, summary])


def clear(what: str = "all") -> str:
    """Remove the caches of ``what`` (a kind, or all); what was removed and its bytes. Runs using them must not be
    running."""
    home, lines, total = kbench_home(), [], 0
    for kind in _kinds(what):
        for directory in KINDS[kind]:
            root = home / directory
            if root.is_dir():
                size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
                shutil.rmtree(root)
                total += size
                lines.append(f"removed {root} ({size:,} bytes)")
    lines.append(f"removed {total:,} bytes of {what} caches" if total or lines else f"no {what} caches under {home}")
    return "\n".join(lines)


def _kinds(what: str) -> list[str]:
    return list(KINDS) if what == "all" else [what]


def _entries(directory: str, root: Path) -> Iterator[tuple[Path, Check]]:
    """The entries of one cache directory, each with the check that says what is wrong with it."""
    if directory in STORES:
        for store in _subdirs(root):
            for shard in sorted(p for p in store.glob("shard-*") if p.is_dir()):
                yield shard, partial(check_dir, shard, full=True)
    elif directory in SINGLE_FILES:
        for path in sorted(root.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.suffix not in (SIDECAR_SUFFIX, ".lock"):
                yield path, partial(check_file, path)
    elif directory == "fingerprints":
        for path in sorted(root.glob("*.json")):
            yield path, partial(_check_fingerprint, path)
    elif directory == "checkpoints":
        for entry in _subdirs(root):
            if entry.name in ("runs", "instances"):  # downloaded and saved checkpoints, one directory each
                for inner in _subdirs(entry):
                    yield inner, partial(check_dir, inner, full=True)
            else:
                yield entry, partial(check_dir, entry, full=True)
    else:
        for entry in _subdirs(root):
            yield entry, partial(check_dir, entry, full=True)


def _subdirs(root: Path) -> list[Path]:
    """Committed entries: not the hidden temporaries of writers in progress, nor ``tempfile``'s ``tmp*``."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "tmp")))


def _check_fingerprint(path: Path) -> str | None:
    """A memoised data fingerprint: readable, naming its file and a sha256 (a bad one is computed again)."""
    try:
        memo = json.loads(path.read_text())
        return None if isinstance(memo["file"], list) and len(memo["images"]) == 64 else "incomplete"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable ({type(exc).__name__})"
