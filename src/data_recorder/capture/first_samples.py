"""What a keep-last reader history dropped before a writer's first sample was taken.

Sequence numbers show every hole after the first sample the recorder takes from a writer
(:mod:`field_deploy.sequence`), not the numbers before it: a writer first seen at number 969 may
have sent 1-968 before it matched this reader (not ours to record) or into a history that
overflowed before the first take (lost, and until now unreported: the bench at 3.5x, 2026-12-03,
missed the first 968 of ``/imu`` after a slow start and reported 968 fewer than were missing).
rmw_fastrtps gives no reception sequence number (it says "unsupported"), so the history's own
drops cannot be read; this module bounds them instead.

A *stretch* is the time between two takes that found the history empty. A keep-last history of
depth D drops a sample only when one arrives while it holds D, and all D must then be taken
before it is empty again: **a stretch in which fewer than D samples were taken dropped nothing**
(exact). So a writer whose first number N > 1 came in such a stretch had sent 1..N-1 before it
matched: nothing is counted. In a stretch of D or more, its numbers sent since the stretch began
may have been dropped: counted ``(t_N - t_stretch) / period``, the period from its own source
timestamps once a second sample came, and N - 1 when that is at least :data:`STARTED_IN` of
N - 1 (a writer that started after the stretch began, the recorder's own start included, at a
rate that varies a little). What stays out: a writer with a single
sample in such a stretch and none after it (no period: :attr:`FirstSamples.unresolved`); samples
a writer sent in the first moments of a stretch, before it matched, are counted with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A writer whose numbers sent since the stretch began, estimated from its period, are at least
#: this share of N - 1 is taken to have started in the stretch: all N - 1 are counted.
STARTED_IN = 0.75


@dataclass
class _Start:
    """A writer first seen at ``first`` (> 1), while it is not yet known what its stretch lost."""

    first: int
    first_ns: int
    latest: int
    latest_ns: int
    stretch_ns: int
    """When the stretch it came in began (the history last seen empty)."""
    overflowed: bool = False
    """Its stretch ended with depth or more samples taken: its start may have been dropped."""


class FirstSamples:
    """The numbers one subscription's keep-last history may have dropped before each writer's
    first sample. Fed by the thread that takes (one per subscription, no lock)."""

    def __init__(self, depth: int, now_ns: int) -> None:
        self.depth = depth
        """The history's keep-last depth; 0 (keep all) drops nothing and counts nothing."""
        self.lost = 0
        """Numbers counted lost before writers' first samples, in all."""
        self._taken = 0
        self._stretch_ns = now_ns
        self.open: dict[bytes, _Start] = {}
        """Writers whose start is not settled yet: :meth:`follow` wants their later samples (a
        dict the drain tests for emptiness per sample, no call)."""

    def first(self, gid: bytes, seq: int, source_ns: int) -> None:
        """A writer's first sample (its gid new to this subscription) numbered ``seq``."""
        if self.depth and seq > 1 and source_ns > 0:
            self.open[gid] = _Start(seq, source_ns, seq, source_ns, self._stretch_ns)

    def follow(self, gid: bytes, seq: int, source_ns: int) -> None:
        """A later sample (not a first one): its writer's period, if its start is open."""
        start = self.open.get(gid)
        if start is not None and seq > start.latest:
            start.latest, start.latest_ns = seq, source_ns

    def taken(self, count: int) -> None:
        """``count`` more samples taken in this stretch (once per drain, not per sample)."""
        self._taken += count

    def emptied(self, now_ns: int) -> int:
        """A take found the history empty: the stretch ends. Returns the numbers counted lost
        now (also added to :attr:`lost`)."""
        overflowed = self.depth > 0 and self._taken >= self.depth
        self._taken, self._stretch_ns = 0, now_ns
        if not self.open:
            return 0
        lost = 0
        for gid, start in list(self.open.items()):
            if not start.overflowed:             # its stretch is the one ending now
                if not overflowed:
                    del self.open[gid]        # nothing dropped: 1..N-1 were never ours
                    continue
                start.overflowed = True
            if start.latest > start.first and start.latest_ns > start.first_ns:
                period = (start.latest_ns - start.first_ns) / (start.latest - start.first)
                sent = max(0, start.first_ns - start.stretch_ns) / period
                # a writer that started within the stretch sent all of 1..N-1 in it; its rate
                # varies a little (a sleep-paced loop: 79 of 80 estimated), so most is all
                lost += start.first - 1 if sent >= STARTED_IN * (start.first - 1) else int(sent)
                del self.open[gid]
        self.lost += lost
        return lost

    @property
    def unresolved(self) -> int:
        """Writers first seen in an overflowing stretch with no second sample yet."""
        return sum(1 for s in self.open.values() if s.overflowed)
