"""What every downstream task is: fine-tune a copy of the pre-trained model, then evaluate it on the test split
(or, for model selection, on the dev split, optionally after every fine-tuning epoch)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from kbench.core.config import OptimConfig
from kbench.tasks.card import TaskCard

if TYPE_CHECKING:  # annotations only: listing cards (kbench ls tasks, kbench table) imports this module without torch
    import numpy as np
    import torch
    from torch import nn

    from kbench.models.base import VLPreTrainedModel
    from kbench.models.context import TaskContext
    from kbench.models.training import StepFn

# Receives the epoch (1-based) and the evaluation split's metrics after that fine-tuning epoch.
EpochHook = Callable[[int, dict[str, float]], None]


@dataclass
class TaskResult:
    """Corpus-level metrics (named as the card names them), artifacts (file name -> text), the per-epoch
    means of the fine-tuning loss and accuracy, and the per-sample outputs (kbench.tasks.samples' records, one per test
    item) from which the metrics can be recomputed."""

    metrics: dict[str, float]
    artifacts: dict[str, str] = field(default_factory=dict)
    curves: list[dict[str, float]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)


class Task(ABC):
    """A downstream task built from its card and the profile's ``tasks.<name>`` overrides."""

    options_cls: ClassVar[type]

    def __init__(self, card: TaskCard, overrides: dict[str, Any]) -> None:
        self.card = card
        self.recipe, self.options = card.resolve(overrides, self.options_cls)

    @property
    def name(self) -> str:
        return self.card.name

    @abstractmethod
    def run(
        self,
        context: TaskContext,
        pretrained: VLPreTrainedModel,
        split: str = "test",
        on_epoch: EpochHook | None = None,
    ) -> TaskResult:
        """Fine-tune (a copy of) ``pretrained`` as the card says and evaluate it on ``split``; with ``on_epoch``,
        also evaluate after every fine-tuning epoch and pass the metrics to it."""

    def train(
        self,
        context: TaskContext,
        module: nn.Module,
        make_batch: Callable[[np.ndarray, np.random.Generator], dict[str, torch.Tensor]],
        step: StepFn,
        recipe: OptimConfig | None = None,
        description: str | None = None,
        on_epoch: EpochHook | None = None,
        evaluate: Callable[[], dict[str, float]] | None = None,
    ) -> list[dict[str, float]]:
        """Fine-tune ``module`` for the recipe's epochs over shuffled training examples; return the curves.
        ``make_batch(positions, rng)`` builds a batch on the CPU, drawing from a generator of its step alone. With
        ``on_epoch``, ``evaluate()`` runs after every epoch and its metrics go to ``on_epoch``."""
        recipe = recipe or self.recipe
        if recipe.epochs == 0:  # no fine-tuning: the pre-trained heads as they are (``finetune: false``)
            return []
        from kbench.data.loader import FINETUNE_DRAWS, FINETUNE_ORDER, epoch_order, step_rng
        from kbench.models.training import fit

        n = len(context.data("train"))
        seed, size = context.seed, recipe.batch_size
        steps_per_epoch = max(1, n // size)

        def batch(step: int) -> dict[str, torch.Tensor]:
            epoch, i = divmod(step, steps_per_epoch)
            positions = epoch_order(seed, FINETUNE_ORDER, epoch, n)[i * size : (i + 1) * size].copy()
            return make_batch(positions, step_rng(seed, FINETUNE_DRAWS, step))

        runtime = context.config.runtime
        return fit(
            module,
            batch,
            steps_per_epoch,
            recipe,
            step,
            context.device,
            runtime.precision,
            description or self.name,
            (lambda epoch: on_epoch(epoch, evaluate())) if on_epoch and evaluate else None,
            workers=runtime.loader_workers,
        )


def eval_batches(
    context: TaskContext, make_batch: Callable[[int], dict[str, torch.Tensor]], count: int
) -> Iterator[dict[str, torch.Tensor]]:
    """``make_batch(0) .. make_batch(count - 1)``, built ahead by the trial's loader workers, on its device."""
    from kbench.data.loader import prefetch
    from kbench.features.batches import to_device

    pin = context.device.type == "cuda"
    for batch in prefetch(make_batch, range(count), context.config.runtime.loader_workers, pin):
        yield to_device(batch, context.device)
