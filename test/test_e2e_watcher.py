"""End to end, the health monitor on a busy robot and the watcher of the watcher.

`field_deploy up` runs the whole stack as processes (as test_e2e_stack.py does). One test puts two
busy-loop processes beside it and watches /diagnostics_agg: no stream that loses nothing may go
STALE, and a stream silenced in sim_robot must still be. The other kills the health monitor with
-9: the bring-up supervisor starts it again at once, the new monitor adopts the running nodes
(same processes, same lifecycle states, nothing re-configured) and its over-temperature policy
still stops the skill.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from field_deploy.operator import MissionStep, Operator
from field_deploy.testing import NodeProcess, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

MANAGED = ('sim_robot', 'data_recorder', 'skill_runtime')
BUSY_WINDOW_S = 30.0
"""The no-false-STALE window beside two busy loops. The issue asks for 60 s; 30 s keeps this
test near 1 min of the suite's budget (bench/demo/run.py --busy 2 counts STALEs over whole runs)."""


def child_pid(up: NodeProcess, name: str) -> int | None:
    for proc in psutil.Process(up.pid).children(recursive=True):
        try:
            if any(part.endswith(f'/{name}') for part in proc.cmdline()[:2]):
                return proc.pid
        except psutil.Error:
            continue
    return None


class AggLevels:
    """Every leaf level change on /diagnostics_agg, with its receive time."""

    def __init__(self, node: Node) -> None:
        self.changes: list[tuple[float, str, int, str]] = []
        self.level: dict[str, int] = {}
        self._lock = threading.Lock()
        node.create_subscription(DiagnosticArray, '/diagnostics_agg', self._on, QoSProfile(
            depth=100, reliability=ReliabilityPolicy.RELIABLE))

    def _on(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        with self._lock:
            for s in msg.status:
                level = s.level[0] if isinstance(s.level, bytes) else int(s.level)
                if self.level.get(s.name) != level:
                    self.changes.append((now, s.name, level, s.message))
                self.level[s.name] = level

    def stale_raised(self, paths: set[str], after: float, before: float = 1e18) -> list[tuple]:
        with self._lock:
            return [c for c in self.changes if after <= c[0] <= before and c[1] in paths
                    and c[2] == 3]


@pytest.fixture
def stack(tmp_path: Path, node_process, ros):
    up = node_process('field_deploy', ['up', '--robot', 'quadruped_12dof', '--bag-dir',
                                       str(tmp_path / 'bag')], env={'HOME': str(tmp_path)})
    from field_deploy.ros import Spinner

    node = Node(f'e2e_watcher_{int(time.time() * 1000) % 100000}')
    operator = Operator(node)
    agg = AggLevels(node)
    spinner = Spinner([node]).start()
    try:
        for name in MANAGED:
            assert operator.wait_state(f'/{name}', 'active', timeout=90.0), \
                f'{name} not active:\n{up.log()[-3000:]}'
        yield up, operator, agg
    finally:
        spinner.stop()
        node.destroy_node()


def _stream_leaves() -> set[str]:
    from health_monitor.config import load_config
    return {'/' + w.path for w in load_config(None, 'quadruped_12dof').topics}


def test_busy_host_raises_no_false_stale_and_still_catches_a_silence(stack) -> None:
    up, operator, agg = stack
    leaves = _stream_leaves()
    assert wait_until(lambda: all(agg.level.get(p) == 0 for p in leaves), 60.0), \
        {p: agg.level.get(p) for p in leaves}
    busy = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(2)]
    try:
        t0 = time.monotonic()
        time.sleep(BUSY_WINDOW_S)
        false = agg.stale_raised(leaves, t0)
        print(f'{len(false)} STALE in {BUSY_WINDOW_S:g} s beside two busy loops: {false}')
        assert false == [], false
        silenced = time.monotonic()
        operator.set_parameters('/sim_robot', {'fault_silent': 'imu'})
        assert wait_until(lambda: agg.stale_raised({'/sensors/imu/stream'}, silenced), 10.0), \
            up.log()[-3000:]
        caught = agg.stale_raised({'/sensors/imu/stream'}, silenced)[0][0] - silenced
        print(f'imu silenced beside two busy loops: STALE after {caught * 1000:.0f} ms '
              '(from the parameter request)')
    finally:
        for p in busy:
            p.kill()
    operator.set_parameters('/sim_robot', {'fault_silent': ''})
    assert wait_until(lambda: agg.level.get('/sensors/imu/stream') == 0, 30.0)


def test_health_monitor_killed_comes_back_adopts_the_nodes_and_still_acts(stack) -> None:
    up, operator, agg = stack
    assert operator.run_skill(MissionStep('reference_quadruped/stand_up'), timeout=60.0).outcome \
        == 'done'
    pids = {n: child_pid(up, n) for n in MANAGED}
    monitor = child_pid(up, 'health_monitor')
    assert monitor is not None and None not in pids.values(), up.log()[-3000:]
    psutil.Process(monitor).kill()
    killed = time.monotonic()
    assert wait_until(lambda: child_pid(up, 'health_monitor') not in (None, monitor), 5.0), \
        up.log()[-3000:]
    print(f'health monitor back after {time.monotonic() - killed:.2f} s')
    assert wait_until(lambda: 'adopted the running stack' in up.log(), 60.0), up.log()[-3000:]
    adopted = up.log().split('adopted the running stack', 1)[1].splitlines()[0]
    for name in MANAGED:
        assert f'{name}: active (active)' in adopted, adopted
    # the same processes, in the same state; nothing started or transitioned by the new monitor
    assert {n: child_pid(up, n) for n in MANAGED} == pids
    for name in MANAGED:
        assert operator.get_state(f'/{name}') == 'active'
    after_kill = up.log().split('exited with code -9', 1)[1]
    assert 'starting sim_robot' not in after_kill and 'is down' not in after_kill, after_kill
    assert wait_until(lambda: all(agg.level.get(f'/lifecycle/{n}') == 0 for n in MANAGED), 30.0)

    # the new monitor's policies act: an over-temperature stops the running skill
    trot = 'reference_quadruped/trot_in_place'
    operator.set_parameters(f'/skills/{trot}', {'duration': 40.0})
    assert operator.change_state(f'/skills/{trot}', 'configure')
    assert operator.change_state(f'/skills/{trot}', 'activate')
    time.sleep(1.0)
    operator.set_parameters('/sim_robot', {'fault_overheat_rate': 40.0,
                                           'fault_overheat': 'FL_calf_joint'})
    assert wait_until(lambda: operator.get_state(f'/skills/{trot}', timeout=2.0) != 'active', 30.0), \
        up.log()[-3000:]
    assert operator._final_status(trot).get('outcome') == 'stopped'
    assert 'policy motor_over_temperature' in up.log().split('adopted the running stack', 1)[1]
    assert up.stop(signal.SIGTERM, timeout=60.0) == 0, up.log()[-3000:]
