"""``kbench reproduce``'s comparison: what counts as moved, and the committed reference it checks against."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kbench.commands.reproduce import PINNED_ISA, REFERENCE, differences, study_environment
from kbench.core.paths import cache_dir
from kbench.models.zoo import MODELS


def test_moved_appeared_and_disappeared_metrics_are_reported() -> None:
    reference = {"a/seed0": {"itr/R1": 10.0, "cr/acc": 90.0, "fc/CIDEr": 0.5}, "b/seed0": {"itr/R1": 1.0}}
    current = {"a/seed0": {"itr/R1": 10.0 + 5e-6, "cr/acc": 90.01, "sub/acc": 3.0}, "c/seed0": {"itr/R1": 2.0}}
    moved = differences(reference, current, tolerance=1e-6)
    rows = [tuple(r) for r in moved.itertuples(index=False)]
    assert rows[0][:2] == ("a/seed0", "cr/acc")  # 0.01 against 90: beyond 1e-6 relative
    assert [r[:2] for r in rows[1:]] == [
        ("a/seed0", "fc/CIDEr"),  # disappeared
        ("a/seed0", "sub/acc"),  # appeared
        ("b/seed0", "itr/R1"),  # a whole trial disappeared
        ("c/seed0", "itr/R1"),  # and one appeared
    ]
    assert ("a/seed0", "itr/R1") not in [r[:2] for r in rows]  # 5e-6 against 10 is within 1e-6 relative
    assert differences(reference, reference, 0.0).empty


def test_clip_alone_is_held_to_its_looser_tolerance() -> None:
    """CLIP's smoke entry moves by a prediction between CPU models (``LOOSER``): 2.3e-4 of macro-F passes for it and
    fails for any other entry; 2e-3 fails for it too."""
    reference = {"clip/default/seed0": {"cr/macro_f": 0.049949}, "kaleido/default/seed0": {"cr/macro_f": 0.049949}}
    close = {trial: {"cr/macro_f": 0.0501792} for trial in reference}
    assert [r[0] for r in differences(reference, close, 1e-6).itertuples(index=False)] == ["kaleido/default/seed0"]
    far = {trial: {"cr/macro_f": 0.051949} for trial in reference}
    assert len(differences(reference, far, 1e-6)) == 2


def test_the_committed_reference_covers_the_study() -> None:
    reference = json.loads(REFERENCE.read_text())
    every_entry = [f"{name}/default/seed0" for name in MODELS.names()]
    assert sorted(reference) == sorted([*every_entry, "kaleido/agm:agm/seed0", "kaleido/agm:random/seed0"])
    for label, metrics in reference.items():
        assert {"itr/R1", "tir/R10", "cr/acc", "sub/macro_f", "sums/SumR"} <= set(metrics)
        assert ("fc/CIDEr" in metrics) == MODELS.get(label.split("/")[0]).generates_text
        assert not any(k.startswith("time/") for k in metrics)
    assert reference["kaleido/agm:agm/seed0"] == reference["kaleido/default/seed0"]  # one config, one result


def test_the_study_keeps_its_caches_apart_from_ordinary_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ordinary runs (kernels unpinned) and the study compute the same cache keys from different numbers, so the
    study's caches live under a root of their own, per pinning: a KBENCH_HOME ordinary runs filled changes nothing."""
    monkeypatch.setenv("KBENCH_HOME", str(tmp_path))
    for key in PINNED_ISA:
        monkeypatch.delenv(key, raising=False)
    ordinary = {kind: cache_dir(kind) for kind in ("checkpoints", "features", "synth", "aag-grids", "tune")}
    (ordinary["checkpoints"] / "clip-0123456789abcdef").mkdir()  # a same-key checkpoint an ordinary run left
    with study_environment() as home:
        assert os.environ["KBENCH_HOME"] == str(home) and home.parent == tmp_path / "reproduce"
        assert {k: os.environ[k] for k in PINNED_ISA} == PINNED_ISA
        study = {kind: cache_dir(kind) for kind in ordinary}
        assert list(study["checkpoints"].iterdir()) == []
    assert os.environ["KBENCH_HOME"] == str(tmp_path) and not any(k in os.environ for k in PINNED_ISA)
    for kind in ordinary:
        assert study[kind].is_relative_to(home) and not ordinary[kind].is_relative_to(home), kind
    assert not any(p.is_relative_to(tmp_path / "reproduce") for p in ordinary.values())
    # Other pinning in the environment (kept, as the study does), other caches.
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    with study_environment() as other:
        assert other != home and other.parent == home.parent
