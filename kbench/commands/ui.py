"""``kbench ui``: the MLflow UI of a local tracking store, its server's output in a log file, stopped with kbench."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kbench.core.errors import KbenchError
from kbench.core.paths import cache_dir


def serve(uri: str, port: int) -> int:
    """Run the MLflow UI for ``uri`` on 127.0.0.1 in the foreground (one worker, no job runner: starts in seconds)
    until the server stops or kbench is interrupted or terminated, which stops the server's processes too."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise KbenchError(f"no MLflow tracking store at {uri.removeprefix('sqlite:///')}; run `kbench run` first")
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "file:")):
        raise KbenchError(f"kbench ui serves a local store; {uri} is already served")
    log = cache_dir("ui") / f"server-{port}.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    with log.open("w") as out:
        server = subprocess.Popen(
            server_command(uri, port),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that stopping it reaches uvicorn's processes
        )
    from kbench.engine.tracking import ui_address

    print(f"MLflow UI of {uri} at {ui_address(uri, port)} (Ctrl-C stops it; server log: {log})", flush=True)
    try:
        code = server.wait()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through kbench's handler
        return 0
    finally:
        stop(server)
    if code != 0:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        raise KbenchError(f"the MLflow server stopped with exit code {code}: {lines[-1] if lines else 'no output'}")
    return 0


def server_command(uri: str, port: int) -> list[str]:
    """``mlflow server`` for ``uri`` without per-request log lines; a SQLite store keeps its artifacts beside it."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--registry-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--uvicorn-opts", "--no-access-log"]
    if uri.startswith("sqlite:///"):
        command += ["--artifacts-destination", (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()]
    return command


def stop(server: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate the server's process group (the mlflow command and the uvicorn processes it started); kill what is
    still there after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=grace)
    while time.monotonic() < deadline:
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()
