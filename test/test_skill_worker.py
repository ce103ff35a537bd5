"""The process boundary, checked from outside: the runtime as a process beside ``sim_robot``, and
a pack written for this test (only the public API) whose skills die, crash, hang or answer garbage
in their ``step``. Each: the skill fails with a reason naming what happened, its worker is reaped,
the runtime answers a service call, ``joint_commands`` keeps flowing (counted by this process),
and the next configure works. Also: vendor code is never imported by the runtime process, and a
worker's log or stdout flood does not reach the runtime's log unbounded.

(The sandbox fault matrix — network, fork, memory, landlock — is test_skill_sandbox*.)
"""

from __future__ import annotations

import os
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import JointState

from field_deploy.profile import load_profile
from field_deploy.ros import Spinner, qos_profile
from field_deploy.testing import NodeProcess, wait_until
from skill_runtime.client import SkillClient
from skill_runtime.manifest import write_digests

pytestmark = pytest.mark.timeout(180)
PROFILE = load_profile('quadruped_12dof')
PACK = 'acme_faults'

SKILLS = '''
"""Skills that fail the way vendor code does; each behaves for 0.2 s first."""
import ctypes
import os
import sys
import time

import numpy as np

from skill_runtime.api import Done, Skill, Targets

IMPORTED_IN = os.getpid()


class Fault(Skill):
    def step(self, state, t):
        if t > 0.2:
            return self.fault(state)
        return Targets(q=state.q[self.ctx.indices])


class Exit3(Fault):
    def fault(self, state):
        sys.exit(3)


class OsExit(Fault):
    def fault(self, state):
        os._exit(5)


class Segfault(Fault):
    def fault(self, state):
        return ctypes.string_at(0)


class Spin(Fault):
    def fault(self, state):
        while True:
            pass


class Text(Fault):
    def fault(self, state):
        return Targets(q='far away')


class Huge(Fault):
    def fault(self, state):
        return Targets(q=np.zeros(10**8))


class WrongType(Fault):
    def fault(self, state):
        return {'q': [0.0, 0.0, 0.0]}


class Chatty(Skill):
    def step(self, state, t):
        for i in range(200):
            self.ctx.logger.info(f'chatty line {i} ' + 'x' * 2000)
        if t > 1.0:
            return Done('said enough')
        return Targets(q=state.q[self.ctx.indices])


class Printer(Fault):
    def fault(self, state):
        print('y' * 100_000, flush=True)
        return Targets(q=state.q[self.ctx.indices])


class Where(Skill):
    def step(self, state, t):
        ros = sorted(k for k in os.environ if k.startswith(('ROS_', 'RMW_')))
        return Done(f'imported in {IMPORTED_IN}, stepping in {os.getpid()}, '
                    f'rclpy loaded: {"rclpy" in sys.modules}, ROS env: {ros}')
'''

MANIFEST = '''
name: acme_faults
version: 0.1.0
vendor: acme
api_version: '1.0'
description: Skills that fail in their step, for the worker boundary tests.
robot_kinds: [quadruped]
joint_groups: [FL_leg]
skills:
''' + ''.join(f'''  {name}:
    entry: skills:{cls}
    claims: [FL_leg]
    timeout: 20.0
    step_budget: 0.1
''' for name, cls in (('exit3', 'Exit3'), ('os_exit', 'OsExit'), ('segfault', 'Segfault'),
                      ('spin', 'Spin'), ('text', 'Text'), ('huge', 'Huge'), ('wrong_type', 'WrongType'),
                      ('chatty', 'Chatty'), ('printer', 'Printer'), ('where', 'Where'))) + 'digests: {}\n'


class Probe:
    def __init__(self, node: Node) -> None:
        self.lock = threading.Lock()
        self.commands = 0
        self.status: dict[str, dict[str, str]] = {}
        self.pids: dict[str, set[str]] = {}
        node.create_subscription(JointState, 'joint_commands', self._on_cmd,
                                 qos_profile(PROFILE.topic('joint_commands').qos))
        node.create_subscription(DiagnosticArray, '/skill_runtime/status', self._on_status, 50)

    def _on_cmd(self, _msg: JointState) -> None:
        with self.lock:
            self.commands += 1

    def _on_status(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            values = {kv.key: kv.value for kv in st.values}
            self.status[st.name] = values
            if values.get('worker_pid'):
                self.pids.setdefault(st.name, set()).add(values['worker_pid'])

    def count_for(self, seconds: float) -> int:
        n0 = self.commands
        time.sleep(seconds)
        return self.commands - n0


@pytest.fixture(scope='module')
def rig(ros: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    packs = tmp_path_factory.mktemp('worker_packs')
    (packs / PACK).mkdir()
    (packs / PACK / 'skills.py').write_text(textwrap.dedent(SKILLS))
    (packs / PACK / 'skillpack.yaml').write_text(MANIFEST)
    write_digests(packs / PACK)
    logs = tmp_path_factory.mktemp('worker_logs')
    sim = NodeProcess('sim_robot', ['--ros-args', '-p', 'profile:=quadruped_12dof'], log_dir=logs)
    runtime = NodeProcess('skill_runtime', [
        '--ros-args', '-p', 'profile:=quadruped_12dof', '-p', f"pack_path:=['{packs}']",
        '-p', "allow:=['field_deploy/*','acme/*']", '-p', 'worker_log_mb:=1',
        '-p', 'executor_rt_priority:=0'], log_dir=logs)
    node = Node('skill_worker_probe')
    probe = Probe(node)
    spinner = Spinner([node]).start()
    try:
        client = SkillClient(node)
        if not wait_until(lambda: probe.commands > 50, 60):
            pytest.fail(f'runtime sent no commands:\n{runtime.log()[-3000:]}\n{sim.log()[-2000:]}')
        yield runtime, client, probe, packs
    finally:
        spinner.stop()
        node.destroy_node()
        runtime.stop()
        sim.stop()


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            if int(stat.read_text().rsplit(')', 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def dds_files(pid: int) -> list[str]:
    """What ``pid`` holds open of Fast DDS's shared-memory files, and its sockets."""
    out = []
    for fd in Path(f'/proc/{pid}/fd').iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(('/dev/shm/fastrtps_', '/dev/shm/sem.fastrtps_', 'socket:')):
            out.append(target)
    return out


def reaped(pid: int) -> bool:
    """Gone from the process table (a zombie would still have /proc/<pid>, state Z)."""
    return not Path(f'/proc/{pid}').exists()


@pytest.mark.parametrize(('skill', 'words'), [
    ('exit3', ('worker exited with code 3',)),
    ('os_exit', ('worker exited with code 5',)),
    ('segfault', ('worker killed by SIGSEGV',)),
    # the watchdog (100 ms after the step began), or RLIMIT_RTTIME (150 ms of CPU at SCHED_FIFO)
    # when the control thread got to it later on a loaded host: both name the spin's end
    ('spin', ('watchdog: step running for more than 100 ms', 'worker killed by SIGXCPU')),
    ('text', ('Targets.q is not numeric',)),
    ('huge', ('Targets.q has 100000000 entries', 'MemoryError')),
    ('wrong_type', ('step returned dict, expected Targets',)),
    ('printer', ('worker wrote more than 1 MiB to stdout/stderr',)),
])
def test_worker_fault_fails_only_its_skill(rig, skill: str, words: tuple[str, ...]) -> None:
    runtime, client, probe, _packs = rig
    name = f'/skills/{PACK}/{skill}'
    key = f'skills/{PACK}/{skill}'
    assert client.run(name), runtime.log()[-3000:]
    assert wait_until(lambda: client.state(name) == 'unconfigured', 20, 0.05), runtime.log()[-3000:]
    assert wait_until(lambda: probe.status.get(key, {}).get('outcome') == 'failed', 5)
    reason = probe.status[key]['reason']
    assert any(w in reason for w in words), reason
    # The runtime is alive, answers a service, and its gate keeps commanding.
    assert runtime.alive()
    assert client.trigger('stop').success
    assert probe.count_for(1.0) > 100, 'joint_commands keeps flowing'
    # Every worker the skill had is reaped (no zombie).
    pids = [int(p) for p in probe.pids.get(key, ())]
    assert pids, 'the status named the worker'
    assert wait_until(lambda: all(reaped(p) for p in pids), 5), pids
    # A fresh worker on the next configure.
    assert client.transition(name, 'configure'), runtime.log()[-2000:]
    assert client.transition(name, 'cleanup')


def test_vendor_code_is_imported_only_in_workers(rig) -> None:
    runtime, client, probe, _packs = rig
    name = f'/skills/{PACK}/where'
    assert client.run(name)
    assert wait_until(lambda: probe.status.get(f'skills/{PACK}/where', {}).get('outcome') == 'done', 10)
    reason = probe.status[f'skills/{PACK}/where']['reason']
    imported, stepping = (int(w.rstrip(',')) for w in reason.split() if w.rstrip(',').isdigit())
    assert imported == stepping and stepping != runtime.pid and stepping != os.getpid()
    assert str(stepping) in probe.pids[f'skills/{PACK}/where']
    assert 'rclpy loaded: False, ROS env: []' in reason, reason   # no way onto the ROS graph


def test_workers_die_with_the_runtime(rig, tmp_path: Path) -> None:
    """SIGKILL of the runtime (an OOM kill, a crash) leaves no worker behind: each has
    PR_SET_PDEATHSIG. A runtime of its own on another DDS domain (the module's rig stays up); its
    workers are the two spares it starts at once, spawned as every skill's worker is. Nor does a
    worker hold any of the runtime's Fast DDS files or sockets (a lock file kept open by a worker
    would keep the runtime's port taken after its death, and a socket is a way onto DDS)."""
    packs = rig[3]
    domain = str(1 + (int(os.environ.get('ROS_DOMAIN_ID', '0')) + 100) % 200)
    runtime = NodeProcess('skill_runtime', [
        '--ros-args', '-p', 'profile:=quadruped_12dof', '-p', f"pack_path:=['{packs}']",
        '-p', "allow:=['acme/*']", '-p', 'entry_points:=false', '-p', 'executor_rt_priority:=0'],
        log_dir=tmp_path, env={'ROS_DOMAIN_ID': domain})
    try:
        assert wait_until(lambda: 'active: control loop' in runtime.log()
                          and len(children_of(runtime.pid)) == 2, 60), runtime.log()
        children = children_of(runtime.pid)
        assert dds_files(runtime.pid), 'the runtime itself holds its Fast DDS lock files'
        for child in children:
            assert not dds_files(child), (child, dds_files(child))
        runtime.kill()
        assert wait_until(lambda: not any(Path(f'/proc/{p}').exists() for p in children), 10), \
            [p for p in children if Path(f'/proc/{p}').exists()]
    finally:
        runtime.kill()
