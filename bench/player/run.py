"""Replay timing accuracy and throughput ceiling of ``bag_player`` on the reference humanoid load.

Writes the reference bag synthetically with the ``rosbags`` writer (JointState 29 joints @ 1 kHz,
Imu @ 1 kHz, 4× WrenchStamped @ 500 Hz, Odometry @ 100 Hz, 3× Image 640×480 rgb8 @ 30 Hz,
DiagnosticArray @ 10 Hz, joint_commands @ 500 Hz), plays it in-process through the real node
(real rclpy publishers, real DDS, a subscriber process receiving every topic) and prints:

* timing error = actual publish time − scheduled time, p50 / p99 / max, at 1×;
* rate scaling: the first ``--rate-window`` seconds at 0.5× and 4×, the play's length against
  window / rate and the timing error (the figures test_player leaves to this bench);
* the throughput ceiling: messages per second at ``--rate 1000`` (as fast as it goes).

Usage: ``.venv/bin/python bench/player/run.py [--seconds 20] [--rate-window 2] [--keep BAG]
[--no-subscriber]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from field_deploy.testing import isolate_ros_env

isolate_ros_env()

import numpy as np  # noqa: E402

from data_recorder.bag.reader import Bag  # noqa: E402
from data_recorder.replay.node import (  # noqa: E402
    GIL_SWITCH_INTERVAL_S,
    make_player_node,
    wait_for_subscribers,
)
from data_recorder.replay.player import PlayOptions, set_realtime  # noqa: E402
from data_recorder.synthetic import reference_streams, write_bag  # noqa: E402

SUBSCRIBER = r'''
import sys, time
import data_recorder
import rclpy
from field_deploy.ros import Spinner, message_class
from field_deploy.testing import RawCollector
from data_recorder.bag.reader import Bag
rclpy.init()
node = rclpy.create_node('bench_subscriber')
bag = Bag(sys.argv[1])
c = RawCollector(node, [(t.name, message_class(t.type)) for t in bag.topics.values()])
with Spinner([node]):
    print('ready', flush=True)
    for line in sys.stdin:
        time.sleep(1.0)
        print(sum(len(v) for v in c.messages.values()), flush=True)
        if line.strip() == 'quit':
            break
'''


def play_once(bag: Bag, rate: float, *, delay: float, wait: bool,
              duration: float | None = None) -> tuple[list[int], int, float]:
    import rclpy

    from field_deploy.ros import Spinner
    node, player = make_player_node(bag, PlayOptions(rate=rate, delay_s=delay, duration_s=duration),
                                    record_timing=True)
    with Spinner([node]):
        if wait:
            wait_for_subscribers(node, player.publishers, 20.0)
        t0 = time.monotonic()
        stats = player.run()
        elapsed = time.monotonic() - t0 - delay
    node.destroy_node()
    del rclpy
    return stats.errors_ns, stats.published, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=20.0)
    parser.add_argument('--keep', default=None, help='write / reuse the bag here')
    parser.add_argument('--rate-window', type=float, default=2.0,
                        help='seconds of the bag played at 0.5x and 4x (0: skip)')
    parser.add_argument('--no-subscriber', action='store_true')
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    path = Path(args.keep) if args.keep else Path(tmp.name) / 'reference'
    if not path.exists():
        t0 = time.monotonic()
        write_bag(path, reference_streams(), args.seconds)
        print(f'wrote {path} ({args.seconds:g} s reference load) in {time.monotonic() - t0:.1f} s')
    bag = Bag(path)
    print(f'bag: {bag.message_count} messages, {bag.size_bytes / 1e6:.0f} MB, '
          f'{bag.duration_ns / 1e9:.1f} s, {len(bag.topics)} topics; machine: {os.cpu_count()} cores, '
          f'load average {os.getloadavg()[0]:.1f}')

    import rclpy
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    realtime = set_realtime(10)        # as bag_player does: before any thread, so all inherit it
    print(f'SCHED_FIFO: {"yes" if realtime else "not permitted (normal priority)"}; Fast DDS '
          f'publication mode: {os.environ.get("RMW_FASTRTPS_PUBLICATION_MODE", "default (synchronous)")}')
    sub = None
    if not args.no_subscriber:
        sub = subprocess.Popen([sys.executable, '-c', SUBSCRIBER, str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        assert sub.stdout.readline().strip() == 'ready'
    rclpy.init()
    try:
        errors, n, elapsed = play_once(bag, 1.0, delay=0.5, wait=sub is not None)
        if sub is not None:
            sub.stdin.write('count\n')
            sub.stdin.flush()
            got = int(sub.stdout.readline())
            print(f'subscriber process received {got} of {n} messages at 1x')
        e = np.asarray(errors) / 1e6
        print(f'1x timing error (publish − scheduled), {n} msgs over {elapsed:.1f} s: '
              f'p50 {np.percentile(e, 50):.3f} ms  p99 {np.percentile(e, 99):.3f} ms  '
              f'max {e.max():.3f} ms  (target p99 <= 1 ms)')
        for rate in (0.5, 4.0) if args.rate_window > 0 else ():
            errors, n, elapsed = play_once(bag, rate, delay=0.5, wait=sub is not None,
                                           duration=args.rate_window)
            e = np.asarray(errors) / 1e6
            print(f'{rate:g}x over the first {args.rate_window:g} s: {n} msgs in {elapsed:.3f} s '
                  f'(due {args.rate_window / rate:.3f} s); timing error p50 '
                  f'{np.percentile(e, 50):.3f} ms  p99 {np.percentile(e, 99):.3f} ms  '
                  f'max {e.max():.3f} ms; load average {os.getloadavg()[0]:.1f}')
        _, n, elapsed = play_once(bag, 1000.0, delay=0.5, wait=sub is not None)
        print(f'throughput ceiling (--rate 1000): {n / elapsed:,.0f} msg/s, '
              f'{bag.size_bytes / 1e6 / elapsed:.0f} MB/s ({elapsed:.2f} s for the bag)')
    finally:
        rclpy.try_shutdown()
        if sub is not None:
            out, _ = sub.communicate('quit\n', timeout=60)
            print(f'subscriber received {out.strip().splitlines()[-1]} messages over all runs '
                  '(at --rate 1000 a KEEP_LAST subscriber drops, as expected)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
