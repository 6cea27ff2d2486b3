"""``kbench reproduce``'s comparison: what counts as moved, and the committed reference it checks against."""

from __future__ import annotations

import json

from kbench.commands.reproduce import REFERENCE, differences
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


def test_the_committed_reference_covers_the_study() -> None:
    reference = json.loads(REFERENCE.read_text())
    every_entry = [f"{name}/default/seed0" for name in MODELS.names()]
    assert sorted(reference) == sorted([*every_entry, "kaleido/agm:agm/seed0", "kaleido/agm:random/seed0"])
    for label, metrics in reference.items():
        assert {"itr/R1", "tir/R10", "cr/acc", "sub/macro_f", "sums/SumR"} <= set(metrics)
        assert ("fc/CIDEr" in metrics) == MODELS.get(label.split("/")[0]).generates_text
        assert not any(k.startswith("time/") for k in metrics)
    assert reference["kaleido/agm:agm/seed0"] == reference["kaleido/default/seed0"]  # one config, one result
