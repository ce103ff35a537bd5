"""The evidence a STALE is judged on, besides the stream's own samples (pure, no rclpy).

A stream is STALE only when a check made on time finds nothing newer than the threshold, and
only for silence that can be told from the monitor's own lateness and from a host too busy to
let the publisher publish:

* :class:`Punctuality`: when the monitor itself was not looking (its checks late: its timer or
  its process starved; or its receive threads busy, :mod:`health_monitor.receiving`) — that
  time is left out of every silence;
* :class:`DeliveryGaps`: recent silences that lost nothing (every publication of the quiet time
  arrived late) — the host delays without losing, so the STALE hold stretches, boundedly;
* :class:`CpuPressure`: how long tasks of this host waited for a CPU during a silence (Linux
  PSI, ``/proc/pressure/cpu`` "some") — a publisher starved of the CPU is one of them, so the
  hold stretches by that time, boundedly. A silence with no task waiting for a CPU is not a
  starved publisher on this host and is called at the configured hold.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import TYPE_CHECKING

from health_monitor.core import OK, Status

if TYPE_CHECKING:
    from health_monitor.topics import TopicLimits


class Punctuality:
    """The monitor's own lateness against its check schedule: when it was not looking.

    A check that comes more than ``tolerance_s`` after the one before plus the period was late:
    the monitor (its timer, its process) was starved for the lateness, and the samples its
    reader threads had not delivered by then prove nothing about the publisher. Those blind
    stretches are kept (:meth:`blind_since`) and left out of every silence, so a stream is
    called stale only for time the monitor spent watching it on schedule.
    """

    HORIZON_S = 10.0

    def __init__(self, period_s: float, tolerance_s: float) -> None:
        self.period_s = period_s
        self.tolerance_s = tolerance_s
        self.last = -1.0
        self.late_checks = 0
        self.worst_late_s = 0.0
        self.blind_total = 0.0
        self._ends: list[float] = []      # end of each blind stretch (the late check's time)
        self._starts: list[float] = []
        self._cum: list[float] = []       # blind_total after that stretch

    def check(self, now: float) -> float:
        """Record a check at ``now``; returns its lateness (s, 0 when on time)."""
        late = 0.0
        if self.last >= 0:
            late = max(0.0, now - self.last - self.period_s)
            if late > self.tolerance_s:
                self.late_checks += 1
                self.worst_late_s = max(self.worst_late_s, late)
                self.blind_total += late
                self._starts.append(now - late)
                self._ends.append(now)
                self._cum.append(self.blind_total)
                self._forget(now)
        self.last = now
        return late

    def _forget(self, now: float) -> None:
        """Drop the stretches older than the horizon (by halves: amortised)."""
        if self._ends[0] < now - 2 * self.HORIZON_S:
            cut = bisect.bisect_left(self._ends, now - self.HORIZON_S)
            del self._starts[:cut], self._ends[:cut], self._cum[:cut]

    def add_blind(self, start: float, end: float) -> None:
        """Record ``[start, end]`` as blind for another reason than lateness (the process's
        receive threads had samples in hand), merged with the stretch it overlaps."""
        if end <= start:
            return
        if self._ends and self._ends[-1] >= start:
            old = self._ends[-1] - self._starts[-1]
            self._starts[-1] = min(self._starts[-1], start)
            self._ends[-1] = max(self._ends[-1], end)
            grow = self._ends[-1] - self._starts[-1] - old
            self.blind_total += grow
            self._cum[-1] += grow
        else:
            self.blind_total += end - start
            self._starts.append(start)
            self._ends.append(end)
            self._cum.append(self.blind_total)
            self._forget(end)   # receive-side stretches come at every check on a loaded host

    def blind_since(self, t0: float) -> float:
        """Seconds of lateness (blind time) after ``t0``."""
        i = bisect.bisect_right(self._ends, t0)
        if i == len(self._ends):
            return 0.0
        before = self._cum[i - 1] if i else self._cum[0] - (self._ends[0] - self._starts[0])
        blind = self.blind_total - before
        if self._starts[i] < t0:            # the first stretch began before t0: only its tail
            blind -= t0 - self._starts[i]
        return blind


class DeliveryGaps:
    """Recent silences that lost nothing: a stream went quiet, then every publication of the
    quiet time arrived (by the writer's sequence numbers). Shared by the topics of a monitor:
    it measures the host (starved publishers, starved readers), not one stream.

    :meth:`hold` is the STALE hold that would have let the longest of them (in the last
    ``horizon_s``) pass without an alarm, never below the configured hold nor above the cap.
    """

    def __init__(self, horizon_s: float = 30.0) -> None:
        self.horizon_s = horizon_s
        self._gaps: deque[tuple[float, float]] = deque()
        self.seen = 0

    def record(self, now: float, gap_s: float) -> None:
        self.seen += 1
        self._gaps.append((now, gap_s))

    def longest(self, now: float) -> float:
        while self._gaps and now - self._gaps[0][0] > self.horizon_s:
            self._gaps.popleft()
        return max((g for _, g in self._gaps), default=0.0)

    def hold(self, limits: TopicLimits, now: float) -> float:
        needed = 1.25 * self.longest(now) - limits.stale_after_s
        return min(max(limits.stale_hold_s, needed), max(limits.stale_hold_max_s,
                                                         limits.stale_hold_s))


class CpuPressure:
    """The host's CPU pressure over time: a timeline of the cumulative seconds in which at least
    one runnable task waited for a CPU (PSI "some" ``total``), sampled at every check.

    Why: a publisher starved of the CPU publishes nothing and then catches up (the sim at 500 Hz
    beside two busy loops: 0.13-0.18 s without a sample, then 18 at once, while the monitor's
    checks were on time and its receive threads asleep). On time, the monitor saw nothing newer
    than the threshold; it cannot tell a starved publisher from a dead one until it catches up.
    What it can tell: whether *any* task of the host waited for a CPU meanwhile. Time in which
    none did cannot have starved a publisher on this host; time in which some did might have.
    """

    HORIZON_S = 10.0

    def __init__(self) -> None:
        self._t: deque[float] = deque()
        self._total: deque[float] = deque()

    def record(self, now: float, stalled_total_s: float) -> None:
        """One sample of the cumulative stall time (s) at ``now``."""
        self._t.append(now)
        self._total.append(stalled_total_s)
        while len(self._t) > 2 and self._t[1] < now - self.HORIZON_S:
            self._t.popleft()
            self._total.popleft()

    def _at(self, t: float) -> float:
        """The cumulative stall time at ``t``, linear between samples (flat outside them)."""
        ts, totals = self._t, self._total
        i = bisect.bisect_right(ts, t)
        if i == 0:
            return totals[0]
        if i == len(ts):
            return totals[-1]
        t0, t1 = ts[i - 1], ts[i]
        return totals[i - 1] + (totals[i] - totals[i - 1]) * (t - t0) / (t1 - t0)

    def stalled(self, t0: float, t1: float) -> float:
        """Seconds between ``t0`` and ``t1`` in which some task waited for a CPU (0 when no
        sample covers them: no evidence of pressure is no pressure)."""
        if not self._t or t1 <= t0:
            return 0.0
        return max(0.0, self._at(t1) - self._at(t0))

    def share(self, now: float, window_s: float = 10.0) -> float:
        """The fraction of the last ``window_s`` with a task waiting (for the monitor's leaf)."""
        return self.stalled(now - window_s, now) / window_s


def monitor_status(now: float, punctuality: Punctuality, gaps: DeliveryGaps,
                   pressure: CpuPressure, receive_busy_checks: int) -> Status:
    """The ``health/monitor`` leaf: the evidence the monitor's STALEs stand on, so an operator
    sees a monitor that was not looking, or a host whose publishers may be starved."""
    p = punctuality
    return Status('health/monitor', OK, f'{p.late_checks} late checks, '
                  f'{p.blind_total:.2f} s not looking', values={
                      'late checks': str(p.late_checks),
                      'blind (s)': f'{p.blind_total:.3f}',
                      'worst lateness (s)': f'{p.worst_late_s:.3f}',
                      'checks with receive threads busy': str(receive_busy_checks),
                      'delivery gaps': str(gaps.seen),
                      'longest recent delivery gap (s)': f'{gaps.longest(now):.3f}',
                      'CPU pressure, last 10 s (%)': f'{100 * pressure.share(now):.0f}'})
