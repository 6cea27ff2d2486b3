"""Where kbench keeps caches, and how it writes files so that nothing half-written looks complete.

Files and directories it writes get the modes a plain ``open``/``mkdir`` would (0644 and 0755 under the usual umask
022), although they are created under temporary names by ``mkstemp``/``mkdtemp``, which make them private. The cache
root must be a writable directory: besides the caches it holds their lock files and Ray Tune's trial state, so even a
run whose caches are all warm writes there; a read-only or misplaced ``KBENCH_HOME`` is one line up front.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import platformdirs

from kbench.core.errors import KbenchError


def kbench_home() -> Path:
    """The cache root: ``$KBENCH_HOME``, else the user cache dir; created on demand and checked to be writable."""
    root = os.environ.get("KBENCH_HOME") or platformdirs.user_cache_dir("kbench")
    path = Path(root).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise KbenchError(f"KBENCH_HOME {path} is not a directory; set KBENCH_HOME to a directory kbench may write to")
    _mkdir(path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise KbenchError(
            f"KBENCH_HOME {path} is not writable (kbench keeps its caches, their locks and Ray Tune's state there); "
            "set KBENCH_HOME to a writable directory"
        )
    return path


def cache_dir(*parts: str) -> Path:
    """A sub-directory of the cache root, created on demand."""
    path = kbench_home().joinpath(*parts)
    _mkdir(path)
    return path


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KbenchError(f"cannot create the cache directory {path}: {exc.strerror or exc}") from exc


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it in ``/proc``."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open`` gives a new file: 0o666 less the umask."""
    return 0o666 & ~umask()


def check_space(directory: Path, needed: int, what: str) -> None:
    """Refuse, in one line, to start writing ``what`` (about ``needed`` bytes) where fewer bytes are free."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise KbenchError(
            f"not enough disk space for {what} in {directory}: "
            f"needs about {_megabytes(needed)}, {_megabytes(free)} free"
        )


def write_failed(exc: OSError, path: Path, what: str) -> KbenchError:
    """The one-line error for a failed write of ``what`` to ``path``; on a full disk with the space left there."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        with contextlib.suppress(OSError):
            reason += f" ({_megabytes(shutil.disk_usage(path.parent).free)} free)"
    return KbenchError(f"cannot write {what} to {path}: {reason}")


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place, with ``file_mode()``, only if the block
    succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; move it into place only if the block succeeds, it and what it
    holds given the modes ``mkdir`` and ``open`` give (some writers, safetensors', make private files)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        _give_modes(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _give_modes(root: Path) -> None:
    """``root`` and the directories under it 0o777, its files 0o666, less the umask."""
    mask = umask()
    for directory, _, files in os.walk(root):
        os.chmod(directory, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o666 & ~mask)
