"""OSCAR-style model (Li, Yin, Li, Zhang, Hu, Zhang, Wang, Hu, Dong, Wei, Choi and Gao, ECCV 2020,
"Oscar: Object-Semantics Aligned Pre-training for Vision-Language Tasks").

Single stream ``[text | object tags | 8x8 = 64 patches of the whole image]`` on BERT blocks, pre-trained with
OSCAR's masked token loss (BERT masking over the text and the tags, predicted by the tied MLM head) and its
contrastive loss (half the tag sequences "polluted" with another image's tags; a 2-way head on [CLS] says
whether text, tags and image belong together).

kbench's adaptation, with no object detector offline: grid patches stand in for detector regions, and OSCAR's
detector object tags become the top ``num_tags`` word pieces of an image tagger inside the model. The tagger
predicts, from the mean of the raw patch features, which word pieces occur in the product's description
(multi-label binary cross-entropy, trained jointly during pre-training as ``tag_loss``; targets are the
description's content word pieces, see ``tag_vocabulary``). An image's tags are the word pieces it raises most
above the tagger's running mean logit (kept over pre-training batches, like BatchNorm's statistics): ranked by
the raw logit, every image would get the words every description uses ("stitch", "fit", "collar"), polluted tag
sequences would look like the real ones, and the contrastive loss would have nothing to learn from. Tags must
be words, since they share BERT's word embeddings, so the k-means codebook (visual words) is not used. Tags are
recomputed at every forward, so they are a function of the image alone in pre-training, fine-tuning and
evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from torch import nn
from transformers import BertConfig, PreTrainedTokenizerBase
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling

from kbench.models.api import (
    PretrainingContext,
    SingleStreamForPreTraining,
    SingleStreamModel,
    VLPreTrainingOutput,
    apply_token_mask,
    choose_tokens,
    register_model,
)

MIN_TAG_LENGTH = 3
# Weight of each pre-training batch in the tagger's running mean logit (it averages about the last 20 batches).
MEAN_LOGIT_MOMENTUM = 0.05


class OscarConfig(BertConfig):
    """BERT's configuration plus the image side, the tagger and the pre-training options of OSCAR.

    Args:
        visual_feature_size: dimension of one patch feature (2048 for ResNet-50).
        patch_scheme: how images are cut into patches; kbench uses an 8x8 grid (``grid-8``) for OSCAR's regions.
        num_tags: length of the tag segment, the word pieces the image raises most above the mean image.
        mlm_probability: share of text word pieces masked for the masked token loss (BERT: 15 %).
        tag_mask_probability: share of tag tokens masked for the masked token loss (OSCAR: 15 %).
        pollution_probability: share of tag sequences replaced by another image's tags (OSCAR: 50 %).
        **kwargs: ``BertConfig`` arguments (sizes, dropout, vocabulary); defaults build BERT-base.
    """

    model_type = "kbench-oscar"

    def __init__(
        self,
        visual_feature_size: int = 2048,
        patch_scheme: str = "grid-8",
        num_tags: int = 8,
        mlm_probability: float = 0.15,
        tag_mask_probability: float = 0.15,
        pollution_probability: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.visual_feature_size = visual_feature_size
        self.patch_scheme = patch_scheme
        self.num_tags = num_tags
        self.mlm_probability = mlm_probability
        self.tag_mask_probability = tag_mask_probability
        self.pollution_probability = pollution_probability


class OscarPatchEmbeddings(nn.Module):
    """OSCAR's region embedding: the feature concatenated with its 5-d location, projected, LayerNorm, dropout."""

    def __init__(self, config: OscarConfig) -> None:
        super().__init__()
        self.projection = nn.Linear(config.visual_feature_size + 5, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, features: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        x = self.projection(torch.cat([features, locations.to(features.dtype)], dim=-1))
        return self.dropout(self.LayerNorm(x))


class OscarImageTagger(nn.Module):
    """Vocabulary logits (B, V) of the word pieces that describe an image, from the mean of its patch features.

    The detector-free stand-in for OSCAR's object tags. It reads the raw features, not the encoder's patch
    embeddings, so ``tag_loss`` trains the tagger alone and never shapes the encoder's inputs. ``mean_logits``
    (V,) is the running mean over pre-training images, the baseline that tags are ranked against.
    """

    def __init__(self, config: OscarConfig) -> None:
        super().__init__()
        self.projection = nn.Linear(config.visual_feature_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.register_buffer("mean_logits", torch.zeros(config.vocab_size))
        self.register_buffer("num_batches_tracked", torch.tensor(0))

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        pooled = patch_features.detach().mean(dim=1)
        return self.decoder(self.LayerNorm(self.act(self.projection(pooled))))

    def top_tags(self, logits: torch.Tensor, num_tags: int) -> torch.Tensor:
        """(B, num_tags) the word pieces each image raises most above the mean image, without gradient."""
        return (logits.detach() - self.mean_logits).topk(num_tags, dim=-1).indices

    @torch.no_grad()
    def track(self, logits: torch.Tensor) -> None:
        """Move ``mean_logits`` towards this batch's mean: the plain average of the batches so far, then an
        exponential average with weight ``MEAN_LOGIT_MOMENTUM`` once that is the larger weight."""
        self.num_batches_tracked += 1
        weight = max(MEAN_LOGIT_MOMENTUM, 1.0 / self.num_batches_tracked.item())
        self.mean_logits.lerp_(logits.float().mean(dim=0), weight)


class OscarModel(SingleStreamModel):
    """The bare OSCAR encoder: ``[text | tags | patches]`` -> hidden states and pooled [CLS].

    Text is token type 0 and tags token type 1, as BERT's sentence pairs; tag positions continue after the
    (padded) text, as in OSCAR, so the text length plus ``num_tags`` must fit ``max_position_embeddings``.
    """

    config_class = OscarConfig

    def __init__(self, config: OscarConfig) -> None:
        super().__init__(config)
        if config.type_vocab_size < 2:
            raise ValueError(f"OSCAR needs type_vocab_size >= 2 (text and tags), got {config.type_vocab_size}")
        self.patch_embeddings = OscarPatchEmbeddings(config)
        self.tagger = OscarImageTagger(config)
        self.post_init()

    def predict_tags(self, patch_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tagger logits (B, V), tags (B, num_tags))``: the tags are the word pieces the image raises most above
        the mean image, without gradient."""
        logits = self.tagger(patch_features)
        return logits, self.tagger.top_tags(logits, self.config.num_tags)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        patch_features: torch.Tensor,
        patch_locations: torch.Tensor,
        tag_ids: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPooling:
        """``tag_ids`` (B, num_tags) override the image's own predicted tags (pre-training masks and pollutes them)."""
        if tag_ids is None:
            tag_ids = self.predict_tags(patch_features)[1]
        text_len, num_tags = input_ids.shape[1], tag_ids.shape[1]
        if text_len + num_tags > self.config.max_position_embeddings:
            raise ValueError(
                f"{text_len} text tokens + {num_tags} tags exceed max_position_embeddings"
                f" {self.config.max_position_embeddings}"
            )
        token_types = torch.cat([torch.zeros_like(input_ids), torch.ones_like(tag_ids)], dim=1)
        words = self.embeddings(input_ids=torch.cat([input_ids, tag_ids], dim=1), token_type_ids=token_types)
        patches = self.patch_embeddings(patch_features, patch_locations)
        hidden = torch.cat([words, patches], dim=1)
        always = attention_mask.new_ones(tag_ids.shape[0], num_tags + patches.shape[1])  # tags, patches: no padding
        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=torch.cat([attention_mask, always], dim=1)
        )
        sequence = self.encoder(hidden, attention_mask=mask).last_hidden_state
        return BaseModelOutputWithPooling(last_hidden_state=sequence, pooler_output=self.pooler(sequence))


def tag_vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bool: the word pieces that may be tags, whole alphabetic words of at least three letters
    that are not English stopwords (fashion categories, colours, materials), never "##" continuations."""
    eligible = torch.zeros(vocab_size, dtype=torch.bool)
    for token, index in tokenizer.get_vocab().items():
        if index < vocab_size and len(token) >= MIN_TAG_LENGTH and token.isalpha():
            eligible[index] = token.lower() not in ENGLISH_STOP_WORDS
    return eligible


def pollute(tags: torch.Tensor, polluted: torch.Tensor, pollute_from: torch.Tensor) -> torch.Tensor:
    """OSCAR's polluted tag sequences: row i takes the tags of row ``pollute_from[i]`` where ``polluted[i]``."""
    return torch.where(polluted[:, None], tags[pollute_from], tags)


@dataclass
class OscarCollator:
    """Adds OSCAR's pre-training targets and corruptions to a batch of (possibly mismatched) image-text pairs.

    Tags are predicted inside the model, so for them the collator draws only the plan: which tag slots are
    masked (``tag_mask``) and what replaces them (``tag_replacements``: [MASK], a random word piece, or -1 to
    keep the tag, BERT's 80/10/10), which rows are polluted and from which other row. Every pair is corrupted
    alike; the masked token and tagger losses are taken on matched pairs only.

    ``tag_targets`` (B, V) bool marks the word pieces of each matched description that are in ``tag_vocabulary``
    (every real word piece when it is None).
    """

    config: OscarConfig
    mask_token_id: int
    tag_vocabulary: torch.Tensor | None = None

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        del batch["image_positions"], batch["text_positions"]
        config, size = self.config, len(batch["input_ids"])
        matched = batch["itm_labels"].bool()
        words = batch.pop("word_ids") >= 0
        batch["tag_targets"] = self.tag_targets(batch["input_ids"], words & matched[:, None])
        chosen = choose_tokens(words, config.mlm_probability, generator)
        batch["input_ids"], labels = apply_token_mask(
            batch["input_ids"], chosen, self.mask_token_id, config.vocab_size, generator
        )
        batch["mlm_labels"] = labels.masked_fill(~matched[:, None], -100)
        slots = torch.rand(size, config.num_tags, generator=generator) < config.tag_mask_probability
        keep = torch.full(slots.shape, -1, dtype=torch.long)
        batch["tag_mask"] = slots
        batch["tag_replacements"] = apply_token_mask(keep, slots, self.mask_token_id, config.vocab_size, generator)[0]
        polluted = torch.rand(size, generator=generator) < config.pollution_probability
        batch["polluted"] = polluted & (size > 1)  # a lone pair has no other image to take tags from
        batch["pollute_from"] = other_rows(size, generator)
        return batch

    def tag_targets(self, input_ids: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """(B, V) multi-hot of the word pieces at ``where`` that may be tags."""
        targets = torch.zeros(len(input_ids), self.config.vocab_size, dtype=torch.bool)
        rows, columns = where.nonzero(as_tuple=True)
        targets[rows, input_ids[rows, columns]] = True
        return targets if self.tag_vocabulary is None else targets & self.tag_vocabulary


def other_rows(size: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of ``range(size)`` with no fixed point (one cycle through a shuffled order)."""
    order = torch.randperm(size, generator=generator)
    source = torch.empty_like(order)
    source[order] = order.roll(-1)
    return source


@register_model(
    "oscar",
    description="OSCAR-style single stream [text | 8 tags | 8x8 patches], tags from an in-model image tagger (for"
    " detector tags): masked token loss over text and tags, contrastive loss with polluted tags (also ITM), tag BCE",
)
class OscarForPreTraining(SingleStreamForPreTraining):
    """OSCAR with the tied MLM head (masked token loss), the 2-way contrastive/ITM head and the image tagger."""

    config_class = OscarConfig
    collator = OscarCollator

    def __init__(self, config: OscarConfig) -> None:
        super().__init__(config, OscarModel(config))
        self.post_init()

    @classmethod
    def pretraining_collator(cls, config: OscarConfig, context: PretrainingContext) -> OscarCollator:
        """The collator, with tag targets limited to the tokenizer's content word pieces."""
        return cls.collator(
            config, context.tokenizer.mask_token_id, tag_vocabulary(context.tokenizer, config.vocab_size)
        )

    def tagging_loss(
        self, logits: torch.Tensor, tags: torch.Tensor, targets: torch.Tensor, matched: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary cross-entropy of the tagger (mean over vocabulary and matched rows) and the precision of its tags."""
        if not matched.any():
            zero = logits.sum() * 0
            return zero, zero.detach()
        loss = F.binary_cross_entropy_with_logits(logits[matched].float(), targets[matched].float())
        return loss, targets.gather(1, tags)[matched].float().mean()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        patch_features: torch.Tensor,
        patch_locations: torch.Tensor,
        mlm_labels: torch.Tensor,
        itm_labels: torch.Tensor,
        tag_targets: torch.Tensor,
        tag_mask: torch.Tensor,
        tag_replacements: torch.Tensor,
        polluted: torch.Tensor,
        pollute_from: torch.Tensor,
    ) -> VLPreTrainingOutput:
        """One pass over ``[text | polluted, masked tags | patches]``: the masked token loss (text of matched pairs,
        tags of consistent triples), the contrastive loss (1 iff matched and not polluted) and the tag loss."""
        tag_logits, own_tags = self.vl.predict_tags(patch_features)
        if self.training:
            self.vl.tagger.track(tag_logits)
        tags = pollute(own_tags, polluted, pollute_from)
        consistent = itm_labels.bool() & ~polluted
        tag_labels = tags.masked_fill(~(tag_mask & consistent[:, None]), -100)
        tag_inputs = torch.where(tag_replacements >= 0, tag_replacements, tags)
        out = self.vl(input_ids, attention_mask, patch_features, patch_locations, tag_ids=tag_inputs)
        tokens = out.last_hidden_state[:, : input_ids.shape[1] + tags.shape[1]]
        mlm_loss, mlm_acc = self.masked_lm_loss(tokens, torch.cat([mlm_labels, tag_labels], dim=1))
        itm_loss, itm_acc = self.itm_loss(out.pooler_output, consistent.long())
        tag_loss, tag_acc = self.tagging_loss(tag_logits, own_tags, tag_targets, itm_labels.bool())
        losses = {"mlm_loss": mlm_loss, "itm_loss": itm_loss, "tag_loss": tag_loss}
        return VLPreTrainingOutput(
            loss=mlm_loss + itm_loss + tag_loss,
            losses=losses,
            accuracies={"mlm_acc": mlm_acc, "itm_acc": itm_acc, "tag_acc": tag_acc},
        )
