"""Per-topic message accounting: what arrived, what was written, and what was lost where.

Three independent loss sources, kept apart so an operator can tell them apart:

* ``lost_middleware``: the rmw *message lost* event (the DDS reader knows it missed samples);
* ``lost_gaps``: holes in a periodic stream's header stamps (see :meth:`TopicStats.period`):
  a jump of k periods counts k - 1 lost messages;
* ``lost_queue``: our own bounded queue overflowed (the writer thread could not keep up).

``lost`` = max(middleware, gaps) + queue, because the first two usually see the same loss.
A periodic stream whose publisher is still there when the bag closes, but whose newest samples
never reached the recorder, has a hole at its end: :meth:`TopicStats.due_before` counts it and the
recorder adds it to ``lost_gaps`` (a tail loss would otherwise be invisible).
Messages received while paused or after the disk guard stopped the bag are counted apart
(``skipped_paused``, ``skipped_stopped``): not written on purpose, not lost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

_WINDOW = 16
_TOLERANCE = 0.005  # of a period: see TopicStats.period
#: Stamps older than this at the stop are not on the recorder's clock (a replayed bag, sim time):
#: nothing is "due" from such a stream.
CLOCK_HORIZON_NS = 60_000_000_000


@dataclass
class TopicStats:
    type: str = ''
    received: int = 0
    written: int = 0
    lost_middleware: int = 0
    lost_gaps: int = 0
    lost_queue: int = 0
    skipped_paused: int = 0
    skipped_stopped: int = 0
    _last_stamp: int = field(default=0, repr=False)
    _intervals: list[int] = field(default_factory=list, repr=False)
    _period: int = field(default=0, repr=False)      # cached: recomputed every _WINDOW samples
    _samples: int = field(default=0, repr=False)

    @property
    def lost(self) -> int:
        return max(self.lost_middleware, self.lost_gaps) + self.lost_queue

    def observe_stamp(self, stamp: int) -> None:
        """Feed the header stamps of consecutive messages (writer thread, in arrival order)."""
        last, self._last_stamp = self._last_stamp, stamp
        if last == 0 or stamp <= last:
            return
        dt = stamp - last
        period = self._period
        if period and dt > 1.5 * period:
            k = round(dt / period)
            if abs(dt - k * period) <= _TOLERANCE * period:   # whole samples of the clock missing
                self.lost_gaps += k - 1
            return                       # a gap is not a sample of the period; a late timer is none
        intervals = self._intervals
        intervals.append(dt)
        if len(intervals) > _WINDOW:
            del intervals[0]
        self._samples += 1
        if self._samples % (_WINDOW // 2) == 0 or not period:
            self._period = self.period()

    @property
    def last_stamp(self) -> int:
        """Header stamp of the newest message the writer thread has seen (0: none yet)."""
        return self._last_stamp

    def due_before(self, stop_ns: int) -> int:
        """Samples of this periodic stream stamped in (newest seen, ``stop_ns``] not seen yet.

        0 for an aperiodic stream, one that has caught up, and one whose stamps are not on the
        recorder's clock (older than :data:`CLOCK_HORIZON_NS` at ``stop_ns``, or newer than it).
        The recorder drains until this is 0 for every live stream before it closes the bag.
        """
        last, period = self._last_stamp, self._period
        if not period or not last or not 0 <= stop_ns - last <= CLOCK_HORIZON_NS:
            return 0
        return (stop_ns - last) // period

    def forget_stamps(self) -> None:
        """Start the gap detection afresh (after a pause: the hole there is not a loss)."""
        self._last_stamp = 0
        self._intervals.clear()
        self._period = 0

    def period(self) -> int:
        """The stream's period in ns if it is periodic, else 0.

        Periodic: at least half of the recent intervals are one period and every other one is a
        whole number of periods, each within 0.5 % - so a stream that is already losing messages is
        still recognised, while a stream of irregular intervals is not. 0.5 %, not more: only stamps
        that are sample times of a fixed clock (a driver's, the sim's) say "a sample is missing".
        A control loop stamping its commands with its wake-up time jitters by 5-15 % at 500 Hz and
        skips a tick when it overruns - a tick never published, not a message lost - and a topic
        with several publishers (``/diagnostics``) interleaves their clocks; for those, losses are
        counted by the queue and the middleware, not guessed from stamps.
        """
        if len(self._intervals) < _WINDOW // 2:
            return 0
        ordered = sorted(self._intervals)
        base = ordered[0]
        if base <= 0:
            return 0
        singles = [x for x in ordered if x <= (1 + _TOLERANCE) * base]
        if 2 * len(singles) < len(ordered):
            return 0
        period = singles[len(singles) // 2]
        for x in ordered:
            k = round(x / period)
            if k < 1 or abs(x - k * period) > _TOLERANCE * period:
                return 0
        return period

    def as_dict(self) -> dict[str, int | str]:
        out = {k: v for k, v in asdict(self).items() if not k.startswith('_')}
        out['lost'] = self.lost
        return out


class Accounting:
    """The recorder's per-topic ledger. Counters are plain ints: each has a single writer thread."""

    def __init__(self) -> None:
        self.topics: dict[str, TopicStats] = {}

    def topic(self, name: str, type_name: str = '') -> TopicStats:
        stats = self.topics.get(name)
        if stats is None:
            stats = self.topics[name] = TopicStats(type=type_name)
        return stats

    def totals(self) -> dict[str, int]:
        keys = ('received', 'written', 'lost', 'lost_middleware', 'lost_gaps', 'lost_queue',
                'skipped_paused', 'skipped_stopped')
        return {k: sum(getattr(s, k) for s in self.topics.values()) for k in keys}

    def as_dict(self) -> dict[str, dict[str, int | str]]:
        """``{topic: {type, received, written, lost, lost_middleware, lost_gaps, lost_queue, …}}``."""
        return {name: s.as_dict() for name, s in sorted(self.topics.items())}

    def custom_data(self) -> dict[str, str]:
        """Entries for metadata.yaml ``custom_data`` (string values, as rosbag2 requires)."""
        import json
        return {'data_recorder.accounting': json.dumps(self.as_dict(), sort_keys=True),
                'data_recorder.totals': json.dumps(self.totals(), sort_keys=True)}
