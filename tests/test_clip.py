"""The CLIP-style dual encoder: the contrastive loss against a direct formula, embedding scores equal to its ITM
logits, training, and the full-gallery scores of the retrieval task (test_zoo_contract checks shapes, save/load
and BERT initialisation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kbench.baselines.clip import ClipCollator, ClipConfig, ClipForPreTraining
from kbench.core.config import load_config
from kbench.engine.trial import Trial, TrialSpec
from kbench.models.zoo import MODELS, build_model
from kbench.tasks import build_task

SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
B, T, K, D = 6, 12, 16, 24
KEYS = ("input_ids", "attention_mask", "patch_features", "patch_locations")


def tiny_model() -> ClipForPreTraining:
    torch.manual_seed(0)
    return ClipForPreTraining(ClipConfig(vocab_size=200, visual_feature_size=D, **SIZES, **NO_DROPOUT))


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[:, 9:] = 0
    raw = {
        "input_ids": torch.randint(5, 200, (B, T), generator=g),
        "attention_mask": mask,
        "word_ids": torch.zeros(B, T, dtype=torch.long),
        # each image its own feature level, so that a few steps can tell them apart
        "patch_features": torch.rand(B, 1, D, generator=g) * 3 + torch.rand(B, K, D, generator=g) * 0.3,
        "patch_locations": torch.rand(B, K, 5, generator=g),
        "itm_labels": torch.tensor([1, 1, 0, 1, 0, 1]),
        "image_positions": torch.arange(B),
        "text_positions": torch.arange(B),
    }
    return ClipCollator(tiny_model().config, 3)(raw, g)


def test_registered_as_a_dual_encoder_without_captioning() -> None:
    assert MODELS.get("clip") is ClipForPreTraining
    assert ClipForPreTraining.dual_encoder and not ClipForPreTraining.generates_text
    assert "no captioning" in MODELS.describe("clip")


def test_contrastive_loss_matches_the_direct_formula() -> None:
    model = tiny_model().eval()
    data = batch()
    with torch.no_grad():
        out = model(**data)
    matched = data["itm_labels"].bool()
    with torch.no_grad():
        image = F.normalize(
            model.visual_projection(model.vision_model(data["patch_features"], data["patch_locations"]))
        )
        text = F.normalize(model.text_projection(model.text_model(data["input_ids"], data["attention_mask"])))
    image, text = image[matched], text[matched]
    scale = 1 / 0.07
    total = 0.0
    for i in range(len(image)):  # each image against every matched text, each text against every image
        row = [scale * (image[i] @ text[j]).item() for j in range(len(text))]
        col = [scale * (image[j] @ text[i]).item() for j in range(len(image))]
        total += -row[i] + np.log(np.exp(row).sum()) - col[i] + np.log(np.exp(col).sum())
    assert out.loss.item() == pytest.approx(total / (2 * len(image)), rel=1e-5)
    assert set(out.losses) == {"contrastive_loss"} and 0 <= out.accuracies["contrastive_acc"] <= 1


def test_embedding_scores_are_the_itm_logits_and_pooled_is_both_embeddings() -> None:
    model = tiny_model().eval()
    inputs = {k: batch()[k] for k in KEYS}
    logits = model.itm_logits(**inputs)
    assert torch.equal(logits[:, 0], torch.zeros(B))
    image = model.embed_images(inputs["patch_features"], inputs["patch_locations"])
    text = model.embed_texts(inputs["input_ids"], inputs["attention_mask"])
    assert image.shape == text.shape == (B, 16)  # half the hidden size each
    torch.testing.assert_close(model.embedding_scores(image, text), logits[:, 1])
    pooled = model.pooled_output(**inputs)
    torch.testing.assert_close(F.normalize(pooled[:, :16], dim=-1), image)  # the embeddings before normalisation
    torch.testing.assert_close(F.normalize(pooled[:, 16:], dim=-1), text)
    assert not torch.allclose(pooled[:, :16].norm(dim=-1), torch.ones(B))
    with torch.no_grad():
        model.match_bias.fill_(2.0)
    torch.testing.assert_close(model.itm_logits(**inputs)[:, 1], logits[:, 1] - 2.0)


def test_loss_decreases_and_degenerate_batches_give_zero() -> None:
    model = tiny_model()
    data = batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(**data).loss.item()
    for _ in range(80):
        model(**data).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert model(**data).loss.item() < 0.1 * first
    lonely = {**data, "itm_labels": torch.tensor([0, 0, 1, 0, 0, 0])}
    assert model(**lonely).loss.item() == 0.0


def test_each_embedding_has_half_the_hidden_size() -> None:
    """Side by side, the two embeddings make the hidden_size features the classification heads take."""
    assert ClipConfig(hidden_size=384).projection_dim == 192


@pytest.mark.slow
def test_full_gallery_scores_equal_pairwise_itm_logits() -> None:
    """The retrieval task's embedding-based gallery scores are the model's own ITM logits for those pairs."""
    cfg = load_config("smoke", ["tasks.itr.queries=5"])
    trial = Trial(TrialSpec("clip", 0), cfg)
    model = build_model("clip", None, **trial.model_kwargs()).eval()
    task = build_task("itr", cfg.tasks["itr"])
    test = trial.data("test")
    lists = task.protocol.lists(test.split, "image", 5, 0)
    from kbench.tasks.protocols import FullGallery

    full = FullGallery().lists(test.split, "image", 5, 0)
    scores = task.similarities(trial.context, model, test, full)
    pairwise = task.score(trial.context, model, test, full, "pairwise")
    np.testing.assert_allclose(scores, pairwise, rtol=1e-4, atol=1e-4)
    assert scores.shape == (5, len(test.split.product_groups())) and len(lists.candidate_rows[0]) <= 101


@pytest.mark.slow
def test_retrieval_fine_tuning_of_a_dual_encoder_is_contrastive() -> None:
    """Binary ITM fine-tuning would train the match bias; the contrastive objective leaves it untouched."""
    cfg = load_config("smoke", ["tasks.itr.finetune.epochs=3", "tasks.itr.finetune.lr=1e-3"])
    trial = Trial(TrialSpec("clip", 0), cfg)
    model = build_model("clip", None, **trial.model_kwargs())
    tuned, curves = build_task("itr", cfg.tasks["itr"]).finetune(trial.context, model)
    assert len(curves) == 3 and curves[-1]["loss"] < curves[0]["loss"]
    assert all(0 <= epoch["acc"] <= 1 for epoch in curves)
    assert tuned.match_bias.item() == 0.0 and tuned is not model
