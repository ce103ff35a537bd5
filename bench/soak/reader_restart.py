"""A Fast DDS reader killed with -9 and started again, without the stack: does the new one hear?

Two plain rclpy processes on a private domain, the project's Fast DDS profile: a writer publishing
six 500 Hz JointState topics (reliable, keep-last 1000: what sim_robot does) and a reader of all
six. Per run: the reader gets 3000 samples, is killed with -9, ``clean_stale_shm`` runs (as the
health monitor does before a restart), a new reader starts after ``--delay`` s. Printed per run:
whether the new reader got 3000 samples within ``--timeout`` s (and when), the "Failed
init_port" lines it logged, the writer's lateness (how far its 500 Hz loop fell behind) at worst,
and the host load. Why: issue 13's restarted skill_runtime (and a restarted data_recorder in the
soak) never answered; this shows the same with no project node in the way.

    python bench/soak/reader_restart.py --runs 5 --delay 0
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from field_deploy.testing import isolate_ros_env

isolate_ros_env()
from field_deploy.rosenv import clean_stale_shm  # noqa: E402

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


def _start(code: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', code], stdout=log.open('w'), stderr=subprocess.STDOUT)


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


def run_once(tmp: Path, delay: float, timeout: float) -> bool:
    writer = _start(_WRITER, tmp / 'writer.log')
    first = _start(_READER, tmp / 'reader1.log')
    second = None
    try:
        if _wait_count(tmp / 'reader1.log', 3000, 60) is None:
            print('  the first reader got nothing: no run')
            return False
        first.kill()
        first.wait()
        time.sleep(delay)
        clean_stale_shm()
        second = _start(_READER, tmp / 'reader2.log')
        took = _wait_count(tmp / 'reader2.log', 3000, timeout)
        text = (tmp / 'reader2.log').read_text(errors='replace')
        errors = re.findall(r'Failed init_port (\S+?):', text)
        late = [float(x) for x in re.findall(r'late (\S+)', (tmp / 'writer.log').read_text())]
        heard = f'3000 samples in {took:.1f} s' if took is not None else 'NO samples'
        print(f'  new reader: {heard}'
              f' ({_count(tmp / "reader2.log")} in all); init_port errors: {len(errors)} '
              f'{sorted(set(errors))}; writer at worst {max(late, default=0):.1f} s behind; '
              f'load {os.getloadavg()[0]:.1f}', flush=True)
        return took is not None
    finally:
        for proc in (writer, first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--delay', type=float, default=0.0, help='seconds between the kill and the restart')
    ap.add_argument('--timeout', type=float, default=40.0)
    args = ap.parse_args()
    ok = 0
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix='reader_restart-') as tmp:
            print(f'run {run + 1}/{args.runs} (delay {args.delay:g} s):', flush=True)
            ok += run_once(Path(tmp), args.delay, args.timeout)
    print(f'{ok} of {args.runs} restarted readers heard the writer')
    return 0


if __name__ == '__main__':
    sys.exit(main())
