"""Tiny inputs and a tiny training loop for the zoo entries' tests."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from kbench.core.config import load_config
from kbench.core.paths import cache_dir
from kbench.data.splits import Split
from kbench.data.text import load_tokenizer, tokenize
from kbench.features.batches import ModelData
from kbench.features.patch_features import Patching, features_from_arrays
from kbench.features.patches import get_scheme
from kbench.models.context import PretrainingContext

SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
INPUTS = ("input_ids", "attention_mask", "patch_features", "patch_locations")
MATCHED = (1, 1, 0, 1, 0, 1)  # the ITM labels of a batch, repeated for larger ones
KALEIDO_DIM = 12  # the feature size of Kaleido's tiny store
TEXTS = [
    "Cotton shirt in navy. Spread collar. Button closure at front. Patch pocket at chest.",
    "Wool sweater in red. Ribbed crewneck. Logo at chest.",
    "Denim jeans in black. Five-pocket styling. Zip fly.",
    "Leather tote bag in tan. Twin handles. Logo stamp at front.",
]
ALIGNED = [  # AAG's (word, level, cell) alignments of TEXTS
    [("collar", 3, 1), ("collar", 4, 1), ("collar", 5, 2), ("pocket", 3, 3), ("pocket", 5, 11), ("navy", 4, 5)],
    [("logo", 3, 4), ("logo", 4, 5), ("logo", 5, 12), ("red", 3, 4)],
    [],
    [("handles", 3, 1), ("handles", 5, 2), ("logo", 4, 9), ("tan", 4, 10)],
]


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


def kaleido_data() -> tuple[ModelData, PreTrainedTokenizerBase]:
    """Kaleido's training data for ``TEXTS``: a fresh store of 55 kaleido patches a product with the rotated and
    grey AKPM views, and the bundled tokenizer."""
    tokenizer = load_tokenizer("bundled")
    text = tokenize(tokenizer, TEXTS, 24)
    meta = pd.DataFrame({"row": range(4), "product_id": [10, 11, 12, 13], "description": TEXTS})
    g = torch.Generator().manual_seed(0)
    d = KALEIDO_DIM
    features = (torch.rand(4, 55, d, generator=g) + 0.1).numpy()
    locations = torch.rand(4, 55, 5, generator=g).numpy()
    views = {"rotated": torch.rand(4, 3, d, generator=g).numpy(), "grey": torch.rand(4, 16, d, generator=g).numpy()}
    root = Path(tempfile.mkdtemp(dir=cache_dir("tests"))) / "kaleido"
    store = features_from_arrays(root, features, locations, np.tile([0, 0, 256, 256], (4, 1)), views, shard_rows=3)
    split = Split("train", Path("unused.h5"), meta, "fp")
    return ModelData(split, text, store), tokenizer
