"""The paper's ablations (Table 4), each variant defined once: its overrides, its label and its paper column.

The same definitions drive ``kbench ablate`` (what to launch) and ``kbench table --ablation`` (what to tabulate
and against which published column), so a variant cannot be run under one name and shown under another.
"""

from __future__ import annotations

from dataclasses import dataclass

from kbench.core.errors import unknown_choice


@dataclass(frozen=True)
class Variant:
    """One column of a Table 4 block."""

    block: str  # kpg | agm | akpm
    name: str  # the value of the ablated option
    label: str  # the column header, as the paper prints it
    paper: str  # the column's key among the published numbers
    option: str  # the model option the block varies

    @property
    def tag(self) -> str:
        """The trial's variant name (``TrialSpec.variant`` and the MLflow tag ``kbench.variant``)."""
        return f"{self.block}:{self.name}"

    def overrides(self, model: str) -> tuple[str, ...]:
        return (f"models.{model}.{self.option}={self.name}",)


def _block(block: str, option: str, columns: list[tuple[str, str, str]]) -> tuple[Variant, ...]:
    return tuple(Variant(block, name, label, paper, option) for name, label, paper in columns)


# Columns in the paper's order; the first of each block is its baseline for relative changes.
BLOCKS: dict[str, tuple[Variant, ...]] = {
    "kpg": _block(
        "kpg",
        "kpg",
        [
            ("scale-fixed", "Scale-fixed", "KPG:scale-fixed"),
            ("kaleido", "Kaleido.", "KPG:kaleido"),
            ("kaleido+sod", "Kaleido.+SOD", "KPG:kaleido+SOD"),
        ],
    ),
    "agm": _block("agm", "agm", [("random", "Random", "AGM:random"), ("agm", "AGM", "AGM:AGM")]),
    "akpm": _block(
        "akpm",
        "akpm",
        [(spec, spec, f"AKPM:{spec}") for spec in ("B", "B+I", "B+I~II", "B+I~III", "B+I~IV", "B+I~V", "B+V")],
    ),
}


def blocks(spec: str) -> list[str]:
    """``all`` or one block name, checked."""
    if spec == "all":
        return list(BLOCKS)
    if spec not in BLOCKS:
        raise unknown_choice("ablation block", spec, [*BLOCKS, "all"])
    return [spec]
