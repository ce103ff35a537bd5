"""ROS shell of the skill runtime: the ``skill_runtime`` lifecycle node (skill nodes: :mod:`skill_node`).

``skill_runtime`` (a LifecycleNode, ``autostart`` true by default):

* configure: loads the profile, discovers packs (entry points + ``pack_path``; locators and the
  import check run in a short-lived child process), refuses those that do not fit (reasons in the
  log and in ``~/status``), creates ``<ns>/skills/<pack>/<skill>`` lifecycle nodes in this
  process, subscribes the robot state, creates the ``joint_commands`` publisher (QoS from the
  profile) — the gate is its only writer.
* activate: starts the control loop (own thread, profile control rate); deactivate stops the
  skills and the loop.
* ``~/stop`` (Trigger): stops every skill, the gate holds the last command. ``~/estop``
  (Trigger) and the ``estop`` topic (std_msgs/Bool, true): stops every skill, publishes the first
  safe-pose command at once from the callback, then walks to the profile's safe pose at
  ``safe_velocity``; activation is refused until ``~/reset``.
* ``~/status`` (diagnostic_msgs/DiagnosticArray): see :mod:`skill_runtime.status`.

**No vendor code runs in this process.** Each configured skill has a worker process
(:mod:`skill_runtime.worker`, supervised by :mod:`skill_runtime.proxy`); each control tick hands
it the robot state through shared memory and waits a bounded fraction of the period for its
targets, which are checked again here and clamped by the gate. A worker that dies, hangs or
answers garbage fails its skill only.

Each command on ``joint_commands`` carries the gate mode in ``header.frame_id`` (``run`` or
``estop``) so a recorder or a test can tell a safe command from a skill's.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from field_deploy.profile import RobotProfile, load_profile
from field_deploy.ros import Spinner, init, qos_profile, run_nodes, set_stamp
from skill_runtime import writer_watch
from skill_runtime.api import RobotState
from skill_runtime.discovery import ChildDiscovery, ChildError
from skill_runtime.gate import MODE_ESTOP, SafetyGate, SkillRun
from skill_runtime.loader import DEFAULT_ALLOW, PackRecord, discover
from skill_runtime.loop import ControlLoop, set_process_realtime
from skill_runtime.manifest import SkillSpec
from skill_runtime.pool import PoolSettings, WorkerPool, auto_nice
from skill_runtime.proxy import ANSWER_TIMEOUT_S, WorkerError, WorkerProcess, tick_workers
from skill_runtime.robot_input import RobotInput
from skill_runtime.safety import SafetyServices
from skill_runtime.skill_node import SkillNode
from skill_runtime.status import status_array

SWITCH_INTERVAL_S = 0.0002
STATS_WINDOW_S = 5.0  # jitter figures in ~/status cover the last 5 s
DEFAULT_EXECUTOR_RT_PRIORITY = 30
STOP_GRACE_S = 1.0    # a worker asked to stop its skill is killed if it does not answer by then


class SkillRuntimeNode(SafetyServices, LifecycleNode):
    """The ``skill_runtime`` node: pack loading, skill nodes, safety gate, control loop."""

    def __init__(self, *, namespace: str = '', parameter_overrides: Sequence[Parameter] = ()) -> None:
        super().__init__('skill_runtime', namespace=namespace,
                         parameter_overrides=list(parameter_overrides))
        self.declare_parameter('autostart', True)
        self.declare_parameter('profile', 'quadruped_12dof')
        self.declare_parameter('pack_path', Parameter.Type.STRING_ARRAY)
        self.declare_parameter('allow', Parameter.Type.STRING_ARRAY)
        self.declare_parameter('entry_points', True)
        self.declare_parameter('control_rate', 0.0)       # Hz; 0: the profile's control_rate
        self.declare_parameter('safe_velocity', 0.5)      # rad/s towards the safe pose on e-stop
        self.declare_parameter('step_budget_ms', 20.0)    # default watchdog budget per step
        self.declare_parameter('status_rate', 10.0)       # Hz
        self.declare_parameter('vendor_call_timeout', 2.0)  # s: import+__init__+configure / start
        self.declare_parameter('sensors', True)            # subscribe imu + wrenches for RobotState
        self.declare_parameter('rt_priority', 40)          # SCHED_FIFO of the control thread; 0 off
        self.declare_parameter('executor_rt_priority', DEFAULT_EXECUTOR_RT_PRIORITY)  # see main()
        self.declare_parameter('worker_start_timeout', 4.0)  # s for a fresh worker interpreter
        self.declare_parameter('worker_wait', 0.5)         # fraction of a period a tick waits for workers
        self.declare_parameter('answer_timeout_ms', ANSWER_TIMEOUT_S * 1e3)  # step not begun: overrun
        self.declare_parameter('worker_nice', -1)           # workers' nice (SCHED_OTHER); -1: auto
        self.declare_parameter('worker_rt_priority', 20)    # SCHED_FIFO of a running skill's worker
        self.declare_parameter('worker_memory_mb', 1024)    # sandbox: address space of a worker
        self.declare_parameter('worker_max_files', 64)      # sandbox: open files of a worker
        self.declare_parameter('worker_log_mb', 8)          # stdout+stderr of a worker beyond: killed
        self.declare_parameter('worker_dir', '')            # scratch + logs; '' = a temp folder
        self._lock = threading.RLock()
        self.profile: RobotProfile | None = None
        self.rate_hz = 500.0
        self.gate: SafetyGate | None = None
        self.loop: ControlLoop | None = None
        self.packs: list[PackRecord] = []
        self.skill_nodes: dict[str, SkillNode] = {}
        self.runs: dict[str, SkillRun] = {}
        self._run_workers: dict[str, WorkerProcess] = {}
        self.robot: RobotInput | None = None
        self._sensor_node = Node(f'_{self.get_name()}_sensors', namespace=self.get_namespace(),
                                 context=self.context)
        self._cmd_pub = None
        self._writer_watch: writer_watch.ForeignWriterWatch | None = None
        self._cmd_msg = JointState()
        self._active = False
        self.commands_sent = 0
        self._wait = 0.5
        self._answer_timeout = ANSWER_TIMEOUT_S
        self._worker_sched = ''
        self.pool = WorkerPool(self._worker_log)
        self.pool.settings = PoolSettings(
            start_timeout=float(self._param('worker_start_timeout')),
            nice=auto_nice(int(self._param('worker_nice')), int(self._param('rt_priority'))),
            memory_mb=int(self._param('worker_memory_mb')), max_files=int(self._param('worker_max_files')),
            log_mb=int(self._param('worker_log_mb')), work_dir=str(self._param('worker_dir') or ''))
        # Interpreters for what comes next start now, while the node waits to be configured: a
        # spare skill worker and the discovery child (each a python + numpy start-up, seconds on
        # a loaded host, which configure would otherwise wait for).
        self.pool.prepare()
        self._discovery: ChildDiscovery | None = self._new_discovery()
        with contextlib.suppress(ChildError):   # tried again, and reported, at configure
            self._discovery.warm()

        self._status_pub = self.create_publisher(DiagnosticArray, '~/status', 10)
        self.create_service(Trigger, '~/stop', self._srv_stop)
        self.create_service(Trigger, '~/reset', self._srv_reset)
        # E-stop has its own node and executor thread: it must not queue behind a skill's
        # configure(), a transition or a backlog of robot-state callbacks in the main executor.
        self._estop_pending: str | None = None
        self._safety = Node(f'{self.get_name()}_estop', namespace=namespace)
        self._safety.create_service(Trigger, f'{self.get_fully_qualified_name()}/estop', self._srv_estop)
        self._safety.create_subscription(Bool, 'estop', self._on_estop_topic, 10)
        self._safety_spinner = Spinner([self._safety]).start()
        self._status_timer = self.create_timer(
            1.0 / max(0.1, self.get_parameter('status_rate').value), self.publish_status)
        self._house_timer = self.create_timer(0.01, self._housekeeping)
        self._autostart_timer = None
        if self.get_parameter('autostart').value:
            self._autostart_timer = self.create_timer(0.01, self._autostart)

    # ----------------------------------------------------------------- helpers
    def vendor_call_timeout(self) -> float:
        return float(self.get_parameter('vendor_call_timeout').value)

    def clock_s(self) -> float:
        return time.monotonic()

    def _autostart(self) -> None:
        timer, self._autostart_timer = self._autostart_timer, None
        if timer is None:
            return  # the executor may fire a cancelled timer once more
        timer.cancel()
        self.destroy_timer(timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def claim_indices(self, spec: SkillSpec) -> np.ndarray:
        assert self.profile is not None
        names = {j for g in spec.claims for j in self.profile.group_joints(g)}
        return np.array([i for i, n in enumerate(self.profile.joint_names) if n in names], dtype=int)

    def state(self) -> RobotState:
        assert self.robot is not None
        return self.robot.state()

    def _str_list(self, name: str) -> list[str]:
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:
            return []
        return [v for v in (value or []) if v]

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _new_discovery(self) -> ChildDiscovery:
        return ChildDiscovery(self.vendor_call_timeout(), spawn=self.pool.supervisor.call)

    def _worker_log(self, key: str, level: str, text: str) -> None:
        node = self.skill_nodes.get(key)
        logger = node.get_logger() if node is not None else self.get_logger()
        getattr(logger, level if level in ('debug', 'info', 'warning', 'error') else 'info')(
            f'[worker] {text}')

    # ----------------------------------------------------------------- lifecycle of the runtime
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.profile = load_profile(self.get_parameter('profile').value)
        except Exception as exc:
            self.get_logger().error(f'cannot load profile: {exc}')
            return TransitionCallbackReturn.FAILURE
        try:
            return self._configure()
        except Exception as exc:  # rclpy would swallow it silently: say what broke
            self.get_logger().error(f'configure failed: {traceback.format_exc()}')
            self._teardown()
            raise exc

    def _configure(self) -> TransitionCallbackReturn:
        prof = self.profile
        assert prof is not None
        rate = float(self.get_parameter('control_rate').value) or prof.control_rate_hz
        self.rate_hz = rate
        self.gate = SafetyGate(prof, rate, safe_velocity=float(self.get_parameter('safe_velocity').value))
        allow = self._str_list('allow') or list(DEFAULT_ALLOW)
        t0 = time.monotonic()
        child, self._discovery = self._discovery, None
        child = child or self._new_discovery()
        try:
            self.packs = discover(prof, pack_path=self._str_list('pack_path'), allow=allow,
                                  entry_points=bool(self.get_parameter('entry_points').value),
                                  locate=child.locate, probe=child.probe)
        finally:
            child.close()
        self.get_logger().info(f'discovery (entry points + import check in a child process): '
                               f'{time.monotonic() - t0:.2f} s')
        for rec in self.packs:
            if not rec.accepted:
                self.get_logger().warning(f'refused {rec.candidate.source}: {rec.reason}')
                continue
            assert rec.manifest is not None
            for spec in rec.manifest.skills:
                problem = self._rate_problem(spec)
                if problem:
                    self.get_logger().warning(f'skill {rec.name}/{spec.name} not loaded: {problem}')
                    continue
                node = SkillNode(self, rec.manifest, spec)
                self.skill_nodes[node.key] = node
                if self.executor is not None:
                    self.executor.add_node(node)
            self.get_logger().info(f'loaded pack {rec.name} {rec.manifest.version} '
                                   f'({rec.manifest.vendor}, {rec.candidate.source}): '
                                   f'{", ".join(s.name for s in rec.manifest.skills)}')
        cmd_spec = prof.topic('joint_commands')
        before = {w.gid for w in writer_watch.publishers(self, cmd_spec.name)}
        self._cmd_pub = self.create_publisher(JointState, cmd_spec.name, qos_profile(cmd_spec.qos))
        self._writer_watch = writer_watch.ForeignWriterWatch(self, cmd_spec.name, exclude=before)
        self._cmd_msg = JointState()
        self._cmd_msg.name = prof.joint_names
        self.robot = RobotInput(self, self._sensor_node, prof, sensors=bool(self._param('sensors')),
                                on_first_state=self._seed)
        self.publish_status()
        return TransitionCallbackReturn.SUCCESS

    def _seed(self, q: np.ndarray) -> None:
        with self._lock:
            if self.gate is not None:
                self.gate.seed(q)
                # Publish the first hold command now: the e-stop path (its publisher, its
                # matched readers) is warm before anyone needs it.
                self._publish(self.gate.compute({}))

    def _rate_problem(self, spec: SkillSpec) -> str | None:
        rate = spec.control_rate or self.rate_hz
        every = self.rate_hz / rate
        if rate > self.rate_hz + 1e-9:
            return f'control_rate {rate:g} Hz is above the runtime rate {self.rate_hz:g} Hz'
        if abs(every - round(every)) > 1e-6:
            return f'control_rate {rate:g} Hz does not divide the runtime rate {self.rate_hz:g} Hz'
        return None

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # The control thread must get the GIL back within a fraction of a period when its sleep
        # ends; CPython's default hand-over interval (5 ms) is longer than a 500 Hz period.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._active = True
        self._wait = min(max(float(self._param('worker_wait')), 0.0), 0.9)
        self._answer_timeout = float(self._param('answer_timeout_ms')) / 1e3
        self.loop = ControlLoop(self.rate_hz, self._tick, on_error=self._on_loop_error,
                                history=int(self.rate_hz * STATS_WINDOW_S),
                                rt_priority=int(self.get_parameter('rt_priority').value)).start()
        self.get_logger().info(f'active: control loop at {self.rate_hz:g} Hz ({self.loop.realtime}), '
                               f'{len(self.skill_nodes)} skills')
        return TransitionCallbackReturn.SUCCESS

    def _stop_loop(self) -> None:
        self.stop_all('runtime deactivated')
        self._active = False
        if self.loop is not None:
            self.loop.stop()

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        for node in list(self.skill_nodes.values()):
            if self.executor is not None:
                self.executor.remove_node(node)
            node.retire_worker()
            node.destroy_node()
        self.skill_nodes.clear()
        if self.robot is not None:
            self.robot.destroy()
            self.robot = None
        if self._writer_watch is not None:
            self._writer_watch.close()
            self._writer_watch = None
        if self._cmd_pub is not None:
            self.destroy_publisher(self._cmd_pub)
            self._cmd_pub = None
        self.gate = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self._safety_spinner.stop()
        self._safety.destroy_node()
        self._stop_loop()
        for node in list(self.skill_nodes.values()):
            node.destroy_node()
        self.skill_nodes.clear()
        self.pool.close()
        if self._discovery is not None:
            self._discovery.close()
        self._sensor_node.destroy_node()
        super().destroy_node()

    # ----------------------------------------------------------------- skills
    def start_skill(self, node: SkillNode) -> str | None:
        """Claim the skill's joints and start it in its worker; a reason when refused."""
        if not self._active or self.gate is None or self.robot is None:
            return 'skill_runtime is not active'
        worker = node.worker
        assert worker is not None
        indices = self.claim_indices(node.spec)
        rate = node.spec.control_rate or self.rate_hz
        budget = node.spec.step_budget or float(self._param('step_budget_ms')) / 1e3
        with self._lock:
            reason = self.gate.claim(node.key, indices)
        if reason is not None:
            return reason
        run = SkillRun(key=node.key, indices=indices, every=round(self.rate_hz / rate), budget=budget,
                       timeout=node.spec.timeout, clock=self.clock_s, on_finish=self._on_run_finish)
        state = self.state()
        worker.set_layout(self.robot.profile.dof, len(indices), self.robot.sites)
        worker.forget_outstanding()
        worker.write_state(0.0, state.q, state.dq, state.tau, state.imu, state.wrenches,
                           state.stamp_ns, new_request=False)
        run.begin(state.q)
        try:
            # Bounded: the executor (which also serves stop and transitions) never waits longer.
            reply = worker.request('start', self.vendor_call_timeout())
            problem = None if reply.get('ok') else str(reply.get('error'))
        except WorkerError as exc:
            problem = str(exc)
            worker.kill(problem)
        if problem is not None:
            with self._lock:
                self.gate.release(node.key)
            return problem
        sched = worker.set_realtime(int(self._param('worker_rt_priority')), budget)
        if sched != self._worker_sched:
            self._worker_sched = sched
            node.get_logger().info(f'skill workers run at {sched} while their skill is active')
        with self._lock:
            if self.gate.mode == MODE_ESTOP or node.key not in self.gate.owners():
                worker.set_normal()
                return 'e-stop while starting'
            self.runs[node.key] = run
            self._run_workers[node.key] = worker
            node.run = run
        return None

    def _on_run_finish(self, run: SkillRun) -> None:
        """A run ended (any thread, never blocking): its worker calls the skill's ``stop()``."""
        worker = self._run_workers.get(run.key)
        if worker is not None and not worker.dead:
            worker.set_normal()
            worker.stop_skill(STOP_GRACE_S)

    def end_skill(self, node: SkillNode, outcome: str, reason: str) -> SkillRun | None:
        """Release the skill's joints; its run keeps the first outcome it got."""
        with self._lock:
            run = self.runs.pop(node.key, None)
            if self.gate is not None:
                final = None
                if run is not None and run.outcome == 'done' and run.targets is not None:
                    final = (run.indices, run.targets.q)  # done: drive on to its last target
                self.gate.release(node.key, final)
        if run is not None:
            run.finish(outcome, reason)
        with self._lock:
            self._run_workers.pop(node.key, None)
        return run if run is not None else node.run

    def _finish_and_deactivate(self, outcome: str, reason: str) -> None:
        with self._lock:
            runs = list(self.runs.values())
        for run in runs:
            run.finish(outcome, reason)
        self._housekeeping()

    def stop_all(self, reason: str) -> None:
        with self._lock:
            if self.gate is not None:
                self.gate.hold_current()
        self._finish_and_deactivate('stopped', reason)

    def _housekeeping(self) -> None:
        """Executor thread: deactivate skills whose run ended (done, failed, stopped)."""
        reason, self._estop_pending = self._estop_pending, None
        if reason is not None:  # the gate is already safe; now the skills' lifecycles follow
            self.get_logger().warning(f'E-STOP: {reason}')
            self._finish_and_deactivate('stopped', f'e-stop: {reason}')
            self.publish_status()
        for node in list(self.skill_nodes.values()):
            run = self.runs.get(node.key)
            if run is not None and run.outcome and node.phase == 'active':
                node.trigger_deactivate()

    # ----------------------------------------------------------------- control loop
    def _on_loop_error(self, exc: BaseException) -> None:
        self.get_logger().error(f'control tick raised {type(exc).__name__}: {exc}')

    def _tick(self) -> None:
        gate, robot = self.gate, self.robot
        if gate is None or robot is None:
            return
        began = time.monotonic_ns()
        robot.update()
        if not robot.have_state:
            return
        with self._lock:
            active = [(r, self._run_workers[r.key]) for r in self.runs.values()
                      if not r.outcome and r.key in self._run_workers]
        held: set[str] = set()
        if active and gate.mode != MODE_ESTOP:
            assert self.loop is not None
            held = tick_workers(active, self.state, began + int(self.loop.period_ns * self._wait),
                                self._answer_timeout)
        with self._lock:
            targets = {r.key: (r.indices, r.targets) for r in self.runs.values()
                       if not r.outcome and r.targets is not None and r.key not in held}
            self._publish(gate.compute(targets))

    def _publish(self, cmd) -> None:
        if cmd is None or self._cmd_pub is None:
            return
        msg = self._cmd_msg
        set_stamp(msg.header.stamp, self.get_clock().now().nanoseconds)
        msg.header.frame_id = cmd.mode
        msg.position = cmd.q.tolist()
        msg.velocity = cmd.dq.tolist()
        msg.effort = cmd.tau.tolist()
        self._cmd_pub.publish(msg)
        self.commands_sent += 1

    # ----------------------------------------------------------------- status
    def publish_status(self) -> None:
        self._status_pub.publish(status_array(self))

    def shutdown(self) -> None:
        """Before the context goes: stop skills, send one last hold command, stop the loop."""
        self._stop_loop()
        with self._lock:
            if self.gate is not None:
                self._publish(self.gate.compute({}))
        self.pool.close()


def main(args: list[str] | None = None) -> None:
    # E-stop, stop and the robot state arrive through DDS threads and the executor: under host
    # load, normal-priority threads (one of them holding the GIL the control thread needs) are
    # what delay them. Threads inherit the policy of their creator, so setting it here (on the
    # threads libraries started at import too), before rclpy and DDS start theirs, makes the whole
    # runtime process SCHED_FIFO; the control thread then raises itself above it (rt_priority),
    # the supervisor's children start normal (supervisor.py). --ros-args -p
    # executor_rt_priority:=0 (or no CAP_SYS_NICE) keeps normal scheduling.
    prio = _process_rt_priority(args)
    sched = set_process_realtime(prio) if prio > 0 else 'off'
    init(args, small_segment=True)   # joint commands, status: small messages
    node = SkillRuntimeNode()
    node.get_logger().info(f'process scheduling: {sched}')
    run_nodes([node], on_shutdown=node.shutdown)


def _process_rt_priority(args: list[str] | None) -> int:
    """``executor_rt_priority`` from the command line (parameters are not readable before init)."""
    argv = sys.argv if args is None else args
    for i, arg in enumerate(argv):
        value = arg.split('executor_rt_priority:=', 1)
        if len(value) == 2 and i > 0 and argv[i - 1] == '-p':
            try:
                return int(value[1])
            except ValueError:
                return 0
    return DEFAULT_EXECUTOR_RT_PRIORITY

if __name__ == '__main__':
    main()

