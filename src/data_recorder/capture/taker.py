"""Take the recorded topics' samples in batches, one pass per timer tick, instead of one executor
event per sample.

Why: on the EventsExecutor every sample is one asio event: the DDS thread posts it, the executor
thread takes the GIL to run it (``HandleSubscriptionReady``: take + our callback) and takes it
again when ``spin_once`` returns to Python - two GIL acquisitions per message. With the
recorder's writer thread running Python beside it, each acquisition waits until the writer gives
the GIL up (up to the 5 ms switch interval). Measured (``bench/recorder/take_cost.py --busy``,
a Python thread spinning beside): 91-152 µs of wall time per message on the executor against
17 µs taken in batches - at 3x the reference load (14,100 msg/s, 71 µs each) the executor fell
behind the DDS reader histories (keep-last 1000: 0.33 s of a 3 kHz stream) and the one-process
recorder lost 2.6-12.9 % as sequence holes while a no-op subscriber lost 0.002 %
(docs/data_recorder.md, "Headroom"). Without contention too a batch costs half: 3.0 µs of CPU
per message against 6.6-7.0 µs.

A pass (:meth:`Taker.take`) holds the GIL once and takes what every subscription's history
holds, at most :data:`BATCH` per subscription and turn so a busy stream does not starve the
others. The node runs it on a timer whose period (:attr:`Taker.interval`) follows the fill of
the fullest history: halved when a pass found one more than 1/8 full, doubled when all were
under 1/32, between :data:`MIN_INTERVAL` and :data:`MAX_INTERVAL`. Idle, a recorder wakes 20
times a second (``bag record`` of 12 topics at 1 Hz: 1.40 % of a core, 1.26 % on the executor;
a fixed 5 ms tick cost 3.80 %); at 3x the reference load a 3 kHz stream with keep-last 1000 is
taken every 25 ms, ~75 samples at a time, so a pass can be late by 0.3 s before anything is
lost. The subscriptions belong to a node that no executor spins, so no DDS listener callback is
installed and nothing is posted per sample. Each subscription has a *drain*: the recorder's
take every sample with its writer gid (:func:`data_recorder.capture.subscriptions.writer_drain`);
:func:`message_drain` takes with rclpy's ``take_message`` and hands its callback the
``(bytes, info)`` tuple the EventsExecutor would pass (topics counted by writer name, the
benches).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: Samples taken from one subscription before the next one's turn.
BATCH = 256
#: Seconds between passes (the node's take timer): where it starts, and its bounds.
INTERVAL = 0.005
MIN_INTERVAL = 0.002
MAX_INTERVAL = 0.05
#: The interval halves when a pass finds a history fuller than this, doubles under LOW_FILL.
HIGH_FILL = 1 / 8
LOW_FILL = 1 / 32
#: A pass that found more than a batch somewhere goes on (it is behind) for at most this long,
#: then lets the executor run its other work.
CATCH_UP_S = 0.05


Drain = Callable[[int], int]
"""Takes at most ``n`` samples waiting in one subscription, hands each on, returns how many."""


class Taker:
    """The recorded subscriptions' drains; :meth:`take` runs them.

    :meth:`add` / :meth:`remove` and :meth:`take` may run on different threads (a lock)."""

    def __init__(self) -> None:
        self.passes = 0
        self.taken = 0
        self.interval = INTERVAL
        """Seconds to the next pass (see the module docstring); the caller's timer follows it."""
        self._drains: list[tuple[object, Drain, int]] = []
        self._lock = threading.Lock()

    def add(self, key: object, drain: Drain, depth: int = 0) -> None:
        """Run ``drain`` in every pass from now on (``key``: what :meth:`remove` names, the
        subscription). ``depth``: its keep-last history depth (0: keep all, never full).
        The next pass comes after :data:`MIN_INTERVAL`: the new stream's rate is unknown, and
        from an idle interval (50 ms) a 900 msg/s topic with keep-last 20 would overflow before
        its first pass - its first samples lost where no sequence number shows them."""
        with self._lock:
            self._drains.append((key, drain, depth))
            self.interval = MIN_INTERVAL

    def remove(self, key: object) -> None:
        """Stop taking ``key``; returns after a pass that was taking it (so the caller may
        destroy the subscription)."""
        with self._lock:
            self._drains = [entry for entry in self._drains if entry[0] is not key]

    def __len__(self) -> int:
        return len(self._drains)

    def take(self) -> int:
        """Take what every subscription holds: passes of at most :data:`BATCH` per subscription,
        again while one had more, for at most :data:`CATCH_UP_S`; then set :attr:`interval`
        from the fullest history (what this call took of it, over its depth). Still behind when
        the time is up: the next call comes after :data:`MIN_INTERVAL` (a starved recorder must
        not wait a whole interval between its catch-up slices). Returns the number taken."""
        total = 0
        counts: dict[int, tuple[int, int]] = {}       # id(key) -> (taken, depth)
        started = time.monotonic()
        while True:
            taken, more = self._pass(counts)
            total += taken
            if not more:
                break
            if time.monotonic() - started >= CATCH_UP_S:
                self.interval = MIN_INTERVAL
                return total
        fill = max((n / depth for n, depth in counts.values() if depth), default=0.0)
        if fill > HIGH_FILL:
            self.interval = max(MIN_INTERVAL, self.interval / 2)
        elif fill < LOW_FILL:
            self.interval = min(MAX_INTERVAL, self.interval * 2)
        return total

    def take_pass(self) -> tuple[int, bool]:
        """One pass; returns the number taken and whether some subscription had more."""
        return self._pass({})

    def _pass(self, counts: dict[int, tuple[int, int]]) -> tuple[int, bool]:
        taken, more = 0, False
        with self._lock:
            for key, drain, depth in self._drains:
                n = drain(BATCH)
                if n:
                    taken += n
                    more = more or n == BATCH
                    k = id(key)
                    counts[k] = (counts.get(k, (0, depth))[0] + n, depth)
            self.passes += 1
            self.taken += taken
        return taken, more


def message_drain(subscription: Any, callback: Callable[[Any], None]) -> Drain:
    """The drain of an rclpy subscription: ``callback`` gets each ``(data, info)`` as rclpy's
    ``take_message`` returns it (the EventsExecutor's one-tuple form)."""
    handle = subscription.handle
    take, msg_type, raw = handle.take_message, subscription.msg_type, subscription.raw

    def drain(limit: int) -> int:
        n = 0
        with handle:
            while n < limit:
                sample = take(msg_type, raw)
                if sample is None:
                    break
                callback(sample)
                n += 1
        return n
    return drain
