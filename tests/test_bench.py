"""``kbench bench`` runs every stage and writes its figures (values are machine-dependent and not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbench.cli import main


def test_bench_writes_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--profile", "smoke", "--model", "fashionbert", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    stages = [r["stage"] for r in report["results"]]
    assert stages == [
        "feature extraction (small-cnn, grid-8)",
        "pre-training step (kbench-fashionbert)",
        "bare transformers BertModel step",
        "retrieval scoring (ITM logits)",
    ]
    assert [r["unit"] for r in report["results"]] == ["images/s", "samples/s", "samples/s", "pairs/s"]
    assert all(r["rate"] > 0 and r["peak_memory_mb"] > 0 for r in report["results"])
    assert report["profile"] == "smoke" and report["machine"]["device"] == "cpu"
    assert "pairs/s" in capsys.readouterr().out


def test_bench_times_kaleido_with_its_collator(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--profile", "smoke", "--out", str(out)]) == 0  # the default model
    stages = [r["stage"] for r in json.loads(out.read_text())["results"]]
    assert stages[:2] == ["feature extraction (small-cnn, kaleido)", "pre-training step (kbench-kaleido)"]
