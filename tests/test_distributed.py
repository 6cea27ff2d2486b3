"""Data-parallel pre-training: rank-averaged curves over a real gloo group, and a trial whose pre-training runs
on 2 Ray Train CPU workers with DDP, end to end through Ray Tune and MLflow."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from cli_output import error_lines
from mlflow.tracking import MlflowClient

from kbench.commands.cli import main
from kbench.core.paths import cache_dir
from kbench.engine.pretraining import HISTORY_FILE, mean_over_ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _average(rank: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    history = [{"loss": 1.0 + rank, "acc": 0.5 * rank}, {"loss": 3.0 * (rank + 1), "acc": 0.25}]
    out[rank] = mean_over_ranks(history)
    dist.destroy_process_group()


@pytest.mark.slow
def test_curves_are_averaged_over_ranks() -> None:
    out = mp.Manager().dict()
    mp.spawn(_average, args=(_free_port(), out), nprocs=2)
    expected = [{"acc": 0.25, "loss": 1.5}, {"acc": 0.25, "loss": 4.5}]
    assert out[0] == out[1] == expected


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    before = set(cache_dir("checkpoints").glob("fashionbert-*"))
    argv = ["run", "--model", "fashionbert", "--task", "cr", "--profile", "smoke", "--pretrain-workers", "2"]
    code = main([*argv, "--tracking-uri", uri, "--experiment", "ddp"])
    made = {p for p in set(cache_dir("checkpoints").glob("fashionbert-*")) - before if p.is_dir()}
    return {"code": code, "uri": uri, "checkpoints": made}


@pytest.mark.slow
def test_pretraining_runs_on_two_ray_train_workers(ddp_run: dict) -> None:
    assert ddp_run["code"] == 0
    client = MlflowClient(tracking_uri=ddp_run["uri"])
    runs = client.search_runs(
        [client.get_experiment_by_name("ddp").experiment_id], "tags.`kbench.model` = 'fashionbert'"
    )
    (run,) = runs
    assert run.info.status == "FINISHED" and run.data.params["pretrain.workers"] == "2"
    assert all(math.isfinite(v) for k, v in run.data.metrics.items() if k.startswith("pretrain/"))
    assert 0 <= run.data.metrics["cr/acc"] <= 100
    (checkpoint,) = ddp_run["checkpoints"]  # its own pre-training key: a 2-worker checkpoint is not a 1-worker one
    history = json.loads((checkpoint / HISTORY_FILE).read_text())
    assert (checkpoint / "model.safetensors").is_file() and len(history) == 1  # the smoke profile's one epoch
    assert history[0]["loss"] == pytest.approx(run.data.metrics["pretrain/loss"])
    # Only the checkpoint cache keeps the weights: Ray Train's own copy is removed once it has been taken.
    assert not list(cache_dir("train").glob("*/checkpoint_*"))


def test_workers_must_divide_the_batch(tmp_path, capsys) -> None:
    argv = ["run", "--model", "fashionbert", "--profile", "smoke", "--pretrain-workers", "3"]
    assert main([*argv, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) != 0
    err = error_lines(capsys.readouterr().err)
    assert err == ["kbench: error: pretrain.workers must be at least 1 and divide pretrain.batch_size (16); got 3"]
    assert os.listdir(tmp_path) == []
