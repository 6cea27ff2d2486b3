"""What a run shows: its first line, the overall line over the stage bars, and a quiet terminal through the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kbench.core import progress
from kbench.core.progress import RunProgress, begin, stage
from kbench.features.extraction import features_label
from kbench.models.kaleido.kpg import kpg_patching


def test_the_first_line_says_what_starts(capsys: pytest.CaptureFixture) -> None:
    begin("kaleido on itr,cr", "smoke", 2)
    assert capsys.readouterr().err == "kbench: kaleido on itr,cr · smoke profile · 2 seeds · starting…\n"
    assert not progress.verbose()


def test_the_overall_line_counts_trials_over_the_stage_bars(capsys: pytest.CaptureFixture) -> None:
    with RunProgress(2) as display:
        display.status("starting Ray")
        with stage("features (1 stores)", 4) as advance:  # a stage on the driver draws its bar in the display
            advance(4)
        display.started("a", "kaleido/seed0")
        display.stage("a", "kaleido/seed0", "pre-train", 5, 10)
        display.stage("a", "kaleido/seed0", "pre-train", 10, 10)
        display.finished("a", "kaleido/seed0")
        display.started("b", "kaleido/seed1")
        display.finished("b", "kaleido/seed1", failed=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[:5] == [
        "kbench: starting Ray",
        "kbench: trial 1/2 kaleido/seed0 · starting",
        "kbench: trial 1/2 kaleido/seed0 finished; 1 to go",
        "kbench: trial 2/2 kaleido/seed1 · starting",
        "kbench: trial 2/2 kaleido/seed1 failed",
    ]
    final = lines[5:]
    assert final[0].startswith("trial 2/2 kaleido/seed1 failed") and re.search(r" 2/2 trials done ", final[0])
    assert final[1].startswith("features (1 stores)") and " 4/4 " in final[1]
    assert final[2].startswith("kaleido/seed0 pre-train") and " 10/10 " in final[2]
    assert len(final) == 3


def test_feature_stage_labels_say_split_and_patching_in_whole_words() -> None:
    locked = kpg_patching("kaleido+sod", "border-contrast", akpm_views=True)
    assert features_label("train", locked) == "features train · kaleido, locked"
    assert features_label("test", kpg_patching("scale-fixed", "border-contrast", akpm_views=False)) == (
        "features test · grid-8"
    )


def test_labels_stay_whole_at_80_columns(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Narrow columns go and the bar narrows before a label is touched; the longest ablation label wraps between
    words rather than being cut."""
    monkeypatch.setenv("COLUMNS", "80")
    stage_label = features_label("train", kpg_patching("kaleido+sod", "border-contrast", akpm_views=True))
    with RunProgress(2) as display:
        display.started("a", "kaleido/seed0")
        display.stage("a", "kaleido/seed0", stage_label, 1200, 2560)
        display.stage("b", "kaleido/kpg:kaleido+sod/seed2", stage_label, 3, 2560)
    final = capsys.readouterr().err.splitlines()[1:]
    assert all(len(line) <= 80 for line in final) and "…" not in "".join(final)
    assert final[0].startswith("trial 2/2 kaleido/kpg:kaleido+sod/seed2 · features ") and " 0/2 " in final[0]
    assert final[1].rstrip() == "train · kaleido, locked"
    short = next(i for i, line in enumerate(final) if line.startswith("kaleido/seed0 "))
    assert final[short].startswith("kaleido/seed0 features train · kaleido, locked ") and " 1200/2560 " in final[short]
    long = next(i for i, line in enumerate(final) if line.startswith("kaleido/kpg:"))
    assert final[long].startswith("kaleido/kpg:kaleido+sod/seed2 features train · kaleido, ")
    assert " 3/2560 " in final[long] and final[long + 1].strip() == "locked"


@pytest.mark.slow
def test_a_run_through_the_cli_is_quiet(tmp_path: Path) -> None:
    """Captioning included, so the PTB tokenizer runs; Ray's and the trial's lines land in the run's log file."""
    argv = ["run", "--model", "fashionbert", "--task", "cr,fc", "--profile", "smoke", "--limit", "20"]
    argv += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    env = {**os.environ, "KBENCH_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "kbench", *argv], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr
    out, err = done.stdout, done.stderr
    assert err.splitlines()[0] == "kbench: fashionbert on cr,fc · smoke profile · 1 seed · starting…"
    for noise in ("pid=", "PTBTokenizer", "tokens per second", "font cache"):
        assert noise not in out + err
    assert re.search(r"^trial 1/1 fashionbert/seed0 finished .* 1/1 trials done ", err, re.MULTILINE)
    log = Path(re.search(r"output goes to (\S+output\.log)", err).group(1))
    assert log.is_relative_to(tmp_path / "home" / "tune")
    assert "(_trainable pid=" in log.read_text()
    assert out.startswith("### Table 2: retrieval")
