"""Foreign-writer alarm latency: a separate process starts publishing on ``joint_commands`` beside
the runtime; how long until ``skill_runtime/foreign_writer`` is ERROR at a third process. Prints
figures (target: within 1 s).

Runs ``sim_robot`` and ``skill_runtime`` as real processes on a private DDS domain. Each trial
starts a rogue writer (its own process, as a pack's or a stray tool's node would be), times the
alarm from the moment its publisher exists and from the moment this process sees it on the graph
(the part DDS discovery takes for a third party), stops it and waits for the alarm to clear.

Usage: ``.venv/bin/python bench/skills/foreign_writer.py [--trials 10]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

from field_deploy.testing import NodeProcess, isolate_ros_env, start_rogue_writer, wait_until

isolate_ros_env()

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.node import Node  # noqa: E402

from field_deploy.ros import Spinner  # noqa: E402
from skill_runtime.writers import ERROR, OK, STATUS_NAME  # noqa: E402


class Alarms(Node):
    def __init__(self) -> None:
        super().__init__('foreign_writer_bench')
        self.lock = threading.Lock()
        self.levels: list[tuple[float, int]] = []
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 50)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        with self.lock:
            for s in msg.status:
                if s.name == STATUS_NAME:
                    self.levels.append((now, s.level[0] if isinstance(s.level, bytes) else int(s.level)))

    def first(self, level: int, after: float) -> float | None:
        with self.lock:
            return next((t for t, lv in self.levels if t > after and lv == level), None)


def percentiles(ms: list[float]) -> str:
    a = np.array(ms)
    return f'p50 {np.percentile(a, 50):.0f} ms, p99 {np.percentile(a, 99):.0f} ms, max {a.max():.0f} ms'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--trials', type=int, default=10)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix='fw_bench_'))
    sim = NodeProcess('sim_robot', ['--ros-args', '-p', 'profile:=quadruped_12dof'], log_dir=log_dir)
    runtime = NodeProcess('skill_runtime', ['--ros-args', '-p', 'profile:=quadruped_12dof'], log_dir=log_dir)
    rclpy.init()
    node = Alarms()
    spinner = Spinner([node]).start()
    from_created: list[float] = []
    from_seen: list[float] = []
    cleared: list[float] = []
    try:
        if not wait_until(lambda: node.first(OK, 0.0) is not None, 60):
            raise SystemExit(f'runtime not reporting:\n{runtime.log()[-2000:]}')
        for i in range(args.trials):
            rogue, created = start_rogue_writer(f'rogue_{i}', '/bench')
            try:
                wait_until(lambda: any(p.node_name == f'rogue_{i}' for p in  # noqa: B023
                                       node.get_publishers_info_by_topic('/joint_commands')), 10, 0.005)
                seen = time.monotonic()
                if not wait_until(lambda: node.first(ERROR, created) is not None, 10):  # noqa: B023
                    print(f'trial {i}: no alarm within 10 s')
                    continue
                alarm = node.first(ERROR, created)
                from_created.append(1000 * (alarm - created))
                from_seen.append(1000 * (alarm - seen))
            finally:
                rogue.send_signal(signal.SIGINT)
                rogue.wait(10)
            gone = time.monotonic()
            if wait_until(lambda: node.first(OK, gone) is not None, 10):  # noqa: B023
                cleared.append(1000 * (node.first(OK, gone) - gone))
            print(f'trial {i}: alarm {from_created[-1]:.0f} ms after the publisher existed, '
                  f'{from_seen[-1]:.0f} ms after this process saw it; cleared '
                  f'{cleared[-1] if cleared else float("nan"):.0f} ms after it left', flush=True)
    finally:
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()
        runtime.stop()
        sim.stop()
    load = os.getloadavg()
    print(f'\nforeign writer -> ERROR on /diagnostics, {len(from_created)} trials '
          f'(load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}):')
    if from_created:
        print(f'  from its publisher existing:        {percentiles(from_created)}  (target <= 1000 ms)')
        print(f'  from another process seeing it:    {percentiles(from_seen)}')
    if cleared:
        print(f'  cleared after the writer left:       {percentiles(cleared)}')


if __name__ == '__main__':
    main()
