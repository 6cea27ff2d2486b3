"""AGM, alignment-guided masking (Kaleido-BERT §3.4): which words and cells an example's pretext tasks corrupt.

Aligned <word, cell> pairs come first, in random order: for each, the word or the cell is masked, never both,
so that one modality can recover the other. When the pairs run out, unaligned words and cells fill what is
left of the budgets at random. Budgets: 1, 2 and 3 cells at levels 3, 4 and 5 (the cells CP, G2CM and B2CM
corrupt) and up to 10 text tokens at 15 %, whole words only. ``random`` (the paper's ablation) fills the
same budgets at random, ignoring the alignments. The cell budgets are those of the full model in every AKPM
variant (a level whose task is off still has its cells masked), so the word-or-cell choice, and with it the
share of aligned words masked, is the same in every column of the AKPM ablation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

AGM_VARIANTS = ("agm", "random")
PATCH_BUDGETS = {3: 1, 4: 2, 5: 3}  # level (grid size) -> cells masked per image

# One alignment: (word index in the text, level as grid size n, row-major cell index in the n x n grid).
Pair = tuple[int, int, int]


@dataclass
class MaskPlan:
    """The words (by index) whose tokens are masked, and the masked cells of each level."""

    words: list[int] = field(default_factory=list)
    cells: dict[int, list[int]] = field(default_factory=dict)


def text_budget(num_tokens: int, probability: float, cap: int) -> int:
    """How many tokens to mask in a text of ``num_tokens`` word-piece tokens: 15 % by default, at least 1."""
    return min(cap, max(1, round(probability * num_tokens)))


def plan_masks(
    word_sizes: Sequence[int],
    pairs: Sequence[Pair],
    token_budget: int,
    patch_budgets: dict[int, int],
    guided: bool,
    token_side: float,
    rng: np.random.Generator,
) -> MaskPlan:
    """Choose the masked words (``word_sizes`` tokens each) and cells of one example.

    With ``guided``, aligned pairs are visited first and the word side is taken with probability
    ``token_side`` when both sides fit; the other side of a taken pair is never masked.
    """
    plan = MaskPlan(cells={n: [] for n in patch_budgets})
    used = 0
    banned_words: set[int] = set()
    banned_cells: set[tuple[int, int]] = set()

    def word_fits(w: int) -> bool:
        return w not in plan.words and w not in banned_words and used + word_sizes[w] <= token_budget

    def cell_fits(n: int, c: int) -> bool:
        return (
            n in plan.cells
            and len(plan.cells[n]) < patch_budgets[n]
            and c not in plan.cells[n]
            and (n, c) not in banned_cells
        )

    if guided:
        for k in rng.permutation(len(pairs)):
            w, n, c = pairs[k]
            word_ok, cell_ok = word_fits(w), cell_fits(n, c)
            if not (word_ok or cell_ok):
                continue
            if word_ok and (not cell_ok or rng.random() < token_side):
                plan.words.append(w)
                used += word_sizes[w]
                banned_cells |= {(n2, c2) for w2, n2, c2 in pairs if w2 == w}
            else:
                plan.cells[n].append(c)
                banned_words |= {w2 for w2, n2, c2 in pairs if (n2, c2) == (n, c)}
    for w in rng.permutation(len(word_sizes)).tolist():
        if word_fits(w):
            plan.words.append(w)
            used += word_sizes[w]
    for n, budget in patch_budgets.items():
        free = [c for c in rng.permutation(n * n).tolist() if cell_fits(n, c)]
        plan.cells[n] += free[: budget - len(plan.cells[n])]
        if len(plan.cells[n]) < budget:  # every free cell is paired with a masked word: unmask those words
            extra = [c for c in rng.permutation(n * n).tolist() if c not in plan.cells[n]]
            plan.cells[n] += extra[: budget - len(plan.cells[n])]
            paired = {w2 for w2, n2, c2 in pairs if n2 == n and c2 in plan.cells[n]}
            plan.words = [w for w in plan.words if w not in paired]
    return plan
