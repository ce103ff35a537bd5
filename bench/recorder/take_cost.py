#!/usr/bin/env python3
"""CPU per message of taking a sample: on the EventsExecutor, raw bytes only (the recorder before
the sequence accounting) against bytes + rmw message info + the sequence tracker
(``data_recorder.capture.subscriptions.sequenced_callback``), and the same taken in batches by
:class:`data_recorder.capture.taker.Taker` with rclpy's take and with rcl's take of the writer gid
(:mod:`field_deploy.writer_take`, counted by :class:`field_deploy.sequence.GidTracker`: what the
recorder does now).

One process, one publisher and one subscriber node: rounds of ``--burst`` messages are published
(kept in the reader's history), then taken; only the taking is timed (CPU time of the taking thread), so the
figure holds on a busy host. Prints µs per message for each way and the load average.

``--busy``: a Python thread spins beside the taking (as the recorder's writer thread does when it
has work): then the wall time per message shows what waiting for the GIL costs each way.

    .venv/bin/python bench/recorder/take_cost.py --rounds 30 --burst 900 [--busy]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'src'))

from field_deploy.testing import isolate_ros_env


class _Sink:
    """Stands for the recorder's hand-off (``Recorder.on_message``): counts, nothing else."""

    def __init__(self) -> None:
        self.count = 0

    def on_message(self, _stats, _topic, _data) -> None:
        self.count += 1


def measure(mode: str, rounds: int, burst: int, busy: bool = False) -> tuple[float, float]:
    """``mode``: ``raw`` / ``info`` (EventsExecutor), ``taker`` (rclpy's take in batches) or
    ``gid`` (the recorder's take: rcl's, with the writer gid, in batches). Returns (CPU µs, wall µs) per
    message taken."""
    import threading

    import rclpy
    from rclpy.experimental import EventsExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.subscription import Subscription
    from sensor_msgs.msg import JointState

    from data_recorder.capture.accounting import TopicStats
    from data_recorder.capture.subscriptions import sequenced_callback
    from data_recorder.capture.taker import Taker, message_drain

    context = rclpy.Context()
    rclpy.init(context=context)
    pub_node = rclpy.create_node('take_cost_pub', context=context)
    sub_node = rclpy.create_node('take_cost_sub', context=context)
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=burst + 100,
                     reliability=ReliabilityPolicy.RELIABLE)
    sink, stats = _Sink(), TopicStats()
    executor = taker = None
    if mode == 'raw':
        sub_node.create_subscription(
            JointState, '/take', lambda data: sink.on_message(stats, '/take', data), qos, raw=True)
    elif mode == 'gid':
        from data_recorder.capture.subscriptions import writer_drain
        from field_deploy.ros import polled_subscription
        from field_deploy.sequence import GidTracker
        from field_deploy.writer_take import WriterTake
        stats.seq = GidTracker()
        sub = polled_subscription(sub_node, JointState, '/take', qos)
        taker = Taker()
        taker.add(sub, writer_drain(sink, stats, '/take', WriterTake(sub)))
    else:
        callback = sequenced_callback(sink, stats, '/take')
        sub = sub_node.create_subscription(JointState, '/take', callback, qos, raw=True)
        sub._callback_type = Subscription.CallbackType.WithMessageInfo
        if mode == 'taker':
            taker = Taker()
            taker.add(sub, message_drain(sub, callback))
    if taker is None:
        executor = EventsExecutor(context=context)
        executor.add_node(sub_node)
    pub = pub_node.create_publisher(JointState, '/take', qos)
    while pub.get_subscription_count() == 0:
        time.sleep(0.01)
    msg = JointState(name=[f'joint_{k}' for k in range(29)], position=[0.0] * 29,
                     velocity=[0.0] * 29, effort=[0.0] * 29)
    done = threading.Event()

    def spin() -> None:              # Python work holding the GIL, as a busy writer thread
        x = 0
        while not done.is_set():
            for k in range(1000):
                x += k
    spinner = threading.Thread(target=spin, daemon=True)
    cpu = wall = 0.0
    for r in range(rounds):
        for _ in range(burst):
            pub.publish(msg)
        time.sleep(0.05)
        if busy and not spinner.is_alive():
            spinner.start()
        target = (r + 1) * burst
        t0, w0 = time.thread_time(), time.monotonic()
        deadline = time.monotonic() + 20
        while sink.count < target and time.monotonic() < deadline:
            if taker is not None:
                taker.take_pass()
            else:
                executor.spin_once(timeout_sec=0.05)
        cpu += time.thread_time() - t0
        wall += time.monotonic() - w0
    done.set()
    taken = sink.count
    assert mode == 'raw' or stats.seq.lost == 0, stats.seq.per_writer()
    if executor is not None:
        executor.shutdown()
    rclpy.shutdown(context=context)
    return cpu / max(1, taken) * 1e6, wall / max(1, taken) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=30)
    parser.add_argument('--burst', type=int, default=900)
    parser.add_argument('--repeat', type=int, default=2)
    parser.add_argument('--busy', action='store_true',
                        help='a Python thread spins beside the taking (GIL contention)')
    args = parser.parse_args()
    isolate_ros_env()
    for k in range(args.repeat):
        figures = {mode: measure(mode, args.rounds, args.burst, args.busy)
                   for mode in ('raw', 'info', 'taker', 'gid')}
        print(f'[{k}] ' + '   '.join(
            f'{label}: {figures[mode][0]:5.2f} µs CPU, {figures[mode][1]:7.2f} µs wall'
            for mode, label in (('raw', 'executor raw bytes'),
                                ('info', 'executor bytes + info + sequence'),
                                ('taker', 'taker (batches) bytes + info + sequence'),
                                ('gid', 'taker, writer gid take + GidTracker')))
              + f'   (per message{", busy thread beside" if args.busy else ""}; '
              f'load average {os.getloadavg()[0]:.1f})', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
