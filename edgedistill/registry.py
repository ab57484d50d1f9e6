"""One registry implementation for tasks, pipeline stages, losses, models and datasets (timm-style).

A leaf: it imports nothing of the package but its errors, so every module can register into it."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories; built-in entries register exactly like users' own."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}
        self._meta: dict[str, dict] = {}

    def register(self, name: str, help: str = "", **meta) -> Callable[[T], T]:
        """A decorator registering ``name``; ``meta`` is what else the entry declares (a student family's search
        ``space``), read back with :meth:`meta`."""
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            self._meta[name] = dict(meta)
            doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()[:1]
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return obj

        return deco

    def get(self, name: str, key: str | None = None) -> T:
        if name not in self._items:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}."
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[T]:
        """The entries in the order they were registered (the pipeline's stages run in that order)."""
        return list(self._items.values())

    def describe(self, name: str) -> str:
        return self._help.get(name, "")

    def meta(self, name: str) -> dict:
        """What ``name`` declared at registration besides its help (empty when nothing)."""
        return self._meta.get(name, {})

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
