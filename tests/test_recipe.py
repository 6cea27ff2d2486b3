"""The pre-training recipe's options: what an epoch counts, Adam's betas, epsilon and weight decay as the optimizer
gets them, and BERT's MLM head loaded with its encoder."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pretrained import minilm_checkpoint
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

from kbench.core.config import load_config
from kbench.data.loader import PRETRAIN_NEGATIVES, PRETRAIN_ORDER, epoch_order, step_rng
from kbench.data.splits import Split
from kbench.data.text import load_tokenizer, tokenize
from kbench.engine.pretraining import epoch_steps, pretraining_batches
from kbench.features.batches import ModelData, NegativeSampler
from kbench.features.patch_features import features_from_arrays
from kbench.models.training import build_optimizer, total_steps
from kbench.models.zoo import build_model

D = 8
# Ten images of eight products: products 3 and 5 have two views each, so a negative is never the other view.
PRODUCTS = [1, 2, 3, 3, 4, 5, 5, 6, 7, 8]


def tiny_data(root: Path) -> ModelData:
    """A training split of ten images with real tokenised texts and a real feature store."""
    texts = [f"a garment number {i} in colour {i % 3}" for i in range(len(PRODUCTS))]
    text = tokenize(load_tokenizer("bundled"), texts, 16)
    meta = pd.DataFrame({"row": range(len(PRODUCTS)), "product_id": PRODUCTS, "description": texts})
    n = len(PRODUCTS)
    features = np.arange(n * 4 * D, dtype=np.float32).reshape(n, 4, D)
    store = features_from_arrays(root, features, np.zeros((n, 4, 5), np.float32), np.zeros((n, 4), np.int64))
    return ModelData(Split("train", Path("unused.h5"), meta, "fp"), text, store)


def unchanged(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    return batch


def test_an_epoch_of_pairs_shows_every_image_once_matched_and_once_mismatched(tmp_path: Path) -> None:
    data = tiny_data(tmp_path / "store")
    cfg = load_config("smoke", ["pretrain.epoch_unit=pairs", "pretrain.batch_size=4"]).pretrain
    assert epoch_steps(cfg, 10) == 5  # 2 x 10 examples / 4, against 10 // 4 = 2 for an epoch of images
    make = pretraining_batches(data, unchanged, cfg, seed=3)
    shown: Counter[tuple[int, int]] = Counter()
    for step in range(5):
        batch = make(step)
        assert torch.equal(batch["input_ids"], data.text.input_ids[batch["text_positions"]])
        images, texts = batch["image_positions"].tolist(), batch["text_positions"].tolist()
        for image, text, label in zip(images, texts, batch["itm_labels"].tolist(), strict=True):
            assert (label == 1) == (text == image) and (label == 1 or PRODUCTS[text] != PRODUCTS[image])
            shown[image, label] += 1
    assert shown == Counter({(i, label): 1 for i in range(10) for label in (0, 1)})
    # a batch is a function of its step: built again, or by two ranks each keeping half, it is the same
    again = pretraining_batches(data, unchanged, cfg, seed=3)(3)
    halves = [pretraining_batches(data, unchanged, cfg, 3, rank, 2)(3) for rank in (0, 1)]
    for key in ("image_positions", "text_positions", "itm_labels", "patch_features"):
        assert torch.equal(again[key], make(3)[key])
        assert torch.equal(torch.cat([h[key] for h in halves]), again[key]), key


def test_an_epoch_of_images_is_unchanged_by_the_pairs_option(tmp_path: Path) -> None:
    """``images`` draws what it drew before ``epoch_unit`` existed: the epoch's permutation of the images, and
    the negatives at the configured rate from the step's generator."""
    data = tiny_data(tmp_path / "store")
    cfg = load_config("smoke", ["pretrain.batch_size=4"]).pretrain
    assert cfg.epoch_unit == "images" and epoch_steps(cfg, 10) == 2
    make = pretraining_batches(data, unchanged, cfg, seed=5)
    sampler = NegativeSampler(np.array(PRODUCTS))
    for step in range(4):
        epoch, i = divmod(step, 2)
        images = epoch_order(5, PRETRAIN_ORDER, epoch, 10)[4 * i : 4 * i + 4].copy()
        texts, labels = sampler.sample(images, 0.5, step_rng(5, PRETRAIN_NEGATIVES, step))
        batch = make(step)
        assert batch["image_positions"].tolist() == images.tolist()
        assert batch["text_positions"].tolist() == texts.tolist() and batch["itm_labels"].tolist() == labels.tolist()


def test_the_paper_profile_takes_twice_the_steps_of_an_epoch_of_images() -> None:
    """25 epochs of the 247,500 training pairs left after the dev split, at 256: the released code's count and,
    one --set away, an epoch of images."""
    pairs = load_config("paper").pretrain
    images = load_config("paper", ["pretrain.epoch_unit=images"]).pretrain
    assert (epoch_steps(pairs, 247_500), epoch_steps(images, 247_500)) == (1933, 966)
    assert (total_steps(pairs, epoch_steps(pairs, 247_500)), total_steps(images, epoch_steps(images, 247_500))) == (
        48_325,
        24_150,
    )


@pytest.mark.parametrize(
    ("profile", "overrides", "expected"),
    [
        ("paper", [], ((0.9, 0.98), 1e-6, 0.0, 1e-4)),
        ("paper", ["pretrain.adam_beta2=0.999", "pretrain.adam_epsilon=1e-8"], ((0.9, 0.999), 1e-8, 0.0, 1e-4)),
        ("paper", ["pretrain.weight_decay=1e-4"], ((0.9, 0.98), 1e-6, 1e-4, 1e-4)),
        ("default", [], ((0.9, 0.999), 1e-8, 0.01, 1e-3)),
        ("smoke", ["pretrain.adam_beta1=0.8"], ((0.8, 0.999), 1e-8, 0.01, 1e-3)),
    ],
)
def test_the_optimizer_gets_the_recipes_betas_epsilon_and_weight_decay(
    profile: str, overrides: list[str], expected: tuple
) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    optimizer, _ = build_optimizer(model, load_config(profile, overrides).pretrain, steps=10)
    decay, no_decay = optimizer.param_groups
    betas, eps, weight_decay, lr = expected
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]  # biases and LayerNorms are never decayed
    assert (decay["betas"], decay["eps"], decay["weight_decay"], decay["initial_lr"]) == (betas, eps, weight_decay, lr)
    assert (no_decay["betas"], no_decay["eps"], no_decay["weight_decay"], no_decay["initial_lr"]) == (
        betas,
        eps,
        0,
        lr,
    )


@pytest.mark.parametrize("head_class", [BertForMaskedLM, BertForPreTraining])
def test_the_mlm_head_is_loaded_from_a_bert_checkpoint_that_has_one(tmp_path: Path, head_class: type) -> None:
    config = BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    bert = head_class(config)
    with torch.no_grad():
        bert.cls.predictions.bias.normal_()  # BERT's own starts at zero, which a fresh head also has
    bert.save_pretrained(tmp_path)
    theirs = bert.cls.predictions
    for name in ("kaleido", "fashionbert"):
        model = build_model(name, str(tmp_path), visual_feature_size=D)
        ours = model.mlm_head.predictions
        for key, tensor in theirs.transform.state_dict().items():
            assert torch.equal(ours.transform.state_dict()[key], tensor), key
        assert torch.equal(ours.bias, theirs.bias) and torch.equal(ours.decoder.bias, theirs.bias)
        assert ours.decoder.weight is model.vl.embeddings.word_embeddings.weight
        assert torch.equal(ours.decoder.weight, bert.bert.embeddings.word_embeddings.weight)
    torch.manual_seed(0)
    fresh = build_model("kaleido", str(tmp_path), init_mlm_head=False, visual_feature_size=D).mlm_head.predictions
    assert not torch.equal(fresh.transform.dense.weight, theirs.transform.dense.weight)
    assert torch.equal(fresh.bias, torch.zeros(120))


def test_a_checkpoint_without_an_mlm_head_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """The bundled MiniLM is a bare encoder (no ``cls.*``): its encoder is loaded and the MLM head stays fresh."""
    path = str(minilm_checkpoint())
    with caplog.at_level(logging.INFO, logger="kbench.models.zoo"):
        model = build_model("kaleido", path, visual_feature_size=D)
    assert f"BERT checkpoint {path} has no MLM head (cls.predictions.*)" in caplog.text
    assert torch.equal(model.mlm_head.predictions.bias, torch.zeros(model.config.vocab_size))
    assert torch.equal(model.mlm_head.predictions.transform.LayerNorm.weight, torch.ones(model.config.hidden_size))
