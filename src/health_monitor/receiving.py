"""Whether this process's middleware receive threads have samples in hand (Linux /proc).

A check that finds a reader empty proves a silence only if nothing was on its way into it. The
samples a writer has handed over wait in this process's transport (Fast DDS: the shared-memory
port's ring, the UDP socket) until one of its receive threads (named ``dds.shm.<port>`` and
``dds.udp.<port>`` by Fast DDS) takes them into the readers. A receive thread with nothing to do
sleeps on its port (state S); one that is working through samples, or has been woken and waits
for a CPU on a loaded host, is runnable (state R). So at the moment of a check: all of them
asleep — nothing in flight, the empty reader is evidence; one of them runnable — the monitor
may be holding the very samples it would call missing (measured beside two busy loops: the
monitor's listener starved 0.4-0.8 s while its check timer ran on time, and every stream of
the sim was called STALE with its samples waiting in the port).
"""

from __future__ import annotations

import os
import time

RECEIVE_PREFIXES = ('dds.shm.', 'dds.udp.')
"""Fast DDS's receive threads (2.10+ names its threads); ``dds.shm.wdog`` is not one."""


class ReceiveThreads:
    """The receive threads of this process, found by name, and whether any is runnable."""

    REFRESH_S = 5.0
    """Threads are looked up again this often (a transport may start its listener late)."""

    def __init__(self, task_dir: str = '/proc/self/task') -> None:
        self.task_dir = task_dir
        self.tids: list[str] = []
        self._found_at = -1e9
        self.busy_checks = 0
        """How many times a check was not taken for evidence: a receive thread was runnable."""
        self._waited: dict[str, int] = {}

    def _refresh(self) -> None:
        tids = []
        try:
            for tid in os.listdir(self.task_dir):
                try:
                    with open(f'{self.task_dir}/{tid}/comm') as f:
                        name = f.read().strip()
                except OSError:
                    continue
                if name.startswith(RECEIVE_PREFIXES) and not name.endswith('.wdog'):
                    tids.append(tid)
        except OSError:
            pass
        self.tids = tids
        self._found_at = time.monotonic()

    def busy(self) -> bool:
        """A receive thread is running or waiting for a CPU (False when none is known)."""
        if time.monotonic() - self._found_at > self.REFRESH_S:
            self._refresh()
        for tid in self.tids:
            try:
                with open(f'{self.task_dir}/{tid}/stat') as f:
                    stat = f.read()
            except OSError:
                continue
            # "<tid> (<comm>) <state> …": the name may hold spaces, the state follows its ')'
            if stat[stat.rindex(')') + 2] == 'R':
                self.busy_checks += 1
                return True
        return False

    def waited_s(self) -> float:
        """The longest run-queue wait (s) a receive thread completed since the previous call
        (0 for a thread seen for the first time: its baseline)."""
        if time.monotonic() - self._found_at > self.REFRESH_S:
            self._refresh()
        longest = 0
        for tid in self.tids:
            try:
                with open(f'{self.task_dir}/{tid}/schedstat') as f:
                    waited = int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
            before = self._waited.get(tid, waited)
            self._waited[tid] = waited
            longest = max(longest, waited - before)
        return longest * 1e-9

    def blind(self, previous: float, now: float, consecutive: bool) -> tuple[float, float] | None:
        """The part of ``[previous, now]`` (the time since the previous check) in which the
        receive threads may have held samples back: all of it when one is runnable now, else
        the longest run-queue wait one of them completed meanwhile — counted only when the
        previous check probed too (``consecutive``): an older baseline would put waits from
        before the silence into it. None: nothing held back, the empty readers are evidence."""
        waited = self.waited_s()
        if self.busy():
            return previous, now
        if consecutive and waited > 0:
            return max(previous, now - waited), now
        return None


class PressureFile:
    """The host's CPU pressure stall time (Linux PSI, ``/proc/pressure/cpu``, the "some" line's
    ``total``: µs in which at least one runnable task waited for a CPU), read at each check.

    :meth:`total_s` returns None where PSI is not there (kernel without it, ``psi=0``): the STALE
    hold then stretches only after delivery gaps (``health_monitor.evidence``).
    """

    def __init__(self, path: str = '/proc/pressure/cpu') -> None:
        self.path = path
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY)
        except OSError:
            self._fd = None

    def total_s(self) -> float | None:
        if self._fd is None:
            return None
        try:
            line = os.pread(self._fd, 256, 0).split(b'\n', 1)[0]   # "some avg10=… total=N"
            return int(line.rsplit(b'total=', 1)[1]) * 1e-6
        except (OSError, IndexError, ValueError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
