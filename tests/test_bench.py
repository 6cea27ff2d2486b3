"""``kbench bench`` runs every stage and writes its figures (values are machine-dependent and not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbench.commands.cli import main


@pytest.mark.slow
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


@pytest.mark.slow
def test_bench_times_kaleido_with_its_collator(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--profile", "smoke", "--out", str(out)]) == 0  # the default model
    stages = [r["stage"] for r in json.loads(out.read_text())["results"]]
    assert stages[:2] == ["feature extraction (small-cnn, kaleido)", "pre-training step (kbench-kaleido)"]


def test_scale_bench_measures_the_data_path_and_cleans_up(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--scale`` at a tiny size: a store of the paper's row layout written, read and fed through the pipeline; every
    figure reported (values are machine-dependent: only their consistency is asserted) and the store removed."""
    out, scratch = tmp_path / "scale.json", tmp_path / "scratch"
    argv = ["bench", "--scale", "300", "--dir", str(scratch), "--out", str(out)]
    assert main([*argv, "--set", "pretrain.batch_size=32", "--set", "runtime.loader_workers=1"]) == 0
    report = json.loads(out.read_text())
    assert report["rows"] == 300 and report["row"].startswith("kaleido-locked: 74 x 2048")
    row_bytes = 74 * 2048 * 2 + 55 * 5 * 4 + 4 * 4  # features and views, locations, box
    assert report["store_gb"] == round(300 * row_bytes / 1e9, 2)
    rates = ("write_mb_per_s", "sequential_read_mb_per_s", "random_batch_read_mb_per_s", "pipeline_samples_per_s")
    assert all(report[k] > 0 for k in rates) and report["peak_rss_mb"] > 0
    assert report["read_ratio"] == pytest.approx(
        report["random_batch_read_mb_per_s"] / report["sequential_read_mb_per_s"], abs=2e-3
    )
    h100 = report["h100_estimate"]
    # BERT-base over 64 text + 55 patch tokens: 3 x (12 layers x 1.73 GFLOP + the 2048 -> 768 patch projection)
    assert h100["training_flops_per_sample"] == pytest.approx(6.27e10, rel=0.01)
    assert h100["samples_per_s"] == pytest.approx(989e12 * 0.45 / h100["training_flops_per_sample"], rel=1e-3)
    assert "estimate" in h100["kind"]
    assert list(scratch.iterdir()) == [], "the store is removed unless --keep"
    assert "one H100 at 45 % MFU (estimate)" in capsys.readouterr().out
