"""A Fast DDS reader killed with -9 and started again, without the stack: does the new one hear?

Two plain rclpy processes on a private domain, the project's Fast DDS profile: a writer publishing
six 500 Hz JointState topics (reliable, keep-last 1000: what sim_robot does) and a reader of all
six. Per run: the reader gets 3000 samples, is killed with -9, ``clean_stale_shm`` runs (as the
health monitor does before a restart), a new reader starts after ``--delay`` s. Printed per run:
whether the new reader got 3000 samples within ``--timeout`` s (and when), the "Failed
init_port" lines it logged, the writer's lateness (how far its 500 Hz loop fell behind) at worst,
and the host load. Why: issue 13's restarted skill_runtime (and a restarted data_recorder in the
soak) never answered; this shows the same with no project node in the way.

Also printed: how often the dead reader's shared-memory port segments (``/dev/shm/fastrtps_portN``,
read from its open files before the kill) were created anew between the kill and the restart
(by the writer: nothing else runs), the last time, and when
the dead reader left the graph (a probe node in this process sees its subscriptions go). While a
dead reader is still matched, Fast DDS 2.14 creates and deletes its ports on every sample sent to
them, lock files and named mutex included; a new reader takes those very ports (the lowest free
participant index). ``--after-graph`` starts the new reader only once the dead one has left the
graph, as the health monitor now does (docs/skill_runtime.md, "Restart after a kill -9").

    python bench/soak/reader_restart.py --runs 5 --delay 0
    python bench/soak/reader_restart.py --runs 5 --delay 11      # the monitor's old timing
    python bench/soak/reader_restart.py --runs 5 --after-graph
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from field_deploy.testing import isolate_ros_env

isolate_ros_env()
from field_deploy.rosenv import FASTDDS_PROFILES_ENV, clean_stale_shm  # noqa: E402

_WRITER = '''
import time
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from field_deploy.ros import init
import rclpy
init([])
node = rclpy.create_node('restart_writer')
qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
pubs = [node.create_publisher(JointState, f'restart_t{i}', qos) for i in range(6)]
msg = JointState(name=[f'j{i}' for i in range(12)], position=[0.0] * 12)
t, k = time.monotonic(), 0
while True:
    for pub in pubs:
        pub.publish(msg)
    k, t = k + 1, t + 0.002
    late = time.monotonic() - t
    if late < 0:
        time.sleep(-late)
    if k % 250 == 0:
        print('late', round(late, 3), flush=True)
'''

_READER = '''
import time
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from field_deploy.ros import init
import rclpy
init([])
node = rclpy.create_node('restart_reader')
got = [0]
qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
subs = [node.create_subscription(JointState, f'restart_t{i}', lambda _m: got.__setitem__(0, got[0] + 1), qos)
        for i in range(6)]
last = 0.0
while rclpy.ok():
    rclpy.spin_once(node, timeout_sec=0.1)
    if time.monotonic() - last > 0.25:
        last = time.monotonic()
        print('got', got[0], flush=True)
'''


def _start(code: str, log: Path, profile: str | None = None) -> subprocess.Popen:
    """``code`` in a fresh interpreter, output to ``log``; ``profile``: its own Fast DDS XML."""
    env = dict(os.environ)
    if profile:
        env[FASTDDS_PROFILES_ENV] = profile
    return subprocess.Popen([sys.executable, '-c', code], stdout=log.open('w'),
                            stderr=subprocess.STDOUT, env=env)


def _count(log: Path) -> int:
    found = re.findall(r'got (\d+)', log.read_text(errors='replace'))
    return int(found[-1]) if found else 0


def _wait_count(log: Path, n: int, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _count(log) >= n:
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def shm_ports(pid: int) -> list[int]:
    """The shared-memory ports a live Fast DDS process listens on (it keeps their ``_el`` open)."""
    ports = set()
    for fd in Path(f'/proc/{pid}/fd').iterdir():
        try:
            found = re.search(r'/fastrtps_port(\d+)_el$', os.readlink(fd))
        except OSError:
            continue
        if found:
            ports.add(int(found.group(1)))
    return sorted(ports)


class PortChurn:
    """Watches port segment files from another thread: every new inode at the name is one
    creation (polled every 2 ms, so a lower bound)."""

    def __init__(self, ports: list[int]) -> None:
        self.paths = [Path(f'/dev/shm/fastrtps_port{port}') for port in ports]
        self.t0 = time.monotonic()
        self.created = 0
        self.last = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = {path: None for path in self.paths}
        while not self._stop.wait(0.002):
            for path in self.paths:
                try:
                    inode = path.stat().st_ino
                except OSError:
                    continue
                if inode != seen[path]:
                    seen[path] = inode
                    self.created += 1
                    self.last = time.monotonic() - self.t0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def wait_left_graph(probe, timeout: float = 60.0) -> float | None:
    """Seconds until no subscription of the bench's topic is left on the graph (the dead
    reader's lease ran out at the probe), or None."""
    import rclpy
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        rclpy.spin_once(probe, timeout_sec=0.05)
        if probe.count_subscribers('restart_t0') == 0:
            return time.monotonic() - t0
    return None


def run_once(tmp: Path, delay: float, timeout: float, probe=None) -> bool:
    writer = _start(_WRITER, tmp / 'writer.log')
    first = _start(_READER, tmp / 'reader1.log')
    second = None
    churn = None
    try:
        if _wait_count(tmp / 'reader1.log', 3000, 60) is None:
            print('  the first reader got nothing: no run')
            return False
        ports = shm_ports(first.pid)
        first.kill()
        first.wait()
        churn = PortChurn(ports)
        left = None
        if probe is not None:
            left = wait_left_graph(probe)
        time.sleep(delay)
        clean_stale_shm()
        restarted = time.monotonic() - churn.t0
        created, last_created = churn.created, churn.last   # by others: the new one starts now
        second = _start(_READER, tmp / 'reader2.log')
        took = _wait_count(tmp / 'reader2.log', 3000, timeout)
        churn.stop()
        text = (tmp / 'reader2.log').read_text(errors='replace')
        errors = re.findall(r'Failed init_port (\S+?):', text)
        late = [float(x) for x in re.findall(r'late (\S+)', (tmp / 'writer.log').read_text())]
        heard = f'3000 samples in {took:.1f} s' if took is not None else 'NO samples'
        gone = f'left the graph at {left:.1f} s, ' if left is not None else ''
        last = f'{last_created:.1f} s' if last_created is not None else '-'
        print(f'  new reader at {restarted:.1f} s: {heard}'
              f' ({_count(tmp / "reader2.log")} in all); init_port errors: {len(errors)} '
              f'{sorted(set(errors))}; dead reader\'s ports {ports}: {gone}created '
              f'{created} times between the kill and the restart, last at {last}; '
              f'writer at worst {max(late, default=0):.1f} s behind; '
              f'load {os.getloadavg()[0]:.1f}', flush=True)
        return took is not None
    finally:
        if churn is not None:
            churn.stop()
        for proc in (writer, first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--delay', type=float, default=0.0, help='seconds between the kill and the restart')
    ap.add_argument('--timeout', type=float, default=40.0)
    ap.add_argument('--after-graph', action='store_true',
                    help='start the new reader once the dead one has left the graph (then --delay)')
    args = ap.parse_args()
    probe = None
    if args.after_graph:
        import rclpy

        from field_deploy.ros import init
        init([])
        probe = rclpy.create_node('restart_probe')
    ok = 0
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix='reader_restart-') as tmp:
            when = 'after the graph, then ' if args.after_graph else ''
            print(f'run {run + 1}/{args.runs} ({when}delay {args.delay:g} s):', flush=True)
            ok += run_once(Path(tmp), args.delay, args.timeout, probe)
    print(f'{ok} of {args.runs} restarted readers heard the writer')
    return 0


if __name__ == '__main__':
    sys.exit(main())
