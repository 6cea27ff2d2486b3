"""Given weights instead of pre-training: --checkpoint, --no-finetune, the logged model, AutoModel, kbench export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_output import error_lines
from mlflow.tracking import MlflowClient
from transformers import AutoConfig, AutoModel
from zoo_inputs import raw_batch

import kbench.models  # noqa: F401  (registers the zoo's model types with the Auto classes)
from kbench.commands.cli import main
from kbench.core.config import load_config
from kbench.engine.trial import TrialSpec, config_hash
from kbench.models.zoo import MODELS, build_model
from kbench.report.export import export

SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TINY = {**SIZES, "vocab_size": 200, "visual_feature_size": 24, "patch_scheme": "grid-4"}
INPUTS = ("input_ids", "attention_mask", "patch_features", "patch_locations")
# Smoke trials cut to a few steps (pre-training, ITR's and CR's fine-tuning) and ITR to 5 of its 20 queries.
SHORT = [
    "pretrain.max_steps=3",
    "tasks.itr.finetune.max_steps=2",
    "tasks.cr.finetune.max_steps=2",
    "tasks.itr.queries=5",
]


def tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    build_model("fashionbert", None, **TINY).save_pretrained(directory)
    return directory


def outputs(model) -> dict[str, torch.Tensor]:
    batch = {k: v for k, v in raw_batch(patches=16, dim=24).items() if k in INPUTS}
    with torch.no_grad():
        return {"itm": model.itm_logits(**batch), "mlm": model.mlm_logits(**batch)}


def test_auto_model_loads_an_export_with_the_same_outputs(tmp_path: Path) -> None:
    original = build_model("fashionbert", None, **TINY).eval()
    original.save_pretrained(tmp_path / "ckpt")
    summary = export(str(tmp_path / "ckpt"), tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert summary.startswith("exported fashionbert")
    assert AutoConfig.from_pretrained(tmp_path / "out").model_type == "kbench-fashionbert"
    loaded = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(loaded) is MODELS.get("fashionbert")
    for key, value in outputs(original).items():
        assert torch.equal(outputs(loaded)[key], value), key
    card = (tmp_path / "out" / "README.md").read_text()
    assert "AutoModel.from_pretrained" in card and "kbench run --model fashionbert --checkpoint" in card


def test_the_checkpoint_and_its_weights_are_part_of_the_config_hash(tmp_path: Path) -> None:
    spec = TrialSpec("fashionbert", 0)
    plain = config_hash(load_config("smoke"), spec)
    first = tiny_checkpoint(tmp_path / "a")
    with_first = config_hash(load_config("smoke", [f"model.checkpoint={first}"]), spec)
    assert with_first != plain
    assert config_hash(load_config("smoke", [f"model.checkpoint={first}"]), spec) == with_first
    tiny_checkpoint(first, seed=1)  # new weights under the same path
    assert config_hash(load_config("smoke", [f"model.checkpoint={first}"]), spec) != with_first
    uri = "runs:/0123456789abcdef0123456789abcdef/model"
    assert config_hash(load_config("smoke", [f"model.checkpoint={uri}"]), spec) not in (plain, with_first)
    assert config_hash(load_config("smoke", ["finetune=false"]), spec) != plain


def test_bad_checkpoints_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    run = ["run", "--profile", "smoke", "--task", "itr", *store]
    wrong = tiny_checkpoint(tmp_path / "fashionbert")
    cases = {
        (*run, "--model", "kaleido", "--checkpoint", str(wrong)): "is a kbench-fashionbert model, not kaleido",
        (*run, "--model", "kaleido", "--checkpoint", str(tmp_path / "missing")): "does not exist",
        ("export", "0123456789abcdef0123456789abcdef", "--out", str(tmp_path / "x"), *store): "no run",
        ("export", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), *store): "does not exist",
    }
    capsys.readouterr()
    for argv, message in cases.items():
        assert main(list(argv)) == 2, argv
        err = error_lines(capsys.readouterr().err)
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x").exists()


def trial_run(uri: str, experiment: str):
    client = MlflowClient(tracking_uri=uri)
    (exp,) = [client.get_experiment_by_name(experiment)]
    runs = client.search_runs([exp.experiment_id], "tags.`kbench.model` = 'kaleido'")
    assert len(runs) == 1
    return runs[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A short smoke trial of kaleido, its export, a trial of the export, one of its logged model, not fine-tuned."""
    root = tmp_path_factory.mktemp("checkpoints")
    uri = f"sqlite:///{root / 'mlflow.db'}"

    def run(experiment: str, *extra: str) -> object:
        sets = [arg for item in SHORT for arg in ("--set", item)]
        argv = ["run", "--model", "kaleido", "--task", "itr,cr", "--profile", "smoke", *sets, *extra]
        assert main([*argv, "--tracking-uri", uri, "--experiment", experiment]) == 0
        return trial_run(uri, experiment)

    source = run("source")
    assert main(["export", source.info.run_id, "--out", str(root / "export"), "--tracking-uri", uri]) == 0
    from_dir = run("from-dir", "--checkpoint", str(root / "export"))
    from_run = run("from-run", "--checkpoint", f"runs:/{source.info.run_id}/model", "--no-finetune")
    return {"uri": uri, "root": root, "source": source, "from_dir": from_dir, "from_run": from_run}


@pytest.mark.slow
def test_a_checkpoint_is_evaluated_without_pre_training(runs: dict) -> None:
    source, from_dir = runs["source"], runs["from_dir"]
    assert any(k.startswith("pretrain/") for k in source.data.metrics)
    assert not any(k.startswith("pretrain/") for k in from_dir.data.metrics)
    assert from_dir.data.tags["kbench.checkpoint"] == str(runs["root"] / "export")
    assert from_dir.data.metrics["itr/pretrained_R1"] == source.data.metrics["itr/pretrained_R1"]
    assert {"itr/R1", "cr/acc"} <= set(from_dir.data.metrics)
    assert from_dir.data.tags["kbench.config_hash"] != source.data.tags["kbench.config_hash"]
    card = (runs["root"] / "export" / "README.md").read_text()
    assert source.data.tags["kbench.config_hash"] in card and "| itr | R1 |" in card


@pytest.mark.slow
def test_no_finetune_scores_the_pre_trained_heads(runs: dict) -> None:
    source, from_run = runs["source"], runs["from_run"]
    metrics = from_run.data.metrics
    assert not any(k.startswith("pretrain/") for k in metrics)
    assert from_run.data.tags["kbench.checkpoint"] == f"runs:/{source.info.run_id}/model"
    assert from_run.data.tags["kbench.skipped_tasks"] == "cr" and not any(k.startswith("cr/") for k in metrics)
    assert metrics["itr/pretrained_R1"] == source.data.metrics["itr/pretrained_R1"]
    for k in ("R1", "R5", "R10"):
        assert metrics[f"itr/{k}"] == metrics[f"itr/pretrained_{k}"]


@pytest.mark.slow
def test_the_logged_model_loads_with_auto_model(runs: dict, tmp_path: Path) -> None:
    from mlflow.artifacts import download_artifacts

    source = runs["source"]
    path = download_artifacts(f"runs:/{source.info.run_id}/model", dst_path=str(tmp_path), tracking_uri=runs["uri"])
    logged = AutoModel.from_pretrained(path).eval()
    exported = AutoModel.from_pretrained(runs["root"] / "export").eval()
    assert type(logged) is MODELS.get("kaleido")
    for name, value in logged.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value), name
