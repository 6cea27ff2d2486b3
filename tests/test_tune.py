"""``kbench tune``: the search space, dev evaluation after every epoch, and ASHA through real Ray Tune and MLflow,
ending in a config file that ``kbench run --config`` reads."""

from __future__ import annotations

import math

import pytest
import yaml
from cli_output import error_lines
from mlflow.tracking import MlflowClient

from kbench.commands.cli import main
from kbench.core.config import OptimConfig, load_config
from kbench.engine.trial import Trial, TrialSpec
from kbench.engine.tuning import SEARCHED, search_space
from kbench.models.zoo import build_model
from kbench.tasks import build_task


def test_search_space_is_centred_on_the_recipe() -> None:
    space = search_space(OptimConfig(lr=1e-4, batch_size=32, epochs=12, warmup=0.1))
    assert (space["lr"].lower, space["lr"].upper) == pytest.approx((1e-5, 1e-3))
    assert list(space["batch_size"].categories) == [16, 32, 64]
    assert list(space["epochs"].categories) == [6, 12, 24]
    assert (space["warmup"].lower, space["warmup"].upper) == (0.0, 0.2)
    assert list(search_space(OptimConfig(batch_size=8, epochs=1))["epochs"].categories) == [1, 2]


@pytest.mark.slow
def test_dev_evaluation_after_each_epoch_matches_the_final_one() -> None:
    """The hook sees the dev split's metrics after every epoch; the last ones are the task's result on dev."""
    cfg = load_config("smoke", ["tasks.cr.finetune.epochs=3"])
    trial = Trial(TrialSpec("fashionbert", 0), cfg)
    model = build_model("fashionbert", None, **trial.model_kwargs()).eval()
    seen: list[tuple[int, dict[str, float]]] = []
    task = build_task("cr", cfg.tasks["cr"])
    result = task.run(trial.context, model, split="dev", on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)))
    assert [e for e, _ in seen] == [1, 2, 3]
    assert seen[-1][1] == result.metrics
    dev = trial.data("dev")
    assert len(dev) == len(trial.dataset.dev) and 0 < len(dev) < len(trial.data("train"))
    correct = round(result.metrics["acc"] * len(dev) / 100)
    assert result.metrics["acc"] == pytest.approx(100 * correct / len(dev))  # a share of the dev images


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A search of four samples, two at a time on a core each (a smoke sample's tiny kernels use little of two)."""
    root = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = root / "best.yaml"
    argv = ["tune", "--model", "fashionbert", "--task", "cr", "--profile", "smoke", "--samples", "4"]
    argv += ["--cpus-per-trial", "1"]
    code = main([*argv, "--out", str(out), "--tracking-uri", uri, "--experiment", "tune"])
    return {"code": code, "uri": uri, "out": out}


@pytest.mark.slow
def test_tune_logs_one_parent_with_a_child_per_sample(tuned: dict) -> None:
    assert tuned["code"] == 0
    client = MlflowClient(tracking_uri=tuned["uri"])
    runs = client.search_runs([client.get_experiment_by_name("tune").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.tags["kbench.command"] == "tune"
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    for child in children:
        epochs = int(child.data.params["epochs"])
        history = client.get_metric_history(child.info.run_id, "dev/acc")
        stopped = child.data.tags.get("kbench.stopped_at")
        assert [m.step for m in history] == list(range(1, (int(stopped) if stopped else epochs) + 1))
        assert stopped is None or int(stopped) < epochs
        assert set(child.data.params) == set(SEARCHED) and 0 <= history[-1].value <= 100

    # The best sample: the highest final dev accuracy among those that ran all their epochs.
    complete = [c for c in children if "kbench.stopped_at" not in c.data.tags]
    best = max(c.data.metrics["dev/acc"] for c in complete)
    assert parent.data.metrics["best/dev_acc"] == best
    winners = [c for c in complete if c.data.metrics["dev/acc"] == best]
    assert any(all(parent.data.params[f"best.{k}"] == c.data.params[k] for k in SEARCHED) for c in winners)
    assert "best.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]


@pytest.mark.slow
def test_the_best_recipe_is_a_config_file_kbench_run_reads(tuned: dict) -> None:
    text = tuned["out"].read_text()
    assert text.startswith("# kbench tune --model fashionbert --task cr --profile smoke --samples 4")
    recipe = yaml.safe_load(text)["tasks"]["cr"]["finetune"]
    assert set(recipe) == set(SEARCHED)
    cfg = load_config("smoke", files=[tuned["out"]])
    assert cfg.tasks["cr"]["finetune"] == recipe
    assert cfg.tasks["itr"] == load_config("smoke").tasks["itr"]  # the rest of the profile is untouched
    finetune = build_task("cr", cfg.tasks["cr"]).recipe
    assert math.isclose(finetune.lr, recipe["lr"]) and finetune.batch_size == recipe["batch_size"]


@pytest.mark.slow
def test_tune_samples_stay_out_of_the_tables(tuned: dict, capsys: pytest.CaptureFixture) -> None:
    assert main(["table", "--main", "--tracking-uri", tuned["uri"], "--experiment", "tune"]) != 0
    assert "no finished kbench runs to tabulate" in capsys.readouterr().err


def test_tune_takes_one_task(tmp_path, capsys: pytest.CaptureFixture) -> None:
    argv = ["tune", "--model", "fashionbert", "--task", "cr,sub", "--profile", "smoke"]
    assert main([*argv, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) != 0
    assert error_lines(capsys.readouterr().err) == [
        "kbench: error: kbench tune searches one task's recipe at a time: --task itr, tir, cr, sub or fc"
    ]
    assert list(tmp_path.iterdir()) == []
