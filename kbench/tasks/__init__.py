"""The downstream tasks: cards (YAML in ``tasks/``) by name, implementations by kind."""

from __future__ import annotations

from typing import Any

from kbench.core.errors import KbenchError
from kbench.core.registry import Registry
from kbench.tasks.base import Task, TaskResult
from kbench.tasks.card import TaskCard, load_cards

# The paper's order: retrieval both ways, category and sub-category recognition, captioning.
PAPER_ORDER = ("itr", "tir", "cr", "sub", "fc")

TASK_KINDS: Registry[type[Task]] = Registry("task kind", base=Task)
TASK_KINDS.register("retrieval", "kbench.tasks.retrieval:RetrievalTask")
TASK_KINDS.register("classification", "kbench.tasks.classification:ClassificationTask")
TASK_KINDS.register("captioning", "kbench.tasks.captioning:CaptioningTask")

TASKS: Registry[TaskCard] = Registry("task", base=TaskCard)
for _card in load_cards().values():
    TASKS.register(_card.name, _card, description=f"{_card.title}, v{_card.version}: {_card.description}")


def parse_tasks(spec: str) -> list[str]:
    """``all`` or a comma-separated list of task names, in the paper's order."""
    names = list(PAPER_ORDER) if spec == "all" else [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise KbenchError("--task needs at least one task name, or all")
    for name in names:
        TASKS.get(name)
    return sorted(set(names), key=lambda n: PAPER_ORDER.index(n) if n in PAPER_ORDER else len(PAPER_ORDER))


def build_task(name: str, overrides: dict[str, Any]) -> Task:
    """The task ``name`` with a profile's ``tasks.<name>`` overrides applied."""
    card = TASKS.get(name)
    return TASK_KINDS.get(card.kind)(card, overrides)


__all__ = ["PAPER_ORDER", "TASKS", "TASK_KINDS", "Task", "TaskResult", "build_task", "parse_tasks"]
