"""CR and SUB: a linear head on the pooled [CLS] of (description, image), fine-tuned with the encoder."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from kbench.core.errors import KbenchError
from kbench.core.progress import stage
from kbench.features.batches import ModelData, model_inputs
from kbench.metrics import classification_scores
from kbench.models.base import VLPreTrainedModel
from kbench.models.context import TaskContext
from kbench.tasks.base import EpochHook, Task, TaskResult, eval_batches
from kbench.tasks.samples import UNSEEN, classification_record

log = logging.getLogger(__name__)

LABEL_FIELDS = ("category", "subcategory")


@dataclass
class ClassificationOptions:
    """The classification keys of a task card."""

    label: str  # category (CR) or subcategory (SUB)


class Classifier(nn.Module):
    """The zoo model with dropout and a linear layer on its pooled output (the released run_cat.sh head)."""

    def __init__(self, model: VLPreTrainedModel, num_labels: int) -> None:
        super().__init__()
        self.model = model
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(model.config.hidden_size, num_labels)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.model.pooled_output(**inputs)))


class ClassificationTask(Task):
    """Category or sub-category recognition over the training label space."""

    options_cls = ClassificationOptions

    def __init__(self, card, overrides) -> None:
        super().__init__(card, overrides)
        if self.options.label not in LABEL_FIELDS:
            raise KbenchError(f"tasks.{self.name}.label must be one of {', '.join(LABEL_FIELDS)}")

    def run(
        self,
        context: TaskContext,
        pretrained: VLPreTrainedModel,
        split: str = "test",
        on_epoch: EpochHook | None = None,
    ) -> TaskResult:
        labels = context.dataset.categories if self.options.label == "category" else context.dataset.subcategories
        code = {name: i for i, name in enumerate(labels)}
        train, test = context.data("train"), context.data(split)
        y_train = torch.from_numpy(self.codes(train, code))
        classifier = Classifier(copy.deepcopy(pretrained), len(labels)).to(context.device)

        def make_batch(positions: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
            batch = model_inputs(train.inputs(positions, positions))
            batch["labels"] = y_train[positions]
            return batch

        def step(batch: dict[str, torch.Tensor]):
            target = batch.pop("labels")
            logits = classifier(**batch).float()
            loss = nn.functional.cross_entropy(logits, target)
            return loss, {"loss": loss, "acc": (logits.argmax(-1) == target).float().mean()}

        y_true, label_codes = self.codes(test, code), list(range(len(labels)))
        self.warn_unseen(test, code)

        def evaluate() -> dict[str, float]:
            return classification_scores(y_true, self.predict(context, classifier, test), label_codes, UNSEEN)

        curves = self.train(context, classifier, make_batch, step, on_epoch=on_epoch, evaluate=evaluate)
        y_pred = self.predict(context, classifier, test)
        scores = classification_scores(y_true, y_pred, label_codes, UNSEEN)
        unseen = int((y_true == UNSEEN).sum())
        names = [*labels, "(unseen in training)"] if unseen else labels  # code -1 indexes the last name
        matrix = pd.crosstab(
            pd.Categorical([names[i] for i in y_true], categories=names),
            pd.Categorical([names[i] for i in y_pred], categories=names),
            rownames=["true"],
            colnames=["predicted"],
            dropna=False,
        )
        meta = test.split.meta
        samples = [
            classification_record(row, pid, label, labels[p], t, p, len(labels))
            for row, pid, label, t, p in zip(
                meta["row"], meta["product_id"], meta[self.options.label], y_true, y_pred, strict=True
            )
        ]
        return TaskResult(scores, {f"confusion_{self.name}.csv": matrix.to_csv()}, curves, samples)

    def warn_unseen(self, data: ModelData, code: dict[str, int]) -> None:
        """One warning naming the labels of ``data`` that training never saw (each of their examples is an error)."""
        values = data.split.meta[self.options.label]
        unseen = sorted(set(values) - set(code))
        if unseen:
            count = int((~values.isin(code)).sum())
            log.warning(
                "%s: %d %s examples have a %s unseen in training, counted as errors: %s",
                self.name,
                count,
                data.split.name,
                self.options.label,
                ", ".join(unseen),
            )

    def codes(self, data: ModelData, code: dict[str, int]) -> np.ndarray:
        """Label index of each example; ``UNSEEN`` for labels unseen in training (always counted as errors)."""
        return np.asarray([code.get(v, UNSEEN) for v in data.split.meta[self.options.label]], dtype=np.int64)

    @torch.inference_mode()
    def predict(self, context: TaskContext, classifier: Classifier, test: ModelData) -> np.ndarray:
        classifier.eval()
        size = context.config.runtime.eval_batch_size
        out = []

        def make_batch(i: int) -> dict[str, torch.Tensor]:
            positions = np.arange(i * size, min((i + 1) * size, len(test)))
            return model_inputs(test.inputs(positions, positions))

        with stage(f"{self.name} predict", len(test)) as advance:
            for batch in eval_batches(context, make_batch, -(-len(test) // size)):
                out.append(classifier(**batch).argmax(-1).cpu().numpy())
                advance(len(out[-1]))
        return np.concatenate(out)
