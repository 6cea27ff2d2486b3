"""Resource faults: a misplaced, read-only or full ``KBENCH_HOME``, an unknown tracking scheme, the modes of the
files kbench writes, and the local Ray cluster's listening addresses.

The disk-full and read-only cases use real tmpfs mounts, which need root; elsewhere they are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from kbench.core.config import SynthConfig
from kbench.data.layout import TEST_FILE, TRAIN_FILE

SMOKE = ["--profile", "smoke"]
RUN = ["run", "--model", "clip", "--task", "itr", *SMOKE]


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``argv`` in a fresh process, with ``env`` added to this one's environment."""
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def kbench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m kbench ARGS`` (the kbench on ``sys.path``, as a user's ``kbench`` would run it)."""
    return run([sys.executable, "-m", "kbench", *args], env)


def python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", textwrap.dedent(code)], env)


def one_error_line(result: subprocess.CompletedProcess, *words: str) -> str:
    """The single ``kbench: error:`` line of a run that exited 2 without a traceback, checked to name ``words``."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("kbench: error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount a tmpfs of a given size (read-only if asked) under ``tmp_path``; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str, size: str, read_only: bool = False) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        if os.geteuid() != 0:
            pytest.skip("a real full or read-only file system (a tmpfs mount) needs root")
        options = f"size={size}" + (",ro" if read_only else "")
        done = run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)])
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        run(["umount", str(directory)])


# --- KBENCH_HOME misplaced or read-only ---------------------------------------------------------------------------


def test_a_kbench_home_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a directory\n")
    one_error_line(kbench(*RUN, env={"KBENCH_HOME": str(home)}), str(home))
    assert home.read_text() == "not a directory\n"
    under = home / "cache"
    one_error_line(kbench(*RUN, env={"KBENCH_HOME": str(under)}), str(under))


def test_a_read_only_kbench_home_is_one_line_saying_it_must_be_writable(tmpfs: Callable[..., Path]) -> None:
    home = tmpfs("home", "1m", read_only=True)
    line = one_error_line(kbench(*RUN, env={"KBENCH_HOME": str(home)}), str(home))
    assert "not writable" in line
    assert list(home.iterdir()) == []


# --- disk full ----------------------------------------------------------------------------------------------------


def test_synthfashion_on_a_full_disk_is_refused_up_front_with_the_space_needed(
    tmpfs: Callable[..., Path], tmp_path: Path
) -> None:
    """5 MB free against the smoke dataset's 7.5 MB: one line, nothing written (it used to crash, rc 139)."""
    disk = tmpfs("disk", "5m")
    line = one_error_line(kbench("data", "synth", "--out", str(disk / "out"), *SMOKE), str(disk / "out"))
    assert "needs about 7.7 MB" in line and "5.2 MB free" in line
    assert list((disk / "out").iterdir()) == []
    # The cached dataset a run generates under KBENCH_HOME: the same line, no partial cache left.
    done = python(
        """
        import sys
        from kbench.core.config import load_config
        from kbench.core.errors import KbenchError
        from kbench.data.synth import SynthFashion
        try:
            SynthFashion().locate(load_config("smoke").data)
        except KbenchError as exc:
            print(f"kbench: error: {exc}", file=sys.stderr)
            sys.exit(2)
        """,
        env={"KBENCH_HOME": str(disk / "home")},
    )
    one_error_line(done, "not enough disk space", str(disk / "home" / "synth"))
    assert [p for p in (disk / "home" / "synth").iterdir() if not p.name.endswith(".lock")] == []


def test_a_write_failing_with_enospc_is_one_error_and_leaves_nothing(tmpfs: Callable[..., Path]) -> None:
    """The disk fills while a split is written (the estimate passed): an error naming the file and the space left,
    no temporary file, and the interpreter exits normally (HDF5 writing to a full disk crashes it at exit)."""
    disk = tmpfs("disk", "3m")
    done = python(
        f"""
        from pathlib import Path
        from kbench.core.config import SynthConfig
        from kbench.core.errors import KbenchError
        from kbench.data import synth
        cfg = SynthConfig(products_train=160, products_test=120, max_poses=2)
        try:
            synth._write_split(Path({str(disk)!r}) / "train.h5", "train", synth.plan_split(cfg, "train"))
        except KbenchError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    assert f"cannot write SynthFashion train to {disk / 'train.h5'}: No space left on device" in done.stdout
    assert "MB free)" in done.stdout
    assert list(disk.iterdir()) == []


def test_a_feature_store_shard_filling_the_disk_is_one_error_and_commits_nothing(tmpfs: Callable[..., Path]) -> None:
    """A shard larger than the disk: an error naming the shard and the space left, no committed or temporary shard,
    and the store resumes there once space is free."""
    from kbench.core.errors import KbenchError
    from kbench.features.store import ArraySpec, ShardedStore

    disk = tmpfs("disk", "1m")
    store = ShardedStore.create(disk / "store", 8, 4, {"x": ArraySpec((512, 256), "float32")}, {"what": "test"})
    with pytest.raises(KbenchError) as caught, store.shard_writer(0) as writer:
        writer.append({"x": np.ones((4, 512, 256), dtype=np.float32)})
    message = str(caught.value)
    assert message.startswith(f"cannot write a feature store shard to {store.shard_dir(0)}: No space left on device (")
    assert message.endswith(" MB free)")
    assert sorted(p.name for p in store.root.iterdir()) == ["store.json"]
    assert store.missing() == [0, 1] and store.missing_bytes() == 8 * 512 * 256 * 4


def test_a_training_state_the_disk_cannot_hold_is_one_error_and_leaves_nothing(tmpfs: Callable[..., Path]) -> None:
    """The state's space check passes (3x the weights free) but its files need a little more: one error naming the
    state and the space left (torch's zip writer said ``unexpected pos``), no partial state left."""
    from kbench.core.errors import KbenchError
    from kbench.models.train_state import TrainState

    model = torch.nn.Linear(512, 512)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 512)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    disk = tmpfs("disk", str(_pages(3 * sum(t.numel() * t.element_size() for t in model.state_dict().values()))))
    state = TrainState(disk / "checkpoints" / "linear-resume", every=1)
    with pytest.raises(KbenchError) as caught:
        state.save(model, optimizer, scheduler, {"done": 1})
    message = str(caught.value)
    assert message.startswith(f"cannot write the training state to {state.directory}: No space left on device ("), (
        message
    )
    assert message.endswith(" MB free)")
    assert list((disk / "checkpoints").iterdir()) == []


def test_checksums_on_a_full_disk_are_one_error_and_leave_nothing(tmpfs: Callable[..., Path]) -> None:
    """An entry's manifest, written last, meets a full disk: one error naming it and the space left."""
    from kbench.core.errors import KbenchError
    from kbench.core.integrity import MANIFEST, seal_dir

    disk = tmpfs("disk", "64k")
    (disk / "entry").mkdir()
    (disk / "entry" / "data.bin").write_bytes(b"x" * 1000)
    with pytest.raises(OSError), (disk / "filler").open("wb") as filler:
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()
    with pytest.raises(KbenchError) as caught:
        seal_dir(disk / "entry")
    assert str(caught.value) == (
        f"cannot write the checksums to {disk / 'entry' / MANIFEST}: No space left on device (0.0 MB free)"
    )
    assert [p.name for p in (disk / "entry").iterdir()] == ["data.bin"]


def _pages(n: int) -> int:
    """``n`` bytes rounded up to whole 4 KiB pages (what a tmpfs of that size holds)."""
    return -(-n // 4096) * 4096


@pytest.mark.slow
def test_a_disk_filling_up_during_a_trial_is_one_line_and_leaves_no_partial_state(
    tmpfs: Callable[..., Path], tmp_path: Path
) -> None:
    """Features extracted on a roomy disk, the checkpoints on one that holds 3x the model's weights: the first
    training state passes its space check and its write fails. One line naming the state and the space left, exit
    2, no partial state or checkpoint, the parent and trial runs FAILED (it was torch's ``unexpected pos``); a user
    error is not retried (``runtime.retries`` is 1), so there is one trial run, not a second pre-training."""
    import sqlite3

    from kbench.core.config import load_config
    from kbench.engine.trial import Trial, TrialSpec
    from kbench.models.zoo import build_model

    trial = Trial(TrialSpec("clip", 0), load_config("smoke"))
    model = build_model("clip", trial.cfg.model.init_from, **trial.model_kwargs())
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    home = tmp_path / "home"
    home.mkdir()
    checkpoints = tmpfs("home/checkpoints", str(_pages(3 * weights)))
    db = tmp_path / "mlflow.db"
    argv = [*RUN, "--set", "pretrain.save_every=1", "--tracking-uri", f"sqlite:///{db}"]
    line = one_error_line(kbench(*argv, env={"KBENCH_HOME": str(home)}), "cannot write the training state to")
    assert f"{checkpoints}/clip-" in line and ": No space left on device (" in line and line.endswith(" MB free)")
    assert len([p for p in (home / "features").rglob("shard-*") if p.is_dir()]) == 2
    assert [p.name for p in checkpoints.iterdir() if not p.name.endswith(".lock")] == []
    with sqlite3.connect(db) as conn:
        statuses = [status for (status,) in conn.execute("SELECT status FROM runs")]
    assert statuses == ["FAILED", "FAILED"]


@pytest.mark.slow
def test_a_run_whose_feature_stores_do_not_fit_is_refused_before_extraction(
    tmpfs: Callable[..., Path], tmp_path: Path
) -> None:
    """SynthFashion elsewhere, KBENCH_HOME on a disk too small for the smoke run's 7 MB of features: one line naming
    the features directory, the space needed and free, before any shard is written; with space, the run works."""
    data = tmp_path / "data"
    assert kbench("data", "synth", "--out", str(data), *SMOKE).returncode == 0
    home = tmpfs("home", "4m")
    argv = [*RUN, "--data-dir", str(data), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    line = one_error_line(kbench(*argv, env={"KBENCH_HOME": str(home)}), str(home / "features"))
    assert "not enough disk space for 2 feature stores" in line and "needs about 7." in line and " free" in line
    assert [p for p in (home / "features").rglob("*") if p.name.startswith("shard-")] == []
    roomy = tmp_path / "roomy"
    done = kbench(*argv, env={"KBENCH_HOME": str(roomy)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert len([p for p in (roomy / "features").rglob("shard-*") if p.is_dir()]) == 2


# --- tracking URI -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["table", "--main"], RUN])
def test_an_unknown_tracking_scheme_is_one_line_naming_the_supported_ones(command: list[str], tmp_path: Path) -> None:
    line = one_error_line(
        kbench(*command, "--tracking-uri", "foo://bar", env={"KBENCH_HOME": str(tmp_path)}), "foo://bar"
    )
    assert "sqlite" in line and "postgresql" in line and "http" in line


# --- file modes ---------------------------------------------------------------------------------------------------


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_files_kbench_writes_have_the_modes_the_umask_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_027: None
) -> None:
    """SynthFashion, a feature store, a checkpoint and a results file: 0640 files and 0750 directories under umask
    027 (0644 and 0755 under the usual 022), not mkstemp's private 0600 / 0700."""
    from kbench.core.paths import cache_dir
    from kbench.data import synth
    from kbench.features.store import ArraySpec, ShardedStore
    from kbench.models.train_state import TrainState
    from kbench.report import results_file

    monkeypatch.setenv("KBENCH_HOME", str(tmp_path / "home"))
    synth.generate(tmp_path / "synth", SynthConfig(products_train=8, products_test=4, max_poses=1))
    store = ShardedStore.create(tmp_path / "store", 4, 2, {"x": ArraySpec((3,), "float32")}, {"what": "test"})
    for shard in store.missing():
        with store.shard_writer(shard) as writer:
            writer.append({"x": np.zeros((2, 3), dtype=np.float32)})
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoint = TrainState(cache_dir("checkpoints") / "linear", every=1)
    checkpoint.save(model, optimizer, scheduler, {"done": 1})
    results = results_file.write(tmp_path, "results", {"metrics": {"itr/R1": 1.0}})

    files = [tmp_path / "synth" / TRAIN_FILE, tmp_path / "synth" / TEST_FILE, results]
    files += [p for root in (store.root, checkpoint.directory) for p in root.rglob("*") if p.is_file()]
    dirs = [store.root, checkpoint.directory, *(p for p in store.root.rglob("*") if p.is_dir())]
    assert len(files) >= 8 and len(dirs) >= 4
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {str(p): "0o640" for p in files}
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in dirs} == {str(p): "0o750" for p in dirs}


# --- the local Ray cluster ----------------------------------------------------------------------------------------


def _listening(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every TCP socket in LISTEN state held by ``pids``, from ``/proc``."""
    inodes: dict[str, str] = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                address = fields[1].split(":")[0]
                assert len(address) == width
                inodes[fields[9]] = address
    found = []
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for link in links:
            inode = link.removeprefix("socket:[").removesuffix("]")
            if inode in inodes:
                found.append((pid, inodes[inode]))
    return found


def _loopback(hex_address: str) -> bool:
    """Whether a /proc/net/tcp{,6} address is 127.0.0.0/8, ::1 or ::ffff:127.x.x.x."""
    if len(hex_address) == 8:
        return hex_address.endswith("7F")  # little-endian: the first octet is the last byte
    words = [hex_address[i : i + 8] for i in range(0, 32, 8)]
    if words == ["00000000"] * 3 + ["01000000"]:
        return True
    return words[:2] == ["00000000"] * 2 and words[2] == "FFFF0000" and words[3].endswith("7F")


@pytest.mark.slow
def test_the_local_ray_cluster_listens_on_loopback_only(tmp_path: Path) -> None:
    """Every process of the Ray kbench starts (marked by an environment variable they inherit) listens on 127.0.0.1
    only: Ray runs with its authentication off, so an address others reach would let them submit jobs."""
    name, value = "KBENCH_TEST_MARK", f"{os.getpid()}-{tmp_path.name}"
    done = python(
        f"""
        import json, os, sys
        from pathlib import Path
        import ray
        from kbench.core.config import load_config
        from kbench.engine.launch import ray_session
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_resource_faults import _listening
        with ray_session(load_config("smoke"), None, Path({str(tmp_path / "ray.log")!r})):
            assert ray.get(ray.remote(lambda: os.getpid()).remote()) != os.getpid()  # a worker is up
            mine = set()
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if b"{name}={value}" in Path(f"/proc/{{pid}}/environ").read_bytes().split(b"\\0"):
                        mine.add(int(pid))
                except OSError:
                    pass
            print(json.dumps({{"pids": sorted(mine), "listening": _listening(mine)}}))
        """,
        env={name: value, "KBENCH_HOME": str(tmp_path / "home")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(found["pids"]) >= 3, found  # the driver, the GCS server, the raylet, a worker...
    assert len(found["listening"]) >= 3, found
    assert [(pid, a) for pid, a in found["listening"] if not _loopback(a)] == []
