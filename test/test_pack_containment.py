"""The fault matrix: a hostile or buggy vendor's pack (``test/fixtures/packs/mallory_faults``,
written against the public ``Skill`` API only) beside the simulated quadruped, the runtime a real
process, everything checked from outside it:

* the runtime process is alive;
* the gate kept ≥ 90 % of its rate through the fault (publication sequence numbers of the gate's
  writer over its own stamps: what it published, not what this process managed to receive) -
  90 % of the rate it kept in the second before the fault, capped at its nominal 500 Hz. Twice a
  clean CI run failed it (``chatty_thread`` at 442 Hz, then with ``exit_in_step`` at 407 Hz) and
  it was taken for a busy host; on 2026-12-03, beside a soak, ``chatty_thread`` gave 366-442 Hz
  while every other case kept 486-500: the runtime's supervisor thread ran at normal priority
  and, preempted while holding the GIL, stalled the control thread for up to 84 ms. The bound was
  right; the runtime was fixed (supervisor.py), and the next test checks every thread's policy;
* every command on ``joint_commands`` within the profile's position / velocity / effort limits;
* exactly one writer on ``joint_commands`` (the graph), and no foreign-writer alarm;
* the skill ended with the outcome and a reason that names what happened;
* no process left behind: no zombie, no fork-bomb child.

One runtime for the whole matrix (the cases are independent: each skill runs on its own worker).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState

from field_deploy.profile import load_profile
from field_deploy.ros import Spinner, qos_profile, stamp_to_ns
from field_deploy.testing import NodeProcess, wait_until
from skill_runtime.client import SkillClient
from skill_runtime.loop import can_realtime, set_thread_realtime
from skill_runtime.writers import ERROR, STATUS_NAME

pytestmark = pytest.mark.timeout(300)
PROFILE = load_profile('quadruped_12dof')
PACKS = Path(__file__).parent / 'fixtures' / 'packs'
PACK = 'mallory_faults'
LOWER, UPPER = PROFILE.array('lower'), PROFILE.array('upper')
VEL, EFF = PROFILE.array('velocity'), PROFILE.array('effort')
RATE_HZ = 500.0
BASELINE_S = 1.0      # the gate's rate over this long before a fault is what the fault may not cut
ENDED = ('done', 'failed', 'stopped', 'refused')

# skill -> (outcomes, pattern the reason must match: it names what happened). A pack that is only
# greedy (busy or chatty threads) may finish or be failed by the step watchdog when its own threads
# starve its step: both are the runtime doing its job, and both are named.
WATCHDOG = r'watchdog: step running for more than \d+ ms|no answer'
CASES = {
    'exit_in_step': (('failed',), r'worker exited with code 3\b'),
    'os_exit_in_step': (('failed',), r'worker exited with code 7\b'),
    'native_crash': (('failed',), r'SIGSEGV'),
    'spinning_threads': (('done', 'failed'), r'spun long enough|' + WATCHDOG),
    'chatty_thread': (('done', 'failed'), r'chattered long enough|' + WATCHDOG + r'|stdout'),
    'stdout_flood': (('failed',), r'worker wrote more than \d+ MiB to stdout/stderr'),
    'monkey_patcher': (('done',), r'patched long enough'),
    'own_node': (('refused', 'failed'), r'RCLError: error creating node.*participant'),
    'memory_bomb': (('failed',), r'MemoryError'),
    'fork_bomb': (('failed',), r'sandbox: a pack may not create processes \(os.fork\)'),
    'kill_runtime': (('failed',), r'sandbox: a pack may signal only its own process'),
    'deaf_to_signals': (('failed',), WATCHDOG),
    'never_returns': (('failed',), WATCHDOG),
    'huge_return': (('failed',), r'Targets.q has 5000000 entries, expected 3'),
    'malformed_return': (('failed',), r'step returned dict, expected Targets, Done or Failed'),
    'evil_targets': (('failed',), r'step result unreadable: RuntimeError: no length either'),
}


class Watch:
    """What this process sees of the runtime: commands (with the writer's sequence numbers),
    skill statuses and the foreign-writer alarm, each with its receive time."""

    def __init__(self, node: Node) -> None:
        self.lock = threading.Lock()
        # (receive monotonic, gate stamp ns, publication seq, frame, q, dq, tau)
        self.commands: list[tuple[float, int, int, str, np.ndarray, np.ndarray, np.ndarray]] = []
        self.skills: list[tuple[float, str, dict[str, str]]] = []
        self.alarms: list[tuple[float, str]] = []
        self.packs: dict[str, str] = {}
        node.create_subscription(JointState, 'joint_commands', self._on_cmd,
                                 qos_profile(PROFILE.topic('joint_commands').qos))
        node.create_subscription(DiagnosticArray, '/skill_runtime/status', self._on_status, 50)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 50)

    def _on_cmd(self, msg: JointState, info: dict) -> None:
        row = (time.monotonic(), stamp_to_ns(msg.header.stamp), int(info['publication_sequence_number']),
               msg.header.frame_id, np.array(msg.position), np.array(msg.velocity), np.array(msg.effort))
        with self.lock:
            self.commands.append(row)

    def _on_status(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        with self.lock:
            for st in msg.status:
                if st.name.startswith('skills/'):
                    self.skills.append((now, st.name, {kv.key: kv.value for kv in st.values}))
                elif st.name == 'skill_runtime/packs':
                    self.packs = {kv.key: kv.value for kv in st.values}

    def _on_diag(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        with self.lock:
            for st in msg.status:
                level = st.level[0] if isinstance(st.level, bytes) else int(st.level)
                if st.name == STATUS_NAME and level == ERROR:
                    self.alarms.append((now, st.message))

    def ended(self, skill: str, after: float) -> tuple[float, dict[str, str]] | None:
        """The first status of ``skill`` after ``after`` that says it ended."""
        with self.lock:
            for t, name, values in self.skills:
                if t > after and name == f'skills/{PACK}/{skill}' and values.get('outcome') in ENDED \
                        and values.get('phase') != 'active':
                    return t, values
        return None

    def window(self, t0: float, t1: float) -> list[tuple]:
        with self.lock:
            return [c for c in self.commands if t0 <= c[0] <= t1]


def descendants(pid: int) -> list[tuple[int, int, str]]:
    """(pid, parent pid, state letter) of every process below ``pid``."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = Path(f'/proc/{parent}/task').iterdir()
            children = [int(c) for t in tasks for c in (t / 'children').read_text().split()]
        except OSError:
            continue
        for child in children:
            try:
                state = Path(f'/proc/{child}/stat').read_text().rsplit(')', 1)[1].split()[0]
            except OSError:
                continue
            out.append((child, parent, state))
            todo.append(child)
    return out


@pytest.fixture(scope='module')
def rig(ros: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    log_dir = tmp_path_factory.mktemp('containment')
    print(f'ROS_DOMAIN_ID {os.environ.get("ROS_DOMAIN_ID")}')
    sim = NodeProcess('sim_robot', ['--ros-args', '-p', 'profile:=quadruped_12dof'], log_dir=log_dir)
    runtime = NodeProcess('skill_runtime', [
        '--ros-args', '-p', 'profile:=quadruped_12dof', '-p', f"pack_path:=['{PACKS}']",
        '-p', "allow:=['mallory/*']", '-p', 'entry_points:=false',
        # a loaded CI host stalls threads and starts interpreters slowly: containment, not speed
        '-p', 'step_budget_ms:=100.0', '-p', 'answer_timeout_ms:=1000.0',
        '-p', 'worker_start_timeout:=15.0', '-p', 'vendor_call_timeout:=10.0'], log_dir=log_dir)
    node = Node('containment_probe')
    watch = Watch(node)
    # The EventsExecutor cannot hand a callback its message info (SystemError in spin_once). The
    # probe's thread runs SCHED_FIFO 10 where permitted (below the runtime's 20-40): at load 40 a
    # normal-priority probe received a third of the commands, and the test is about the runtime.
    spinner = Spinner([node], executor=SingleThreadedExecutor())
    stop = threading.Event()

    def spin() -> None:
        set_thread_realtime(10)
        spinner.spin_until(stop)
    thread = threading.Thread(target=spin, name='probe-spinner', daemon=True)
    thread.start()
    client = SkillClient(node)
    try:
        if not wait_until(lambda: len(watch.window(0, 1e18)) > 200, 60):
            pytest.fail(f'runtime not publishing:\n{runtime.log()[-3000:]}\n{sim.log()[-2000:]}')
        yield runtime, client, watch, node, sim
    finally:
        stop.set()
        thread.join(5)
        spinner.stop()
        node.destroy_node()
        runtime.stop()
        sim.stop()
        print(f'----- skill_runtime log (tail) -----\n{runtime.log()[-6000:]}')


def gate_rate(rows: list[tuple]) -> float:
    """Messages per second the gate published over the window, from its sequence numbers and
    stamps (independent of what this process dropped)."""
    if len(rows) < 2:
        return 0.0
    first, last = min(rows, key=lambda r: r[2]), max(rows, key=lambda r: r[2])
    span_s = (last[1] - first[1]) * 1e-9
    return (last[2] - first[2]) / span_s if span_s > 0 else 0.0


def test_a_pack_attacking_at_import_is_refused_at_discovery(rig) -> None:
    """``mallory_import``'s module body opens a socket and SIGKILLs its parent: discovery
    test-imports packs in a sandboxed child, so the pack is refused with the rule, and the
    runtime (which would have been that parent) runs on."""
    runtime, _client, watch, _node, _sim = rig
    assert wait_until(lambda: 'mallory_import' in watch.packs, 10), watch.packs
    reason = watch.packs['mallory_import']
    assert 'sandbox: a pack may not open sockets (AF_INET)' in reason, reason
    assert watch.packs.get(PACK) == 'accepted'
    assert runtime.alive()


@pytest.mark.skipif(not can_realtime(), reason='needs SCHED_FIFO (root or an rtprio limit)')
def test_no_thread_of_the_runtime_runs_normal_while_it_runs_realtime(rig) -> None:
    """The control thread needs the GIL every tick: a normal-priority thread holding it, preempted
    by the host's other work, stalls the gate (the supervisor did, until 2026-12-03: a chatty
    pack's gate at 366-442 Hz on a loaded host). Every thread of the runtime, read from /proc."""
    runtime = rig[0]
    normal = []
    for task in Path(f'/proc/{runtime.pid}/task').iterdir():
        with contextlib.suppress(OSError):      # a thread may end while we look
            policy = os.sched_getscheduler(int(task.name)) & ~os.SCHED_RESET_ON_FORK
            if policy not in (os.SCHED_FIFO, os.SCHED_RR):
                normal.append((task.name, (task / 'comm').read_text().strip(), policy))
    assert not normal, f'threads of the runtime at normal priority: {normal}'


@pytest.mark.parametrize('skill', list(CASES))
def test_pack_fault_is_contained(rig, skill: str) -> None:
    runtime, client, watch, node, _sim = rig
    outcomes, pattern = CASES[skill]
    path = f'/skills/{PACK}/{skill}'
    time.sleep(BASELINE_S)   # the baseline is this case's host, not the previous case's aftermath
    t0 = time.monotonic()
    before = gate_rate(watch.window(t0 - BASELINE_S, t0))
    assert before >= 0.5 * RATE_HZ, f'the gate ran at {before:.0f} Hz before {skill} was started'
    with contextlib.suppress(TimeoutError):   # the status below says what became of it
        client.run(path)
    assert wait_until(lambda: watch.ended(skill, t0) is not None, 30), \
        f'{skill} did not end:\n{runtime.log()[-3000:]}'
    t_end, status = watch.ended(skill, t0)
    time.sleep(0.5)   # the gate goes on after the fault: keep it in the window
    rows = watch.window(t0, time.monotonic())

    assert runtime.alive(), f'the runtime died:\n{runtime.log()[-3000:]}'
    assert status['outcome'] in outcomes, f'{skill}: {status}'
    assert re.search(pattern, status['reason']), \
        f'{skill}: reason {status["reason"]!r} does not say what happened'

    # Still publishing once the skill had ended (a silent gate would also show in the rate).
    assert rows and rows[-1][0] >= t_end, 'joint_commands went quiet'
    rate = gate_rate(rows)
    print(f'{skill}: {status["outcome"]} ({status["reason"]}); gate {rate:.0f} Hz over '
          f'{t_end - t0 + 0.5:.1f} s ({before:.0f} Hz the second before), {len(rows)} commands received')
    floor = 0.9 * min(before, RATE_HZ)
    assert rate >= floor, f'gate at {rate:.0f} Hz during {skill}, {before:.0f} Hz the second before'
    q = np.array([r[4] for r in rows])
    dq = np.array([r[5] for r in rows])
    tau = np.array([r[6] for r in rows])
    assert np.isfinite(q).all() and np.isfinite(dq).all() and np.isfinite(tau).all()
    assert (q >= LOWER - 1e-9).all() and (q <= UPPER + 1e-9).all(), f'{skill}: a position past the limits'
    assert (np.abs(dq) <= VEL + 1e-9).all() and (np.abs(tau) <= EFF + 1e-9).all()
    assert {r[3] for r in rows} <= {'run', 'estop'}

    writers = node.get_publishers_info_by_topic('/joint_commands')
    assert [(w.node_name, w.node_namespace) for w in writers] == [('skill_runtime', '/')]
    assert not watch.alarms, f'foreign writer seen: {watch.alarms}'

    # Workers (spares, discovery child, configured skills) are the runtime's children; none has
    # a child of its own (no fork got through) and none is left a zombie.
    assert wait_until(lambda: all(state != 'Z' for _pid, _parent, state in descendants(runtime.pid)), 5), \
        f'zombie below the runtime: {descendants(runtime.pid)}'
    assert all(parent == runtime.pid for _pid, parent, _state in descendants(runtime.pid)), \
        f'a worker has children: {descendants(runtime.pid)}'
