"""Models and task cards from outside the tree: a plug-in package installed through its entry point (a dist-info
directory on the path, as pip would write it), a ``package.module:Class`` name, and cards from ``--include-path``.

Whatever registers plug-ins or cards into kbench's registries for good runs in a subprocess, so that the other tests'
registries stay kbench's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_output import error_lines
from mlflow.tracking import MlflowClient

from kbench.core.config import load_config
from kbench.core.errors import KbenchError
from kbench.engine.trial import TrialSpec, config_hash
from kbench.models.api import VLPreTrainedModel
from kbench.models.zoo import MODELS, build_model
from kbench.report.tables import label
from kbench.tasks import TASKS, include_cards

PLUGIN = '''
"""A minimal out-of-tree entry: single stream [text | patches], MLM and ITM."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig

from kbench.models.api import SingleStreamForPreTraining, SingleStreamModel, VLPreTrainingOutput, mask_pairs


class TinyConfig(BertConfig):
    model_type = "tinyplug"

    def __init__(self, visual_feature_size=2048, patch_scheme="grid-8", patch_mask_probability=0.0,
                 mlm_probability=0.15, **kwargs):
        super().__init__(**kwargs)
        self.visual_feature_size = visual_feature_size
        self.patch_scheme = patch_scheme
        self.patch_mask_probability = patch_mask_probability
        self.mlm_probability = mlm_probability


class TinyPatches(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.features = nn.Linear(config.visual_feature_size, config.hidden_size)
        self.locations = nn.Linear(5, config.hidden_size)

    def forward(self, features, locations):
        return self.features(features) + self.locations(locations)


class TinyModel(SingleStreamModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.patch_embeddings = TinyPatches(config)
        self.post_init()


@dataclass
class TinyCollator:
    config: TinyConfig
    mask_token_id: int

    def __call__(self, batch, generator):
        mask_pairs(batch, self.config, self.mask_token_id, generator)
        return batch


class TinyForPreTraining(SingleStreamForPreTraining):
    """Tiny plug-in: MLM and ITM on [text | 8x8 patches]."""

    config_class = TinyConfig
    collator = TinyCollator
    display_name = "TinyPlug"

    def __init__(self, config):
        super().__init__(config, TinyModel(config))
        self.post_init()

    def forward(self, input_ids, attention_mask, patch_features, patch_locations, mlm_labels, itm_labels):
        out = self.vl(input_ids, attention_mask, patch_features, patch_locations)
        mlm_loss, mlm_acc = self.masked_lm_loss(out.last_hidden_state[:, : input_ids.shape[1]], mlm_labels)
        itm_loss, itm_acc = self.itm_loss(out.pooler_output, itm_labels)
        return VLPreTrainingOutput(
            loss=mlm_loss + itm_loss,
            losses={"mlm_loss": mlm_loss, "itm_loss": itm_loss},
            accuracies={"mlm_acc": mlm_acc, "itm_acc": itm_acc},
        )
'''

CARD = """name: category2
version: 1
title: Category recognition, a user's card
kind: classification
description: the product category from description and image, fine-tuned briefly
label: category
finetune: {epochs: 1, batch_size: 16, lr: 1.0e-4, weight_decay: 0.0, warmup: 0.1}
metrics: [acc, macro_f, macro_f_present]
primary_metric: acc
"""


def install(root: Path, entry_points: str) -> Path:
    """The plug-in package ``tinyplug`` and a dist-info declaring ``entry_points`` in ``root``, as pip installs."""
    (root / "tinyplug").mkdir(parents=True, exist_ok=True)
    (root / "tinyplug" / "__init__.py").write_text("")
    (root / "tinyplug" / "model.py").write_text(PLUGIN)
    info = root / "tinyplug-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[kbench.models]\n{entry_points}\n")
    return root


def kbench(*argv: str, path: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m kbench ARGV`` in a fresh process that finds the plug-in on PYTHONPATH (as do its Ray workers)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "kbench", *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def plugin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(tmp_path_factory.mktemp("site"), "tinyplug = tinyplug.model:TinyForPreTraining")


def test_a_module_class_name_resolves_and_builds_without_registration(plugin_root, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(plugin_root))
    name = "tinyplug.model:TinyForPreTraining"
    model_cls = MODELS.get(name)
    assert issubclass(model_cls, VLPreTrainedModel) and model_cls.__name__ == "TinyForPreTraining"
    assert name not in MODELS.names() and MODELS.describe(name) == "Tiny plug-in: MLM and ITM on [text | 8x8 patches]."
    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    model = build_model(name, None, vocab_size=100, visual_feature_size=8, **sizes)
    assert isinstance(model, model_cls) and model.config.hidden_size == 32
    assert label(name) == "TinyPlug (kbench)"


def test_a_bad_module_class_name_is_one_line_naming_it(plugin_root, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(plugin_root))
    cases = {
        "tinyplug.model:Missing": "model 'tinyplug.model:Missing' cannot be loaded: AttributeError: module "
        "'tinyplug.model' has no attribute 'Missing'",
        "nosuchpkg.model:Tiny": "model 'nosuchpkg.model:Tiny' cannot be loaded: ModuleNotFoundError: No module "
        "named 'nosuchpkg'",
        "tinyplug.model:TinyCollator": "model 'tinyplug.model:TinyCollator' is not a VLPreTrainedModel subclass",
    }
    for name, message in cases.items():
        with pytest.raises(KbenchError) as caught:
            MODELS.get(name)
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
        assert name not in MODELS.names()
    assert label("nosuchpkg.model:Tiny") == "Tiny (kbench)"  # runs of a plug-in not installed here still get a row


def test_a_broken_entry_point_fails_alone(tmp_path: Path) -> None:
    root = install(tmp_path, "tinyplug = tinyplug.model:TinyForPreTraining\nbroken = nosuchpkg.model:Broken")
    listed = kbench("ls", "models", path=root)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert {"kaleido", "fashionbert", "tinyplug", "broken"} <= set(lines)
    assert "Tiny plug-in: MLM and ITM" in lines["tinyplug"]
    assert "(broken) model 'broken' (nosuchpkg.model:Broken) cannot be loaded: ModuleNotFoundError" in lines["broken"]
    run = kbench("run", "--model", "broken", "--profile", "smoke", path=root)
    assert run.returncode == 2 and error_lines(run.stderr) == [
        "kbench: error: model 'broken' (nosuchpkg.model:Broken) cannot be loaded: ModuleNotFoundError: "
        "No module named 'nosuchpkg'"
    ]


@pytest.mark.parametrize(
    ("card", "message"),
    [
        (CARD.replace("name: category2", "name: cr"), "task 'cr' is already defined by one of kbench's cards"),
        (CARD.replace("kind: classification", "kind: clasification"), "unknown task kind 'clasification'; did you"),
        (CARD.replace("primary_metric: acc\n", ""), "missing primary_metric"),
        (CARD.replace("label: category", "label: colour"), "tasks.category2.label must be one of category"),
        (CARD.replace("label: category", "labl: category"), "tasks.category2: unknown key 'labl'; did you mean"),
    ],
)
def test_a_bad_card_is_one_line_naming_its_file(tmp_path: Path, card: str, message: str) -> None:
    (tmp_path / "mine.yaml").write_text(card)
    with pytest.raises(KbenchError) as caught:
        include_cards([tmp_path])
    assert str(caught.value).startswith(f"task card {tmp_path / 'mine.yaml'}: {message}")
    assert "category2" not in TASKS


def test_include_paths_are_absolute_and_change_no_hash(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config("smoke", ["runtime.include_paths=[cards, /elsewhere]"])
    assert cfg.runtime.include_paths == [str(tmp_path / "cards"), "/elsewhere"]
    assert config_hash(cfg, TrialSpec("kaleido", 0)) == config_hash(load_config("smoke"), TrialSpec("kaleido", 0))
    with pytest.raises(KbenchError, match="task include path /nowhere: no such directory"):
        include_cards(["/nowhere"])


@pytest.mark.slow
def test_an_entry_point_plugin_and_a_users_card_run_end_to_end(plugin_root: Path, tmp_path: Path) -> None:
    """`kbench run` of the installed plug-in on the paper's five tasks and a card from --include-path, through Ray
    workers that find both; its row in `kbench table --main`, the card's metrics in the "Other tasks" table."""
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "category2.yaml").write_text(CARD)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    where = ["--tracking-uri", uri, "--experiment", "plugins"]
    tasks = "itr,tir,cr,sub,fc,category2"
    run = kbench(
        "run",
        "--model",
        "tinyplug",
        "--task",
        tasks,
        "--profile",
        "smoke",
        "--include-path",
        "cards",
        *where,
        path=plugin_root,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("plugins")
    (trial,) = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert trial.data.tags["kbench.model"] == "tinyplug" and trial.data.tags["kbench.tasks"] == tasks
    assert trial.data.tags["kbench.task_versions"].endswith(",category2=v1")
    metrics = trial.data.metrics
    expected = {
        *(f"{t}/{m}" for t in ("itr", "tir") for m in ("R1", "R5", "R10")),
        *(f"{t}/{m}" for t in ("cr", "sub", "category2") for m in ("acc", "macro_f", "macro_f_present")),
        *(f"fc/{m}" for m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")),
        *(f"sums/{s}" for s in ("SumR", "SumCLS", "SumCAP")),
    }
    assert expected <= set(metrics) and 0 <= metrics["category2/acc"] <= 100
    table = kbench("table", "--main", *where, path=plugin_root)
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("TinyPlug (kbench)") == 3  # Tables 2 and 3, and Other tasks
    other = table.stdout.split("### Other tasks")[1]
    assert "category2 acc" in other and f"{metrics['category2/acc']:.2f}" in other
