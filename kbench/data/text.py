"""Tokenisation of product descriptions: the bundled bert-base-uncased WordPiece vocabulary by default."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from kbench.core.errors import KbenchError

BUNDLED = "bundled"
VOCABULARY = "bert-base-uncased"  # package data of kbench.data: vocab.txt, tokenizer_config.json, NOTICE


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The fast tokenizer ``name``: ``bundled`` (the packaged bert-base-uncased vocabulary), a local path or a hub
    name."""
    try:
        if name == BUNDLED:
            with resources.as_file(resources.files("kbench.data") / VOCABULARY) as directory:
                return AutoTokenizer.from_pretrained(str(directory))
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise KbenchError(f"cannot load tokenizer {name!r}: {str(exc).splitlines()[0]}") from None


@dataclass
class TokenizedText:
    """Padded token ids of many texts, with the word index of each token (-1 for special and padding)."""

    input_ids: torch.Tensor  # (N, L) int64
    attention_mask: torch.Tensor  # (N, L) int64
    word_ids: torch.Tensor  # (N, L) int64


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_len: int) -> TokenizedText:
    """Tokenise ``texts`` to exactly ``max_len`` tokens each ([CLS] ... [SEP] [PAD]...)."""
    enc = tokenizer(texts, max_length=max_len, truncation=True, padding="max_length", return_tensors="np")
    word_ids = np.full(enc["input_ids"].shape, -1, dtype=np.int64)
    for i in range(len(texts)):
        word_ids[i] = [-1 if w is None else w for w in enc.word_ids(i)]
    return TokenizedText(
        torch.from_numpy(enc["input_ids"].astype(np.int64)),
        torch.from_numpy(enc["attention_mask"].astype(np.int64)),
        torch.from_numpy(word_ids),
    )
