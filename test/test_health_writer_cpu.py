"""The publisher's own CPU wait as the evidence of a starved publisher
(health_monitor.writer_cpu): which process owns a DDS writer, what its threads waited, and the
STALE rule on it - a busy host no longer slows the detection of a publisher that was not
starved, and a starved one is still not called stale."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

from health_monitor.evidence import CpuPressure
from health_monitor.topics import TopicMonitor
from health_monitor.writer_cpu import (
    EPROSIMA,
    ProcessWait,
    ThreadSchedstat,
    WriterProcesses,
    local_pid,
)
from test_health_evidence import CHECK_S, Host, _limits

HOST = b'\x78\xfd'


def _gid(pid: int, host: bytes = HOST, vendor: bytes = EPROSIMA) -> bytes:
    return vendor + host + bytes([pid & 0xFF, pid >> 8 & 0xFF]) + b'\x8d\x8e' + bytes(16)


def test_the_process_of_a_writer_is_told_only_when_it_is_sure() -> None:
    assert local_pid(_gid(16982), HOST, [1, 16982, 20000]) == 16982
    assert local_pid(_gid(16982), None, [16982]) is None                 # own host not known
    assert local_pid(_gid(16982, host=b'\x00\x01'), HOST, [16982]) is None   # another host
    assert local_pid(_gid(16982, vendor=b'\x01\x10'), HOST, [16982]) is None  # not Fast DDS
    assert local_pid(_gid(16982), HOST, [16982, 16982 + 65536]) is None   # pid_max > 65536
    assert local_pid(_gid(16982), HOST, [1, 2]) is None                    # gone


class Waits:
    """A process whose threads waited ``per_s`` of every second from ``t`` on (fake /proc)."""

    def __init__(self) -> None:
        self.ns = {1: 0, 2: 0}
        self.alive = True

    def add(self, tid: int, seconds: float) -> None:
        self.ns[tid] = self.ns.get(tid, 0) + int(seconds * 1e9)

    def read(self) -> dict[int, int] | None:
        return dict(self.ns) if self.alive else None

    def reader(self, _pid: int) -> Callable[[], dict[int, int] | None]:
        return self.read


def test_a_process_wait_is_its_threads_waits_summed_over_a_conservative_span() -> None:
    waits = Waits()
    proc = ProcessWait(7, waits.read)
    proc.sample(0.0)
    waits.add(1, 0.02)
    waits.add(2, 0.05)
    proc.sample(0.1)
    waits.add(3, 0.01)                              # a thread born in between
    proc.sample(0.2)
    assert abs(proc.waited(0.0, 0.1) - 0.07) < 1e-9
    assert abs(proc.waited(0.05, 0.15) - 0.08) < 1e-9  # widened to the samples around it
    assert abs(proc.waited(0.1, 0.2) - 0.01) < 1e-9
    assert proc.waited(0.1, 0.25) is None           # not sampled up to the decision
    waits.alive = False
    proc.sample(0.3)
    assert proc.gone and proc.waited(0.0, 0.1) is None


def test_writer_processes_of_a_topic_unknown_when_any_writer_is() -> None:
    waits = Waits()
    wp = WriterProcesses(waits.reader)
    wp.set_writers('/imu', [11])
    wp.set_writers('/odom', [11, None])             # one writer elsewhere
    wp.sample(0.0)
    waits.add(1, 0.03)
    wp.sample(0.1)
    assert abs(wp.waited('/imu', 0.0, 0.1) - 0.03) < 1e-9
    assert wp.waited('/odom', 0.0, 0.1) is None
    assert wp.waited('/unknown', 0.0, 0.1) is None
    wp.set_writers('/imu', [])
    assert wp.processes == {} and wp.waited('/imu', 0.0, 0.1) is None


class WriterHost(Host):
    """:class:`Host` with the publisher's own process: its thread waits ``writer_share`` of
    every check while the host's pressure is ``share``."""

    def __init__(self, mon: TopicMonitor, pressure: CpuPressure, rate: float) -> None:
        super().__init__(mon, pressure, rate)
        self.waits = Waits()
        self.writers = WriterProcesses(self.waits.reader)
        self.writers.set_writers(mon.topic, [42])
        mon.writer_cpu = self.writers
        self.writer_share = 0.0

    def run(self, seconds: float, share: float, publishing: bool = True,
            writer_share: float = 0.0) -> list[bool]:
        decisions = []
        for _ in range(round(seconds / CHECK_S)):
            self.waits.add(1, writer_share * CHECK_S)
            self.writers.sample(self.t + CHECK_S)
            decisions += super().run(CHECK_S, share, publishing)
        return decisions


def test_a_busy_host_whose_publisher_did_not_wait_detects_at_the_configured_hold() -> None:
    """Some task of the host waits all the time (the soak stack beside the bench: PSI 49 %,
    STALE after 414 ms at p50), but the publisher's threads did not: the silence is the
    source's, called at 2 periods + the hold + at most one check."""
    lim = _limits('imu')
    pressure = CpuPressure()
    mon = TopicMonitor('imu', 'sensors/imu', lim, pressure=pressure)
    host = WriterHost(mon, pressure, 500.0)
    host.run(2.0, share=1.0, writer_share=0.3)
    last = mon.last_rx
    decisions = host.run(0.5, share=1.0, publishing=False, writer_share=0.0)
    caught = CHECK_S * (decisions.index(True) + 1) + (host.t - 0.5 - last)
    assert lim.stale_raise_s <= caught <= lim.stale_raise_s + CHECK_S + 1e-9, caught


def test_a_publisher_whose_threads_waited_is_not_stale() -> None:
    """The busy-host false STALE replayed with the publisher's own wait: odom silent 0.18 s
    while its threads waited for a CPU in turn (two threads, each less than the silence: the
    sum covers it); the host's pressure says the same."""
    pressure = CpuPressure()
    mon = TopicMonitor('odom', 'robot/odometry', _limits('odom'), pressure=pressure)
    host = WriterHost(mon, pressure, 100.0)
    assert host.run(2.0, share=0.05)[1:] == [False] * 199     # (one sample: not flowing yet)
    assert not any(host.run(0.09, share=1.0, publishing=False, writer_share=1.0))
    host.waits.add(2, 0.09)                        # the next thread of the chain waits next
    assert not any(host.run(0.09, share=1.0, publishing=False))
    assert not any(host.run(1.0, share=0.05))
    assert mon.stale_raised == 0


def test_run_delay_of_a_real_process_grows_while_it_waits_for_a_cpu() -> None:
    """Two busy processes on one CPU: each waits about half the time, and /proc says so."""
    code = ('import os, time\nos.sched_setaffinity(0, {0})\nend = time.time() + 3\n'
            'while time.time() < end: pass\n')
    hogs = [subprocess.Popen([sys.executable, '-c', code]) for _ in range(2)]
    try:
        time.sleep(0.5)
        proc = ProcessWait(hogs[0].pid)
        proc.sample(0.0)
        time.sleep(1.0)
        proc.sample(1.0)
        waited = proc.waited(0.0, 1.0)
        assert waited is not None and waited > 0.1, waited
        own = ThreadSchedstat(os.getpid())
        mine = own.read()
        own.close()
        assert mine and os.getpid() in mine
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
