"""Tiny inputs and a tiny training loop for the zoo entries' tests."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from kbench.core.config import load_config
from kbench.features.patch_features import Patching
from kbench.features.patches import get_scheme
from kbench.models.context import PretrainingContext

SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
INPUTS = ("input_ids", "attention_mask", "patch_features", "patch_locations")
MATCHED = (1, 1, 0, 1, 0, 1)  # the ITM labels of a batch, repeated for larger ones


def raw_batch(
    seed: int = 0, rows: int = 6, text_len: int = 12, patches: int = 16, dim: int = 24, vocab: int = 200
) -> dict[str, torch.Tensor]:
    """A pre-training batch as the harness builds it: ``[CLS]``, word pieces at positions 1 to ``text_len - 5``,
    ``[SEP]``, padding from ``text_len - 3``; random patch features and locations; the ITM labels of ``MATCHED``."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, text_len, dtype=torch.long)
    mask[:, text_len - 3 :] = 0
    word_ids = torch.arange(text_len).expand(rows, text_len).clone() - 1
    word_ids[:, text_len - 4 :] = -1
    return {
        "input_ids": torch.randint(5, vocab, (rows, text_len), generator=g),
        "attention_mask": mask,
        "word_ids": word_ids,
        "patch_features": torch.rand(rows, patches, dim, generator=g) * 3,
        "patch_locations": torch.rand(rows, patches, 5, generator=g),
        "itm_labels": torch.tensor(MATCHED).repeat(rows // len(MATCHED) + 1)[:rows],
        "image_positions": torch.arange(rows),
        "text_positions": torch.arange(rows),
    }


def train_on(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int = 40, lr: float = 3e-3
) -> tuple[dict[str, float], dict[str, float]]:
    """Each pre-training loss before and after ``steps`` AdamW steps on ``batch``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    first = {k: v.item() for k, v in model(**batch).losses.items()}
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return first, {k: v.item() for k, v in model(**batch).losses.items()}


def context(mask_token_id: int, cache: dict) -> PretrainingContext:
    """A trial's context with a stand-in tokenizer and ``cache`` already built (e.g. a codebook)."""
    return PretrainingContext(
        config=load_config("smoke"),
        seed=0,
        device=torch.device("cpu"),
        tokenizer=SimpleNamespace(mask_token_id=mask_token_id),
        patching=Patching(get_scheme("grid-8")),
        load=lambda split: None,
        cache=cache,
    )
