"""Sharded row stores: the on-disk layout of everything kbench computes once per image and reads back in batches.

A store is a directory of fixed-size shards of rows; each shard holds one ``.npy`` file per named array (rows
first, C order, so a row is one contiguous run of bytes) and is committed atomically (written under a temporary
name, renamed into place), so a reader never sees half a shard and an interrupted writer resumes at the first
missing one. Each shard ends with a manifest of its files' checksums (``kbench.core.integrity``), written last
and checked the first time a process reads the shard; writers drop damaged shards and extract them again.
``store.json`` records the layout. Batches of rows are read with positioned reads through the OS
page cache straight into the batch, consecutive rows coalesced, several reads in flight: measured on a 6 GB store
here, 256 random rows read at 0.5 of the sequential rate with one read in flight and 0.75 with four, against 0.1
through ``np.memmap`` (page-sized faults, and the mapped pages count towards the process's RSS) and 0.02 through
h5py's point selection on a row-chunked HDF5 file. The same path serves 200 rows and 260,000.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kbench.core.errors import KbenchError
from kbench.core.integrity import check_dir, seal_dir
from kbench.core.paths import atomic_dir, atomic_path, write_failed

log = logging.getLogger(__name__)

STORE_FILE = "store.json"
SHARD_PREFIX = "shard-"
# Rows read at once per process. Random 256-row batches of a 36 GB store (cold cache) read at 189 MB/s with 1,
# 348 with 4 and 556 with 16, the disk's sequential rate being 568: a deep queue is what random rows need.
READ_THREADS = 16


@dataclass(frozen=True)
class ArraySpec:
    """One named array of a store: the shape of a single row and the dtype."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class ShardedStore:
    """A directory of row shards; ``read`` returns any rows of a named array, in the order asked for."""

    def __init__(
        self, root: Path, rows: int, shard_rows: int, arrays: Mapping[str, ArraySpec], info: Mapping[str, Any]
    ) -> None:
        if shard_rows < 1:
            raise KbenchError(f"a store's shards need at least one row, got {shard_rows}")
        self.root = Path(root)
        self.rows = rows
        self.shard_rows = shard_rows
        self.arrays = dict(arrays)
        self.info = json.loads(json.dumps(info))  # JSON-native, so a layout read back compares equal
        self._files: dict[tuple[int, str], tuple[int, int]] = {}  # (shard, array) -> (fd, header bytes)
        self._verified: set[int] = set()  # shards checked against their manifests in this process (or its parent)
        self._pid = os.getpid()

    # --- layout -------------------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls, root: Path, rows: int, shard_rows: int, arrays: Mapping[str, ArraySpec], info: Mapping[str, Any]
    ) -> ShardedStore:
        """The store at ``root``: the one already begun there when its layout agrees (its shard size kept, so that
        an interrupted store resumes), else a new one, replacing a directory of another layout."""
        wanted = cls(root, rows, shard_rows, arrays, info)
        if (wanted.root / STORE_FILE).exists():
            try:
                found = cls.open(root)
            except KbenchError:
                found = None
            if (
                found is not None
                and found.rows == rows
                and found.arrays == wanted.arrays
                and found.info == wanted.info
            ):
                return found
            log.warning("%s holds a store of another layout; writing it anew", root)
            shutil.rmtree(root)
        wanted.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(wanted.root / STORE_FILE) as tmp:
            tmp.write_text(json.dumps(wanted.layout(), indent=1))
        return wanted

    @classmethod
    def open(cls, root: Path) -> ShardedStore:
        """The store described by ``root/store.json``."""
        path = Path(root) / STORE_FILE
        try:
            layout = json.loads(path.read_text())
            arrays = {k: ArraySpec(tuple(v["shape"]), v["dtype"]) for k, v in layout["arrays"].items()}
            return cls(Path(root), layout["rows"], layout["shard_rows"], arrays, layout["info"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KbenchError(f"cannot read the store layout {path}: {exc}") from None

    def layout(self) -> dict[str, Any]:
        arrays = {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in self.arrays.items()}
        return {"rows": self.rows, "shard_rows": self.shard_rows, "arrays": arrays, "info": self.info}

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def num_shards(self) -> int:
        return -(-self.rows // self.shard_rows)

    def shard_span(self, shard: int) -> range:
        """The rows of ``shard``."""
        return range(shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.rows))

    def shard_dir(self, shard: int) -> Path:
        return self.root / f"{SHARD_PREFIX}{shard:05d}"

    def missing(self) -> list[int]:
        """The shards not committed yet."""
        return [k for k in range(self.num_shards) if not self.shard_dir(k).is_dir()]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def nbytes(self) -> int:
        """The bytes of the row arrays once complete."""
        return self.rows * sum(spec.row_bytes for spec in self.arrays.values())

    def missing_bytes(self) -> int:
        """The bytes of the row arrays of the shards not committed yet: the space writing them needs."""
        return sum(len(self.shard_span(k)) for k in self.missing()) * sum(s.row_bytes for s in self.arrays.values())

    def clean(self) -> None:
        """Remove the temporary shards an interrupted writer left (call only while holding the store's lock)."""
        for stale in self.root.glob(f".{SHARD_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

    def damage(self, shard: int) -> str | None:
        """What is wrong with committed ``shard`` (missing, truncated or changed files, no manifest), or None."""
        return check_dir(self.shard_dir(shard))

    def drop_damaged(self) -> list[int]:
        """Remove the committed shards that fail their checksums, so that they are written again, with one warning
        naming them (call only while holding the store's lock); the shards removed."""
        damaged = {}
        for shard in range(self.num_shards):
            if self.shard_dir(shard).is_dir():
                problem = self.damage(shard)
                if problem is None:
                    self._verified.add(shard)
                else:
                    damaged[shard] = problem
        if damaged:
            first = min(damaged)
            log.warning(
                "%d damaged shard(s) in the store %s (%s: %s); writing them again",
                len(damaged),
                self.root,
                self.shard_dir(first).name,
                damaged[first],
            )
            for shard in damaged:
                shutil.rmtree(self.shard_dir(shard))
        return sorted(damaged)

    # --- writing ------------------------------------------------------------------------------------------------

    @contextmanager
    def shard_writer(self, shard: int) -> Iterator[ShardWriter]:
        """A writer for ``shard``, committed when the block ends without error and every row was written; a write
        that fails (a full disk) is one ``KbenchError`` naming the shard and the space left, and nothing committed."""
        with atomic_dir(self.shard_dir(shard)) as tmp:
            writer = ShardWriter(tmp, len(self.shard_span(shard)), self.arrays, self.shard_dir(shard))
            try:
                yield writer
                writer.finish()
            finally:
                writer.close()

    # --- reading ------------------------------------------------------------------------------------------------

    def read(self, name: str, positions: np.ndarray, part: slice | None = None) -> np.ndarray:
        """Rows ``positions`` of array ``name`` (``part``: a slice of each row's first axis), in the order given."""
        spec = self.arrays[name]
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(positions) and (positions.min() < 0 or positions.max() >= self.rows):
            raise KbenchError(f"rows out of range for the store {self.name} of {self.rows} rows")
        start, length, shape = _row_part(spec, part)
        out = np.empty((len(positions), length), dtype=np.uint8)
        if length == spec.row_bytes and np.all(np.diff(positions) > 0):
            # increasing whole rows (a sequential pass): a run of consecutive rows of one shard is one read
            breaks = np.flatnonzero((np.diff(positions) != 1) | (np.diff(positions // self.shard_rows) != 0)) + 1
            bounds = [0, *breaks.tolist(), len(positions)]
        else:  # random rows: one read per row, straight into its place
            bounds = list(range(len(positions) + 1))
        runs = list(itertools.pairwise(bounds))

        def fetch(run: tuple[int, int]) -> None:
            a, b = run
            shard, local = divmod(int(positions[a]), self.shard_rows)
            fd, header = self._file(shard, name)
            offset = header + local * spec.row_bytes + start
            _pread_into(fd, memoryview(out[a:b]).cast("B"), offset, self.shard_dir(shard) / f"{name}.npy")

        if len(runs) > 1:
            list(_executor().map(fetch, runs))
        else:
            for run in runs:
                fetch(run)
        return out.view(spec.dtype).reshape(len(positions), *shape)

    def read_all(self, name: str) -> np.ndarray:
        """Every row of a small array (e.g. boxes); large arrays are read in batches."""
        return self.read(name, np.arange(self.rows))

    def read_extra(self, shard: int, name: str) -> np.ndarray:
        """A per-shard array saved with ``ShardWriter.save``."""
        self._verify(shard)
        return np.load(self.shard_dir(shard) / f"{name}.npy")

    def _verify(self, shard: int) -> None:
        """Refuse a shard that fails its checksums (checked once per process; writers drop such shards)."""
        if shard not in self._verified:
            problem = self.damage(shard)
            if problem is not None:
                raise KbenchError(
                    f"store shard {self.shard_dir(shard)} is damaged ({problem}); the next run writes it again"
                )
            self._verified.add(shard)

    def _file(self, shard: int, name: str) -> tuple[int, int]:
        """The open descriptor of a shard's array file and the size of its ``.npy`` header."""
        if self._pid != os.getpid():  # a forked loader worker opens its own descriptors
            self._files, self._pid = {}, os.getpid()
        key = (shard, name)
        if key not in self._files:
            self._verify(shard)
            path = self.shard_dir(shard) / f"{name}.npy"
            try:
                header = np.load(path, mmap_mode="r").offset  # maps nothing but the header's bytes are parsed
                self._files[key] = (os.open(path, os.O_RDONLY), header)
            except (OSError, ValueError) as exc:
                raise KbenchError(f"cannot read shard {path}: {exc}") from None
        return self._files[key]

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd, _ in self._files.values():
                os.close(fd)
        self._files = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a Ray worker, a spawned process) without descriptors or threads; reopened on first read."""
        return {**self.__dict__, "_files": {}, "_verified": set(), "_pid": -1}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown
            self.close()


def _row_part(spec: ArraySpec, part: slice | None) -> tuple[int, int, tuple[int, ...]]:
    """Byte offset and length within a row of ``part`` of its first axis, and the shape ``part`` reads."""
    if part is None or part == slice(None):
        return 0, spec.row_bytes, spec.shape
    first, stop, step = part.indices(spec.shape[0])
    if step != 1 or stop <= first:
        raise KbenchError(f"a store reads a non-empty contiguous part of each row, not {part}")
    inner = spec.row_bytes // spec.shape[0]
    return first * inner, (stop - first) * inner, (stop - first, *spec.shape[1:])


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _executor() -> ThreadPoolExecutor:
    """This process's read threads (a forked process starts its own)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(READ_THREADS, thread_name_prefix="kbench-read"))
    return _POOL[1]


def _pread_into(fd: int, target: memoryview, offset: int, path: Path) -> None:
    """Fill ``target`` from ``fd`` at ``offset`` (a short read only at a truncated file, which is an error)."""
    done = 0
    while done < len(target):
        got = os.preadv(fd, [target[done:]], offset + done)
        if got == 0:
            raise KbenchError(f"shard file {path} is truncated; delete its store to extract it again")
        done += got


class ShardWriter:
    """Streams one shard's rows into its ``.npy`` files, batch by batch (memory O(batch))."""

    def __init__(self, directory: Path, rows: int, arrays: Mapping[str, ArraySpec], final: Path | None = None) -> None:
        self.directory = directory
        self.final = final or directory  # the shard's name once committed, which errors name
        self.rows = rows
        self.arrays = dict(arrays)
        self.written = dict.fromkeys(arrays, 0)
        self.files = {}
        with self._writing():
            for name, spec in arrays.items():
                path = directory / f"{name}.npy"
                shape = (rows, *spec.shape)
                header = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(spec.dtype), shape=shape)
                offset = header.offset
                del header  # only the header was wanted; the rows are streamed in below
                f = open(path, "r+b")  # noqa: SIM115 -- held until finish or close
                f.seek(offset)
                self.files[name] = f

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write (``OSError``: a full disk, a quota) as one ``KbenchError`` naming the shard."""
        try:
            yield
        except OSError as exc:
            raise write_failed(exc, self.final, "a feature store shard") from None

    def append(self, batch: Mapping[str, np.ndarray]) -> None:
        """Append the next rows of every array (each ``batch`` value is ``(n, *row shape)``)."""
        for name, values in batch.items():
            spec = self.arrays[name]
            values = np.ascontiguousarray(values, dtype=spec.dtype)
            if values.shape[1:] != spec.shape:
                raise ValueError(f"{name}: rows of shape {values.shape[1:]}, the store's are {spec.shape}")
            if self.written[name] + len(values) > self.rows:
                raise ValueError(f"{name}: more than the shard's {self.rows} rows")
            with self._writing():
                self.files[name].write(values.tobytes())
            self.written[name] += len(values)

    def save(self, name: str, values: np.ndarray) -> None:
        """A per-shard array beside the rows (e.g. statistics of the shard's batches)."""
        with self._writing():
            np.save(self.directory / f"{name}.npy", values)

    def finish(self) -> None:
        short = {k: v for k, v in self.written.items() if v != self.rows}
        if short:
            raise ValueError(f"shard incomplete: rows written {short} of {self.rows}")
        with self._writing():
            for f in self.files.values():
                f.flush()
                os.fsync(f.fileno())
            seal_dir(self.directory)

    def close(self) -> None:
        for f in self.files.values():
            with contextlib.suppress(OSError):  # the failed flush of a full disk was reported already
                f.close()
