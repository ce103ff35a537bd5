"""Does a reader's kill -9 stall the robot's writers? The sim's streams seen from a third process.

sim_robot (the real executable, the project's Fast DDS profile) publishes; a ``field_deploy bag
record -a`` records everything (the reader that gets killed); this process subscribes raw to the
sim's 500 Hz ``joint_states`` and keeps each sample's header stamp (the sim's sample clock) and
its receive time. A recorder is started, killed with -9 after ``--settle`` s, and watched for
12 s; then the next one, ``--kills`` times. Printed per kill: the longest gap in the stamps and in the
arrivals over the 10 s after the kill against the 5 s before (a stalled writer shows in both:
its timer skips samples), and the sim's own "behind" log lines.

Why: in the one-hour soak the sim's timers logged 5-6 s behind at the recorder's kill
(docs/soak.md); a robot driver that freezes because a recorder crashed is a robot that stops.
``--sim-profile`` runs the sim with another Fast DDS XML (e.g. a shorter SHM
``healthy_check_timeout_ms``).

    python bench/sim/reader_kill_stall.py --kills 3
    python bench/sim/reader_kill_stall.py --kills 3 --sim-profile my.xml
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from field_deploy.testing import NodeProcess, RawCollector, isolate_ros_env, wait_until

isolate_ros_env()

from field_deploy.rosenv import FASTDDS_PROFILES_ENV, clean_stale_shm  # noqa: E402
from sim_robot.streamcheck import cdr_header_stamp_ns  # noqa: E402


def gaps_ms(rows: list[tuple[int, int]], t0: int, t1: int) -> tuple[float, float, float, int]:
    """(longest stamp gap, longest arrival gap, worst latency = arrival - stamp, samples) over
    the samples stamped in [t0, t1) ns (the sim stamps with its sample clock: a writer that
    stalls and catches up shows as latency, one that skips as a stamp gap)."""
    window = sorted((stamp, recv) for recv, stamp in rows if t0 <= stamp < t1)
    if len(window) < 2:
        return float('nan'), float('nan'), float('nan'), len(window)
    stamps = [s for s, _r in window]
    recvs = sorted(r for _s, r in window)
    return (max(b - a for a, b in itertools.pairwise(stamps)) / 1e6,
            max(b - a for a, b in itertools.pairwise(recvs)) / 1e6,
            max(r - s for s, r in window) / 1e6, len(window))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--kills', type=int, default=3)
    ap.add_argument('--profile', default='quadruped_12dof')
    ap.add_argument('--sim-profile', default=None, help='Fast DDS XML for the sim')
    ap.add_argument('--all-profile', default=None,
                    help='Fast DDS XML for every process (the recorder announces its lease with it)')
    ap.add_argument('--settle', type=float, default=8.0, help='seconds of recording before a kill')
    args = ap.parse_args()

    if args.all_profile:
        os.environ[FASTDDS_PROFILES_ENV] = args.all_profile
    import rclpy
    from sensor_msgs.msg import JointState

    from field_deploy.ros import Spinner, init
    init([])
    node = rclpy.create_node('reader_kill_stall_probe')
    probe = RawCollector(node, [('/joint_states', JointState)])
    spinner = Spinner([node])
    spinner.start()
    env = {FASTDDS_PROFILES_ENV: args.sim_profile} if args.sim_profile else None
    with tempfile.TemporaryDirectory(prefix='reader_kill_stall-', dir='/dev/shm') as name:
        tmp = Path(name)
        sim = NodeProcess('sim_robot', ['--ros-args', '-p', f'profile:={args.profile}'],
                          log_dir=tmp, env=env)
        recorder = None
        try:
            if not wait_until(lambda: probe.count('/joint_states') > 500, 60):
                print(f'no joint_states from the sim:\n{sim.log()[-2000:]}')
                return 1
            for kill in range(1, args.kills + 1):
                log = (tmp / f'record{kill}.log').open('w')
                recorder = subprocess.Popen(
                    [str(Path(sys.executable).with_name('field_deploy')), 'bag', 'record', '-a',
                     '-o', str(tmp / f'bag{kill}')], stdout=log, stderr=subprocess.STDOUT)
                time.sleep(args.settle)
                readers = node.count_subscribers('/joint_states')
                behind_before = sim.log().count('behind')
                t_kill = time.time_ns()
                recorder.send_signal(signal.SIGKILL)
                recorder.wait()
                left = None
                while time.time_ns() - t_kill < 12e9:
                    if left is None and node.count_subscribers('/joint_states') < readers:
                        left = (time.time_ns() - t_kill) / 1e9
                    time.sleep(0.05)
                rows = [(recv, cdr_header_stamp_ns(data))
                        for recv, data in list(probe.messages['/joint_states'])]
                before = gaps_ms(rows, t_kill - 5_000_000_000, t_kill)
                after = gaps_ms(rows, t_kill, t_kill + 10_000_000_000)
                behind = sim.log().count('behind') - behind_before
                print(f'kill {kill}: joint_states before: stamp gap {before[0]:5.1f} ms, arrival gap '
                      f'{before[1]:6.1f} ms, latency {before[2]:7.1f} ms; '
                      f'after: stamp gap {after[0]:7.1f} ms, '
                      f'arrival gap {after[1]:7.1f} ms, latency {after[2]:7.1f} ms ({after[3]} samples); '
                      f'sim "behind" lines {behind}; the dead reader left the graph after '
                      f'{"-" if left is None else f"{left:.1f}"} s  (load {os.getloadavg()[0]:.1f})',
                      flush=True)
                shutil.rmtree(tmp / f'bag{kill}', ignore_errors=True)
                clean_stale_shm()
            tail = [line for line in sim.log().splitlines() if 'behind' in line][-3:]
            print('sim log:', *tail, sep='\n  ')
        finally:
            if recorder is not None and recorder.poll() is None:
                recorder.kill()
            spinner.stop()
            sim.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
