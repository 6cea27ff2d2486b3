"""ITR and TIR: fine-tune the ITM head, then rank each query's candidate list by the class-1 ITM logit."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from kbench.core.bounds import bounded
from kbench.core.config import digest
from kbench.core.errors import KbenchError
from kbench.core.progress import stage
from kbench.features.batches import ModelData, NegativeSampler, model_inputs
from kbench.metrics.retrieval import TIES, ranks_and_ties, recall_at_k
from kbench.models.base import VLPreTrainedModel
from kbench.models.context import TaskContext
from kbench.tasks.base import EpochHook, Task, TaskResult, eval_batches
from kbench.tasks.protocols import IMAGE_QUERY, PROTOCOLS, TEXT_QUERY, CandidateLists, FullGallery
from kbench.tasks.samples import FULL_RANK_FIELD, list_id, retrieval_record

KS = (1, 5, 10)
FULL_GALLERY = FullGallery()


@dataclass
class RetrievalOptions:
    """The retrieval keys of a task card."""

    query: str  # image (ITR) or text (TIR)
    negatives: str = "same-subcategory"  # or "random": where fine-tuning mismatches come from
    negative_rate: float = bounded(0.5, low=0, high=1)
    protocol: str = "fashionbert-101"
    queries: int = bounded(1000, low=1)
    protocol_seed: int = bounded(0, low=0)
    ties: str = "pessimistic"
    score_pretrained: bool = True


class RetrievalTask(Task):
    """Cross-modal retrieval scored by the model's image-text matching head."""

    options_cls = RetrievalOptions

    def __init__(self, card, overrides) -> None:
        super().__init__(card, overrides)
        if self.options.query not in (IMAGE_QUERY, TEXT_QUERY):
            raise KbenchError(f"tasks.{self.name}.query must be image or text, not {self.options.query!r}")
        if self.options.negatives not in ("same-subcategory", "random"):
            raise KbenchError(f"tasks.{self.name}.negatives must be same-subcategory or random")
        if self.options.ties not in TIES:
            raise KbenchError(f"tasks.{self.name}.ties must be one of {', '.join(TIES)}")
        self.protocol = PROTOCOLS.get(self.options.protocol)()

    def run(
        self,
        context: TaskContext,
        pretrained: VLPreTrainedModel,
        split: str = "test",
        on_epoch: EpochHook | None = None,
    ) -> TaskResult:
        test = context.data(split)
        lists = self.protocol.lists(test.split, self.options.query, self.options.queries, self.options.protocol_seed)
        metrics, pretrained_ranks = {}, None
        if self.options.score_pretrained:
            scores = self.score(context, pretrained, test, lists, f"{self.name} score (pre-trained)")
            pretrained_ranks = self.ranks(scores, lists)
            metrics |= {f"pretrained_{k}": v for k, v in self.recall(pretrained_ranks).items()}
        if on_epoch:
            model, curves = self.finetune(context, pretrained, on_epoch, test, lists)
        else:  # ITR and TIR of one trial share the fine-tuned model when their recipes agree
            recipe_key = digest(dataclasses.asdict(self.recipe), self.options.negatives, self.options.negative_rate)
            model, curves = context.cached(f"itm-{recipe_key}", lambda: self.finetune(context, pretrained))
        scores = self.score(context, model, test, lists, f"{self.name} score")
        ranks = self.ranks(scores, lists)
        metrics |= self.recall(ranks)
        samples = self.samples(lists, scores, ranks, pretrained_ranks)
        artifacts = {f"candidates_{self.name}.json": lists.to_json()}
        if model.dual_encoder:  # the whole gallery is cheap from embeddings
            full = FULL_GALLERY.lists(test.split, self.options.query, self.options.queries, self.options.protocol_seed)
            full_ranks = self.ranks(self.similarities(context, model, test, full), full)
            metrics |= {f"full_{k}": v for k, v in self.recall(full_ranks).items()}
            artifacts[f"candidates_{self.name}_full.json"] = full.to_json()
            rank_of = dict(zip(full.query_rows, full_ranks[0].tolist(), strict=True))
            for record in samples:
                record[FULL_RANK_FIELD] = _number(rank_of[record["query_row"]])
        return TaskResult(metrics, artifacts, curves, samples)

    def samples(
        self,
        lists: CandidateLists,
        scores: np.ndarray,
        ranks: tuple[np.ndarray, np.ndarray],
        pretrained: tuple[np.ndarray, np.ndarray] | None,
    ) -> list[dict]:
        """One record per query, in the lists' order: its list's id, the positive's rank (fine-tuned and pre-trained
        head) and score; under ``average`` ties also how many candidates tie the positive, which R@K needs."""
        average = self.options.ties == "average"
        out = []
        for i, (row, candidates) in enumerate(zip(lists.query_rows, lists.candidate_rows, strict=True)):
            extra = {"tied": int(ranks[1][i])} if average else {}
            if average and pretrained is not None:
                extra["pretrained_tied"] = int(pretrained[1][i])
            out.append(
                retrieval_record(
                    row,
                    list_id(candidates, lists.positive, lists.protocol, lists.version),
                    _number(ranks[0][i]),
                    None if pretrained is None else _number(pretrained[0][i]),
                    float(scores[i, lists.positive]),
                    **extra,
                )
            )
        return out

    def finetune(
        self,
        context: TaskContext,
        pretrained: VLPreTrainedModel,
        on_epoch: EpochHook | None = None,
        data: ModelData | None = None,
        lists: CandidateLists | None = None,
    ) -> tuple[VLPreTrainedModel, list[dict[str, float]]]:
        """ITM fine-tuning on matched pairs and mismatches (hard ones: same sub-category) of the train split, or, for a
        dual encoder, its contrastive pre-training objective on matched pairs; with ``on_epoch``, ranking ``lists`` of
        ``data`` after every epoch."""
        model = copy.deepcopy(pretrained)
        train = context.data("train")
        meta = train.split.meta
        groups = meta["subcategory"].astype("category").cat.codes.to_numpy()
        sampler = NegativeSampler(
            meta["product_id"].to_numpy(), groups if self.options.negatives == "same-subcategory" else None
        )

        def make_batch(images: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
            texts, labels = sampler.sample(images, self.options.negative_rate, rng)
            batch = model_inputs(train.inputs(images, texts))
            batch["labels"] = torch.from_numpy(labels)
            return batch

        def step(batch: dict[str, torch.Tensor]):
            labels = batch.pop("labels")
            logits = model.itm_logits(**batch).float()
            loss = torch.nn.functional.cross_entropy(logits, labels)
            return loss, {"loss": loss, "acc": (logits.argmax(-1) == labels).float().mean()}

        def matched_batch(images: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
            batch = model_inputs(train.inputs(images, images))
            batch["itm_labels"] = torch.ones(len(images), dtype=torch.long)
            return batch

        def contrastive_step(batch: dict[str, torch.Tensor]):
            out = model(**batch)
            return out.loss, {"loss": out.loss, "acc": next(iter(out.accuracies.values()))}

        def evaluate() -> dict[str, float]:
            return self.rank(self.score(context, model, data, lists, f"{self.name} score"), lists)

        if model.dual_encoder:  # its own contrastive objective over in-batch pairs: binary ITM distorts the embeddings
            description = "fine-tune contrastive (ITR, TIR)"
            return model, self.train(
                context, model, matched_batch, contrastive_step, None, description, on_epoch, evaluate
            )
        description = "fine-tune ITM (ITR, TIR)"
        return model, self.train(context, model, make_batch, step, None, description, on_epoch, evaluate)

    @torch.inference_mode()
    def score(
        self, context: TaskContext, model: VLPreTrainedModel, test: ModelData, lists: CandidateLists, description: str
    ) -> np.ndarray:
        """(queries, candidates) raw class-1 ITM logits, the score the released evaluation ranked by."""
        query, candidates = list_positions(test, lists)
        n_queries, n_candidates = candidates.shape
        queries_flat = np.repeat(query, n_candidates)
        candidates_flat = candidates.reshape(-1)
        images, texts = (
            (queries_flat, candidates_flat) if self.options.query == IMAGE_QUERY else (candidates_flat, queries_flat)
        )
        out = np.empty(len(images), dtype=np.float32)
        size = context.config.runtime.eval_batch_size
        model.eval()

        def make_batch(i: int) -> dict[str, torch.Tensor]:
            part = slice(i * size, (i + 1) * size)
            return model_inputs(test.inputs(images[part], texts[part]))

        with stage(description, len(images)) as advance:
            for i, batch in enumerate(eval_batches(context, make_batch, -(-len(images) // size))):
                part = slice(i * size, (i + 1) * size)
                out[part] = model.itm_logits(**batch)[:, 1].float().cpu().numpy()
                advance(len(out[part]))
        return out.reshape(n_queries, n_candidates)

    @torch.inference_mode()
    def similarities(
        self, context: TaskContext, model: VLPreTrainedModel, test: ModelData, lists: CandidateLists
    ) -> np.ndarray:
        """(queries, candidates) scores of a dual encoder from embeddings of every test image and text, the same
        values as its class-1 ITM logit."""
        model.eval()
        size = context.config.runtime.eval_batch_size
        images, texts = [], []

        def make_batch(i: int) -> dict[str, torch.Tensor]:
            positions = np.arange(i * size, min((i + 1) * size, len(test)))
            return model_inputs(test.inputs(positions, positions))

        with stage(f"{self.name} embed", len(test)) as advance:
            for batch in eval_batches(context, make_batch, -(-len(test) // size)):
                images.append(model.embed_images(batch["patch_features"], batch["patch_locations"]).float())
                texts.append(model.embed_texts(batch["input_ids"], batch["attention_mask"]).float())
                advance(len(batch["input_ids"]))
        query, candidates = map(torch.from_numpy, list_positions(test, lists))
        image, text = torch.cat(images), torch.cat(texts)
        if self.options.query == IMAGE_QUERY:
            scores = model.embedding_scores(image[query][:, None, :], text[candidates])
        else:
            scores = model.embedding_scores(image[candidates], text[query][:, None, :])
        return scores.float().cpu().numpy()

    def rank(self, scores: np.ndarray, lists: CandidateLists) -> dict[str, float]:
        """R1, R5 and R10 of ``scores`` of ``lists``."""
        return self.recall(self.ranks(scores, lists))

    def ranks(self, scores: np.ndarray, lists: CandidateLists) -> tuple[np.ndarray, np.ndarray]:
        """Per query, the positive's 1-based rank under the card's tie policy and how many candidates tie it."""
        return ranks_and_ties(scores, np.full(len(scores), lists.positive), self.options.ties)

    def recall(self, ranks: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
        """R1, R5 and R10 from per-query ranks (and ties, which only ``average`` counts)."""
        recall = recall_at_k(ranks[0], KS, ranks[1] if self.options.ties == "average" else None)
        return {f"R{k}": recall[f"R@{k}"] for k in KS}


def _number(rank: float) -> int | float:
    """A rank as an int when whole (always, but under ``average`` ties), else the mean rank."""
    return int(rank) if float(rank).is_integer() else float(rank)


def list_positions(data: ModelData, lists: CandidateLists) -> tuple[np.ndarray, np.ndarray]:
    """The example positions in ``data`` of the lists' query rows (Q,) and candidate rows (Q, C)."""
    position = {int(r): i for i, r in enumerate(data.split.meta["row"].to_numpy())}
    query = np.asarray([position[r] for r in lists.query_rows])
    return query, np.asarray([[position[r] for r in row] for row in lists.candidate_rows])
