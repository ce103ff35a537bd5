"""Topic monitoring (pure, no rclpy): rate, staleness from evidence, stamps, writers, frozen values.

The monitor is fed with what the middleware says about each sample (reception time, the
writer's publication sequence number, the header stamp) and asked for a :class:`Status` at a
time ``now`` (monotonic seconds). Staleness is a claim about the *stream*, so it is judged
only on evidence the monitor can stand behind:

* silence is known only up to the monitor's last look at the stream (``looked_at``: the take
  that found its reader empty), not up to the moment a status is asked for — a status computed
  while the checks were starved would otherwise count time nobody looked as silence;
* a check counts only when the monitor itself was on time
  (:class:`~health_monitor.evidence.Punctuality`): after the
  monitor's own check was late (its process starved, its timer fired late), silence is measured
  from the moment it resumed watching, not from the last sample — samples the starved process
  had not yet taken prove nothing about the publisher;
* the silence must hold a minimum duration (``stale_hold``) beyond the threshold, the STALE
  hysteresis, as value rules have ``raise``; on a host where streams have recently gone quiet
  and then delivered every publication late (:class:`~health_monitor.evidence.DeliveryGaps`:
  a starved publisher or reader, nothing lost), the hold stretches to cover the longest such
  gap, and while tasks of the host waited for a CPU during the silence
  (:class:`~health_monitor.evidence.CpuPressure`: the publisher may be one of them) it
  stretches by that time, both up to ``stale_hold_max`` — a loaded host trades detection time
  (bounded) for no false alarm, a quiet one detects at the configured hold;
* a stream that comes back after a STALE whose sequence numbers show nothing was missing (every
  publication arrived, late) clears at once: it was delivery, not the source.

Several writers on one topic are told apart by their sequence-number runs (the message info
has no writer id on rclpy 7.1.6), as the recorder tells them apart:
:class:`field_deploy.sequence.SequenceTracker`.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from field_deploy.sequence import UNSUPPORTED, GidTracker, SequenceTracker, WriterRun
from health_monitor.core import OK, STALE, WARN, Debounce, Status
from health_monitor.evidence import CpuPressure, DeliveryGaps
from health_monitor.writer_cpu import WriterProcesses

_U32 = struct.Struct('<I')
Blind = Callable[[float], float] | None
"""The monitor's blind time since a moment (:meth:`~health_monitor.evidence.Punctuality.blind_since`)."""


@dataclass(frozen=True)
class TopicLimits:
    """What a topic is held to; derived from the profile rate and the ``topics`` config."""

    rate_hz: float
    min_ratio: float = 0.8
    max_ratio: float = 1.25
    window_s: float = 1.0
    stale_periods: float = 2.0
    stale_floor_s: float = 0.0
    """A stale time in seconds a stream may need beyond its periods (0: none; the hold below
    covers scheduling jitter)."""
    stale_hold_s: float = 0.07
    """STALE hysteresis: the silence must last this much beyond the stale time, watched on time
    (a minimum duration, as value rules have ``raise``). 70 ms: the issue's quiet-host budget is
    2 periods + 100 ms, and one check (10 ms) and the alarm's publication take the rest."""
    stale_hold_max_s: float = 0.30
    """The most the hold stretches to while the host's tasks waited for a CPU during the silence,
    or after delivery gaps that lost nothing. 300 ms: a loaded host detects a 30 Hz stream
    within 2 periods + 300 ms + the checks the starved monitor missed (~100 ms), under 500 ms."""
    future_tolerance_s: float = 0.05
    max_lag_s: float = 0.5
    check_stamps: bool = True
    rate_hold_s: float = 1.0
    clear_s: float = 1.0
    stale_clear_s: float = 0.25
    """After a real silence, STALE clears once this long's worth of messages (at the expected
    rate, at least 2) has arrived again: no STALE/OK flicker on a bursty stream."""
    freeze_after_s: float = 0.0
    """JointState topics: a joint whose position is bit-identical for this long while the
    stream flows is frozen (0: not checked)."""

    @property
    def stale_after_s(self) -> float:
        """No message for ``stale_periods`` periods (never less than the floor)."""
        return max(self.stale_periods / self.rate_hz, self.stale_floor_s)

    @property
    def stale_raise_s(self) -> float:
        """Silence, watched on time, after which STALE is raised: stale time + hold."""
        return self.stale_after_s + self.stale_hold_s


class TopicMonitor:
    """Rate window, staleness and header-stamp sanity of one topic.

    :meth:`on_message` is on the hot path (up to the check rate per topic): it only counts and
    compares integers. :meth:`status` does the arithmetic at the evaluation rate.
    """

    def __init__(self, topic: str, path: str, limits: TopicLimits,
                 gaps: DeliveryGaps | None = None, pressure: CpuPressure | None = None) -> None:
        self.topic = topic
        self.path = path
        self.limits = limits
        self.gaps = gaps
        self.pressure = pressure
        self.writer_cpu: WriterProcesses | None = None
        """The topic's publishing processes' CPU waits (set by whoever polls the graph): when
        known, they bound the host-wide :attr:`pressure` as the evidence of a starved
        publisher."""
        self.starved_by = ''
        """Which evidence the latest STALE time was stretched by (shown in the status)."""
        self.count = 0
        self.last_rx = -1.0
        self.first_rx = -1.0
        self.flowing = False
        """Two samples have come within the STALE time of each other: the stream has started.
        Until then it is STALE-from-start (never raised, fires no policy), not lost: a publisher
        that sends one sample early and starts its rate later (the safety gate's first hold
        command at configure, its 500 Hz loop at activation, 0.2 s to seconds apart) did not
        stop a stream that had flowed."""
        self.last_stamp_ns = 0
        self.future = 0
        self.backwards = 0
        self.lagging = 0
        self.max_lag_ns = 0
        self.sequence: SequenceTracker | GidTracker = SequenceTracker()
        """The writers' runs of publication sequence numbers (a :class:`GidTracker` where the
        samples come with their writer's gid: the poller's); the graph's publisher count is
        given to it by whoever polls the graph (``sequence.set_writers``)."""
        self._writer_windows: dict[WriterRun, deque[tuple[float, int]]] = {}
        self.watch_from = -1.0
        """Silence is counted from no earlier than this (a reader re-created: DDS matching)."""
        self.looked_at = -1.0
        """When the monitor last looked for samples (set by whoever feeds it: the poller before
        each take). Silence is known up to then; -1: fed as samples come, known up to now."""
        self.frozen: dict[str, float] = {}
        """Joints whose value is frozen -> since when (set by the node's :class:`FreezeWatch`)."""
        self._window: deque[tuple[float, int]] = deque()
        self._stamp_marks: tuple[int, int, int] = (0, 0, 0)
        self._stamp_bad_until = -1.0
        self._last_stamp_problem = ''
        self._stale = False
        self._stale_count = 0
        self._stale_since = 0.0
        self.stale_raised = 0
        self.delivery_gaps = 0
        """STALEs that cleared with no publication missing (the samples came late, all of them)."""
        self._rate = Debounce(limits.rate_hold_s, limits.clear_s)
        self._future_ns = int(limits.future_tolerance_s * 1e9)
        self._lag_ns = int(limits.max_lag_s * 1e9)

    def on_message(self, rx_mono: float, rx_wall_ns: int, stamp_ns: int | None,
                   messages: int = 1, seq: int | None = None,
                   source_wall_ns: int | None = None, gid: bytes | None = None) -> None:
        """One received sample; with its writer's ``seq`` it stands for every publication
        since that writer's previous one (else for ``messages``). With its ``source_wall_ns``
        (when the writer wrote it), a sample delivered later than the STALE time (stale time +
        the configured hold) is a delivery gap: for that long the monitor could not have seen
        what the source had published. Shorter gaps are not recorded: a 1 kHz stream taken at
        every 10 ms check shows a gap above its 2 ms stale time at every take. With the writer's
        ``gid`` (a :class:`field_deploy.sequence.GidTracker` as :attr:`sequence`) the sample's
        run is its writer's, not a guess."""
        if source_wall_ns and self.gaps is not None:
            late = (rx_wall_ns - source_wall_ns) * 1e-9
            if late > self.limits.stale_raise_s:
                self.gaps.record(rx_mono, late)
        if seq is not None and 0 < seq < UNSUPPORTED:
            tracker = self.sequence
            skipped = tracker.lost
            if gid is None:
                tracker.observe(seq)
            else:
                tracker.observe_gid(gid, seq)
            run = tracker.current
            if run is not None:
                run.seen = rx_mono
            # this sample and the publications of its writer not taken since its previous one
            # (negative when a run split: a jump taken back was another writer's first sample)
            messages = 1 + tracker.lost - skipped
            gap = rx_mono - self.last_rx
            if (self.gaps is not None and self.last_rx >= 0 and gap > self.limits.stale_raise_s
                    and messages >= 0.8 * self.limits.rate_hz * gap):
                self.gaps.record(rx_mono, gap)   # quiet, then all of it at once: nothing lost
        if not self.flowing and self.last_rx >= 0 and (
                rx_mono - self.last_rx <= self.limits.stale_raise_s):
            self.flowing = True
        self.count += messages
        self.last_rx = rx_mono
        if self.first_rx < 0:
            self.first_rx = rx_mono
        if stamp_ns is None:
            return
        if stamp_ns > rx_wall_ns + self._future_ns:
            self.future += 1
        else:
            lag = rx_wall_ns - stamp_ns
            if lag > self._lag_ns:
                self.lagging += 1
                if lag > self.max_lag_ns:
                    self.max_lag_ns = lag
        if stamp_ns < self.last_stamp_ns:
            self.backwards += 1
        self.last_stamp_ns = stamp_ns

    # ------------------------------------------------------------------ staleness

    def seen_until(self, now: float) -> float:
        """The time up to which the stream's silence is known: the last look, not ``now``."""
        return now if self.looked_at < 0 else min(now, self.looked_at)

    def silence(self, now: float, blind: Blind = None) -> float:
        """How long the stream has been silent *as watched on time* (s), up to the last look
        (:meth:`seen_until`): the monitor's blind time in between (``blind(t0)``,
        :meth:`Punctuality.blind_since`) left out."""
        return self._watched(max(self.last_rx, self.watch_from), self.seen_until(now), blind)

    @staticmethod
    def _watched(since: float, until: float, blind: Blind) -> float:
        quiet = until - since
        if blind is None or quiet <= 0:
            return quiet
        return quiet - (blind(since) - blind(until))

    def raise_after(self, now: float, since: float | None = None) -> float:
        """Silence (watched on time) after which STALE is raised: stale time + the hold.

        The hold is the configured one, stretched (up to ``stale_hold_max``) to let the longest
        recent delivery gap pass, and by the time a starved publisher would have needed during
        this silence (from ``since``, default the stream's last sample, up to the last look):
        what the threads of the topic's publishing process waited for a CPU, summed
        (:mod:`health_monitor.writer_cpu`), when that is less than the time any task of the
        host waited for one (the only evidence for a publisher not known here)."""
        lim = self.limits
        hold = lim.stale_hold_s if self.gaps is None else self.gaps.hold(lim, now)
        if self.pressure is not None:
            if since is None:
                since = max(self.last_rx, self.watch_from)
            until = self.seen_until(now)
            # Both bound the time the publisher was kept from a CPU from above (what its own
            # threads waited; the time any task of the host waited): the smaller one is the
            # tighter bound. Its threads are not known for a writer of another host.
            stalled = self.pressure.stalled(since, until)
            own = (None if self.writer_cpu is None
                   else self.writer_cpu.waited(self.topic, since, until))
            self.starved_by = 'host CPU pressure'
            if own is not None and own < stalled:
                stalled, self.starved_by = own, 'publisher CPU wait'
            hold = max(hold, min(lim.stale_hold_s + stalled,
                                 max(lim.stale_hold_max_s, lim.stale_hold_s)))
        return lim.stale_after_s + hold

    def silent_writers(self, now: float, blind: Blind = None) -> int:
        """Writers (when the graph shows several) with no sample for the STALE time.

        Runs beyond the graph's count are writers gone (a restart), not yet retired by the next
        graph poll: that many silent runs are excused."""
        tracker = self.sequence
        if tracker.writers < 2:
            return 0
        until = self.seen_until(now)
        silent = 0
        for run in tracker.runs:
            since = max(run.seen, self.watch_from)
            if self._watched(since, until, blind) > self.raise_after(now, since):
                silent += 1
        return max(0, silent - max(0, len(tracker.runs) - tracker.writers))

    def _live_runs(self) -> list[WriterRun]:
        """The runs of the writers the graph lists (the most recently seen ones): a run beyond
        the count is a writer gone, retired at the next graph poll."""
        tracker = self.sequence
        tracker.sync()
        runs = tracker.runs
        if 0 < tracker.writers < len(runs):
            runs = sorted(runs, key=lambda r: r.seen, reverse=True)[:tracker.writers]
        return runs

    def stale(self, now: float, blind: Blind = None) -> bool:
        """The STALE decision alone (the node's fast path): see the module docstring."""
        if not self.flowing:
            return True
        if self.frozen:
            return True
        if self.silence(now, blind) > self.raise_after(now):
            return True
        if self.silent_writers(now, blind):
            return True
        if self._stale:
            return not self._cleared()
        return False

    def _cleared(self) -> bool:
        """After a STALE: enough messages again, or proof that none had been missing."""
        lim = self.limits
        arrived = self.count - self._stale_count
        if arrived >= max(2, int(lim.rate_hz * lim.stale_clear_s)):
            return True
        # Every publication of the silent time arrived (late, in a burst): delivery, not source.
        expected = lim.rate_hz * (self.last_rx - self._stale_since)
        if arrived >= 2 and arrived >= 0.8 * expected:
            self.delivery_gaps += 1
            return True
        return False

    def rate(self, now: float) -> float | None:
        """Messages per second over the last window; None until a full window has passed."""
        return _window_rate(self._window, now, self.count, self.limits.window_s)

    def status(self, now: float, blind: Blind = None) -> Status:
        lim = self.limits
        values = {'topic': self.topic, 'messages': str(self.count),
                  'expected rate (Hz)': f'{lim.rate_hz:g}'}
        rate = self.rate(now)
        if rate is not None:
            values['rate (Hz)'] = f'{rate:.1f}'
        if self.last_rx < 0:
            return Status(self.path, STALE, f'{self.topic}: no message yet', values=values)
        if not self.flowing:
            return Status(self.path, STALE, f'{self.topic}: not flowing yet ({self.count} '
                          'message(s), none within the STALE time of another)', values=values)
        silent = self.seen_until(now) - self.last_rx   # as of the last look
        values['since last (s)'] = f'{silent:.3f}'
        values['STALE raised'] = str(self.stale_raised)
        writers = self._live_runs()
        rates = [rate]
        if len(writers) > 1:
            windows = self._writer_windows = {w: self._writer_windows.get(w, deque())
                                              for w in writers}
            rates = [_window_rate(windows[w], now, w.published, lim.window_s) for w in writers]
            values['writers'] = str(len(writers))
            for i, (w, wr) in enumerate(zip(writers, rates, strict=True), 1):
                values[f'writer {i}'] = (f'{wr:.1f} Hz, ' if wr is not None else '') + \
                    f'last {now - w.seen:.3f} s ago'
        if self.frozen:
            return self._raise(Status(self.path, STALE, f'{self.topic}: ' + ', '.join(
                f'{j} frozen for {now - t:.2f} s' for j, t in sorted(self.frozen.items()))
                + ' (the same value in every sample)', values=values), now)
        raise_after, watched = self.raise_after(now), self.silence(now, blind)
        values['STALE after (s)'] = f'{raise_after:.3f}'
        if self.starved_by:
            values['starved publisher evidence'] = self.starved_by
        values['silent, watched (s)'] = f'{watched:.3f}'
        if watched > raise_after:
            return self._raise(Status(self.path, STALE,
                                      f'{self.topic}: no message for {silent:.2f} s '
                                      f'(expected every {1.0 / lim.rate_hz:.3f} s)',
                                      values=values), now)
        quiet = self.silent_writers(now, blind)
        if quiet:
            return self._raise(Status(self.path, STALE, f'{self.topic}: {quiet} of '
                                      f'{len(writers)} writers silent', values=values), now)
        if self._stale:
            if not self._cleared():
                needed = max(2, int(lim.rate_hz * lim.stale_clear_s))
                arrived = self.count - self._stale_count
                return Status(self.path, STALE, f'{self.topic}: messages again ({arrived} of '
                                                f'{needed} needed to clear)' if arrived else
                              f'{self.topic}: no message for {silent:.2f} s', values=values)
            self._stale = False
        level, problems = OK, []
        low, high = lim.min_ratio * lim.rate_hz, lim.max_ratio * lim.rate_hz
        known = [r for r in rates if r is not None]
        bad = [r for r in known if not low <= r <= high]
        if known and self._rate.update(WARN if bad else OK, now) > OK:
            level = WARN
            problems.append(f'rate {(bad or known)[0]:.1f} Hz outside [{low:g}, {high:g}]'
                            + (' (per writer)' if len(writers) > 1 else ''))
        marks = (self.future, self.backwards, self.lagging)
        if lim.check_stamps:
            if marks != self._stamp_marks:
                self._stamp_bad_until = now + lim.clear_s
                new = [n - o for n, o in zip(marks, self._stamp_marks, strict=True)]
                self._last_stamp_problem = ', '.join(
                    f'{k} {v}' for k, v in zip(('stamps in the future', 'stamps going backwards',
                                                'stamps lagging'), new, strict=True) if v)
            if now < self._stamp_bad_until:
                level = WARN
                problems.append(self._last_stamp_problem)
        self._stamp_marks = marks
        values.update({'future stamps': str(self.future), 'backwards stamps': str(self.backwards),
                       'lagging stamps': str(self.lagging),
                       'max lag (s)': f'{self.max_lag_ns / 1e9:.3f}'})
        message = f'{self.topic}: ' + ('; '.join(problems) if problems else 'OK')
        return Status(self.path, level, message, values=values)

    def _raise(self, status: Status, now: float) -> Status:
        self._rate.reset()
        if not self._stale:
            self.stale_raised += 1
            self._stale_since = self.last_rx
        self._stale, self._stale_count = True, self.count
        status.values['STALE raised'] = str(self.stale_raised)
        return status


def _window_rate(window: deque[tuple[float, int]], now: float, count: int,
                 window_s: float) -> float | None:
    window.append((now, count))
    horizon = now - window_s
    while len(window) > 2 and window[1][0] <= horizon:
        window.popleft()
    t0, c0 = window[0]
    if now - t0 < 0.5 * window_s:
        return None
    return (count - c0) / (now - t0)


# --------------------------------------------------------------------------- frozen values

def joint_state_positions(cdr: bytes) -> tuple[list[str], int]:
    """Names and the offset of the ``position`` doubles (one per name) in a serialised
    sensor_msgs/JointState.

    CDR (little endian): header (stamp 8 bytes, frame_id string), ``name`` sequence<string>,
    ``position`` sequence<double>; alignment is relative to the byte after the 4-byte
    encapsulation. Reading this far costs microseconds; deserialising the whole message with
    velocities and efforts costs ten times more at the check rate.
    """
    view = memoryview(cdr)
    off = 4 + 8

    def u32(at: int) -> tuple[int, int]:
        at += (-(at - 4)) % 4
        return _U32.unpack_from(view, at)[0], at + 4

    n, off = u32(off)
    off += n                               # frame_id (with its NUL)
    count, off = u32(off)
    names = []
    for _ in range(count):
        n, off = u32(off)
        names.append(bytes(view[off:off + n - 1]).decode())
        off += n
    npos, off = u32(off)
    off += (-(off - 4)) % 8
    if npos != count or off + 8 * npos > len(view):
        raise ValueError(f'JointState with {count} names and {npos} positions')
    return names, off


class FreezeWatch:
    """Joints of a JointState stream whose reported position stops changing.

    A live encoder's reading changes from sample to sample (noise, motion); a frozen one
    repeats the same bits while the stream goes on flowing. A joint is frozen when its value
    has been bit-identical in every taken sample for ``after_s``. A stream that stops is the
    silence rule's, not this one's (no sample, no observation).
    """

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._last: dict[str, tuple[bytes, float]] = {}

    def observe(self, names: list[str], cdr: bytes, offset: int, rx: float,
                frozen: dict[str, float]) -> None:
        for i, name in enumerate(names):
            value = cdr[offset + 8 * i:offset + 8 * i + 8]
            last = self._last.get(name)
            if last is None or last[0] != value:
                self._last[name] = (value, rx)
                frozen.pop(name, None)
            elif rx - last[1] >= self.after_s:
                frozen.setdefault(name, last[1])
