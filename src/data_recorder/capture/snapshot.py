"""Snapshot ring buffer: the last N seconds / N bytes of every recorded topic, kept in memory.

The black box of a fault: in snapshot mode nothing reaches the disk until ``~/snapshot`` is
called, then the buffer's content is written as one bag file. Pure core (no rclpy).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator


class SnapshotBuffer:
    """Bounded by age (``max_duration`` seconds of receive time) and by ``max_bytes`` (0: no limit).

    Entries are ``(topic, data, log_time_ns)`` in arrival order; the oldest go first.
    """

    def __init__(self, max_duration: float = 30.0, max_bytes: int = 0) -> None:
        if max_duration <= 0 and max_bytes <= 0:
            raise ValueError('snapshot buffer needs snapshot_duration > 0 or snapshot_max_bytes > 0')
        if max_duration < 0 or max_bytes < 0:
            raise ValueError('snapshot_duration / snapshot_max_bytes must be >= 0')
        self.max_duration_ns = int(max_duration * 1e9)
        self.max_bytes = max_bytes
        self._items: deque[tuple[str, bytes, int]] = deque()
        self.bytes = 0
        self.evicted = 0

    def add(self, topic: str, data: bytes, log_time: int) -> list[str]:
        """Buffer one message; returns the topics of the oldest ones it pushed out (never
        written: the recorder counts them ``skipped_snapshot``)."""
        self._items.append((topic, data, log_time))
        self.bytes += len(data)
        items = self._items
        evicted: list[str] = []
        while items and (
                (self.max_bytes and self.bytes > self.max_bytes) or
                (self.max_duration_ns and log_time - items[0][2] >= self.max_duration_ns)):
            old_topic, old, _ = items.popleft()
            self.bytes -= len(old)
            self.evicted += 1
            evicted.append(old_topic)
        return evicted

    def __len__(self) -> int:
        return len(self._items)

    def drain(self) -> Iterator[tuple[str, bytes, int]]:
        """Yield and remove everything buffered, oldest first."""
        items = self._items
        while items:
            topic, data, t = items.popleft()
            self.bytes -= len(data)
            yield topic, data, t
