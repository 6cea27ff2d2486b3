"""The ``paper`` profile: the released code's recipe, each choice one --set from its alternative, and its code path
on a CPU (ResNet-50 features, BERT-base, the paper's lengths and heads, over the first 16 products of SynthFashion,
``--limit 16``, with the random initial weights spelled out)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kbench.commands.cli import main
from kbench.core.config import load_config
from kbench.engine.trial import resolved_options
from kbench.tasks.card import load_cards
from kbench.tasks.classification import ClassificationOptions
from kbench.tasks.retrieval import RetrievalOptions

# Random initial weights must be asked for by name: the profile names a ResNet-50 file and bert-base-uncased.
INITIAL = ["--set", "features.weights=random", "--set", "model.init_from=none"]
# What only shortens the run, leaving every shape of the paper's configuration as it is: a SynthFashion of 16
# products a split with one image each, smaller crops for the CPU-bound ResNet-50, a few steps and queries a stage.
SHORT = [
    "data.synth.products_train=16",
    "data.synth.products_test=16",
    "data.synth.max_poses=1",
    "features.crop_size=32",
    "models.kaleido.aag.crop_size=64",
    "models.kaleido.aag.epochs=1",
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
def test_paper_profile_runs_end_to_end_on_a_cpu_with_limit_16(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["run", "--model", "kaleido", "--task", "all", "--profile", "paper", "--dataset", "synth", "--limit", "16"]
    argv += [*INITIAL, *(a for item in SHORT for a in ("--set", item)), "--tracking-uri", uri]
    assert main(argv) == 0
    assert "features.weights=random" in caplog.text and "model.init_from=none" in caplog.text
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("kbench").experiment_id], "tags.`kbench.limit` = '16'")
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


def finetune_recipe(overrides: list[str], task: str) -> tuple:
    """(batch size, betas, epsilon, weight decay) of a task's fine-tuning under the paper profile."""
    cfg = load_config("paper", overrides)
    kind = ClassificationOptions if task in ("cr", "sub") else RetrievalOptions
    recipe = load_cards()[task].resolve(cfg.tasks[task], kind)[0]
    return recipe.batch_size, (recipe.adam_beta1, recipe.adam_beta2), recipe.adam_epsilon, recipe.weight_decay


def test_the_paper_profile_is_the_released_recipe() -> None:
    p = load_config("paper").pretrain
    assert (p.epochs, p.epoch_unit, p.batch_size, p.lr, p.warmup, p.clip_norm) == (25.0, "pairs", 256, 1e-4, 0.1, 1.0)
    assert (p.adam_beta1, p.adam_beta2, p.adam_epsilon, p.weight_decay, p.init_mlm_head) == (
        0.9,
        0.98,
        1e-6,
        0.0,
        True,
    )
    assert load_config("paper").model.init_from == "bert-base-uncased"
    for task in ("cr", "sub"):  # run_cat.sh / run_subcat.sh: 64 a GPU on 4 GPUs, the same Adam, no weight decay
        assert finetune_recipe([], task) == (256, (0.9, 0.98), 1e-6, 0.0)
    assert finetune_recipe([], "itr")[1:3] == ((0.9, 0.98), 1e-6)


@pytest.mark.parametrize(
    ("item", "read", "expected"),
    [
        ("pretrain.epoch_unit=images", lambda c: c.pretrain.epoch_unit, "images"),
        ("pretrain.adam_beta2=0.999", lambda c: c.pretrain.adam_beta2, 0.999),
        ("pretrain.adam_epsilon=1e-8", lambda c: c.pretrain.adam_epsilon, 1e-8),
        ("pretrain.weight_decay=1e-4", lambda c: c.pretrain.weight_decay, 1e-4),
        ("pretrain.init_mlm_head=false", lambda c: c.pretrain.init_mlm_head, False),
        ("pretrain.lr=2e-5", lambda c: c.pretrain.lr, 2e-5),
        ("pretrain.warmup=5000", lambda c: c.pretrain.warmup, 5000.0),
        ("tasks.cr.finetune.batch_size=64", lambda c: c.tasks["cr"]["finetune"]["batch_size"], 64),
        ("models.kaleido.itm_head=sigmoid", lambda c: resolved_options(c, "kaleido")["itm_head"], "sigmoid"),
    ],
)
def test_each_alternative_is_one_set_away(item: str, read, expected: object) -> None:
    """Every choice the deviations ledger (docs/deviations.md) lists switches with the one --set it names."""
    assert read(load_config("paper")) != expected
    assert read(load_config("paper", [item])) == expected
    assert main(["config", "--profile", "paper", "--set", item]) == 0


def test_the_cpu_profiles_keep_their_recipe() -> None:
    """The options the paper profile sets leave the CPU profiles' results where they were."""
    for profile in ("smoke", "default"):
        p = load_config(profile).pretrain
        assert (p.epoch_unit, p.adam_beta1, p.adam_beta2, p.adam_epsilon, p.weight_decay) == (
            "images",
            0.9,
            0.999,
            1e-8,
            0.01,
        )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("pretrain.epoch_unit=epochs", "pretrain.epoch_unit must be one of images, pairs, got 'epochs'"),
        ("pretrain.itm_negative_rate=0.3", "pretrain.itm_negative_rate=0.3 needs pretrain.epoch_unit=images"),
    ],
)
def test_a_bad_epoch_unit_is_one_line_and_exit_2(item: str, message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "--profile", "paper", "--set", item]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
