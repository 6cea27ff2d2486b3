"""Task cards: the declarative, versioned YAML description of each downstream task."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from kbench.core.config import OptimConfig, build_section
from kbench.core.errors import KbenchError


@dataclass(frozen=True)
class TaskCard:
    """One task as its card states it; ``options`` are the keys its kind interprets."""

    name: str
    version: int
    title: str
    kind: str
    description: str
    finetune: dict[str, Any]
    metrics: tuple[str, ...]
    primary_metric: str
    options: dict[str, Any] = field(default_factory=dict)

    def resolve(self, overrides: dict[str, Any], options_cls: type) -> tuple[OptimConfig, Any]:
        """The fine-tuning recipe and the kind's options, with a profile's ``tasks.<name>`` overrides applied."""
        overrides = dict(overrides)
        finetune = {**self.finetune, **overrides.pop("finetune", {})}
        recipe = build_section(OptimConfig, finetune, f"tasks.{self.name}.finetune")
        return recipe, build_section(options_cls, {**self.options, **overrides}, f"tasks.{self.name}")


_CARD_FIELDS = {f.name for f in dataclasses.fields(TaskCard)} - {"options"}


def load_cards() -> dict[str, TaskCard]:
    """Every card shipped in ``tasks/`` (installed as the ``kbench.cards`` package), by task name."""
    entries = sorted(resources.files("kbench.cards").iterdir(), key=lambda e: e.name)
    cards = [read_card(e.read_text(), e.name) for e in entries if e.name.endswith(".yaml")]
    return {card.name: card for card in cards}


def read_card(text: str, source: str) -> TaskCard:
    """The card in YAML ``text``; a KbenchError naming ``source`` (its file) when it is no card."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KbenchError(f"task card {source}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise KbenchError(f"task card {source}: expected a mapping of card fields")
    missing = _CARD_FIELDS - set(data)
    if missing:
        raise KbenchError(f"task card {source}: missing {', '.join(sorted(missing))}")
    if not isinstance(data["metrics"], list) or data["primary_metric"] not in data["metrics"]:
        raise KbenchError(f"task card {source}: metrics must be a list that holds primary_metric")
    options = {k: v for k, v in data.items() if k not in _CARD_FIELDS}
    fixed = {k: data[k] for k in _CARD_FIELDS}
    fixed["metrics"] = tuple(fixed["metrics"])
    return TaskCard(**fixed, options=options)
