"""Per-topic message accounting: what arrived, what was written, what was lost, and why not.

Lost (never reached the recorder, or dropped by it against its will), one source counted once:

* ``lost_sequence``: holes in the DDS publication sequence numbers, per writer
  (:mod:`field_deploy.sequence`): exact for every stream, periodic or not;
* ``lost_tail``: samples of a periodic stream stamped before the stop that never arrived (a
  hole at the end has no later number to reveal it: :meth:`TopicStats.due_before`);
* ``lost_queue``: received, but our bounded hand-off queue was full (the writer thread lagged);
* ``lost_start``: numbers before a writer's first sample that the reader history dropped before
  it was first taken (topics taken with the writer's gid: :mod:`data_recorder.capture.first_samples`).

``lost = lost_sequence + lost_start + lost_tail + lost_queue``. Second opinions, reported and never added:
``lost_gaps`` (holes in a periodic stream's header stamps, :meth:`TopicStats.period`) and
``lost_middleware`` (the rmw message-lost event, opt-in). Only when the rmw gives no sequence
numbers does ``lost`` fall back to ``max(lost_middleware, lost_gaps)`` in place of the sequence.

``silent_tail``: samples a periodic stream with a live publisher owed before the stop, from a
stream that had delivered nothing for longer than a repair takes - a sensor that stopped owes
nothing, a stream starved past repair lost them: reported apart, not in ``lost``.

Received but not written, each under its own name (``not_written`` is their sum): ``lost_queue``
(above), ``skipped_paused`` (paused), ``skipped_stopped`` (after the disk guard or a write error
stopped the bag), ``skipped_snapshot`` (snapshot mode: left the ring buffer without a snapshot,
or still in it at the close), ``skipped_throttled`` (``--throttle``: over the topic's rate cap, by
choice — never counted lost). So "0 lost" never hides messages that were not written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from field_deploy.sequence import GidTracker, NamedWriters, SequenceTracker

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
    lost_tail: int = 0
    lost_start: int = 0
    """Dropped by the history before a writer's first sample was taken (counted by the take)."""
    silent_tail: int = 0
    lost_queue: int = 0
    skipped_paused: int = 0
    skipped_stopped: int = 0
    skipped_snapshot: int = 0
    skipped_throttled: int = 0
    throttle_ns: int = 0
    """Throttled topic: at least this long between two kept messages (0: every message)."""
    _kept_ns: int = field(default=-(1 << 62), repr=False)
    seq: SequenceTracker | NamedWriters | GidTracker = field(default_factory=SequenceTracker, repr=False)
    """Runs of the topic's writers; per named writer for a type that names it."""
    _last_stamp: int = field(default=0, repr=False)
    _intervals: list[int] = field(default_factory=list, repr=False)
    _period: int = field(default=0, repr=False)      # cached: recomputed every _WINDOW samples
    _samples: int = field(default=0, repr=False)

    @property
    def sequenced(self) -> bool:
        """Samples came with DDS sequence numbers, all of them (the loss count is exact). Fed
        without them (an rmw that has none, a tool calling :meth:`Recorder.on_message`), the
        stamps and the middleware event count instead."""
        return self.seq.unsequenced == 0 and self.seq.new_writers > 0

    @property
    def lost_sequence(self) -> int:
        return self.seq.lost

    @property
    def lost(self) -> int:
        transport = (self.seq.lost + self.lost_start if self.sequenced
                     else max(self.lost_middleware, self.lost_gaps))
        return transport + self.lost_tail + self.lost_queue

    @property
    def not_written(self) -> int:
        """Received and not written, whatever the cause (each one is counted under its name)."""
        return (self.lost_queue + self.skipped_paused + self.skipped_stopped + self.skipped_snapshot
                + self.skipped_throttled)

    def keep_throttled(self, now_ns: int) -> bool:
        """Whether a message of a throttled topic received at ``now_ns`` is kept (at most one per
        :attr:`throttle_ns`; the budget does not pile up while a stream is quiet)."""
        if now_ns - self._kept_ns < self.throttle_ns:
            return False
        self._kept_ns = now_ns
        return True

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

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in COUNTERS}
        out['type'] = self.type
        out['sequenced'] = self.sequenced
        out['writers'] = self.seq.per_writer()
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
        return {k: sum(getattr(s, k) for s in self.topics.values()) for k in COUNTERS}

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{topic: {type, received, written, lost, lost_sequence, …, not_written, writers}}``."""
        return {name: s.as_dict() for name, s in sorted(self.topics.items())}

    def custom_data(self) -> dict[str, str]:
        """Entries for metadata.yaml ``custom_data`` (string values, as rosbag2 requires)."""
        return {'data_recorder.accounting': json.dumps(self.as_dict(), sort_keys=True),
                'data_recorder.totals': json.dumps(self.totals(), sort_keys=True),
                'data_recorder.loss_summary': summary_line(self.totals())}


#: The per-topic counters (ints) reported everywhere: metadata.yaml, /diagnostics, the close line.
COUNTERS = ('received', 'written', 'lost', 'lost_sequence', 'lost_start', 'lost_tail', 'lost_queue',
            'lost_gaps', 'lost_middleware', 'silent_tail', 'not_written', 'skipped_paused',
            'skipped_stopped', 'skipped_snapshot', 'skipped_throttled')
#: Why a received message was not written: counter -> the words an operator reads.
NOT_WRITTEN_CAUSES = {'lost_queue': 'queue overflow', 'skipped_paused': 'paused',
                      'skipped_stopped': 'recording stopped (disk guard / write error)',
                      'skipped_snapshot': 'snapshot mode, not in a snapshot',
                      'skipped_throttled': 'throttled'}
#: Where a lost message went: counter -> words.
LOST_CAUSES = {'lost_sequence': 'DDS sequence gaps',
               'lost_start': "dropped before a writer's first sample was taken",
               'lost_tail': 'stream tail not received',
               'lost_queue': 'queue overflow'}


def topic_line(counts: dict[str, Any]) -> str:
    """One topic's counters as a ``/diagnostics`` value: ``received=… written=… lost=… (…)``."""
    return ' '.join(f'{k}={counts[k]}' for k in COUNTERS) + f' writers={len(counts["writers"])}'


def _causes(totals: dict[str, int], names: dict[str, str]) -> str:
    parts = [f'{words} {totals[key]}' for key, words in names.items() if totals.get(key)]
    return f' ({", ".join(parts)})' if parts else ''


def summary_line(totals: dict[str, int]) -> str:
    """The one line an operator reads: every message received is written, not written (and why),
    or counted lost (and where) - never "0 lost" when messages were not written."""
    line = f'{totals["received"]} messages received, {totals["written"]} written'
    if totals['not_written']:
        line += (f', {totals["not_written"]} NOT written'
                 + _causes(totals, NOT_WRITTEN_CAUSES))
    line += f', {totals["lost"]} lost' + _causes(totals, LOST_CAUSES)
    if totals.get('silent_tail'):
        line += (f'; {totals["silent_tail"]} more were due before the stop from streams silent '
                 'at it (a stopped sensor, or lost)')
    return line
