"""Screenshots of the MLflow UI on a store with one small finished invocation: the experiment's runs page, the parent
run with its summary metrics and a trial's run, taken with headless Chromium.

    python scripts/ui_screenshots.py --out docs/img [--store DIR]

Without ``--store`` a smoke trial of Kaleido-BERT (two seeds, two tasks) is run in-process into a temporary store.
Each page's rendered DOM is checked for what it must show, so a UI that opens on another page fails the script.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from kbench.core.config import load_config
from kbench.core.tracking_store import DEFAULT_EXPERIMENT, tracking_uri
from kbench.engine.pipeline import run_trial
from kbench.engine.runner import invocation_name, model_specs
from kbench.engine.tracking import (
    UI_QUERY,
    Tracking,
    experiment_url,
    open_experiment,
    parent_run,
    summarize,
)

TASKS = ["itr", "cr"]
SEEDS = [0]
WINDOW = "1600,1000"
VIRTUAL_TIME_MS = 15000


def chromium() -> str | None:
    """The headless browser's executable, if one is installed."""
    return next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)


def make_store(directory: Path) -> str:
    """Run a small invocation (kaleido, smoke profile, one seed, ITR and category recognition) into a SQLite store in
    ``directory``, the way ``kbench run`` logs it; its tracking URI."""
    uri = tracking_uri(str(directory))
    cfg = load_config("smoke")
    specs = model_specs(["kaleido"], SEEDS)
    tracking = Tracking(uri, open_experiment(uri, DEFAULT_EXPERIMENT))
    name = invocation_name("run", specs, TASKS, cfg.profile)
    tags = {"command": "run", "profile": cfg.profile, "dataset": cfg.data.dataset}
    with parent_run(tracking, name, tags, {"tasks": ",".join(TASKS)}) as parent_id:
        child = Tracking(uri, tracking.experiment_id, parent_id)
        for spec in specs:
            run_trial(spec, cfg, TASKS, child)
        found = f"tags.`mlflow.parentRunId` = '{parent_id}'"
        children = tracking.client().search_runs([tracking.experiment_id], found)
        summarize(tracking, parent_id, [r.info.run_id for r in children])
    return uri


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(uri: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1 for ``uri``, once it answers."""
    database = Path(uri.removeprefix("sqlite:///"))
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    command += ["--artifacts-destination", (database.parent / "mlartifacts").as_uri()]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PATH": "/usr/bin:/bin"}
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}") from None
            time.sleep(1)
    server.terminate()
    raise RuntimeError("mlflow server did not answer within 120 s")


def render(browser: str, url: str, png: Path | None) -> str:
    """The page's DOM after ``VIRTUAL_TIME_MS`` of virtual time; with ``png``, also its screenshot."""
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={WINDOW}"]
    flags += [f"--virtual-time-budget={VIRTUAL_TIME_MS}", "--disable-dev-shm-usage"]
    with tempfile.TemporaryDirectory() as profile:
        flags.append(f"--user-data-dir={profile}")
        if png is not None:
            subprocess.run([*flags, f"--screenshot={png}", url], capture_output=True, timeout=180, check=True)
        out = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True)
    return out.stdout


def pages(uri: str, base: str) -> dict[str, tuple[str, list[str]]]:
    """Name -> (URL, texts its DOM must contain) of the three pages shown."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    eid = experiment.experiment_id
    return {
        "mlflow-runs": (experiment_url(base, eid), ["<title>Runs - ", parent.info.run_name]),
        "mlflow-parent-run": (
            f"{base}/#/experiments/{eid}/runs/{parent.info.run_id}?{UI_QUERY}",
            ["itr/R1", "cr/acc"],
        ),
        "mlflow-child-run": (
            f"{base}/#/experiments/{eid}/runs/{child.info.run_id}?{UI_QUERY}",
            [child.info.run_name, "models.kaleido.kpg"],
        ),
    }


def screenshots(uri: str, out: Path, browser: str) -> dict[str, str]:
    """Serve ``uri``, screenshot the three pages into ``out`` and check each DOM; page name -> its DOM."""
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(uri, port, Path(tmp) / "server.log")
        try:
            doms = {}
            for name, (url, expected) in pages(uri, f"http://127.0.0.1:{port}").items():
                doms[name] = dom = render(browser, url, out / f"{name}.png")
                missing = [text for text in expected if text not in dom]
                if missing:
                    raise RuntimeError(f"{name} ({url}) does not show {', '.join(missing)}")
            return doms
        finally:
            server.terminate()
            server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="where the PNGs go (default: docs/img)")
    parser.add_argument("--store", type=Path, help="a store directory to reuse or fill (default: a temporary one)")
    opts = parser.parse_args()
    browser = chromium()
    if browser is None:
        print("no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        store = opts.store or Path(tmp)
        uri = tracking_uri(str(store)) if (store / "mlflow.db").exists() else make_store(store)
        for name in screenshots(uri, opts.out, browser):
            print(opts.out / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
