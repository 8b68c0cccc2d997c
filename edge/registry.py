"""One generic registry, used for models, targets, precisions, quantizers and stages: duplicates
raise, lookups of unknown names raise a UserError that lists the known ones. A registry may fill
itself on first use (`populate`): the model registry imports its model files (and torch) only
when a model is asked for, so listing commands stay fast."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from edge.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, flag: str, populate: Callable[[], None] | None = None):
        self.kind = kind  # "model", "target"
        self.flag = flag  # the CLI flag that takes these names, for error messages
        self._items: dict[str, T] = {}
        self._populate = populate

    def _ensure(self) -> None:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate()

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        def deco(item: T) -> T:
            return self.add(name, item)
        return deco

    def get(self, name: str) -> T:
        self._ensure()
        try:
            return self._items[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())} "
                            f"(see {self.flag})") from None

    def names(self) -> list[str]:
        self._ensure()
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        self._ensure()
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        self._ensure()
        return iter(list(self._items.values()))

    def items(self):
        self._ensure()
        return self._items.items()
