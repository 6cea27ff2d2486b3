"""The ``paper`` profile's code path on a CPU: ResNet-50 features, BERT-base, the paper's lengths and heads, over
the first 64 products of SynthFashion (``--limit 64``), with the random initial weights spelled out."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kbench.cli import main

# Random initial weights must be asked for by name: the profile names a ResNet-50 file and bert-base-uncased.
INITIAL = ["--set", "features.weights=random", "--set", "model.init_from=none"]
# What only shortens the run, leaving every shape of the paper's configuration as it is: a SynthFashion of 64
# products a split with one image each, smaller crops for the CPU-bound ResNet-50, a few steps and queries a stage.
SHORT = [
    "data.synth.products_train=64",
    "data.synth.products_test=64",
    "data.synth.max_poses=1",
    "features.crop_size=32",
    "aag.crop_size=64",
    "aag.epochs=1",
    "pretrain.batch_size=16",
    "pretrain.max_steps=2",
    "runtime.eval_batch_size=32",
    *(f"tasks.{t}.finetune.max_steps=1" for t in ("itr", "tir", "cr", "sub", "fc")),
    *(f"tasks.{t}.finetune.batch_size=8" for t in ("itr", "tir", "cr", "sub", "fc")),
    "tasks.itr.queries=1",
    "tasks.tir.queries=1",
    "tasks.itr.score_pretrained=false",
    "tasks.tir.score_pretrained=false",
    "tasks.fc.images=2",
]


@pytest.mark.slow
def test_paper_profile_runs_end_to_end_on_a_cpu_with_limit_64(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["run", "--model", "kaleido", "--task", "all", "--profile", "paper", "--dataset", "synth", "--limit", "64"]
    argv += [*INITIAL, *(a for item in SHORT for a in ("--set", item)), "--tracking-uri", uri]
    assert main(argv) == 0
    assert "features.weights=random" in caplog.text and "model.init_from=none" in caplog.text
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("kbench").experiment_id], "tags.`kbench.limit` = '64'")
    params, metrics = run.data.params, run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["kbench.profile"] == "paper"
    assert (params["model.hidden_size"], params["model.num_hidden_layers"], params["data.max_text_len"]) == (
        "768",
        "12",
        "64",
    )
    assert params["features.encoder"] == "resnet50" and params["runtime.precision"] == "bf16"
    for metric in ("itr/R1", "tir/R10", "cr/macro_f", "sub/acc", "fc/CIDEr", "sums/SumR", "pretrain/g2cm_loss"):
        assert metric in metrics, metric
    assert all(f"mem/{s}_peak_mb" in metrics for s in ("features", "prepare", "pretrain", "itr", "fc"))


def test_random_initial_weights_are_refused_unless_spelled_out(capsys: pytest.CaptureFixture) -> None:
    argv = ["run", "--profile", "paper", "--dataset", "synth", "--limit", "4", "--set", "model.init_from=none"]
    assert main(argv) == 2
    assert "needs features.weights" in capsys.readouterr().err
