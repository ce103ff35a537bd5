"""Frames at a fixed rate from streams of stamped samples: zero-order hold by sample stamp.

A training frame at time ``t`` must hold what the robot knew at ``t``: for every stream, the latest
sample whose *sample stamp* (``header.stamp``, when the sensor measured it) is at or before ``t``.
Never a later sample (no look-ahead), never an interpolation (nothing invented).

Samples come in the bag's log-time order (when the recorder received them), which is not the stamp
order across streams: a camera frame stamped at ``t`` may be logged 50 ms after a joint sample
stamped at ``t + 40 ms``, and a recorder that fell behind logs seconds after the stamps. So a frame
is *decided* only when, for every stream, a sample stamped after ``t`` has been seen (a stream's own
samples come in stamp order, so nothing at or before ``t`` is still to come from it), or the stream
has gone quiet (nothing from it for ``quiet_ns`` of log time, and the log is ``quiet_ns`` past
``t``), or it never came and the log is ``max_delay_ns`` past ``t``. A stream that lags but keeps
arriving is waited for however far behind it is: memory holds the samples ahead of the pending
frame, i.e. the recorder's lag, not the bag.
Pure: no ROS, no I/O; payloads are opaque (raw CDR bytes in the exporter).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

NS = 1_000_000_000


@dataclass(order=True)
class Sample:
    stamp_ns: int
    seq: int                                   # arrival order: ties keep the later arrival
    payload: Any = field(compare=False)


@dataclass
class Frame:
    """One decided frame: its index on the grid, its time, each stream's held sample (or None)."""

    index: int
    time_ns: int
    samples: dict[Hashable, Sample | None]


class _Hold:
    """One stream: the latest sample at or before the pending frame time, and the samples after."""

    __slots__ = ('ahead', 'latest')

    def __init__(self) -> None:
        self.latest: Sample | None = None
        self.ahead: list[Sample] = []          # stamp-ordered

    def push(self, sample: Sample, frame_ns: int) -> None:
        if sample.stamp_ns <= frame_ns:
            if self.latest is None or sample >= self.latest:
                self.latest = sample
        elif not self.ahead or sample >= self.ahead[-1]:
            self.ahead.append(sample)
        else:                                  # a sample out of stamp order: rare, keep order
            bisect.insort(self.ahead, sample)

    def advance(self, frame_ns: int) -> None:
        ahead = self.ahead
        i = 0
        while i < len(ahead) and ahead[i].stamp_ns <= frame_ns:
            i += 1
        if i:
            self.latest = ahead[i - 1]
            del ahead[:i]


class FrameSampler:
    """Zero-order hold of several streams onto the grid ``start_ns + k / fps`` up to ``end_ns``.

    Feed samples with :meth:`push` in log-time order; it returns the frames that became decided.
    :meth:`finish` decides the rest (end of the messages).
    """

    def __init__(self, streams: Iterable[Hashable], start_ns: int, end_ns: int, fps: int,
                 max_delay_ns: int = 10 * NS, quiet_ns: int = 2 * NS) -> None:
        if fps <= 0:
            raise ValueError(f'fps must be a positive integer, got {fps}')
        self.start_ns, self.end_ns, self.fps = start_ns, end_ns, fps
        self.max_delay_ns, self.quiet_ns = max_delay_ns, quiet_ns
        self._holds = {s: _Hold() for s in streams}
        self._arrived: dict[Hashable, int] = {}          # stream -> log time of its last sample
        self._k = 0
        self._seq = 0

    def time_of(self, k: int) -> int:
        return self.start_ns + k * NS // self.fps

    @property
    def frame_count(self) -> int:
        """Frames on the grid within ``[start_ns, end_ns]``."""
        return (self.end_ns - self.start_ns) * self.fps // NS + 1 if self.end_ns >= self.start_ns else 0

    @property
    def done(self) -> bool:
        return self._k >= self.frame_count

    def push(self, stream: Hashable, stamp_ns: int, payload: Any, log_ns: int) -> list[Frame]:
        self._seq += 1
        self._arrived[stream] = log_ns
        hold = self._holds[stream]
        if not self.done:
            hold.push(Sample(stamp_ns, self._seq, payload), self.time_of(self._k))
        return self._decide(log_ns)

    def finish(self) -> list[Frame]:
        return self._decide(None)

    def _resolved(self, stream: Hashable, hold: _Hold, t: int, log_ns: int | None) -> bool:
        """Nothing stamped at or before ``t`` is still to come from ``stream``."""
        if log_ns is None or hold.ahead:
            return True
        arrived = self._arrived.get(stream)
        if arrived is None:
            return log_ns >= t + self.max_delay_ns
        return log_ns >= t + self.quiet_ns and log_ns - arrived >= self.quiet_ns

    def _decide(self, log_ns: int | None) -> list[Frame]:
        out: list[Frame] = []
        holds = self._holds
        while not self.done:
            t = self.time_of(self._k)
            if not all(self._resolved(s, h, t, log_ns) for s, h in holds.items()):
                break
            out.append(Frame(self._k, t, {s: h.latest for s, h in holds.items()}))
            self._k += 1
            if not self.done:
                t_next = self.time_of(self._k)
                for h in holds.values():
                    h.advance(t_next)
        return out
