"""The command line as a user meets it: the whole path at smoke size through real Ray and MLflow, and bad input."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml
from cli_output import error_lines
from mlflow.tracking import MlflowClient
from test_tables import log_run

from kbench.commands.cli import build_parser, main
from kbench.core.catalog import BUILTIN_ENCODERS, BUILTIN_MODELS, plugin_entry_points
from kbench.data.layout import TRAIN_FILE
from kbench.engine.tracking import open_experiment
from kbench.engine.trial import TrialSpec
from kbench.features.encoders import ENCODERS
from kbench.models.zoo import MODELS

SMOKE = ["--profile", "smoke"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, kbench_home: Path) -> dict:
    """One `kbench run --model all --task all --profile smoke` into a fresh SQLite store, extracting the grid feature
    stores of six of its seven entries itself (earlier tests' are removed first), so that the extraction is measured
    on its run. Two trials share the two cores at a time: a smoke trial's tiny kernels leave most of a second core
    idle, and its Java start-up (METEOR) overlaps the other's work."""
    for store in (kbench_home / "features").glob("*-grid-8-*"):  # each store's directory and its lock file
        if store.is_dir():
            shutil.rmtree(store)
        else:
            store.unlink()
    root = tmp_path_factory.mktemp("run")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    argv = ["run", "--model", "all", "--task", "all", *SMOKE, "--cpus-per-trial", "1"]
    argv += ["--tracking-uri", uri, "--experiment", "e2e"]
    code = main(argv)
    return {"code": code, "uri": uri, "root": root}


@pytest.mark.slow
def test_run_logs_every_task_to_mlflow(smoke_run: dict) -> None:
    assert smoke_run["code"] == 0
    client = MlflowClient(tracking_uri=smoke_run["uri"])
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["kbench.model"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and sorted(children) == MODELS.names()
    assert parents[0].info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children.values())
    child = children["fashionbert"]
    assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    tags = child.data.tags
    assert tags["kbench.model"] == "fashionbert" and tags["kbench.seed"] == "0" and tags["kbench.profile"] == "smoke"
    assert tags["kbench.protocol"] == "fashionbert-101 v1" and tags["kbench.dataset"] == "synth"
    assert len(tags["kbench.data_fingerprint"]) == 16 and len(tags["kbench.config_hash"]) == 16
    assert tags["kbench.task_versions"] == "itr=v1,tir=v1,cr=v1,sub=v1,fc=v1"
    metrics = child.data.metrics
    expected = {
        *(f"{t}/{m}" for t in ("itr", "tir") for m in ("R1", "R5", "R10", "pretrained_R1")),
        *(f"{t}/{m}" for t in ("cr", "sub") for m in ("acc", "macro_f", "macro_f_present")),
        *(f"fc/{m}" for m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")),
        "sums/SumR",
        "sums/SumCLS",
        "sums/SumCAP",
        "pretrain/mlm_loss",
        "pretrain/itm_acc",
        "time/pretrain_s",
    }
    assert expected <= set(metrics)
    assert all(0 <= metrics[f"{t}/R{k}"] <= 100 for t in ("itr", "tir") for k in (1, 5, 10))
    recall = sum(metrics[f"{t}/R{k}"] for t in ("itr", "tir") for k in (1, 5, 10))
    assert metrics["sums/SumR"] == pytest.approx(recall)
    cls = metrics["cr/acc"] + 100 * metrics["cr/macro_f"] + metrics["sub/acc"] + 100 * metrics["sub/macro_f"]
    assert metrics["sums/SumCLS"] == pytest.approx(cls)
    history = client.get_metric_history(child.info.run_id, "pretrain/loss")
    assert [m.step for m in history] == [1]
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {
        "config.yaml",
        "candidates_itr.json",
        "candidates_tir.json",
        "captions_fc.json",
        "confusion_cr.csv",
    } <= artifacts
    lists = json.loads(Path(client.download_artifacts(child.info.run_id, "candidates_itr.json")).read_text())
    assert lists["protocol"] == "fashionbert-101" and len(lists["candidate_rows"]) == 20
    assert all(len(c) == 101 for c in lists["candidate_rows"])


@pytest.mark.slow
def test_table_is_rebuilt_from_mlflow(smoke_run: dict, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    out_file = smoke_run["root"] / "table.csv"
    code = main(
        [
            "table",
            "--main",
            "--format",
            "csv",
            "--tracking-uri",
            smoke_run["uri"],
            "--experiment",
            "e2e",
            "--output",
            str(out_file),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and printed == out_file.read_text()
    lines = printed.splitlines()
    assert lines[0].startswith("model,source,seeds,interval,ITR R@1,ITR R@1 CI95,ITR R@5")
    assert lines[1].startswith("FashionBERT,paper,,,23.96,,46.31,,52.12,,26.75,,46.48,,55.74,,251.36,,91.25,,0.705,")
    assert lines[2].startswith("FashionBERT (kbench),kbench,1,")
    assert lines[3].startswith("Kaleido-BERT,paper,,,27.99,,60.09,,68.37,")
    assert lines[4].startswith("Kaleido-BERT (kbench),kbench,1,")


@pytest.mark.slow
def test_every_zoo_entry_runs_every_task_it_can(smoke_run: dict, capsys: pytest.CaptureFixture) -> None:
    client = MlflowClient(tracking_uri=smoke_run["uri"])
    experiment = client.get_experiment_by_name("e2e")
    runs = {
        r.data.tags["kbench.model"]: r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("kbench.variant")
    }
    assert sorted(runs) == ["clip", "fashionbert", "imagebert", "kaleido", "oscar", "vilbert", "vlbert"]
    for name, run in runs.items():
        metrics = run.data.metrics
        assert {"itr/R1", "tir/R10", "cr/acc", "sub/macro_f", "sums/SumR", "sums/SumCLS"} <= set(metrics), name
        assert all(math.isfinite(v) for k, v in metrics.items() if k.startswith("pretrain/")), name
        if name == "clip":  # a dual encoder: no captioning, and the whole gallery from embeddings
            assert run.data.tags["kbench.skipped_tasks"] == "fc" and "fc/CIDEr" not in metrics
            assert {"itr/full_R1", "tir/full_R10"} <= set(metrics) and "sums/SumCAP" not in metrics
        else:
            assert "kbench.skipped_tasks" not in run.data.tags and "sums/SumCAP" in metrics, name
    assert main(["table", "--main", "--tracking-uri", smoke_run["uri"], "--experiment", "e2e"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert {"ViLBERT-style (kbench)", "OSCAR-style (kbench)", "CLIP-style (kbench)", "ViLBERT", "OSCAR"} <= set(rows)
    # Table 3's row: captioning is not run
    cells = [c.strip() for c in rows["CLIP-style (kbench)"].strip(" |").split("|")]
    assert cells[-5:] == ["–"] * 5 and cells[4] != "–"


@pytest.mark.slow
def test_kaleido_logs_its_pretext_tasks_and_measurements(smoke_run: dict) -> None:
    client = MlflowClient(tracking_uri=smoke_run["uri"])
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id], "tags.`kbench.model` = 'kaleido'")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    pretext = {f"pretrain/{t}_loss" for t in ("mlm", "itm", "rr", "jps", "cp", "g2cm", "b2cm")}
    pretext |= {f"pretrain/{t}_acc" for t in ("mlm", "itm", "rr", "jps", "cp")}
    measured = {f"aag/{m}_l{n}" for m in ("precision", "recall", "chance") for n in (3, 4, 5)}
    measured |= {"kpg/iou", "kpg/iou75", "aag/words_per_image", "time/prepare_s", "sums/SumR", "fc/CIDEr"}
    assert pretext | measured <= set(metrics)
    assert metrics["kpg/iou"] > 0.8, "the saliency lock finds SynthFashion's garments"
    assert all(0 <= metrics[f"aag/precision_l{n}"] <= 1 for n in (3, 4, 5))
    assert 0 <= metrics["pretrain/jps_acc"] <= 1 and metrics["pretrain/b2cm_loss"] > 0


@pytest.mark.slow
def test_every_stage_logs_its_peak_memory(smoke_run: dict) -> None:
    """Each trial stage's peak resident set, and the extraction's (Ray tasks, before the trials) on the parent run."""
    client = MlflowClient(tracking_uri=smoke_run["uri"])
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    for run in runs:
        metrics = run.data.metrics
        if "mlflow.parentRunId" in run.data.tags:
            stages = ("data", "features", "prepare", "pretrain", "itr", "tir", "cr", "sub")
            stages += () if run.data.tags["kbench.model"] == "clip" else ("fc",)
            peaks = [metrics[f"mem/{stage}_peak_mb"] for stage in stages]
            # a resident set of a CPU trial: more than the interpreter with torch, well under the machine
            assert all(300 < peak < 8000 for peak in peaks), dict(zip(stages, peaks, strict=True))
        else:
            assert 100 < metrics["mem/extraction_peak_mb"] < 8000 and metrics["time/extraction_s"] > 0


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """The exit code and stderr of ``kbench argv``, less the line a run, ablate or tune starts with."""
    capsys.readouterr()
    code = main(argv)
    return code, "\n".join(error_lines(capsys.readouterr().err))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--model", "fashionbrt"], "unknown model 'fashionbrt'; did you mean fashionbert?"),
        (["run", "--task", "itr,cap"], "unknown task 'cap'"),
        (["run", "--dataset", "synthetic"], "unknown dataset 'synthetic'; did you mean synth?"),
        (["run", "--profile", "fast"], "unknown profile 'fast'"),
        (["run", "--set", "pretrain.lr"], "malformed --set 'pretrain.lr'"),
        (["run", "--set", "pretrain.learning_rate=1"], "unknown config key 'pretrain.learning_rate'"),
        (
            ["run", "--model", "fashionbert", "--set", "models.fashionbert.adaptive=1"],
            "model fashionbert has no option 'adaptive'",
        ),
        (["run", "--model", "kaleido", "--set", "models.kaleido.kpg=kaleidoscope"], "unknown kpg 'kaleidoscope'"),
        (["run", "--model", "kaleido", "--set", "models.kaleido.akpm=B+VI"], "bad akpm term 'VI'"),
        (["run", "--model", "kaleido", "--set", "models.kaleido.saliency=nowhere:Net"], "cannot load"),
        (["run", "--set", "tasks.itr.querys=3"], "tasks.itr: unknown key 'querys'; did you mean query, queries?"),
        (["run", "--set", "tasks.itr.protocol=fb101"], "unknown protocol 'fb101'"),
        (["run", "--dataset", "fashiongen"], "--dataset fashiongen needs --data-dir"),
        (
            ["run", "--dataset", "fashiongen", "--data-dir", "/nonexistent/dir"],
            "data directory /nonexistent/dir does not exist",
        ),
        (["run", "--seeds", "0"], "--seeds must be at least 1"),
        (["run", "--limit", "0"], "--limit must be at least 1 product"),
        (["bench", "--scale", "10", "--dir", "/proc/kbench"], "--dir /proc/kbench: cannot create it"),
        (["table", "--main"], "no MLflow tracking store at"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert err.startswith("kbench: error: ") and len(err.splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "mlflow.db").exists() or argv[0] == "table", "no run may be opened for bad input"


def test_bad_data_files_stop_before_any_run(
    tiny_fashiongen: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_fashiongen, root)
    with h5py.File(root / TRAIN_FILE, "r+") as f:
        del f["input_category"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, err = run_cli(
        ["run", *SMOKE, "--dataset", "fashiongen", "--data-dir", str(root), "--tracking-uri", uri], capsys
    )
    assert code == 2 and "missing key 'input_category'" in err and TRAIN_FILE in err
    assert not (tmp_path / "mlflow.db").exists()


def test_ls_and_config(capsys: pytest.CaptureFixture) -> None:
    assert main(["ls", "models"]) == 0
    models = capsys.readouterr().out.splitlines()
    described = {line.split()[0]: line for line in models}
    assert sorted(described) == ["clip", "fashionbert", "imagebert", "kaleido", "oscar", "vilbert", "vlbert"]
    assert described["fashionbert"].startswith("fashionbert  FashionBERT-style single stream [text | 8x8 patches]")
    assert described["kaleido"].startswith("kaleido      Kaleido-BERT: single stream [text | 55 kaleido patches")
    assert "co-attention" in described["vilbert"] and "codebook visual words" in described["vlbert"]
    assert main(["ls", "tasks"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["cr", "fc", "itr", "sub", "tir"]
    assert "v1" in out[2]
    assert main(["ls", "datasets"]) == 0
    assert "Fashion-Gen" in capsys.readouterr().out
    assert main(["config", *SMOKE, "--set", "pretrain.lr=3e-4"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0003" in out and "# kbench.config_hash of kaleido, seed 0: " in out


def test_data_synth_writes_the_official_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "synth"
    sizes = ["--set", "data.synth.products_train=12", "--set", "data.synth.products_test=6"]
    assert main(["data", "synth", "--out", str(out), *sizes]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["fashiongen_256_256_train.h5", "fashiongen_256_256_validation.h5"]


LISTINGS = ["models", "profiles", "tasks", "protocols", "encoders", "datasets"]
LIGHT_SCRIPT = (
    "import contextlib, io, json, sys\n"
    "from kbench.commands.cli import main\n"
    "codes, out = [], io.StringIO()\n"
    "for argv in json.loads(sys.argv[1]):\n"
    "    try:\n"
    "        with contextlib.redirect_stdout(out):\n"
    "            codes.append(main(argv))\n"
    "    except SystemExit as exc:\n"
    "        codes.append(exc.code)\n"
    "heavy = sorted(m for m in ('torch', 'transformers', 'ray', 'mlflow') if m in sys.modules)\n"
    "print(json.dumps([codes, heavy, out.getvalue()]))\n"
)


def run_light(commands: list[list[str]]) -> tuple[list[int], list[str], str]:
    """The exit codes of ``commands`` run in one fresh interpreter, which of torch, transformers, Ray and MLflow
    they imported, and what they printed."""
    done = subprocess.run([sys.executable, "-c", LIGHT_SCRIPT, json.dumps(commands)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    codes, heavy, out = json.loads(done.stdout.splitlines()[-1])
    return codes, heavy, out


def test_help_and_listings_import_no_torch_transformers_ray_or_mlflow() -> None:
    codes, heavy, out = run_light([["--help"], *(["ls", what] for what in LISTINGS)])
    assert heavy == []
    assert codes == [0] * (1 + len(LISTINGS))
    assert "fashionbert-101" in out and "small-cnn" in out and "synth" in out and "Image-to-text retrieval" in out


@pytest.mark.slow
def test_table_of_a_sqlite_store_imports_no_torch_transformers_ray_or_mlflow(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # a run of one seed, with per-sample records: the table reads its intervals from them
    log_run(uri, open_experiment(uri, "kbench"), TrialSpec("clip", 0), "default", (), 0.5, tmp=tmp_path)
    codes, heavy, out = run_light([["table", "--main", "--tracking-uri", uri]])
    assert heavy == []
    assert codes == [0]
    assert "| CLIP-style (kbench) | kbench   | 1       | bootstrap  |" in out


def test_ls_encoders_lists_the_catalog_which_equals_the_registry(capsys: pytest.CaptureFixture) -> None:
    registered = {name: (ENCODERS.get(name).__module__, ENCODERS.describe(name)) for name in ENCODERS.names()}
    assert registered == BUILTIN_ENCODERS
    assert main(["ls", "encoders"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(maxsplit=1) for line in lines] == [
        ["resnet50", BUILTIN_ENCODERS["resnet50"][1]],
        ["small-cnn", BUILTIN_ENCODERS["small-cnn"][1]],
    ]


def test_ls_models_lists_the_catalog_which_equals_the_registry(capsys: pytest.CaptureFixture) -> None:
    plugins = {e.name for e in plugin_entry_points()}
    registered = {
        name: (MODELS.get(name).__module__, MODELS.describe(name)) for name in MODELS.names() if name not in plugins
    }
    assert registered == BUILTIN_MODELS
    assert main(["ls", "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(BUILTIN_MODELS)
    assert lines[3].split(maxsplit=1)[1] == BUILTIN_MODELS["kaleido"][1]


@pytest.mark.parametrize(
    "override",
    ["models.kaleido.kpg=foo", "models.kaleido.kpq=kaleido", "pretrain.workers=5", "tasks.itr.finetune.lr=fast"],
)
def test_config_refuses_what_run_refuses_in_the_same_line(
    override: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_code, run_err = run_cli(["run", *SMOKE, "--set", override, "--tracking-uri", uri], capsys)
    config_code, config_err = run_cli(["config", *SMOKE, "--set", override], capsys)
    assert run_code == config_code == 2
    assert config_err.startswith("kbench: error: ") and "\n" not in config_err
    assert config_err == run_err.splitlines()[-1]


def test_config_prints_model_options_and_task_cards(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", *SMOKE, "--model", "kaleido,fashionbert", "--task", "itr,cr"]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown["models"]["kaleido"]["kpg"] == "kaleido+sod" and "agm" in shown["models"]["kaleido"]
    assert shown["models"]["fashionbert"]["hidden_size"] == shown["model"]["hidden_size"] == 64
    assert sorted(shown["tasks"]) == ["cr", "itr"]
    assert shown["tasks"]["itr"]["version"] == 1 and shown["tasks"]["itr"]["kind"] == "retrieval"
    assert shown["tasks"]["cr"]["finetune"]["epochs"] > 0
    hashes = [line for line in out.splitlines() if line.startswith("# kbench.config_hash")]
    assert [h.split(":")[0] for h in hashes] == [
        "# kbench.config_hash of kaleido, seed 0",
        "# kbench.config_hash of fashionbert, seed 0",
    ]


@pytest.mark.slow
def test_config_prints_the_hash_the_run_tags(smoke_run: dict, capsys: pytest.CaptureFixture) -> None:
    client = MlflowClient(tracking_uri=smoke_run["uri"])
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    tagged = {
        r.data.tags["kbench.model"]: r.data.tags["kbench.config_hash"] for r in runs if "kbench.model" in r.data.tags
    }
    assert main(["config", *SMOKE, "--model", "fashionbert,kaleido"]) == 0
    printed = dict(
        line.removeprefix("# kbench.config_hash of ").split(", seed 0: ")
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("# kbench.config_hash")
    )
    assert printed == {"fashionbert": tagged["fashionbert"], "kaleido": tagged["kaleido"]}


def _options(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action, str]]:
    """Every option of every subcommand, with its rendered help line."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{name} {opt}", a, text) for opt, a, text in _options(sub)]
        elif action.option_strings and action.help != argparse.SUPPRESS:
            text = parser._get_formatter()._get_help_string(action) % {"default": action.default}
            found.append((action.option_strings[-1], action, text))
    return found


def test_help_shows_every_option_with_text_and_default_and_lists_every_command(capsys) -> None:
    parser = build_parser()
    options = _options(parser)
    assert len(options) > 100
    for name, action, text in options:
        assert text, f"{name} has no help"
        hidden = action.default is None or action.default is False or action.default in ([], argparse.SUPPRESS)
        shows = hidden or "(default" in text
        assert shows, f"{name}: default {action.default!r} not shown in {text!r}"
    assert "(default: 5000)" in dict((n, t) for n, _, t in options)["ui --port"]
    assert "(default: kaleido)" in dict((n, t) for n, _, t in options)["bench --model"]
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert "tune" in commands and all(f"    {name}" in top for name in commands)


def test_ls_profiles_shows_whole_first_sentences(capsys: pytest.CaptureFixture) -> None:
    assert main(["ls", "profiles"]) == 0
    lines = {line.split()[0]: line.split(maxsplit=1)[1] for line in capsys.readouterr().out.splitlines()}
    assert sorted(lines) == ["default", "paper", "smoke"]
    assert all(description.endswith(".") for description in lines.values())
    assert lines["paper"].endswith("CR and SUB at batch 256), GPUs.")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--set", "pretrain.lr=foo"], "bad value 'foo' for pretrain.lr: expected float"),
        (["run", "--model", "kaleido,nosuch"], "unknown model 'nosuch'; did you mean oscar?"),
        (["run", "--task", "itr,itx"], "unknown task 'itx'; did you mean itr?"),
        (["run", "--seeds", "0"], "--seeds must be at least 1"),
        (["ablate", "agm", "--model", "kaleidoo"], "unknown model 'kaleidoo'; did you mean kaleido?"),
        (["tune", "--model", "clip", "--task", "cx"], "unknown task 'cx'; did you mean fc, cr?"),
    ],
)
def test_bad_names_and_values_are_refused_before_the_run_starts(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line and exit 2, no starting line before it, and nothing written (no store, no results)."""
    monkeypatch.chdir(tmp_path)
    done = subprocess.run([sys.executable, "-m", "kbench", *argv], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr.splitlines()) == (2, "", [f"kbench: error: {message}"])
    assert list(tmp_path.iterdir()) == []
