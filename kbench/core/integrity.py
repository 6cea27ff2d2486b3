"""Checksums of cache entries, written after an entry's data and checked before it is used, so that damaged bytes
(zeroed, truncated, edited) are rebuilt or refused, never read as results.

A directory entry (a store shard, a checkpoint, a SynthFashion dataset) gets a manifest, ``checksums.json``, of the
size and sha256 of every file in it; a single-file entry (a candidate list, alignments, a codebook) a sidecar
``<name>.sha256``. Hashing a directory again at every use would read a store of tens of GB once per process, so a
directory that passed remembers, in ``.verified.json``, the identity (device, inode, size, modification and change
times) each file had then: while no file's identity changes, a check is a ``stat`` per file. Writing to a file
changes its identity, and it is hashed again. ``kbench cache verify`` always hashes everything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from kbench.core.paths import atomic_path, write_failed

MANIFEST = "checksums.json"
VERIFIED = ".verified.json"
SIDECAR_SUFFIX = ".sha256"
_BLOCK = 4 << 20


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _identity(path: Path) -> list[int]:
    s = path.stat()
    return [s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns]


def _entry_files(directory: Path) -> list[Path]:
    """The files a directory's manifest covers: all but the manifest, the memo and hidden temporaries."""
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST)


def seal_dir(directory: Path) -> None:
    """Record the size and digest of every file of ``directory`` in its manifest: call it last, after the data."""
    directory = Path(directory)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in _entry_files(directory)}
    try:
        with atomic_path(directory / MANIFEST) as tmp:
            tmp.write_text(json.dumps({"files": files}, indent=1))
    except OSError as exc:  # a full disk: one line, and the caller's temporary entry is never committed
        raise write_failed(exc, directory / MANIFEST, "the checksums") from None
    _remember(directory, files)


def check_dir(directory: Path, *, full: bool = False) -> str | None:
    """None when every file of the manifest is there with its size and digest; else what is wrong, in a few words.
    Unless ``full``, files whose identity has not changed since they last passed are not hashed again."""
    directory = Path(directory)
    try:
        manifest_text = (directory / MANIFEST).read_text()
    except FileNotFoundError:
        return f"no {MANIFEST} (unfinished, or written by an older kbench)"
    except OSError as exc:
        return f"cannot read {MANIFEST}: {exc.strerror}"
    try:
        files = json.loads(manifest_text)["files"]
        expected = {str(name): (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST} is damaged"
    for name, (size, _) in expected.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        found = path.stat().st_size
        if found != size:
            return f"{name} is {'truncated' if found < size else 'longer than recorded'} ({found} of {size} bytes)"
    if not full and _remembered(directory, expected, manifest_text):
        return None
    for name, (_, wanted) in expected.items():
        try:
            if file_digest(directory / name) != wanted:
                return f"{name} does not match its checksum"
        except OSError as exc:
            return f"cannot read {name}: {exc.strerror}"
    _remember(directory, files)
    return None


def _remember(directory: Path, files: dict[str, Any]) -> None:
    """Note that the files of ``directory`` passed as they are now (best effort: a read-only cache hashes again)."""
    with contextlib.suppress(OSError):
        manifest = bytes_digest((directory / MANIFEST).read_bytes())
        memo = {"manifest": manifest, "files": {name: _identity(directory / name) for name in files}}
        with atomic_path(directory / VERIFIED) as tmp:
            tmp.write_text(json.dumps(memo))


def _remembered(directory: Path, expected: dict[str, tuple[int, str]], manifest_text: str) -> bool:
    """Whether every file of the manifest is as it was when it last passed."""
    try:
        memo = json.loads((directory / VERIFIED).read_text())
        if memo["manifest"] != bytes_digest(manifest_text.encode()) or set(memo["files"]) != set(expected):
            return False
        return all(memo["files"][name] == _identity(directory / name) for name in expected)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def sidecar(path: Path) -> Path:
    """Where the checksum of single-file entry ``path`` is kept."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def seal_file(path: Path) -> None:
    """Record the size and digest of ``path`` in its sidecar: call it after the file is in place."""
    record = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
    with atomic_path(sidecar(path)) as tmp:
        tmp.write_text(json.dumps(record))


def recorded_digest(path: Path) -> str | None:
    """The digest the sidecar of ``path`` records, if it is readable."""
    try:
        return str(json.loads(sidecar(path).read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_file(path: Path) -> str | None:
    """None when ``path`` has the size and digest its sidecar records; else what is wrong, in a few words."""
    try:
        record = json.loads(sidecar(path).read_text())
        size, wanted = int(record["bytes"]), str(record["sha256"])
    except FileNotFoundError:
        return f"no checksum file {sidecar(path).name} (written by an older kbench?)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its checksum file {sidecar(path).name} is damaged"
    try:
        found = path.stat().st_size
        if found != size:
            return f"{'truncated' if found < size else 'longer than recorded'} ({found} of {size} bytes)"
        return None if file_digest(path) == wanted else "does not match its checksum"
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
