"""``--ray-address``: a cluster none of whose nodes can host a trial is refused in one line, exit 2, before the
invocation's MLflow run exists; the cluster's totals are not enough (a trial's processes share one node).

The cluster is real: two Ray nodes on 127.0.0.1 (``ray start``), each declaring 2 CPUs and 1 GPU (Ray takes a
declared GPU at its word), on ports and a temporary directory of their own. Other Rays may run on this machine, so
teardown ends only the processes started here (marked by an environment variable), never ``ray stop``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MARK = "KBENCH_TEST_CLUSTER"
NODE_CPUS, NODE_GPUS = 2, 1


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def marked(value: str) -> list[int]:
    """The pids of the processes whose environment holds ``MARK=value``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if f"{MARK}={value}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(int(pid))
    return found


def end(pids: list[int]) -> None:
    """SIGTERM to ``pids``, SIGKILL to those still running 10 s later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(_running(p) for p in pids):
            time.sleep(0.2)
        pids = [p for p in pids if _running(p)]


def _running(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    return False


def ray_start(tmp: Path, mark: str, *args: str) -> None:
    """One ``ray start`` on 127.0.0.1 with ports of its own (no dashboard, random worker ports)."""
    agent, grpc, metrics, runtime_env, manager, objects, dashboard = free_ports(7)
    argv = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        *args,
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={NODE_CPUS}",
        f"--num-gpus={NODE_GPUS}",
        "--disable-usage-stats",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--node-manager-port={manager}",
        f"--object-manager-port={objects}",
        "--min-worker-port=0",
        "--max-worker-port=0",
    ]
    if "--head" in args:
        argv += ["--include-dashboard=false", f"--dashboard-port={dashboard}", f"--temp-dir={tmp}"]
    # the driver runs with auth off (kbench.engine.launch); so must the nodes, whatever ~/.ray/auth_token holds
    env = {**os.environ, MARK: mark, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The address of a two-node Ray cluster of 2 CPUs and 1 GPU per node, ended afterwards."""
    mark = f"{os.getpid()}-{time.monotonic_ns()}"
    tmp = Path(f"/tmp/kbcl-{os.getpid()}")  # short: Ray's socket paths live under it
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    try:
        ray_start(tmp, mark, "--head", f"--port={port}")
        ray_start(tmp, mark, f"--address={address}")
        yield address
    finally:
        end(marked(mark))
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def kbench_run(tmp_path: Path, address: str, command: str, *args: str) -> subprocess.CompletedProcess:
    """``kbench run`` (or ``tune``) of the smallest trial on the cluster at ``address``; a run that waits for
    resources past 150 s fails the test (Ray would wait forever)."""
    argv = [sys.executable, "-m", "kbench", command, "--model", "clip", "--task", "itr", "--profile", "smoke", *args]
    argv += ["--ray-address", address, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    env = {**os.environ, "KBENCH_HOME": str(tmp_path / "home")}
    try:
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=150)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"kbench run {' '.join(args)} was still waiting after 150 s: {(exc.stderr or b'')[-2000:]!r}")


def runs(db: Path) -> int:
    """How many MLflow runs the SQLite store ``db`` holds (none when there is no store)."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT count(*) FROM runs").fetchone()[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "args", "words"),
    [
        (
            "run",
            ["--gpus-per-trial", "2"],
            [
                "a trial asks for 2 GPUs on one node",
                "(runtime.gpus_per_trial=2)",
                "has more than 1 (2 nodes, 2 GPUs in all)",
            ],
        ),
        (
            "tune",
            ["--samples", "1", "--gpus-per-trial", "0", "--cpus-per-trial", "3"],
            [
                "a trial asks for 3 CPUs on one node",
                "(runtime.cpus_per_trial=3)",
                "has more than 2 (2 nodes, 4 CPUs in all)",
            ],
        ),
    ],
    ids=["run-gpus", "tune-cpus"],
)
def test_a_trial_no_node_can_host_is_refused_before_any_run(
    cluster: str, tmp_path: Path, command: str, args: list[str], words: list[str]
) -> None:
    """The cluster's totals (2 GPUs, 4 CPUs) would hold the trial (or tune's sample), no node does: one line naming
    the per-node limit, exit 2, and the MLflow store holds no run (it used to wait forever, then leave a FAILED
    parent run)."""
    from test_resource_faults import one_error_line

    done = kbench_run(tmp_path, cluster, command, *args)
    one_error_line(done, *words)
    assert runs(tmp_path / "mlflow.db") == 0
