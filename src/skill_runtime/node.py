"""ROS shell of the skill runtime: the ``skill_runtime`` lifecycle node and one lifecycle node per skill.

``skill_runtime`` (a LifecycleNode, ``autostart`` true by default):

* configure: loads the profile, discovers packs (entry points + ``pack_path``), refuses those that
  do not fit (reasons in the log and in ``~/status``), creates ``<ns>/skills/<pack>/<skill>``
  lifecycle nodes in this process, subscribes the robot state, creates the ``joint_commands``
  publisher (QoS from the profile) — the gate is its only writer.
* activate: starts the control loop (own thread, profile control rate); deactivate stops the
  skills and the loop.
* ``~/stop`` (Trigger): stops every skill, the gate holds the last command. ``~/estop``
  (Trigger) and the ``estop`` topic (std_msgs/Bool, true): stops every skill, publishes the first
  safe-pose command at once from the callback, then walks to the profile's safe pose at
  ``safe_velocity``; activation is refused until ``~/reset``.
* ``~/status`` (diagnostic_msgs/DiagnosticArray): one status per skill (pack, pack_version, skill,
  phase, progress, params, outcome, reason), one for the gate, one for refused packs.

Each command on ``joint_commands`` carries the gate mode in ``header.frame_id`` (``run`` or
``estop``) so a recorder or a test can tell a safe command from a skill's.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import WrenchStamped
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Imu, JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from field_deploy.profile import RobotProfile, load_profile
from field_deploy.ros import (
    Spinner,
    init,
    polled_subscription,
    qos_profile,
    run_nodes,
    set_stamp,
    take_latest,
)
from skill_runtime.api import RobotState, Skill, SkillContext
from skill_runtime.gate import MODE_ESTOP, SafetyGate, SkillRun
from skill_runtime.loader import DEFAULT_ALLOW, PackRecord, discover
from skill_runtime.loop import ControlLoop, set_thread_realtime
from skill_runtime.manifest import Manifest, ParamSpec, SkillSpec

_PTYPE = {'double': ParameterType.PARAMETER_DOUBLE, 'int': ParameterType.PARAMETER_INTEGER,
          'bool': ParameterType.PARAMETER_BOOL, 'string': ParameterType.PARAMETER_STRING}
SWITCH_INTERVAL_S = 0.0002
STATS_WINDOW_S = 5.0  # jitter figures in ~/status cover the last 5 s
DEFAULT_EXECUTOR_RT_PRIORITY = 30
_LEVEL = {'': DiagnosticStatus.OK, 'done': DiagnosticStatus.OK, 'stopped': DiagnosticStatus.WARN,
          'refused': DiagnosticStatus.WARN, 'failed': DiagnosticStatus.ERROR}


def _descriptor(p: ParamSpec) -> ParameterDescriptor:
    unit = f' [{p.unit}]' if p.unit else ''
    d = ParameterDescriptor(type=_PTYPE[p.type], description=f'{p.description}{unit}'.strip(),
                            dynamic_typing=False)
    if p.type == 'double':
        d.floating_point_range = [FloatingPointRange(from_value=float(p.min), to_value=float(p.max),
                                                     step=0.0)]
    elif p.type == 'int':
        d.integer_range = [IntegerRange(from_value=int(p.min), to_value=int(p.max), step=0)]
    return d


class VendorTimeout(Exception):
    """A skill's constructor, configure() or start() did not return in time."""


def call_bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run vendor code in a helper thread and wait at most ``timeout`` s for it.

    Python cannot kill the thread: a call that hangs is abandoned (daemon thread) and reported
    as :class:`VendorTimeout`, so the executor — which also delivers e-stop — is never held
    longer than ``timeout``. Exceptions of ``fn`` are re-raised here.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box['value'] = fn()
        except BaseException as exc:  # handed to the caller
            box['error'] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f'vendor-{what}', daemon=True).start()
    if not done.wait(timeout):
        raise VendorTimeout(f'{what} did not return within {timeout:g} s')
    if 'error' in box:
        raise box['error']
    return box.get('value')


class SkillNode(LifecycleNode):
    """``<ns>/skills/<pack>/<skill>``: a skill as a lifecycle node with typed, ranged parameters.

    configure: builds the skill with the current parameters (its ``configure()`` may refuse);
    activate: rebuilds it if parameters changed since, asks the runtime for its joints and starts;
    the runtime deactivates it when it is done (→ inactive) or failed (→ ErrorProcessing →
    unconfigured). Parameters cannot change while active.
    """

    def __init__(self, runtime: SkillRuntimeNode, manifest: Manifest, spec: SkillSpec,
                 cls: type[Skill]) -> None:
        ns = runtime.get_namespace().rstrip('/')
        super().__init__(spec.name, namespace=f'{ns}/skills/{manifest.name}')
        self.runtime = runtime
        self.manifest = manifest
        self.spec = spec
        self.cls = cls
        self.key = f'{manifest.name}/{spec.name}'
        self.skill: Skill | None = None
        self.ctx: SkillContext | None = None
        self.run: SkillRun | None = None
        self.outcome = ''
        self.reason = ''
        self.deactivating = False
        for p in spec.params:
            self.declare_parameter(p.name, p.default, _descriptor(p))
        self.add_on_set_parameters_callback(self._on_set_parameters)

    @property
    def phase(self) -> str:
        return self._state_machine.current_state[1]

    def params(self) -> dict[str, Any]:
        return {p.name: self.get_parameter(p.name).value for p in self.spec.params}

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        if self.phase == 'active':
            return SetParametersResult(successful=False,
                                       reason=f'skill {self.key} is active: deactivate it first')
        return SetParametersResult(successful=True)

    def _set_result(self, outcome: str, reason: str) -> None:
        self.outcome, self.reason = outcome, reason
        self.runtime.publish_status()

    def _build(self) -> str | None:
        """Construct the skill with the current parameters and let it check them; a reason or None."""
        rt = self.runtime
        assert rt.profile is not None
        indices = rt.claim_indices(self.spec)
        self.ctx = SkillContext(profile=rt.profile, params=self.params(), logger=self.get_logger(),
                                clock=rt.clock_s, joints=tuple(rt.profile.joint_names[i] for i in indices),
                                indices=indices, rate_hz=self.spec.control_rate or rt.rate_hz)

        def build() -> tuple[Skill, str | None]:
            skill = self.cls(self.ctx)
            return skill, skill.configure()

        self.skill = None
        try:
            skill, problem = call_bounded(build, rt.vendor_call_timeout(), 'configure')
            self.skill = skill
        except VendorTimeout as exc:
            problem = str(exc)
        except Exception as exc:
            problem = f'configure raised {type(exc).__name__}: {exc}'
        if problem:
            self.skill = None
            self.get_logger().error(f'skill {self.key}: configure refused: {problem}')
            self._set_result('refused', f'configure: {problem}')
        return problem or None

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.runtime.profile is None:
            self._set_result('refused', 'skill_runtime is not configured')
            return TransitionCallbackReturn.FAILURE
        if self._build() is not None:
            return TransitionCallbackReturn.FAILURE
        self._set_result('', 'configured')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Parameters set while inactive apply now: the skill is rebuilt and re-checked with them.
        if (self.skill is None or self.ctx is None or self.ctx.params != self.params()) \
                and self._build() is not None:
            return TransitionCallbackReturn.FAILURE
        assert self.skill is not None and self.ctx is not None
        reason = self.runtime.start_skill(self)
        if reason is not None:
            self.get_logger().warning(f'skill {self.key}: activation refused: {reason}')
            self._set_result('refused', reason)
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f'skill {self.key}: started with {json.dumps(self.ctx.params)}')
        self._set_result('', 'running')
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        run = self.runtime.end_skill(self, 'stopped', 'deactivated')
        outcome, reason = (run.outcome, run.reason) if run is not None else ('stopped', 'deactivated')
        log = self.get_logger().error if outcome == 'failed' else self.get_logger().info
        log(f'skill {self.key}: {outcome}: {reason}')
        self._set_result(outcome, reason)
        return TransitionCallbackReturn.ERROR if outcome == 'failed' else TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.runtime.end_skill(self, 'failed', self.reason or 'error')
        self.skill = None
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.skill = None
        self._set_result('', 'cleaned up')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.runtime.end_skill(self, 'stopped', 'shutdown')
        self.skill = None
        return TransitionCallbackReturn.SUCCESS


class SkillRuntimeNode(LifecycleNode):
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
        self.declare_parameter('vendor_call_timeout', 2.0)  # s for a skill's __init__+configure / start
        self.declare_parameter('sensors', True)            # subscribe imu + wrenches for RobotState
        self.declare_parameter('rt_priority', 40)          # SCHED_FIFO of the control thread; 0 off
        self.declare_parameter('executor_rt_priority', DEFAULT_EXECUTOR_RT_PRIORITY)  # see main()
        self._lock = threading.RLock()
        self.profile: RobotProfile | None = None
        self.rate_hz = 500.0
        self.gate: SafetyGate | None = None
        self.loop: ControlLoop | None = None
        self.packs: list[PackRecord] = []
        self.skill_nodes: dict[str, SkillNode] = {}
        self.runs: dict[str, SkillRun] = {}
        self._stepping: SkillRun | None = None
        self._step_began = 0.0
        self._q = self._dq = self._tau = np.zeros(0)
        self._imu = np.array([0.0, 0.0, 0.0, 1.0] + [0.0] * 6)
        self._raw: dict[str, bytes] = {}
        self._raw_js: bytes | None = None
        self._parsed_js: bytes | None = None
        self._stamp_ns = 0
        self._have_state = False
        self._index_cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._subs: list[Any] = []
        # Sensor streams (IMU, wrenches: 2,500 msg/s on the quadruped) are polled, not spun: the
        # control tick takes the newest sample when a skill runs. Served by the executor, they
        # cost an executor event per message even with no skill running. (Measured in the demo:
        # the process's CPU stayed ~54 % of a core either way; most of it is the 500 Hz loop.)
        self._sensor_node = Node(f'_{self.get_name()}_sensors', namespace=self.get_namespace(),
                                 context=self.context)
        self._sensor_subs: list[tuple[str, Any]] = []
        self._sensor_lock = threading.Lock()
        self._cmd_pub = None
        self._cmd_msg = JointState()
        self._active = False
        self._guard_stop = threading.Event()
        self._guard: threading.Thread | None = None
        self.commands_sent = 0

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
        imu, wrenches = self._sensor_state()
        return RobotState(q=self._q.copy(), dq=self._dq.copy(), tau=self._tau.copy(),
                          imu=imu, wrenches=wrenches, stamp_ns=self._stamp_ns)

    def _str_list(self, name: str) -> list[str]:
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:
            return []
        return [v for v in (value or []) if v]

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
        rate = float(self.get_parameter('control_rate').value) or prof.control_rate_hz
        self.rate_hz = rate
        self.gate = SafetyGate(prof, rate, safe_velocity=float(self.get_parameter('safe_velocity').value))
        self._q = prof.array('default') * 0
        self._dq = np.zeros(prof.dof)
        self._tau = np.zeros(prof.dof)
        allow = self._str_list('allow') or list(DEFAULT_ALLOW)
        self.packs = discover(prof, pack_path=self._str_list('pack_path'), allow=allow,
                              entry_points=bool(self.get_parameter('entry_points').value))
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
                node = SkillNode(self, rec.manifest, spec, rec.classes[spec.name])
                self.skill_nodes[node.key] = node
                if self.executor is not None:
                    self.executor.add_node(node)
            self.get_logger().info(f'loaded pack {rec.name} {rec.manifest.version} '
                                   f'({rec.manifest.vendor}, {rec.candidate.source}): '
                                   f'{", ".join(s.name for s in rec.manifest.skills)}')
        cmd_spec = prof.topic('joint_commands')
        self._cmd_pub = self.create_publisher(JointState, cmd_spec.name, qos_profile(cmd_spec.qos))
        self._cmd_msg = JointState()
        self._cmd_msg.name = prof.joint_names
        state_spec = prof.topic('joint_states')
        self._subs.append(self.create_subscription(JointState, state_spec.name,
                                                   self._on_joint_states_raw,
                                                   qos_profile(state_spec.qos), raw=True))
        sensors = bool(self.get_parameter('sensors').value)
        for spec in prof.topics_of_type('sensor_msgs/msg/Imu')[:sensors]:
            self._sensor_subs.append(('imu', polled_subscription(
                self._sensor_node, Imu, spec.name, qos_profile(replace(spec.qos, depth=1)))))
        for spec in prof.topics_of_type('geometry_msgs/msg/WrenchStamped') if sensors else ():
            site = str(spec.params.get('site', spec.name.rsplit('/', 1)[-1]))
            self._sensor_subs.append((f'wrench:{site}', polled_subscription(
                self._sensor_node, WrenchStamped, spec.name, qos_profile(replace(spec.qos, depth=1)))))
        self.publish_status()
        return TransitionCallbackReturn.SUCCESS

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
        self.loop = ControlLoop(self.rate_hz, self._tick, on_error=self._on_loop_error,
                                history=int(self.rate_hz * STATS_WINDOW_S),
                                rt_priority=int(self.get_parameter('rt_priority').value)).start()
        self._guard_stop.clear()
        self._guard = threading.Thread(target=self._guard_run, name='skill-watchdog', daemon=True)
        self._guard.start()
        self.get_logger().info(f'active: control loop at {self.rate_hz:g} Hz ({self.loop.realtime}), '
                               f'{len(self.skill_nodes)} skills')
        return TransitionCallbackReturn.SUCCESS

    def _stop_loop(self) -> None:
        self.stop_all('runtime deactivated')
        self._active = False
        self._guard_stop.set()
        if self.loop is not None:
            self.loop.stop()
        if self._guard is not None:
            self._guard.join(1.0)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        for node in list(self.skill_nodes.values()):
            if self.executor is not None:
                self.executor.remove_node(node)
            node.destroy_node()
        self.skill_nodes.clear()
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs.clear()
        for _key, sub in self._sensor_subs:
            self._sensor_node.destroy_subscription(sub)
        self._sensor_subs.clear()
        self._raw.clear()
        if self._cmd_pub is not None:
            self.destroy_publisher(self._cmd_pub)
            self._cmd_pub = None
        self.gate = None
        self._have_state = False

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
        self._sensor_node.destroy_node()
        super().destroy_node()

    # ----------------------------------------------------------------- robot state
    def _on_joint_states_raw(self, data: bytes) -> None:
        self._raw_js = data
        if not self._have_state:
            self._update_joints()

    def _update_joints(self) -> None:
        """Parse the newest joint_states (control thread: once per tick at most, not per message)."""
        data = self._raw_js
        if data is None or data is self._parsed_js:
            return
        self._parsed_js = data
        self._on_joint_states(deserialize_message(data, JointState))

    def _on_joint_states(self, msg: JointState) -> None:
        if self.profile is None:
            return
        key = tuple(msg.name)
        mapping = self._index_cache.get(key)
        if mapping is None:
            names = self.profile.joint_names
            pairs = [(i, names.index(n)) for i, n in enumerate(msg.name) if n in names]
            mapping = (np.array([p[0] for p in pairs], dtype=int), np.array([p[1] for p in pairs], dtype=int))
            self._index_cache[key] = mapping
        src, dst = mapping
        q = self._q.copy()
        if len(msg.position) == len(msg.name):
            q[dst] = np.asarray(msg.position)[src]
        if len(msg.velocity) == len(msg.name):
            dq = self._dq.copy()
            dq[dst] = np.asarray(msg.velocity)[src]
            self._dq = dq
        if len(msg.effort) == len(msg.name):
            tau = self._tau.copy()
            tau[dst] = np.asarray(msg.effort)[src]
            self._tau = tau
        self._q = q
        self._stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if not self._have_state and len(dst) == self.profile.dof and self.gate is not None:
            with self._lock:
                self.gate.seed(q)
            self._have_state = True

    def _sensor_state(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The newest IMU and wrench samples, parsed only here, when a skill step needs them
        (deserialising every message in Python cost the control thread the GIL: p99 jitter
        8.7 ms with, 0.55 ms without)."""
        with self._sensor_lock:              # a skill's start and the control tick both read
            for key, sub in self._sensor_subs:
                data = take_latest(sub)
                if data is not None:
                    self._raw[key] = data
        imu = self._imu
        data = self._raw.get('imu')
        if data is not None:
            msg = deserialize_message(data, Imu)
            o, w, a = msg.orientation, msg.angular_velocity, msg.linear_acceleration
            imu = np.array([o.x, o.y, o.z, o.w, w.x, w.y, w.z, a.x, a.y, a.z])
        wrenches = {}
        for key, data in list(self._raw.items()):
            if key.startswith('wrench:'):
                m = deserialize_message(data, WrenchStamped).wrench
                wrenches[key[7:]] = np.array([m.force.x, m.force.y, m.force.z,
                                              m.torque.x, m.torque.y, m.torque.z])
        return imu, wrenches

    # ----------------------------------------------------------------- skills
    def start_skill(self, node: SkillNode) -> str | None:
        """Claim the skill's joints and start it; a reason when refused."""
        if not self._active or self.gate is None:
            return 'skill_runtime is not active'
        assert node.skill is not None and node.ctx is not None
        rate = node.spec.control_rate or self.rate_hz
        budget_ms = float(self.get_parameter('step_budget_ms').value)
        budget = node.spec.step_budget or budget_ms / 1e3
        with self._lock:
            reason = self.gate.claim(node.key, node.ctx.indices)
        if reason is not None:
            return reason
        run = SkillRun(key=node.key, skill=node.skill, indices=node.ctx.indices,
                       every=round(self.rate_hz / rate), budget=budget,
                       timeout=node.spec.timeout, clock=self.clock_s)
        try:
            # Vendor code: outside the lock (the control thread and e-stop never wait on it) and
            # bounded in time (it runs in the executor, which also delivers e-stop and stop).
            call_bounded(lambda: run.start(self.state()), self.vendor_call_timeout(), 'start')
        except Exception as exc:
            with self._lock:
                self.gate.release(node.key)
            if isinstance(exc, VendorTimeout):
                return str(exc)
            return f'start raised {type(exc).__name__}: {exc}'
        with self._lock:
            if self.gate.mode == MODE_ESTOP or node.key not in self.gate.owners():
                return 'e-stop while starting'
            self.runs[node.key] = run
            node.run = run
        return None

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
            run.finish(outcome, reason)  # vendor stop() runs outside the lock (e-stop needs it)
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
        gate = self.gate
        if gate is None:
            return
        self._update_joints()
        if not self._have_state:
            return
        with self._lock:
            runs = [r for r in self.runs.values() if not r.outcome]
        if runs and gate.mode != MODE_ESTOP:
            state = self.state()
            for run in runs:
                self._stepping, self._step_began = run, time.monotonic()
                run.tick(state)
                self._stepping = None
        with self._lock:
            targets = {r.key: (r.indices, r.targets) for r in self.runs.values()
                       if not r.outcome and r.targets is not None}
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

    def _guard_run(self) -> None:
        """Watchdog for a step that never returns: fail that skill and keep commanding the others.

        The control thread is stuck inside the skill's code (Python cannot interrupt it), so this
        thread publishes the gate's hold command in its place until the loop comes back.
        """
        while not self._guard_stop.wait(0.005):
            run = self._stepping
            if run is None or run.outcome:
                continue
            blocked = time.monotonic() - self._step_began
            if blocked > run.budget:
                run.finish('failed', f'watchdog: step blocked for more than {run.budget * 1e3:.1f} ms')
                with self._lock:
                    if self.gate is not None:
                        self.gate.release(run.key)
                        self._publish(self.gate.compute({}))
            if run.outcome and self._stepping is run and self.gate is not None:
                with self._lock:
                    self._publish(self.gate.compute({}))

    # ----------------------------------------------------------------- stop / e-stop / reset
    def _srv_stop(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        n = len(self.runs)
        self.stop_all('stop requested')
        self.get_logger().info(f'stop: {n} skill(s) stopped, holding pose')
        resp.success, resp.message = True, f'stopped {n} skill(s); holding pose'
        return resp

    def estop(self, reason: str) -> None:
        """Latch e-stop and publish the first safe command now (any thread).

        Only the gate is touched here, under its lock: it drops every claim and ignores skills from
        this instant. The skills' lifecycle transitions (and their vendor ``stop()``) follow in the
        main executor's housekeeping, within 10 ms unless that executor is busy.
        """
        with self._lock:
            if self.gate is not None:
                self.gate.estop(reason)
                self._publish(self.gate.compute({}))
        self._estop_pending = reason

    def _srv_estop(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        self.estop('estop service')
        resp.success = self.gate is not None
        resp.message = 'e-stop latched: moving to the safe pose' if resp.success else \
            'skill_runtime not configured: no gate to stop'
        return resp

    def _on_estop_topic(self, msg: Bool) -> None:
        if msg.data:
            self.estop('estop topic')

    def _srv_reset(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        if self.gate is None:
            resp.success, resp.message = False, 'skill_runtime not configured'
            return resp
        was = self.gate.mode == MODE_ESTOP
        with self._lock:
            self.gate.reset()
        self.get_logger().info('reset: e-stop released' if was else 'reset: nothing latched')
        resp.success = True
        resp.message = 'e-stop released' if was else 'no e-stop was latched'
        self.publish_status()
        return resp

    # ----------------------------------------------------------------- status
    def publish_status(self) -> None:
        arr = DiagnosticArray()
        set_stamp(arr.header.stamp, self.get_clock().now().nanoseconds)
        for node in list(self.skill_nodes.values()):
            run = self.runs.get(node.key) or node.run
            progress = run.progress if run is not None else 0.0
            outcome, reason = node.outcome, node.reason
            if run is not None and run.outcome and node.phase == 'active':
                outcome, reason = run.outcome, run.reason
            st = DiagnosticStatus(level=_LEVEL.get(outcome, DiagnosticStatus.OK),
                                  name=f'skills/{node.key}', hardware_id=node.manifest.name,
                                  message=f'{node.phase}{": " + outcome if outcome else ""}'
                                          f'{" (" + reason + ")" if reason else ""}')
            st.values = [KeyValue(key=k, value=str(v)) for k, v in (
                ('pack', node.manifest.name), ('pack_version', node.manifest.version),
                ('skill', node.spec.name), ('phase', node.phase), ('progress', f'{progress:.3f}'),
                ('params', json.dumps(node.params())), ('outcome', outcome), ('reason', reason))]
            arr.status.append(st)
        gate = self.gate
        st = DiagnosticStatus(name='skill_runtime/safety_gate', hardware_id='skill_runtime')
        if gate is None:
            st.level, st.message = DiagnosticStatus.WARN, 'not configured'
        else:
            jit = self.loop.jitter_stats() if self.loop is not None else {}
            st.level = DiagnosticStatus.ERROR if gate.mode == MODE_ESTOP else DiagnosticStatus.OK
            st.message = f'{gate.mode}{": " + gate.estop_reason if gate.estop_reason else ""}'
            st.values = [KeyValue(key=k, value=str(v)) for k, v in (
                ('mode', gate.mode), ('estop_reason', gate.estop_reason),
                ('owners', ','.join(sorted(gate.owners()))), ('rate_hz', self.rate_hz),
                ('clamped_total', gate.clamp_total), ('commands_sent', self.commands_sent),
                ('jitter_p50_ms', f'{jit.get("p50_ms", 0.0):.3f}'),
                ('jitter_p99_ms', f'{jit.get("p99_ms", 0.0):.3f}'),
                ('jitter_max_ms', f'{jit.get("max_ms", 0.0):.3f}'),
                ('overruns', jit.get('overruns', 0)),
                ('scheduling', self.loop.realtime if self.loop is not None else ''))]
        arr.status.append(st)
        refused = [r for r in self.packs if not r.accepted]
        st = DiagnosticStatus(name='skill_runtime/packs', hardware_id='skill_runtime',
                              level=DiagnosticStatus.WARN if refused else DiagnosticStatus.OK,
                              message=f'{len(self.packs) - len(refused)} accepted, {len(refused)} refused')
        st.values = [KeyValue(key=r.name, value=r.reason) for r in self.packs]
        arr.status.append(st)
        self._status_pub.publish(arr)

    def shutdown(self) -> None:
        """Before the context goes: stop skills, send one last hold command, stop the loop."""
        self._stop_loop()
        with self._lock:
            if self.gate is not None:
                self._publish(self.gate.compute({}))


def main(args: list[str] | None = None) -> None:
    # E-stop, stop and the robot state arrive through DDS threads and the executor: under host
    # load, normal-priority threads (one of them holding the GIL the control thread needs) are
    # what delay them. Threads inherit the policy of their creator, so setting it here, before
    # rclpy and DDS start their threads, makes the whole runtime process SCHED_FIFO; the control
    # thread then raises itself above it (rt_priority). --ros-args -p executor_rt_priority:=0
    # (or no CAP_SYS_NICE) keeps normal scheduling.
    prio = _process_rt_priority(args)
    sched = set_thread_realtime(prio) if prio > 0 else 'off'
    init(args)
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

