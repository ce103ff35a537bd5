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
others. The node runs it on a timer of :data:`INTERVAL` (the histories hold hundreds of ms): the
later the tick, the larger the batch, so the cost per message falls as the load rises. The
subscriptions belong to a node that no executor spins, so no DDS listener callback is installed
and nothing is posted per sample. Each callback gets the ``(bytes, info)`` tuple the
EventsExecutor would pass: the accounting is the same code
(:func:`data_recorder.capture.subscriptions.sequenced_callback`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: Samples taken from one subscription before the next one's turn.
BATCH = 256
#: Seconds between passes (the node's take timer). Idle cost: one failed take per topic per
#: pass (~1.5 µs each: 12 topics cost 0.4 % of a core); at 3x the reference load a pass takes
#: ~70 samples.
INTERVAL = 0.005
#: A pass that found more than a batch somewhere goes on (it is behind) for at most this long,
#: then lets the executor run its other work.
CATCH_UP_S = 0.05


class Taker:
    """The recorded subscriptions and their callbacks; :meth:`take` takes what they hold.

    :meth:`add` / :meth:`remove` and :meth:`take` may run on different threads (a lock)."""

    def __init__(self) -> None:
        self.passes = 0
        self.taken = 0
        self._subs: list[tuple[Any, Callable[[Any], None]]] = []
        self._lock = threading.Lock()

    def add(self, subscription: Any, callback: Callable[[Any], None]) -> None:
        """Take ``subscription``'s samples from now on; ``callback`` gets each ``(data, info)``."""
        with self._lock:
            self._subs.append((subscription, callback))

    def remove(self, subscription: Any) -> None:
        """Stop taking ``subscription``; returns after a pass that was taking it (so the caller
        may destroy it)."""
        with self._lock:
            self._subs = [(s, c) for s, c in self._subs if s is not subscription]

    def __len__(self) -> int:
        return len(self._subs)

    def take(self) -> int:
        """Take what every subscription holds: passes of at most :data:`BATCH` per subscription,
        again while one had more, for at most :data:`CATCH_UP_S`. Returns the number taken."""
        total = 0
        started = time.monotonic()
        while True:
            taken, more = self.take_pass()
            total += taken
            if not more or time.monotonic() - started >= CATCH_UP_S:
                return total

    def take_pass(self) -> tuple[int, bool]:
        """One pass; returns the number taken and whether some subscription had more."""
        taken, more = 0, False
        with self._lock:
            for sub, callback in self._subs:
                handle = sub.handle
                take, msg_type, raw = handle.take_message, sub.msg_type, sub.raw
                n = 0
                with handle:
                    while n < BATCH:
                        sample = take(msg_type, raw)
                        if sample is None:
                            break
                        callback(sample)
                        n += 1
                taken += n
                more = more or n == BATCH
            self.passes += 1
            self.taken += taken
        return taken, more
