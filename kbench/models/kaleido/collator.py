"""Kaleido-BERT's pre-training batches: AGM chooses what to mask, AKPM corrupts the patches, AMLM the text.

Text-side choices follow the alignments of the text's own product, so a mismatched ITM pair is masked
exactly like a matched one and masking reveals nothing about the ITM label.

AGM plans with the budgets of every level the patch scheme has (1, 2 and 3 cells at levels 3, 4 and 5, as
in the full model ``B+I~V``), whichever AKPM tasks are on, and draws from the same random stream, so every
AKPM variant masks the same words and chooses the same cells for a batch and seed. A chosen cell whose
level's task is off is still masked, zeroed (B2CM's plain blank) with no loss on it: the cell side of its
aligned pair stays hidden as in ``B+I~V``, and the variant changes only the corruptions and losses its label
names. The scale-fixed 8x8 grid has no levels 3 to 5 and so no cell budget: there AGM masks aligned words only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from kbench.data.text import TokenizedText
from kbench.features.batches import ModelData
from kbench.features.patches import get_scheme
from kbench.models.kaleido.agm import PATCH_BUDGETS, Pair, plan_masks, text_budget
from kbench.models.kaleido.akpm import (
    NUM_ROTATIONS,
    PERMUTATIONS,
    TASK_LEVEL,
    camouflage_sources,
    draw,
    gather_cells,
    jigsaw,
    put_cells,
    rotate,
)
from kbench.models.masking import apply_token_mask

# What AAG aligned in one example: (word, level as grid size, row-major cell).
WordAlignment = tuple[str, int, int]


def index_words(
    tokenizer: PreTrainedTokenizerBase, text: TokenizedText, aligned: Sequence[Sequence[WordAlignment]]
) -> tuple[list[np.ndarray], list[list[Pair]]]:
    """Per example: the token count of each word, and the alignments as (word index, level, cell) pairs.

    A word is the run of word-piece tokens sharing a word index; an aligned word string pairs with every
    occurrence of that word in the text.
    """
    sizes, pairs = [], []
    for e in range(len(text.input_ids)):
        word_ids = text.word_ids[e].numpy()
        inside = word_ids >= 0
        sizes.append(np.bincount(word_ids[inside]) if inside.any() else np.zeros(0, dtype=np.int64))
        spelled: dict[int, str] = defaultdict(str)
        for token, w in zip(tokenizer.convert_ids_to_tokens(text.input_ids[e].tolist()), word_ids, strict=True):
            if w >= 0:
                spelled[int(w)] += token.removeprefix("##")
        occurrences: dict[str, list[int]] = defaultdict(list)
        for w, word in spelled.items():
            occurrences[word].append(w)
        pairs.append([(w, n, c) for word, n, c in aligned[e] for w in occurrences.get(word, [])])
    return sizes, pairs


class KaleidoCollator:
    """Builds the AMLM, ITM and AKPM inputs and targets of a batch of (possibly mismatched) pairs; RR and G2CM take
    the rotated and grey views that the batch carries (``view_rotated``, ``view_grey``)."""

    def __init__(
        self,
        config,
        tokenizer: PreTrainedTokenizerBase,
        data: ModelData,
        aligned: Sequence[Sequence[WordAlignment]],
    ) -> None:
        self.config = config
        self.mask_token_id = tokenizer.mask_token_id
        scheme = get_scheme(config.patch_scheme)
        self.slices = dict(zip(scheme.levels, scheme.level_slices(), strict=True))
        self.tasks = config.pretext_tasks
        self.budgets = {n: k for n, k in PATCH_BUDGETS.items() if n in self.slices}
        self.word_sizes, self.pairs = index_words(tokenizer, data.text, aligned)
        self.product_ids = data.split.meta["product_id"].to_numpy()

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        images = batch.pop("image_positions").numpy()
        texts = batch.pop("text_positions").numpy()
        word_ids = batch.pop("word_ids")
        views = {name: batch.pop(f"view_{name}", None) for name in ("rotated", "grey")}
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        chosen, cells = self.plan(texts, word_ids, rng)
        batch["input_ids"], batch["mlm_labels"] = apply_token_mask(
            batch["input_ids"], chosen, self.mask_token_id, self.config.vocab_size, generator
        )
        clean = batch["patch_features"]
        feats = clean.clone()
        n = len(images)
        if "rr" in self.tasks:
            part = self.slices[1]
            batch["rr_labels"] = draw(generator, NUM_ROTATIONS, n)
            feats[:, part] = rotate(clean[:, part], views["rotated"], batch["rr_labels"])
        if "jps" in self.tasks:
            part = self.slices[2]
            batch["jps_labels"] = draw(generator, len(PERMUTATIONS), n)
            feats[:, part] = jigsaw(clean[:, part], batch["jps_labels"])
        if "cp" in self.tasks:
            part = self.slices[3]
            sources = camouflage_sources(self.product_ids[images], rng)
            source_cells = torch.from_numpy(rng.integers(9, size=n))
            decoy = clean[:, part][torch.from_numpy(sources), source_cells][:, None]
            put_cells(feats[:, part], cells[3], decoy)
            batch["cp_labels"] = cells[3][:, 0]
        if "g2cm" in self.tasks:
            part = self.slices[4]
            batch["grey_cells"], batch["grey_targets"] = cells[4], gather_cells(clean[:, part], cells[4])
            grey = gather_cells(views["grey"], cells[4])
            put_cells(feats[:, part], cells[4], grey)
        if "b2cm" in self.tasks:
            part = self.slices[5]
            batch["blank_cells"], batch["blank_targets"] = cells[5], gather_cells(clean[:, part], cells[5])
            put_cells(feats[:, part], cells[5], torch.zeros_like(batch["blank_targets"]))
        for task in ("cp", "g2cm", "b2cm"):
            level = TASK_LEVEL[task]
            if task not in self.tasks and level in cells:  # masked for AGM, with no task to corrupt or score it
                blank = torch.zeros(*cells[level].shape, clean.shape[-1], dtype=clean.dtype)
                put_cells(feats[:, self.slices[level]], cells[level], blank)
        batch["patch_features"] = feats
        return batch

    def plan(
        self, texts: np.ndarray, word_ids: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """AGM for every pair: the (B, T) masked token positions and each level's (B, budget) masked cells."""
        chosen = torch.zeros(word_ids.shape, dtype=torch.bool)
        cells = {n: torch.zeros(len(texts), k, dtype=torch.long) for n, k in self.budgets.items()}
        c = self.config
        for i, t in enumerate(texts):
            sizes = self.word_sizes[t]
            budget = text_budget(int(sizes.sum()), c.mlm_probability, c.max_masked_tokens)
            plan = plan_masks(
                sizes, self.pairs[t], budget, self.budgets, c.agm == "agm", c.token_side_probability, rng
            )
            chosen[i] = torch.isin(word_ids[i], torch.tensor(plan.words, dtype=torch.long))
            for n in self.budgets:
                cells[n][i] = torch.tensor(plan.cells[n])
        return chosen, cells
