"""DDS writers told apart by their publication sequence numbers (pure core, no rclpy).

Every sample a DDS DataWriter sends carries its sequence number: 1, 2, 3, … per writer, one per
``publish`` (rmw message info ``publication_sequence_number``). A sample the reader never got
leaves a hole in that sequence, whatever the stream's timing: periodic or not, stamped or not,
reliable (the writer's history dropped it before it was repaired: a DDS GAP) or best effort. So
``seq - previous - 1`` samples of that writer are missing, exactly.

Two readers of the project need it, for two meanings of a hole: the recorder
(``data_recorder.capture``), for which a hole is *lost*, and the health monitor
(``health_monitor.topics``), whose depth-1 readers take only the newest sample at each check: for
it a hole is *published, not taken*, and a run's numbers are the publications of one writer
(its rate, its silence: per publisher). One implementation, so a fix to how writers are told
apart reaches both (the monitor's own copy kept retiring a live run when a second writer's first
samples came before the graph listed it, the flaw fixed here for the recorder).

What rmw does **not** give is the writer: the message info has no publisher gid. Writers are
told apart by what can be observed:

* each writer's numbers only grow (DDS delivers a writer's samples in order: a reliable reader
  holds out-of-order ones back, a best-effort reader drops late ones);
* so the samples of N writers on one topic, interleaved, form N increasing runs. A sample joins
  the run whose last number is the *largest one below it* (the run it leaves the smallest hole
  in); a sample below or equal to every run's last number can continue none: it is a new writer —
  a second publisher, or one that restarted (a new DDS writer, numbered from 1 again);
* a second writer whose numbers are *above* the first one's looks, at its first sample, like a
  hole in the first writer's run. The next sample of the first writer reveals it (it is below
  the run's last number, above the number before that jump): that jump is taken back - the run
  splits in two at it. Not only while the graph lists more publishers than runs: the graph lags
  behind DDS by up to seconds under load, exactly when two writers start together;
* the graph's publisher count for the topic tells which runs are over: a run that received
  nothing between two graph polls is retired when there are more runs than publishers (the
  writer went away: a restart). A new writer never retires a live run on the spot - the graph
  lags behind DDS, so a second writer's first sample may come while the graph lists one
  publisher (only beyond :data:`MAX_RUNS` live runs does the least recently used one go);

Limits (documented in docs/data_recorder.md and docs/health_monitor.md):

* samples a writer sent before it matched the reader are not counted (they were never meant
  for this reader: a publisher's first messages before discovery, or a new writer's start); nor
  the samples after the last one received (a stream's tail: the recorder counts that from the
  stamps at stop, ``data_recorder.capture.accounting.TopicStats.due_before``);
* writers whose numbers are close can be confused for a moment (a sample joins the other
  writer's run). The total stays right while each run's numbers stay increasing; a per-writer
  split is then approximate, and a writer that restarts while the graph still lists the old one
  can hide up to the numbers both runs share. A late-matched writer's first sample that joins a
  lower run with a hole is taken back when the hijacked writer's next number fits that hole
  (the reading with the smaller hole wins); five writers on similar numbers with a graph that
  lags can still leave a false hole now and then (``bench/recorder/writers_sim.py``: 36 of 300
  simulated orderings, 110 before that rule). A real hole in one writer that another writer's
  number fits is then taken for such a start: the ambiguity of a message info with no writer id;
* an rmw that does not fill the sequence number (0 or "unsupported") leaves the count to the
  stamps and the middleware event (``unsequenced`` says how many such samples came).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: RMW_MESSAGE_INFO_SEQUENCE_NUMBER_UNSUPPORTED (UINT64_MAX) and anything beyond a real counter.
UNSUPPORTED = 2**64 - 1
#: Finished runs kept for the per-writer report (their losses always stay in the totals).
MAX_RETIRED = 32
#: Live runs kept before a new writer makes the least recently used one retire (a bound on memory
#: and on the per-sample search). Not the graph's count: the graph lags behind DDS, and a live run
#: retired while its writer still sends hands its next number to the wrong run - a hole of
#: thousands that nobody lost (measured: two numbered writers starting 2.7 s apart under load, the
#: graph still saying one, reported 27,863 lost of 1,650 received). Runs of writers that left are
#: retired by :meth:`SequenceTracker.set_writers` once idle over a graph poll.
MAX_RUNS = 16
#: Holes remembered per run, to be taken back when they turn out to be another writer's start.
MAX_JUMPS = 8
#: A first number received at or below this is a writer matched within its first publications
#: (discovery takes a few of a 1-10 Hz writer's): a hole ending there may be that writer's start.
EARLY = 64


@dataclass(eq=False)
class WriterRun:
    """The samples of one (inferred) writer: numbers ``first..last``, ``lost`` of them missing.

    Compared by identity (a run is one writer, not its numbers), so a user can key its own
    per-writer state on it (the health monitor's rate window).
    """

    first: int
    last: int
    lost: int = 0
    used: int = 0       # order in which runs were last left (least recently used: smallest)
    polled: int = -1    # ``last`` at the previous graph poll (unchanged: the run is idle)
    jumps: list[tuple[int, int, int]] = field(default_factory=list)
    """The run's latest holes (at most :data:`MAX_JUMPS`), oldest first: ``(from, to, lost
    before it)``. Any of them may turn out to be another writer's first sample joining the run
    (then the run splits there), not only the latest: with several writers on similar numbers
    (five 1 Hz ``/diagnostics`` writers started together), a run can take a second confused
    sample before the first one is revealed."""
    seen: float = -1.0  # when its last sample arrived, for users that time writers (monotonic s)
    gid: bytes = b''    # the writer's gid, where the samples say it (GidTracker)

    @property
    def received(self) -> int:
        return self.last - self.first + 1 - self.lost

    @property
    def published(self) -> int:
        """Numbers the run covers: its writer's publications since the first one received."""
        return self.last - self.first + 1

    def as_dict(self) -> dict[str, int | str]:
        known = {'name': self.gid.hex()} if self.gid else {}
        return {**known, 'first': self.first, 'last': self.last, 'received': self.received,
                'lost': self.lost}


def _retire_idle(runs: list[WriterRun], count: int, current: WriterRun | None,
                 retire: Callable[[WriterRun], None]) -> None:
    """Beyond the graph's ``count``, retire the runs idle since the previous poll (least
    recently used first; never the current one), then mark where every run stands now."""
    if count >= 1 and len(runs) > count:
        idle = sorted((r for r in runs if r.last == r.polled and r is not current),
                      key=lambda r: r.used)
        for run in idle[:len(runs) - count]:
            retire(run)
    for run in runs:
        run.polled = run.last


class SequenceTracker:
    """Per-topic writer runs. One thread feeds it (the executor); others may read the totals.

    Hot path: :meth:`observe` with the next number of the current run is one compare and one
    store; the caller may inline it (``if seq == t.last + 1: t.last = seq else: t.other(seq)``).
    """

    __slots__ = ('_current', '_switches', 'last', 'lost', 'new_writers', 'retired', 'runs',
                 'unsequenced', 'writers')

    def __init__(self) -> None:
        self.last = -2                          # last number of the current run (fast path)
        self.lost = 0                           # holes in every run, retired ones included
        self.unsequenced = 0                    # samples without a usable number
        self.writers = 0                        # publishers the graph lists (0: not known yet)
        self.runs: list[WriterRun] = []
        self.retired: list[WriterRun] = []
        self.new_writers = 0                    # runs ever started
        self._current: WriterRun | None = None
        self._switches = 0

    def observe(self, seq: int) -> None:
        if seq == self.last + 1:
            self.last = seq
        else:
            self.other(seq)

    def other(self, seq: int) -> None:
        """A number that does not continue the current run: another writer, a hole, a restart."""
        if seq <= 0 or seq >= UNSUPPORTED:
            self.unsequenced += 1
            return
        current = self._current
        if current is not None:
            current.last = self.last
        best: WriterRun | None = None
        for run in self.runs:
            if run.last < seq and (best is None or run.last > best.last):
                best = run
        if best is not None and seq - best.last > 1:
            # A hole in the run below - or the continuation of a run whose latest number was
            # another writer's first sample (five writers on similar numbers: one writer's
            # start pushes each of the others one run down, each push a false hole). Take the
            # reading with the smaller hole: any remembered hole while the graph lists more
            # writers than there are runs (a writer's samples are then hiding in another's run);
            # otherwise only a hole that is its run's very last step (it got nothing since) and
            # ends at an early number (<= EARLY: a writer matched within its first
            # publications). Two writers that both lost hundreds in one stall leave holes with
            # late ends: those stay holes (test_two_writers_on_one_topic_counted_apart).
            hiding = self.writers > len(self.runs)
            hijacked = self._hole_around(seq, fresh=not hiding, early=not hiding)
            if hijacked is not None and seq - hijacked[1] - 1 < seq - best.last - 1:
                best = self._split(seq)
        if best is None:                       # continues no run: a new writer
            best = self._split(seq)
            if best is None:
                if len(self.runs) >= max(MAX_RUNS, 2 * self.writers):
                    self._retire(min(self.runs, key=lambda r: (r is current, r.used)))
                best = WriterRun(first=seq, last=seq - 1)
                self.runs.append(best)
            self.new_writers += 1
        gap = seq - best.last - 1
        if gap:
            best.jumps.append((best.last, seq, best.lost))
            if len(best.jumps) > MAX_JUMPS:
                del best.jumps[0]
            best.lost += gap
            self.lost += gap
        best.last = seq
        if current is not None and current is not best:
            current.used = self._switches
            self._switches += 1
        self._current = best
        self.last = seq

    def _split(self, seq: int) -> WriterRun | None:
        """``seq`` fits inside one of a run's remembered holes: that hole was another writer's
        first sample. Split the run there; returns the part before the hole (which ``seq``
        continues). The innermost fitting hole wins (the largest ``from``)."""
        hole = self._hole_around(seq)
        if hole is None:
            return None
        found, start = hole
        at = next(i for i, jump in enumerate(found.jumps) if jump[0] == start)
        _, end, lost_before = found.jumps[at]
        gap = end - start - 1
        before = WriterRun(first=found.first, last=start, lost=lost_before, used=found.used,
                           jumps=found.jumps[:at])
        found.first, found.lost = end, found.lost - lost_before - gap
        shift = lost_before + gap
        found.jumps = [(f, t, lost - shift) for f, t, lost in found.jumps[at + 1:]]
        self.lost -= gap
        self.runs.append(before)
        return before

    def _hole_around(self, seq: int, fresh: bool = False,
                     early: bool = False) -> tuple[WriterRun, int] | None:
        """The run and the start of its remembered hole that ``seq`` fits in (``start < seq <=
        end``), the innermost (largest start) if several do; None if none. ``fresh``: only a
        hole that is its run's last step (nothing received after it); ``early``: only a hole
        that ends at or below :data:`EARLY`."""
        found: tuple[WriterRun, int] | None = None
        for run in self.runs:
            for start, end, _lost in run.jumps[-1:] if fresh else run.jumps:
                if (fresh and end != run.last) or (early and end > EARLY):
                    continue
                if start < seq <= end and (found is None or start > found[1]):
                    found = (run, start)
        return found

    def set_writers(self, count: int) -> None:
        """The graph's publisher count for the topic (polled): bounds the runs kept.

        Only a run idle since the previous poll is retired: a graph that lags behind DDS (a writer
        matched but not listed yet) must not end a run that is still receiving.
        """
        self.sync()
        self.writers = count
        _retire_idle(self.runs, count, self._current, self._retire)

    def sync(self) -> None:
        """Store the fast path's number into the current run (before reading the runs)."""
        if self._current is not None:
            self._current.last = self.last

    @property
    def current(self) -> WriterRun | None:
        """The run the latest sample joined (None before the first numbered one)."""
        self.sync()
        return self._current

    def per_writer(self) -> list[dict[str, int]]:
        """Each run seen (retired ones first, then the live ones), oldest first."""
        self.sync()
        return [r.as_dict() for r in (*self.retired, *self.runs)]

    def _retire(self, run: WriterRun) -> None:
        self.runs.remove(run)
        self.retired.append(run)
        if len(self.retired) > MAX_RETIRED:
            del self.retired[0]
        if run is self._current:
            self._current = None
            self.last = -2


#: Writers whose messages name them kept apart (a bound: beyond it, the rest share one tracker).
MAX_NAMES = 256


class NamedWriters:
    """Sequence runs per writer *name*, for a topic whose messages say who sent them.

    ``rcl_interfaces/msg/ParameterEvent`` carries its node (one ``/parameter_events`` writer per
    node). There the runs above cannot tell writers apart: about fifteen writers each send one
    to three samples, all numbered 1-3, and a writer matched after its first publications (a
    node starting beside the recorder) first shows a 2 or a 3 - the same numbers as a hole in
    another writer's run. Measured: the demo reported 3 of 3 ``/parameter_events`` samples lost
    in 1 of 3 suite runs beside a busy loop, none of them lost. With the name each node's
    numbers are one writer's (a restarted node numbers from 1 again: a new run of its name), so
    a hole is a hole. Same reading interface as :class:`SequenceTracker`, for the recorder's
    ledger; fed by :meth:`observe_named`.
    """

    __slots__ = ('by_name', 'writers')

    def __init__(self) -> None:
        self.by_name: dict[str, SequenceTracker] = {}
        self.writers = 0

    def observe_named(self, name: str, seq: int) -> None:
        tracker = self.by_name.get(name)
        if tracker is None:
            if len(self.by_name) >= MAX_NAMES:
                name = '*'
            tracker = self.by_name.setdefault(name, SequenceTracker())
        tracker.observe(seq)

    def _trackers(self) -> list[SequenceTracker]:
        return list(self.by_name.values())   # read from other threads: a copy under the GIL

    @property
    def lost(self) -> int:
        return sum(t.lost for t in self._trackers())

    @property
    def unsequenced(self) -> int:
        return sum(t.unsequenced for t in self._trackers())

    @property
    def new_writers(self) -> int:
        return sum(t.new_writers for t in self._trackers())

    def set_writers(self, count: int) -> None:
        """The graph's count is the topic's; each name is one writer (its idle old runs retire)."""
        self.writers = count
        for tracker in self._trackers():
            tracker.set_writers(1)

    def sync(self) -> None:
        for tracker in self._trackers():
            tracker.sync()

    def per_writer(self) -> list[dict[str, int | str]]:
        """Each name's runs, oldest first, with the name."""
        return [{'name': name, **run} for name, tracker in sorted(self.by_name.items())
                for run in tracker.per_writer()]


class GidTracker(SequenceTracker):
    """Sequence runs keyed by each sample's writer gid (:mod:`field_deploy.writer_take`).

    Where the sample's gid is known no run has to be guessed: one writer, one run, a hole is a
    hole, a restarted writer is a new gid. The reading interface is :class:`SequenceTracker`'s
    (``runs``, ``current``, ``lost``, ``writers``, ``set_writers``, ``per_writer``); fed by
    :meth:`observe_gid`. Bounded like it: at most :data:`MAX_RUNS` (or twice the graph's count)
    live runs, the least recently seen retired beyond that. A retired run whose gid sends again
    lives again (:meth:`_revive`): the graph retires runs by its count, the gid knows better.
    """

    __slots__ = ('_by_gid', '_used')

    def __init__(self) -> None:
        super().__init__()
        self._by_gid: dict[bytes, WriterRun] = {}
        self._used = 0

    def observe_gid(self, gid: bytes, seq: int) -> None:
        if seq <= 0 or seq >= UNSUPPORTED:
            self.unsequenced += 1
            return
        run = self._by_gid.get(gid)
        if run is None:
            run = self._revive(gid, seq)
        if run is None or seq <= run.last:             # a new writer (or one renumbering)
            self._make_room()
            if run is not None:
                self._retire(run)
            run = self._by_gid[gid] = WriterRun(first=seq, last=seq - 1, gid=gid)
            self.runs.append(run)
            self.new_writers += 1
        gap = seq - run.last - 1
        if gap:
            run.lost += gap
            self.lost += gap
        run.last = seq
        if run is not self._current:
            self._used += 1
            run.used = self._used
            self._current = run
        self.last = seq

    def _revive(self, gid: bytes, seq: int) -> WriterRun | None:
        """A retired run of ``gid`` that ``seq`` continues: live again, its hole counted.

        A run is retired when it was idle over a graph poll while the graph listed fewer
        publishers than runs - the graph lags behind DDS, and a reader stalled longer than the
        writers' history (SIGSTOP, a loaded host) sees every run idle at its first poll after. The
        gid says the writer never left: starting it afresh would drop the hole of its stall
        (measured: 697 of 1,585 missing samples unreported, three writers, a 1.5 s stall)."""
        for i in range(len(self.retired) - 1, -1, -1):
            run = self.retired[i]
            if run.gid == gid and run.last < seq:
                del self.retired[i]
                self._make_room()
                self.runs.append(run)
                self._by_gid[gid] = run
                return run
        return None

    def _make_room(self) -> None:
        """Before a run joins the live ones: at the bound, the least recently seen retires."""
        if len(self.runs) >= max(MAX_RUNS, 2 * self.writers):
            self._retire(min(self.runs, key=lambda r: r.used))

    def _retire(self, run: WriterRun) -> None:
        if self._by_gid.get(run.gid) is run:
            del self._by_gid[run.gid]
        super()._retire(run)
