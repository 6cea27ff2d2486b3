"""Values, paths, data and resource requests no trial could use are refused on the driver, before Ray starts: one
line, exit 2, no MLflow store and no results written (issue 17, item 4 and the GPU part of item 8)."""

from __future__ import annotations

import dataclasses
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_output import error_lines
from conftest import write_tiny_split

from kbench.commands.cli import main
from kbench.core.config import Config, OptimConfig, resolve_config
from kbench.core.errors import KbenchError
from kbench.core.tracking_store import tracking_uri
from kbench.data.layout import TEST_FILE, TRAIN_FILE, write_split

SMOKE = ["--profile", "smoke", "--limit", "3"]


def refused(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run ``kbench argv`` in ``tmp_path`` with its own tracking store and results directory; assert it was refused
    in one line with exit 2 and that nothing was written; return the line."""
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.iterdir())
    store, results = tmp_path / "mlflow.db", tmp_path / "results"
    capsys.readouterr()
    code = main([*argv, "--tracking-uri", str(store), "--output-path", str(results)])
    lines = error_lines(capsys.readouterr().err)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("kbench: error: "), lines
    assert not store.exists()
    assert not results.exists() or not any(results.iterdir())  # run and ablate make it up front, to fail early
    assert set(tmp_path.iterdir()) - {results} == before
    return lines[0]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("pretrain.batch_size=-4", "pretrain.batch_size must be >= 1, got -4"),
        ("pretrain.batch_size=0", "pretrain.batch_size must be >= 1, got 0"),
        ("pretrain.epochs=-1", "pretrain.epochs must be > 0, got -1"),
        ("pretrain.lr=.nan", "pretrain.lr must be a finite number, got nan"),
        ("pretrain.lr=0", "pretrain.lr must be > 0, got 0"),
        ("pretrain.itm_negative_rate=1.5", "pretrain.itm_negative_rate must be in [0, 1], got 1.5"),
        ("runtime.precision=fp8", "runtime.precision must be one of fp32, bf16, got 'fp8'"),
        ("runtime.device=tpu", "runtime.device must be one of auto, cpu, cuda, got 'tpu'"),
        ("runtime.gpus_per_trial=1.5", "runtime.gpus_per_trial above 1 must be whole GPUs, got 1.5"),
        ("model.hidden_dropout_prob=1", "model.hidden_dropout_prob must be in [0, 1), got 1"),
        ("data.dev_fraction=-0.1", "data.dev_fraction must be in [0, 1), got -0.1"),
        ("tasks.itr.finetune.epochs=0", "tasks.itr.finetune.epochs must be > 0, got 0; finetune=false"),
        ("tasks.itr.finetune.lr=-1e-4", "tasks.itr.finetune.lr must be > 0, got -0.0001"),
        ("tasks.itr.queries=0", "tasks.itr.queries must be >= 1, got 0"),
        ("tasks.itr.negative_rate=2", "tasks.itr.negative_rate must be in [0, 1], got 2"),
        ("models.nosuchmodel.x=1", "models.nosuchmodel: no such zoo entry"),
    ],
)
def test_bad_value_is_refused_before_ray(
    setting: str,
    message: str,
    tiny_fashiongen: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = ["--dataset", "fashiongen", "--data-dir", str(tiny_fashiongen)]
    line = refused(["run", *SMOKE, "--task", "itr", *data, "--set", setting], tmp_path, capsys, monkeypatch)
    assert message in line


def test_finetune_epochs_of_a_classification_task(
    tiny_fashiongen: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ["--dataset", "fashiongen", "--data-dir", str(tiny_fashiongen)]
    argv = ["run", *SMOKE, "--task", "cr", *data, "--set", "tasks.cr.finetune.epochs=0"]
    assert "tasks.cr.finetune.epochs must be > 0, got 0" in refused(argv, tmp_path, capsys, monkeypatch)


def test_model_section_of_a_known_entry_not_running_is_allowed(capsys: pytest.CaptureFixture) -> None:
    """A config file may carry the options of several zoo entries; only entries that do not exist are refused."""
    assert main(["config", "--profile", "smoke", "--model", "fashionbert", "--set", "models.kaleido.kpg=none"]) == 0
    assert "kbench.config_hash of fashionbert" in capsys.readouterr().out


def test_ablate_and_tune_refuse_bad_values_too(
    tiny_fashiongen: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ["--dataset", "fashiongen", "--data-dir", str(tiny_fashiongen)]
    line = refused(["ablate", "kpg", *SMOKE, *data, "--set", "runtime.precision=fp8"], tmp_path, capsys, monkeypatch)
    assert "runtime.precision must be one of fp32, bf16" in line
    tune = ["tune", "--task", "itr", "--samples", "2", *SMOKE, *data, "--set", "tasks.itr.finetune.batch_size=0"]
    assert "tasks.itr.finetune.batch_size must be >= 1, got 0" in refused(tune, tmp_path, capsys, monkeypatch)


def test_missing_tokenizer_is_refused_before_ray(
    tiny_fashiongen: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ["--dataset", "fashiongen", "--data-dir", str(tiny_fashiongen)]
    argv = ["run", *SMOKE, "--task", "itr", *data, "--set", "data.tokenizer=./no-such-vocab"]
    assert f"data.tokenizer: no such directory {tmp_path / 'no-such-vocab'}" in refused(
        argv, tmp_path, capsys, monkeypatch
    )


def write_images_split(path: Path, products: int, size: int, description: str) -> None:
    """A split in the official layout with ``size`` x ``size`` images and one ``description`` for every product."""
    ids = list(range(7000, 7000 + products))
    images = np.random.default_rng(0).integers(0, 256, size=(products, size, size, 3), dtype=np.uint8)
    text = {
        "input_description": [description] * products,
        "input_category": ["TOPS"] * products,
        "input_subcategory": ["SHIRTS"] * products,
        "input_pose": ["id_gridfs_1"] * products,
        "input_name": ["Shirt"] * products,
    }
    write_split(path, [images], ids, text, image_size=size)


@pytest.mark.parametrize(
    ("size", "description", "message"),
    [
        (256, "", "the test split of {test} has no images with a description"),
        (4, "Cotton shirt in navy.", "{test}: images of 4x4 pixels are too small for kaleido's kaleido patches"),
    ],
)
def test_unusable_test_data_is_refused_before_ray(
    size: int,
    description: str,
    message: str,
    tiny_fashiongen: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(tiny_fashiongen / TRAIN_FILE, data / TRAIN_FILE)
    write_images_split(data / TEST_FILE, 6, size, description)
    argv = ["run", *SMOKE, "--task", "itr", "--dataset", "fashiongen", "--data-dir", str(data)]
    assert message.format(test=data / TEST_FILE) in refused(argv, tmp_path, capsys, monkeypatch)


def test_small_train_images_are_refused_for_the_finest_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FashionBERT's 8x8 grid needs 8x8 pixels: 6x6 images would do for Kaleido's 5x5, not for it."""
    data = tmp_path / "data"
    data.mkdir()
    write_images_split(data / TRAIN_FILE, 20, 6, "Cotton shirt in navy.")
    write_tiny_split(data / TEST_FILE, products=6, seed=2, first_id=5000)
    argv = ["run", *SMOKE, "--model", "fashionbert", "--task", "itr", "--dataset", "fashiongen", "--data-dir", "data"]
    line = refused(argv, tmp_path, capsys, monkeypatch)
    assert f"{data / TRAIN_FILE}: images of 6x6 pixels are too small for fashionbert's" in line
    assert "a 8x8 grid (at least 8x8 pixels)" in line


def test_gpu_request_beyond_the_machine_is_refused_before_ray(
    tiny_fashiongen: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More GPUs than this machine has (one, on a machine without any): Ray would wait for them forever."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    have = torch.cuda.device_count()
    data = ["--dataset", "fashiongen", "--data-dir", str(tiny_fashiongen)]
    argv = ["run", *SMOKE, "--task", "itr", *data, "--gpus-per-trial", str(have + 1)]
    line = refused(argv, tmp_path, capsys, monkeypatch)
    assert f"a trial asks for {have + 1} GPU" in line and f"but this machine has {have}" in line


def test_a_cluster_request_fits_one_node_per_reservation_and_the_cluster_in_all() -> None:
    """Against a cluster's alive nodes (``ray.nodes()``'s resources; ``test_cluster_resources.py`` runs a real one):
    a trial's own reservation and each pre-training worker's on one node, all of them within the cluster's totals."""
    from kbench.core.config import load_config
    from kbench.engine.preflight import check_cluster_resources

    gpu_nodes = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]

    def line(nodes: list[dict[str, float]], *overrides: str) -> str:
        with pytest.raises(KbenchError) as caught:
            check_cluster_resources(load_config("smoke", ["runtime.cpus_per_worker=1", *overrides]), nodes)
        return str(caught.value)

    check_cluster_resources(load_config("smoke", ["runtime.gpus_per_trial=1", "runtime.cpus_per_trial=4"]), gpu_nodes)
    gpus = line(gpu_nodes, "runtime.gpus_per_trial=2")
    assert gpus.startswith("a trial asks for 2 GPUs on one node (runtime.gpus_per_trial=2) but no node of the Ray ")
    assert "cluster has more than 1 (2 nodes, 2 GPUs in all)" in gpus
    assert "a trial asks for 5 CPUs on one node" in line(
        gpu_nodes, "runtime.gpus_per_trial=0", "runtime.cpus_per_trial=5"
    )
    apart = line([{"CPU": 4.0}, {"CPU": 1.0, "GPU": 1.0}], "runtime.gpus_per_trial=1", "runtime.cpus_per_trial=3")
    assert apart.startswith("a trial asks for 3 CPUs and 1 GPU on one node but no node of the Ray cluster (2 nodes) ")
    # Two workers of one GPU each fit a node apiece, but with the trial's own GPU a trial needs 3 of the 2.
    parallel = ["pretrain.workers=2", "pretrain.batch_size=8"]
    both = line(gpu_nodes, "runtime.gpus_per_trial=1", "runtime.cpus_per_trial=1", *parallel)
    assert both.startswith("the Ray cluster has 2 GPUs but a trial asks for 3"), both
    worker = line(gpu_nodes, "runtime.gpus_per_trial=0", "runtime.cpus_per_worker=5", *parallel)
    assert "each of a trial's 2 pre-training workers asks for 5 CPUs on one node (runtime.cpus_per_worker=5)" in worker


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_a_gpu_is_refused_before_ray(
    tiny_fashiongen: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    data = ["--dataset", "fashiongen", "--data-dir", str(tiny_fashiongen)]
    argv = ["run", *SMOKE, "--task", "itr", *data, "--gpus-per-trial", "1", "--set", "runtime.device=cuda"]
    assert "runtime.device=cuda but this machine has no GPU" in refused(argv, tmp_path, capsys, monkeypatch)


def test_relative_paths_become_absolute_on_the_driver(
    tiny_fashiongen: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's workers run in their own directories: every path a trial reads is absolute before Ray starts."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_fashiongen, tmp_path / "data")
    sets = ["data.tokenizer=./vocab", "features.weights=w.safetensors", "model.init_from=./bert"]
    argv = ["config", "--profile", "smoke", "--dataset", "fashiongen", "--data-dir", "data"]
    cfg = resolve_config("smoke", [*sets, "model.checkpoint=ckpt"], dataset="fashiongen", data_dir="data")
    assert cfg.data.data_dir == str(tmp_path / "data")
    assert cfg.data.tokenizer == str(tmp_path / "vocab")
    assert cfg.features.weights == str(tmp_path / "w.safetensors")
    assert cfg.model.init_from == str(tmp_path / "bert")
    assert cfg.model.checkpoint == str(tmp_path / "ckpt")
    hub = resolve_config("smoke", ["model.init_from=bert-base-uncased", "model.checkpoint=runs:/abc/model"])
    assert (hub.model.init_from, hub.model.checkpoint) == ("bert-base-uncased", "runs:/abc/model")
    assert main(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out.split("\n# kbench.config_hash")[0])
    assert shown["data"]["data_dir"] == str(tmp_path / "data")


def test_relative_sqlite_uri_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert tracking_uri("sqlite:///runs/x.db") == f"sqlite:///{tmp_path}/runs/x.db"
    assert tracking_uri(f"sqlite:///{tmp_path}/y.db") == f"sqlite:///{tmp_path}/y.db"


def numeric_fields(cls: type, where: str) -> list[tuple[type, str, dataclasses.Field]]:
    """Every int or float field of dataclass ``cls`` and of its sub-sections, with its key."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, key = hints[f.name], f"{where}.{f.name}".lstrip(".")
        if dataclasses.is_dataclass(hint):
            found += numeric_fields(hint, key)
        elif {int, float} & set(typing.get_args(hint) or (hint,)):
            found.append((cls, key, f))
    return found


def test_every_numeric_field_declares_its_range() -> None:
    from kbench.core.bounds import bound_of
    from kbench.tasks.captioning import CaptioningOptions
    from kbench.tasks.retrieval import RetrievalOptions

    fields = numeric_fields(Config, "") + numeric_fields(OptimConfig, "tasks.*.finetune")
    fields += numeric_fields(RetrievalOptions, "tasks.itr") + numeric_fields(CaptioningOptions, "tasks.fc")
    assert len(fields) > 40
    undeclared = [key for cls, key, f in fields if bound_of(cls, f.name) is None]
    assert undeclared == []


def test_a_user_error_found_inside_a_trial_reaches_the_terminal_as_its_own_line() -> None:
    """A KbenchError raised in a trial comes back from Ray wrapped in a RayTaskError; its message is the line shown,
    without Ray's traceback or the exception's module path."""
    from ray.exceptions import RayTaskError

    from kbench.engine.launch import trial_error

    traceback = "Traceback (most recent call last):\n  File 'x.py'\nkbench.core.errors.KbenchError: lists damaged"
    wrapped = RayTaskError("train", traceback, KbenchError("lists damaged at /x.json"))
    assert trial_error(wrapped) == trial_error(wrapped.as_instanceof_cause()) == "lists damaged at /x.json"
    assert trial_error(RuntimeError("Traceback ...\nValueError: bad shape")) == "ValueError: bad shape"
