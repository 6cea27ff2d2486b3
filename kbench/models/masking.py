"""BERT's token masking: choose positions, then replace 80 % by [MASK], 10 % by a random token, keep 10 %."""

from __future__ import annotations

from typing import Any

import torch


def choose_tokens(candidates: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Pick each candidate position with ``probability``, and at least one per row that has a candidate."""
    chosen = (torch.rand(candidates.shape, generator=generator) < probability) & candidates
    empty = ~chosen.any(dim=1) & candidates.any(dim=1)
    if empty.any():
        noise = torch.rand(candidates.shape, generator=generator).masked_fill(~candidates, -1.0)
        first = noise.argmax(dim=1)
        chosen[empty, first[empty]] = True
    return chosen


def apply_token_mask(
    input_ids: torch.Tensor,
    chosen: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(corrupted ids, labels)``: labels hold the original id at chosen positions and -100 elsewhere."""
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=generator)
    corrupted = input_ids.clone()
    corrupted[chosen & (roll < 0.8)] = mask_token_id
    random_slot = chosen & (roll >= 0.8) & (roll < 0.9)
    corrupted[random_slot] = torch.randint(vocab_size, input_ids.shape, generator=generator)[random_slot]
    return corrupted, labels


def mask_pairs(
    batch: dict[str, torch.Tensor], config: Any, mask_token_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The corruption the MLM-plus-masked-patch entries share, drawn alike for every pair so that it says nothing of
    the ITM label: ``config.mlm_probability`` of the word pieces BERT-masked in ``batch["input_ids"]`` and their
    ``mlm_labels`` added (-100 on mismatched pairs, whose text does not describe the image); ``word_ids`` and the
    position keys consumed. Returns ``(matched (B, 1), chosen patches (B, K))``, the patches chosen with
    ``config.patch_mask_probability`` and left for the entry to corrupt and score."""
    del batch["image_positions"], batch["text_positions"]
    matched = batch["itm_labels"].bool()[:, None]
    chosen = choose_tokens(batch.pop("word_ids") >= 0, config.mlm_probability, generator)
    batch["input_ids"], labels = apply_token_mask(
        batch["input_ids"], chosen, mask_token_id, config.vocab_size, generator
    )
    batch["mlm_labels"] = labels.masked_fill(~matched, -100)
    patches = batch["patch_features"]
    masked = choose_tokens(torch.ones(patches.shape[:2], dtype=torch.bool), config.patch_mask_probability, generator)
    return matched, masked
