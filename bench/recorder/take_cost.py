#!/usr/bin/env python3
"""CPU per message of taking a sample on the EventsExecutor: raw bytes only (the recorder before
the sequence accounting) against bytes + rmw message info + the sequence tracker
(``data_recorder.capture.subscriptions.sequenced_callback``, what the recorder does now).

One process, one publisher and one subscriber node: rounds of ``--burst`` messages are published
(kept in the reader's history), then taken; only the taking is timed (process CPU time), so the
figure holds on a busy host. Prints µs per message for each way and the load average.

    .venv/bin/python bench/recorder/take_cost.py --rounds 30 --burst 900
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


def measure(with_info: bool, rounds: int, burst: int) -> float:
    import rclpy
    from rclpy.experimental import EventsExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.subscription import Subscription
    from sensor_msgs.msg import JointState

    from data_recorder.capture.accounting import TopicStats
    from data_recorder.capture.subscriptions import sequenced_callback

    context = rclpy.Context()
    rclpy.init(context=context)
    pub_node = rclpy.create_node('take_cost_pub', context=context)
    sub_node = rclpy.create_node('take_cost_sub', context=context)
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=burst + 100,
                     reliability=ReliabilityPolicy.RELIABLE)
    sink, stats = _Sink(), TopicStats()
    if with_info:
        sub = sub_node.create_subscription(JointState, '/take', sequenced_callback(
            sink, stats, '/take'), qos, raw=True)
        sub._callback_type = Subscription.CallbackType.WithMessageInfo
    else:
        sub_node.create_subscription(
            JointState, '/take', lambda data: sink.on_message(stats, '/take', data), qos, raw=True)
    pub = pub_node.create_publisher(JointState, '/take', qos)
    executor = EventsExecutor(context=context)
    executor.add_node(sub_node)
    while pub.get_subscription_count() == 0:
        time.sleep(0.01)
    msg = JointState(name=[f'joint_{k}' for k in range(29)], position=[0.0] * 29,
                     velocity=[0.0] * 29, effort=[0.0] * 29)
    cpu = 0.0
    for r in range(rounds):
        for _ in range(burst):
            pub.publish(msg)
        time.sleep(0.05)
        target = (r + 1) * burst
        t0 = time.process_time()
        deadline = time.monotonic() + 20
        while sink.count < target and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        cpu += time.process_time() - t0
    taken = sink.count
    assert not with_info or stats.seq.lost == 0, stats.seq.per_writer()
    executor.shutdown()
    rclpy.shutdown(context=context)
    return cpu / max(1, taken) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=30)
    parser.add_argument('--burst', type=int, default=900)
    parser.add_argument('--repeat', type=int, default=2)
    args = parser.parse_args()
    isolate_ros_env()
    for k in range(args.repeat):
        raw = measure(False, args.rounds, args.burst)
        info = measure(True, args.rounds, args.burst)
        print(f'[{k}] raw bytes: {raw:5.2f} µs/msg   bytes + info + sequence: {info:5.2f} µs/msg '
              f'(+{info - raw:4.2f})   load average {os.getloadavg()[0]:.1f}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
