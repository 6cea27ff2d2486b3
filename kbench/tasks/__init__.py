"""The downstream tasks: cards (YAML in ``tasks/``, and in the user's ``--include-path`` directories) by name,
implementations by kind."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kbench.core.errors import KbenchError, unknown_choice
from kbench.core.registry import Registry
from kbench.metrics.sums import PAPER_TASKS
from kbench.tasks.base import Task, TaskResult
from kbench.tasks.card import TaskCard, load_cards, read_card

# The paper's order: retrieval both ways, category and sub-category recognition, captioning; what --task all runs.
PAPER_ORDER = PAPER_TASKS
NOT_TASK_NAMES = ("all", "sums", "pretrain", "time", "mem", "progress")  # --task all, and logged metric groups

TASK_KINDS: Registry[type[Task]] = Registry("task kind", base=Task)
TASK_KINDS.register("retrieval", "kbench.tasks.retrieval:RetrievalTask")
TASK_KINDS.register("classification", "kbench.tasks.classification:ClassificationTask")
TASK_KINDS.register("captioning", "kbench.tasks.captioning:CaptioningTask")

TASKS: Registry[TaskCard] = Registry("task", base=TaskCard)
_INCLUDED: dict[str, Path] = {}  # task name -> the card file of an include path it was registered from


def _register(card: TaskCard) -> None:
    TASKS.register(card.name, card, description=f"{card.title}, v{card.version}: {card.description}")


for _card in load_cards().values():
    _register(_card)


def include_cards(directories: Sequence[str | Path]) -> None:
    """Register every ``*.yaml`` card in ``directories`` beside the shipped ones (a card file already registered is
    skipped); a KbenchError naming the file for a card that clashes, has an unknown kind or is incomplete."""
    for directory in directories:
        root = Path(directory).expanduser().resolve()
        if not root.is_dir():
            raise KbenchError(f"task include path {directory}: no such directory")
        for path in sorted(root.glob("*.yaml")):
            card = read_card(path.read_text(), str(path))
            if _INCLUDED.get(card.name) != path:
                check_card(card, path)
                _register(card)
                _INCLUDED[card.name] = path


def check_card(card: TaskCard, path: Path) -> None:
    """A user's card names a new task, of a known kind, with options that kind accepts."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", card.name) or card.name in NOT_TASK_NAMES:
        raise KbenchError(f"task card {path}: name {card.name!r} must be letters, digits, - or _, and not all")
    if card.name in TASKS:
        where = f"the card {_INCLUDED[card.name]}" if card.name in _INCLUDED else "one of kbench's cards"
        raise KbenchError(f"task card {path}: task {card.name!r} is already defined by {where}")
    if card.kind not in TASK_KINDS:
        raise KbenchError(f"task card {path}: {unknown_choice('task kind', card.kind, TASK_KINDS.names())}")
    try:
        TASK_KINDS.get(card.kind)(card, {})
    except KbenchError as exc:
        raise KbenchError(f"task card {path}: {exc}") from None


def parse_tasks(spec: str, include_paths: Sequence[str | Path] = ()) -> list[str]:
    """``all`` (the paper's five) or a comma-separated list of task names, in the paper's order, then the others;
    the cards of ``include_paths`` are registered first."""
    include_cards(include_paths)
    names = list(PAPER_ORDER) if spec == "all" else [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise KbenchError("--task needs at least one task name, or all")
    for name in names:
        TASKS.get(name)
    return sorted(set(names), key=lambda n: (PAPER_ORDER.index(n) if n in PAPER_ORDER else len(PAPER_ORDER), n))


def build_task(name: str, overrides: dict[str, Any]) -> Task:
    """The task ``name`` with a profile's ``tasks.<name>`` overrides applied."""
    card = TASKS.get(name)
    return TASK_KINDS.get(card.kind)(card, overrides)


__all__ = [
    "PAPER_ORDER",
    "TASKS",
    "TASK_KINDS",
    "Task",
    "TaskResult",
    "build_task",
    "include_cards",
    "parse_tasks",
]
