"""Bounded in-memory histories: what a long-running node may keep per event (issue 19).

A node that runs a whole shift must not keep one entry per message or per event for ever: a
list that grows by a few hundred bytes an event is a leak at 100 events a minute. Every such
history in the stack is a :class:`History`: it keeps the newest ``maxlen`` entries (the ones an
operator's status or a test looks at) and counts all of them, so a total ("fired 1234 times")
stays exact after the oldest entries are dropped. What is worth keeping longer goes to a file
(the recorder's bag, the health monitor's ledger and log), never to the heap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar('T')


class History(Generic[T]):
    """The newest ``maxlen`` entries appended, oldest first, plus :attr:`total` ever appended."""

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f'a history keeps at least one entry (maxlen={maxlen})')
        self._items: deque[T] = deque(maxlen=maxlen)
        self.total = 0

    @property
    def maxlen(self) -> int:
        return self._items.maxlen or 0

    def append(self, item: T) -> None:
        self._items.append(item)
        self.total += 1

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __getitem__(self, index: int) -> T:
        return self._items[index]

    def __repr__(self) -> str:
        return f'History({list(self._items)!r}, total={self.total}, maxlen={self.maxlen})'
