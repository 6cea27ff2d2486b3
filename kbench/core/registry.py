"""One small registry type for models, tasks, datasets and protocols."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from kbench.core.errors import KbenchError, unknown_choice

T = TypeVar("T")


@dataclass
class _Entry:
    target: object  # the registered object, or a lazy "module:attr" string
    description: str


class Registry(Generic[T]):
    """Maps names to objects of one kind; registration by decorator or by a lazy ``"module:attr"`` string.

    Registered objects must be subclasses (or instances) of ``base``; duplicate names are refused and
    unknown names are answered with the closest known ones. ``discover``, when given, runs once before the first
    lookup: it imports the modules whose decorators register the built-in entries and any plug-ins. With
    ``importable``, a name of the form ``"module:attr"`` needs no registration: it is imported on first use (so that
    any process that can import the module, a Ray worker too, resolves it alike), and not listed in ``names``.
    """

    def __init__(
        self,
        kind: str,
        base: type | None = None,
        discover: Callable[[], None] | None = None,
        importable: bool = False,
    ) -> None:
        self.kind = kind
        self.base = base
        self.importable = importable
        self._entries: dict[str, _Entry] = {}
        self._imported: dict[str, _Entry] = {}  # "module:attr" names resolved without registration
        self._discover = discover

    def _discovered(self) -> None:
        if self._discover is not None:
            discover, self._discover = self._discover, None
            discover()

    def register(self, name: str, target: object | None = None, *, description: str = "") -> Callable:
        """Register ``target`` under ``name``; used bare as a decorator when ``target`` is omitted."""

        def add(obj: object) -> object:
            lazy = isinstance(obj, str)
            before = self._entries.get(name)
            if before is not None and (lazy or before.target != _path(obj)):  # else: the import of a lazy entry
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if not lazy:
                self._check_base(name, obj)
            doc = description or (before.description if before else "") or ("" if lazy else _first_line(obj.__doc__))
            self._entries[name] = _Entry(obj, doc)
            return obj

        if target is not None:
            add(target)
            return lambda obj: obj
        return add

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing it first if it was registered lazily."""
        self._discovered()
        if name in self._entries:
            return self._load(self._entries, name)
        if self.importable and ":" in name:
            self._imported.setdefault(name, _Entry(name, ""))
            try:
                return self._load(self._imported, name)
            except KbenchError:
                del self._imported[name]
                raise
        raise unknown_choice(self.kind, name, self.names(), n=3, cutoff=0.5)

    def _load(self, entries: dict[str, _Entry], name: str) -> T:
        """The object of ``entries[name]``, imported first if it is a lazy ``"module:attr"``; a KbenchError in one
        line when that fails (a plug-in that cannot be imported, or of the wrong type)."""
        path = entries[name].target
        if not isinstance(path, str):
            return path  # type: ignore[return-value]
        where = f"{self.kind} {name!r}" + ("" if path == name else f" ({path})")
        module, _, attr = path.partition(":")
        try:
            target = importlib.import_module(module)
            for part in attr.split(".") if attr else ():
                target = getattr(target, part)
        except Exception as exc:  # whatever a plug-in's import raises, said in one line
            raise KbenchError(f"{where} cannot be loaded: {type(exc).__name__}: {_first_line(str(exc))}") from None
        if not self._fits(target):
            raise KbenchError(f"{where} is not a {self.base.__name__} subclass: {target!r}")  # type: ignore[union-attr]
        entry = entries[name]  # the import may have registered the object itself, by decorator
        entry.target = target
        entry.description = entry.description or _first_line(target.__doc__)
        return target

    def describe(self, name: str) -> str:
        """The one-line description of ``name`` (loading a lazy entry to read its docstring)."""
        self.get(name)
        return (self._entries.get(name) or self._imported[name]).description

    def names(self) -> list[str]:
        self._discovered()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discovered()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _fits(self, obj: object) -> bool:
        if self.base is None:
            return True
        return (isinstance(obj, type) and issubclass(obj, self.base)) or isinstance(obj, self.base)

    def _check_base(self, name: str, obj: object) -> None:
        if not self._fits(obj):
            raise TypeError(f"{self.kind} {name!r} must be a {self.base.__name__}, got {obj!r}")  # type: ignore[union-attr]


def _path(obj: object) -> str:
    """``"module:qualname"`` of a class or function, as a lazy entry names it."""
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
