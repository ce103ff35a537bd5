"""How long the processes that publish a watched topic waited for a CPU (Linux /proc).

A publisher starved of the CPU publishes nothing and then catches up; on time, the monitor
sees nothing newer than the threshold and cannot tell it from a dead one. The host-wide
evidence (:class:`health_monitor.evidence.CpuPressure`, PSI "some") says whether *any* task
waited for a CPU during a silence; on a busy host some task nearly always does, so every
silence waited for the longest hold (measured 2026-11-30 beside the soak stack, PSI 49 %:
a silenced 1 kHz stream called STALE after 414 ms at p50, 586 ms at p99). This module asks
the publisher itself: every thread's cumulative wait on a run queue (``run_delay``, the second
field of ``/proc/<pid>/task/<tid>/schedstat``). A silence in which none of the publisher's
threads waited more than a few ms is not a starved publisher, whatever else the host ran.

Which process publishes: the writer's DDS GUID, in the graph's endpoint info. Fast DDS (vendor
``01 0f``) puts its host id in bytes 2-3 and the low 16 bits of the process id in bytes 4-5
(``GuidUtils``); a writer on this host (same host id as the monitor's own writers) whose low
16 bits match exactly one live process is that process. Anything else — another vendor,
another host, an ambiguous pid — is unknown, and the host-wide evidence is used instead.
"""

from __future__ import annotations

import bisect
import os
import time
from collections import deque
from collections.abc import Callable, Iterable

EPROSIMA = b'\x01\x0f'

RunDelays = dict[int, int]
"""Thread id -> cumulative run-queue wait (ns)."""


class ThreadSchedstat:
    """Every thread's cumulative run-queue wait of one process, read through files kept open.

    Opening 17 files per sample cost 0.77 ms here (sim_robot, 2026-11-30); a ``pread`` of an
    open schedstat file re-reads it for a few µs. The thread list is read again every
    ``REFRESH_S`` (a thread started later is found then)."""

    REFRESH_S = 1.0

    def __init__(self, pid: int, proc: str = '/proc', clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.task = f'{proc}/{pid}/task'
        self.clock = clock
        self.fds: dict[int, int] = {}
        self._listed = -1e9

    def _list(self) -> bool:
        try:
            tids = {int(t) for t in os.listdir(self.task)}
        except OSError:
            return False
        for tid in self.fds.keys() - tids:
            os.close(self.fds.pop(tid))
        for tid in tids - self.fds.keys():
            try:
                self.fds[tid] = os.open(f'{self.task}/{tid}/schedstat', os.O_RDONLY)
            except OSError:
                continue                 # a thread that just ended
        self._listed = self.clock()
        return True

    def read(self) -> RunDelays | None:
        """Thread id -> run-queue wait (ns); None once the process is gone."""
        if self.clock() - self._listed > self.REFRESH_S and not self._list():
            self.close()
            return None
        delays: RunDelays = {}
        for tid, fd in list(self.fds.items()):
            try:
                delays[tid] = int(os.pread(fd, 96, 0).split()[1])
            except (OSError, IndexError, ValueError):   # the thread ended
                os.close(self.fds.pop(tid))
        if not delays and not self._list():
            return None
        return delays

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def local_pid(gid: bytes, host: bytes | None, pids: Iterable[int]) -> int | None:
    """The process of this host that owns DDS endpoint ``gid``, or None when it cannot be told.

    ``host``: the monitor's own host id (bytes 2-3 of one of its own endpoints' gid); ``pids``:
    the live processes."""
    if host is None or len(gid) < 6 or gid[:2] != EPROSIMA or gid[2:4] != host:
        return None
    low = gid[4] | gid[5] << 8
    found = [p for p in pids if p & 0xFFFF == low]
    return found[0] if len(found) == 1 else None


class ProcessWait:
    """One process's threads' run-queue waits over time, sampled by the monitor's checks."""

    HORIZON_S = 10.0

    def __init__(self, pid: int, read: Callable[[], RunDelays | None] | None = None) -> None:
        self.pid = pid
        self._reader = ThreadSchedstat(pid) if read is None else None
        self.read = read or self._reader.read  # type: ignore[union-attr]
        self._t: deque[float] = deque()
        self._delays: deque[RunDelays] = deque()
        self.gone = False

    def sample(self, now: float) -> None:
        delays = self.read()
        if delays is None:
            self.gone = True
            return
        self._t.append(now)
        self._delays.append(delays)
        while len(self._t) > 2 and self._t[1] < now - self.HORIZON_S:
            self._t.popleft()
            self._delays.popleft()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    @property
    def sampled_at(self) -> float:
        return self._t[-1] if self._t else -1.0

    def waited(self, t0: float, t1: float) -> float | None:
        """What the process's threads waited for a CPU between ``t0`` and ``t1``, summed (s),
        read conservatively: from the last sample at or before ``t0`` to the first at or after
        ``t1`` (a wider span can only show more wait). None when the samples do not reach
        ``t1`` (the caller samples at the decision) or the process is gone.

        Summed, not the longest one thread's: a publication passes through several threads
        (the executor's timer thread wakes the one that publishes), each can wait in turn, and
        the publisher is silent for the total. Measured beside two busy loops: the sim silent
        174 ms while no single thread had waited more than ~90 ms."""
        ts = self._t
        if self.gone or not ts or ts[-1] < t1:
            return None
        i0 = max(0, bisect.bisect_right(ts, t0) - 1)
        i1 = bisect.bisect_left(ts, t1)
        before, after = self._delays[i0], self._delays[i1]
        # a thread born in between counts from 0: all its wait is inside the span
        return sum(d - before.get(tid, 0) for tid, d in after.items()) * 1e-9


class WriterProcesses:
    """The local processes publishing each watched topic, and their waits (one per monitor)."""

    def __init__(self, reader: Callable[[int], Callable[[], RunDelays | None]] | None = None
                 ) -> None:
        self.reader = reader
        """pid -> its reader (default: :class:`ThreadSchedstat`); tests give a fake /proc."""
        self.processes: dict[int, ProcessWait] = {}
        self.topic_pids: dict[str, tuple[int, ...] | None] = {}
        """Topic -> its writers' local pids; None: some writer is not known (another host…)."""

    def set_writers(self, topic: str, pids: list[int | None]) -> None:
        """The graph's writers of ``topic`` (call at the graph poll): their local pids, None for
        a writer whose process is not known here."""
        known = tuple(p for p in pids if p is not None)
        self.topic_pids[topic] = known if known and len(known) == len(pids) else None
        live = {p for t in self.topic_pids.values() if t for p in t}
        for pid in live - self.processes.keys():
            self.processes[pid] = ProcessWait(pid, None if self.reader is None
                                              else self.reader(pid))
        for pid in self.processes.keys() - live:
            self.processes.pop(pid).close()

    def sample(self, now: float, topics: Iterable[str] | None = None) -> None:
        """Sample the processes of ``topics`` (default: every one)."""
        if topics is None:
            wanted = list(self.processes.values())
        else:
            pids = {p for t in topics for p in (self.topic_pids.get(t) or ())}
            wanted = [self.processes[p] for p in pids if p in self.processes]
        for process in wanted:
            if process.sampled_at < now:
                process.sample(now)

    def waited(self, topic: str, t0: float, t1: float) -> float | None:
        """The CPU wait of ``topic``'s writers between ``t0`` and ``t1`` (the most of any one
        writer process); None when a writer is not known here or not sampled up to ``t1``."""
        pids = self.topic_pids.get(topic)
        if not pids:
            return None
        worst = 0.0
        for pid in pids:
            process = self.processes.get(pid)
            wait = None if process is None else process.waited(t0, t1)
            if wait is None:
                return None
            worst = max(worst, wait)
        return worst
