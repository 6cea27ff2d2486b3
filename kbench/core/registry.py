"""One small registry type for models, tasks, datasets and protocols."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from kbench.core.errors import unknown_choice

T = TypeVar("T")


@dataclass
class _Entry:
    target: object  # the registered object, or a lazy "module:attr" string
    description: str


class Registry(Generic[T]):
    """Maps names to objects of one kind; registration by decorator or by a lazy ``"module:attr"`` string.

    Registered objects must be subclasses (or instances) of ``base``; duplicate names are refused and
    unknown names are answered with the closest known ones. ``discover``, when given, runs once before the first
    lookup: it imports the modules whose decorators register the built-in entries and any plug-ins.
    """

    def __init__(self, kind: str, base: type | None = None, discover: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, _Entry] = {}
        self._discover = discover

    def _discovered(self) -> None:
        if self._discover is not None:
            discover, self._discover = self._discover, None
            discover()

    def register(self, name: str, target: object | None = None, *, description: str = "") -> Callable:
        """Register ``target`` under ``name``; used bare as a decorator when ``target`` is omitted."""

        def add(obj: object) -> object:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            lazy = isinstance(obj, str)
            if not lazy:
                self._check_base(name, obj)
            doc = description or ("" if lazy else _first_line(obj.__doc__))
            self._entries[name] = _Entry(obj, doc)
            return obj

        if target is not None:
            add(target)
            return lambda obj: obj
        return add

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing it first if it was registered lazily."""
        self._discovered()
        if name not in self._entries:
            raise unknown_choice(self.kind, name, self.names(), n=3, cutoff=0.5)
        entry = self._entries[name]
        if isinstance(entry.target, str):
            module, _, attr = entry.target.partition(":")
            entry.target = getattr(importlib.import_module(module), attr)
            self._check_base(name, entry.target)
            entry.description = entry.description or _first_line(entry.target.__doc__)
        return entry.target  # type: ignore[return-value]

    def describe(self, name: str) -> str:
        """The one-line description of ``name`` (loading a lazy entry to read its docstring)."""
        self.get(name)
        return self._entries[name].description

    def names(self) -> list[str]:
        self._discovered()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discovered()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _check_base(self, name: str, obj: object) -> None:
        if self.base is None:
            return
        ok = (isinstance(obj, type) and issubclass(obj, self.base)) or isinstance(obj, self.base)
        if not ok:
            raise TypeError(f"{self.kind} {name!r} must be a {self.base.__name__}, got {obj!r}")


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
