"""The contract every registered zoo entry keeps: its forward's declared losses and accuracies, a collator whose
additions its forward takes, save/load, BERT initialisation and the shapes of the task-facing methods."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import torch
from pretrained import minilm_checkpoint
from transformers import BertModel, PreTrainedConfig
from zoo_inputs import ALIGNED, INPUTS, KALEIDO_DIM, SIZES, kaleido_data, raw_batch

from kbench.baselines.clip import ClipCollator
from kbench.baselines.fashionbert import FashionBertCollator
from kbench.baselines.imagebert import ImageBertCollator
from kbench.baselines.oscar import OscarCollator
from kbench.baselines.vilbert import ViLBertCollator
from kbench.baselines.vlbert import VLBertCollator
from kbench.core.errors import KbenchError
from kbench.features.batches import to_device
from kbench.features.codebook import Codebook, fit_codebook
from kbench.models.base import Collator, VLPreTrainedModel
from kbench.models.kaleido.collator import KaleidoCollator
from kbench.models.zoo import MODELS, build_model

D, WORDS, VOCAB, MASK_ID = 24, 8, 200, 3
Batch = dict[str, torch.Tensor]


@cache
def book() -> Codebook:
    return fit_codebook(raw_batch()["patch_features"].reshape(-1, D).numpy(), WORDS)


def grid_pairs() -> Batch:
    return raw_batch()


def kaleido_pairs() -> Batch:
    """Four products of Kaleido's tiny store as six pairs, the last two mismatched, with the AKPM views."""
    data, _ = kaleido_data()
    images, texts = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([0, 1, 2, 3, 2, 3])
    raw = data.inputs(images.numpy(), texts.numpy(), views=True)
    raw |= {"itm_labels": (images == texts).long(), "image_positions": images, "text_positions": texts}
    return to_device(raw, torch.device("cpu"))  # float16 features become float32, as training moves them


def kaleido_collator(config: PreTrainedConfig) -> Collator:
    data, tokenizer = kaleido_data()
    return KaleidoCollator(config, tokenizer, data, ALIGNED)


@dataclass(frozen=True)
class Entry:
    """How the contract builds and batches one entry, and the objectives its forward reports."""

    losses: set[str]
    accuracies: set[str]
    collator: Callable[[PreTrainedConfig], Collator]
    options: dict = field(default_factory=dict)  # beyond SIZES, for the tiny model
    saved: dict = field(default_factory=dict)  # non-default options that save/load must keep
    pairs: Callable[[], Batch] = grid_pairs
    summed: bool = True  # loss is the plain sum of the losses
    text: Callable[[VLPreTrainedModel], torch.nn.Module] = lambda model: model.vl  # the BERT text encoder


GRID = {"vocab_size": VOCAB, "visual_feature_size": D, "patch_scheme": "grid-4"}
ENTRIES = {
    "fashionbert": Entry(
        {"mlm_loss", "itm_loss", "mpfc_loss"},
        {"mlm_acc", "itm_acc"},
        lambda config: FashionBertCollator(config, MASK_ID),
        GRID,
        {"adaptive_loss": False},
        summed=False,  # FashionBERT's adaptive loss weights them (test_fashionbert)
    ),
    "kaleido": Entry(
        {f"{t}_loss" for t in ("mlm", "itm", "rr", "jps", "cp", "g2cm", "b2cm")},
        {f"{t}_acc" for t in ("mlm", "itm", "rr", "jps", "cp")},
        kaleido_collator,
        {"vocab_size": 30522, "visual_feature_size": KALEIDO_DIM},
        {"akpm": "B+I~III", "itm_head": "sigmoid"},
        pairs=kaleido_pairs,
    ),
    "vlbert": Entry(
        {"mlm_loss", "mrc_loss"},
        {"mlm_acc", "mrc_acc"},
        lambda config: VLBertCollator(config, MASK_ID, book()),
        {**GRID, "visual_words": WORDS},
        {"patch_mask_probability": 0.2},
    ),
    "imagebert": Entry(
        {"mlm_loss", "itm_loss", "moc_loss", "mrfr_loss"},
        {"mlm_acc", "itm_acc", "moc_acc"},
        lambda config: ImageBertCollator(config, MASK_ID, book()),
        {**GRID, "visual_words": WORDS},
        {"mlm_probability": 0.2},
    ),
    "vilbert": Entry(
        {"mlm_loss", "mrm_loss", "itm_loss"},
        {"mlm_acc", "mrm_acc", "itm_acc"},
        lambda config: ViLBertCollator(config, MASK_ID, book()),
        {**GRID, "visual_words": WORDS},
        {"co_attention_layers": 2},
    ),
    "oscar": Entry(
        {"mlm_loss", "itm_loss", "tag_loss"},
        {"mlm_acc", "itm_acc", "tag_acc"},
        lambda config: OscarCollator(config, MASK_ID),
        {**GRID, "num_tags": 4},
        {"num_tags": 5},
    ),
    "clip": Entry(
        {"contrastive_loss"},
        {"contrastive_acc"},
        lambda config: ClipCollator(config, MASK_ID),
        {"vocab_size": VOCAB, "visual_feature_size": D},
        {"contrastive_temperature": 0.05},
        text=lambda model: model.text_model,
    ),
}
NAMES = MODELS.names()


def tiny_model(name: str, **options) -> VLPreTrainedModel:
    torch.manual_seed(0)
    return build_model(name, None, **{**SIZES, **ENTRIES[name].options, **options})


def collated(name: str, model: VLPreTrainedModel, seed: int = 1) -> tuple[Batch, Batch]:
    """The raw pairs and the entry's pre-training batch of them."""
    raw = ENTRIES[name].pairs()
    return raw, ENTRIES[name].collator(model.config)(dict(raw), torch.Generator().manual_seed(seed))


def test_the_contract_covers_every_registered_entry() -> None:
    assert sorted(ENTRIES) == NAMES
    assert {"fashionbert", "kaleido", "vlbert", "imagebert", "vilbert", "oscar", "clip"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_reports_its_objectives_and_trains_the_parameters(name: str) -> None:
    model = tiny_model(name)
    _, batch = collated(name, model)
    out = model(**batch)
    assert set(out.losses) == ENTRIES[name].losses and set(out.accuracies) == ENTRIES[name].accuracies
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert all(torch.isfinite(v) for v in (*out.losses.values(), *out.accuracies.values()))
    assert all(0 <= v <= 1 for v in out.accuracies.values())
    if ENTRIES[name].summed:
        torch.testing.assert_close(out.loss, sum(out.losses.values()))
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    text = ENTRIES[name].text(model)
    assert text.embeddings.word_embeddings.weight.grad.abs().sum() > 0, "the loss reaches the word embeddings"
    last = text.encoder.layer[-1].output.dense.weight.grad
    assert last is not None and last.abs().sum() > 0, "and the text encoder's last layer"


@pytest.mark.parametrize("name", NAMES)
def test_the_collator_adds_only_what_forward_takes(name: str) -> None:
    model = tiny_model(name)
    raw, batch = collated(name, model)
    taken = set(inspect.signature(type(model).forward).parameters) - {"self"}
    added = set(batch) - set(raw)
    assert added <= taken, f"the collator adds {sorted(added - taken)}, which forward does not take"
    required = {k for k, p in inspect.signature(type(model).forward).parameters.items() if p.default is p.empty}
    assert required - {"self"} <= set(batch) <= taken
    assert torch.isfinite(model(**batch).loss)
    # its randomness is the generator's: one seed, one batch
    _, again = collated(name, model)
    assert batch.keys() == again.keys() and all(torch.equal(batch[k], again[k]) for k in batch)


def outputs(model: VLPreTrainedModel, inputs: Batch) -> dict[str, torch.Tensor]:
    """Every task-facing output of ``inputs``."""
    out = {"pooled": model.pooled_output(**inputs), "itm": model.itm_logits(**inputs)}
    if model.generates_text:
        out["mlm"] = model.mlm_logits(**inputs)
    if model.dual_encoder:
        out["images"] = model.embed_images(inputs["patch_features"], inputs["patch_locations"])
        out["texts"] = model.embed_texts(inputs["input_ids"], inputs["attention_mask"])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip(name: str, tmp_path: Path) -> None:
    """Every weight, buffer and option survives, none re-initialised on loading (each is moved off its initial
    value first), and the outputs are identical."""
    model = tiny_model(name, **ENTRIES[name].saved).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert type(loaded.config) is type(model.config)
    assert {k: v for k, v in loaded.config.to_dict().items() if k != "_name_or_path"} == {
        k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"
    }
    assert all(getattr(loaded.config, k) == v for k, v in ENTRIES[name].saved.items())
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    if hasattr(loaded, "mlm_head"):
        words = ENTRIES[name].text(loaded).embeddings.word_embeddings.weight
        assert loaded.mlm_head.predictions.decoder.weight is words, "the MLM decoder stays tied to the embeddings"
    inputs = {k: v for k, v in ENTRIES[name].pairs().items() if k in INPUTS}
    with torch.no_grad():
        before, after = outputs(model, inputs), outputs(loaded, inputs)
    for key in before:
        assert torch.equal(after[key], before[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_initialised_from_the_bundled_bert_checkpoint(name: str) -> None:
    path = str(minilm_checkpoint())
    visual = ENTRIES[name].options["visual_feature_size"]
    model = build_model(name, path, visual_feature_size=visual, hidden_size=999)
    bert = BertModel.from_pretrained(path)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (384, 6), "the checkpoint decides"
    ours = ENTRIES[name].text(model).state_dict()
    theirs = bert.state_dict()
    assert all(k.startswith("pooler.") for k in theirs.keys() - ours.keys()), "embeddings and every layer"
    for key in theirs.keys() & ours.keys():
        assert torch.equal(ours[key], theirs[key]), key
    with pytest.raises(KbenchError, match="cannot load BERT checkpoint directory"):
        build_model(name, str(Path(path).parent), visual_feature_size=visual)


@pytest.mark.parametrize("name", NAMES)
def test_task_facing_shapes(name: str) -> None:
    model = tiny_model(name).eval()
    inputs = {k: v for k, v in ENTRIES[name].pairs().items() if k in INPUTS}
    (b, t), h, v = inputs["input_ids"].shape, model.config.hidden_size, model.config.vocab_size
    with torch.no_grad():
        assert model.pooled_output(**inputs).shape == (b, h)
        assert model.itm_logits(**inputs).shape == (b, 2)
        if model.generates_text:
            full = model.mlm_logits(**inputs)
            assert full.shape == (b, t, v)
            where = torch.zeros(b, t, dtype=torch.bool)
            where[:, 2] = where[torch.arange(b), 3 + torch.arange(b) % 4] = True
            picked = model.mlm_logits(where=where, **inputs)
            assert picked.shape == (2 * b, v)
            torch.testing.assert_close(picked, full[where], rtol=1e-4, atol=1e-4)
        else:
            with pytest.raises(NotImplementedError):
                model.mlm_logits(**inputs)
        if not model.dual_encoder:
            with pytest.raises(NotImplementedError):
                model.embed_images(inputs["patch_features"], inputs["patch_locations"])
            return
        image = model.embed_images(inputs["patch_features"], inputs["patch_locations"])
        text = model.embed_texts(inputs["input_ids"], inputs["attention_mask"])
        e = image.shape[1]
        assert image.shape == text.shape == (b, e)
        torch.testing.assert_close(image.norm(dim=-1), torch.ones(b))
        torch.testing.assert_close(text.norm(dim=-1), torch.ones(b))
        paired = model.embedding_scores(image, text)
        every = model.embedding_scores(image[:, None], text[None])
        assert paired.shape == (b,) and every.shape == (b, b)
        torch.testing.assert_close(every.diagonal(), paired)
