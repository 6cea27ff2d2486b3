"""FC: encoder-only captioning by mask-predict, scored with pycocoevalcap.

Fine-tuning masks a random share of each description's positions (padding included, so the model learns
where a caption ends) and predicts them from the image and the rest; at test time every position after
[CLS] starts as [MASK] and is predicted in parallel, optionally refined for several rounds by re-masking
the least confident tokens (Ghazvininejad et al., 2019).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import numpy as np
import torch

from kbench.core.bounds import bounded
from kbench.core.progress import stage
from kbench.features.batches import ModelData, model_inputs
from kbench.metrics import caption_scores
from kbench.metrics.captioning import caption_scores_per_item
from kbench.models.base import VLPreTrainedModel
from kbench.models.context import TaskContext
from kbench.tasks.base import EpochHook, Task, TaskResult, eval_batches
from kbench.tasks.samples import captioning_record


@dataclass
class CaptioningOptions:
    """The captioning keys of a task card."""

    mask_min: float = bounded(0.15, low=0, high=1)
    rounds: int = bounded(1, low=1)
    images: int = bounded(0, low=0)  # 0: every test product
    sample_seed: int = bounded(0, low=0)


class CaptioningTask(Task):
    """Description generation from the image alone."""

    options_cls = CaptioningOptions

    def run(
        self,
        context: TaskContext,
        pretrained: VLPreTrainedModel,
        split: str = "test",
        on_epoch: EpochHook | None = None,
    ) -> TaskResult:
        model = copy.deepcopy(pretrained)
        train, test = context.data("train"), context.data(split)
        mask_id = context.tokenizer.mask_token_id

        def make_batch(positions: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
            batch = model_inputs(train.inputs(positions, positions))
            ids = batch["input_ids"]
            share = torch.from_numpy(rng.uniform(self.options.mask_min, 1.0, size=(len(ids), 1))).float()
            noise = torch.from_numpy(rng.random(ids.shape)).float()
            noise[:, 0] = 2.0  # [CLS] stays
            chosen = noise < share
            chosen[torch.arange(len(ids)), noise.argmin(dim=1)] = True  # at least one position per caption
            batch["labels"] = ids[chosen]
            batch["where"] = chosen
            batch["input_ids"] = ids.masked_fill(chosen, mask_id)
            batch["attention_mask"] = torch.ones_like(ids)
            return batch

        def step(batch: dict[str, torch.Tensor]):
            labels = batch.pop("labels")
            logits = model.mlm_logits(**batch).float()
            loss = torch.nn.functional.cross_entropy(logits, labels)
            return loss, {"loss": loss, "acc": (logits.argmax(-1) == labels).float().mean()}

        positions = self.sample(test)
        meta = test.split.meta.iloc[positions]
        keys = [str(r) for r in meta["row"]]
        references = {k: [d] for k, d in zip(keys, meta["description"], strict=False)}

        def evaluate() -> dict[str, float]:
            captions = self.generate(context, model, test, positions)
            return caption_scores(references, dict(zip(keys, captions, strict=False)))

        curves = self.train(context, model, make_batch, step, on_epoch=on_epoch, evaluate=evaluate)
        captions = self.generate(context, model, test, positions)
        scores, per_item = caption_scores_per_item(references, dict(zip(keys, captions, strict=False)))
        samples = [
            captioning_record(int(k), p, c, references[k], per_item[k])
            for k, p, c in zip(keys, meta["product_id"], captions, strict=True)
        ]
        records = [
            {"row": int(r), "product_id": int(p), "reference": d, "caption": c}
            for r, p, d, c in zip(meta["row"], meta["product_id"], meta["description"], captions, strict=False)
        ]
        return TaskResult(scores, {f"captions_{self.name}.json": json.dumps(records, indent=1)}, curves, samples)

    def sample(self, test: ModelData) -> np.ndarray:
        """One image (the first pose) of every test product, or of a seeded sample of ``images`` products."""
        firsts = np.asarray([pos[0] for pos in test.split.product_groups().values()])
        if 0 < self.options.images < len(firsts):
            rng = np.random.default_rng(self.options.sample_seed)
            firsts = np.sort(rng.choice(firsts, size=self.options.images, replace=False))
        return firsts

    @torch.inference_mode()
    def generate(
        self, context: TaskContext, model: VLPreTrainedModel, test: ModelData, positions: np.ndarray
    ) -> list[str]:
        """Mask-predict decoding: all positions after [CLS] masked, predicted, then refined ``rounds - 1`` times."""
        tok = context.tokenizer
        length = context.config.data.max_text_len
        rounds = max(1, self.options.rounds)
        size = context.config.runtime.eval_batch_size
        model.eval()
        captions: list[str] = []

        def make_batch(i: int) -> dict[str, torch.Tensor]:
            part = positions[i * size : (i + 1) * size]
            return model_inputs(test.inputs(part, part))

        with stage(f"{self.name} generate", len(positions)) as advance:
            for batch in eval_batches(context, make_batch, -(-len(positions) // size)):
                n = len(batch["input_ids"])
                ids = torch.full((n, length), tok.mask_token_id, device=context.device)
                ids[:, 0] = tok.cls_token_id
                batch["attention_mask"] = torch.ones_like(ids)
                confidence = torch.zeros(ids.shape, device=context.device)
                for r in range(rounds):
                    masked = ids == tok.mask_token_id
                    probs = model.mlm_logits(**{**batch, "input_ids": ids}).float().softmax(-1)
                    best, token = probs.max(-1)
                    ids = torch.where(masked, token, ids)
                    confidence = torch.where(masked, best, confidence)
                    remask = int((length - 1) * (rounds - 1 - r) / rounds)
                    if remask:
                        lowest = confidence[:, 1:].topk(remask, dim=1, largest=False).indices + 1
                        ids.scatter_(1, lowest, tok.mask_token_id)
                captions += [self.decode(row, tok) for row in ids.tolist()]
                advance(n)
        return captions

    @staticmethod
    def decode(ids: list[int], tok) -> str:
        """The text up to the first [SEP] or [PAD]."""
        stops = {tok.sep_token_id, tok.pad_token_id}
        end = next((i for i, t in enumerate(ids[1:], 1) if t in stops), len(ids))
        return tok.decode(ids[1:end], skip_special_tokens=True).strip()
