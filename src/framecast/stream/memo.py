"""`BoundedCache`: the one memo cache of the streaming core. Values computed once per key and kept, up to a
size; past it the oldest entry goes. Pass tables, schedules, masks, rotation angles, gather indices and
prompt conditions all live in one of these, never in a hand-rolled dict."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A dict of at most `size` entries that forgets its oldest (least recently added or used) first."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a cache needs room for one entry, got size {size}")
        self.size = size
        self._items: dict[K, V] = {}

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The value under `key`, made by `make()` (and kept) the first time."""
        items = self._items
        value = items.get(key, _MISSING)
        if value is _MISSING:
            value = items[key] = make()
            if len(items) > self.size:
                del items[next(iter(items))]
        return value  # type: ignore[return-value]

    def touch(self, key: K, make: Callable[[], V]) -> V:
        """As `get`, and `key` becomes the most recent entry (least-recently-used order)."""
        items = self._items
        value = items.pop(key, _MISSING)
        if value is _MISSING:
            value = make()
        items[key] = value  # type: ignore[assignment]
        if len(items) > self.size:
            del items[next(iter(items))]
        return value  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def clear(self) -> None:
        self._items.clear()


_MISSING = object()
