"""``sim_robot``: a simulated humanoid / quadruped with the hardware's topics (lifecycle node).

Run: ``sim_robot --ros-args -p profile:=humanoid_29dof`` (or ``ros2 run field_deploy sim_robot``).

It publishes every topic of the robot profile (``profile.topics``) at the profile's rate with the
profile's QoS — except the topic whose ``params.source`` is ``safety_gate`` (``joint_commands``),
which it subscribes to: the joints track the last commanded positions (see
:mod:`sim_robot.model`). ``/diagnostics`` carries one ``DiagnosticStatus`` per motor (name
``motor/<joint>``, hardware_id the joint name, values ``temperature``, ``current``, ``voltage``,
``error_code``) plus one per other component of the profile (``power/battery``,
``sensors/imu``, ``sensors/camera/<name>``, ``sensors/wrench/<site>``, ``robot/odometry``).

Parameters (all settable at run time with SetParameters / ``ros2 param set``, except
``profile``, ``seed`` and ``autostart``, which are read at start):

=========================  ==========  ====================================================
``profile``                string      robot profile name or YAML path (``quadruped_12dof``)
``autostart``              bool        configure + activate at start (default true); false
                                       leaves the node unconfigured for a lifecycle manager
``seed``                   int         noise seed (0)
``battery_fraction``       double      initial state of charge, read at configure (0.95)
``drive``                  double[3]   body twist (vx m/s, vy m/s, wz rad/s) the base follows
``fault_overheat``         string      joints whose temperature ramps past the error threshold
``fault_overheat_rate``    double      ramp of the overheat fault in °C/s (15)
``fault_silent``           string      profile topics that stop being published
``fault_freeze``           string      joints whose reported position stops updating
``fault_noise``            double      extra white-noise std on every measured value (0)
=========================  ==========  ====================================================

The name-valued faults take one name or several separated by commas
(``ros2 param set /sim_robot fault_overheat FL_calf_joint,RR_hip_joint``); an empty string
clears the fault. A name that is not a joint / topic of the profile is refused with a reason
that lists the valid names.

Timing: one timer per distinct rate. Each timer counts the samples due since activation and
publishes the missing ones (catching up after a late wake-up, at most a quarter of the stream's
keep-last depth per tick so a burst never overwrites unacknowledged samples in the writer
history; skipping ahead, with a warning, if more than 5 s behind), so the achieved rate equals
the nominal one on average. Header stamps are the nominal sample times ``t0 + k / rate``:
evenly spaced and strictly increasing per topic. The control-rate timer also steps the model,
once per sample. The 500 Hz streams (joint_states, imu, wrench) are published as pre-serialised
CDR templates patched per sample (:mod:`sim_robot.cdr`), the others as message objects.

Fast DDS: ``main()`` points ``FASTRTPS_DEFAULT_PROFILES_FILE`` at ``config/fastdds.xml`` unless
it is set (:func:`field_deploy.rosenv.use_project_fastdds_profile`; why: ``docs/sim_robot.md``).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import WrenchStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import BatteryState, CameraInfo, Image, Imu, JointState

import field_deploy  # noqa: F401  (AMENT_PREFIX_PATH before rclpy)
from field_deploy.profile import ProfileError, RobotProfile, TopicSpec, load_profile
from field_deploy.ros import init, qos_profile, run_nodes, set_stamp
from field_deploy.rosenv import use_project_fastdds_profile
from sim_robot.cdr import CdrTemplate
from sim_robot.model import Faults, SimModel
from sim_robot.render import SceneRenderer

NODE_NAME = 'sim_robot'
MAX_CATCH_UP_S = 5.0
"""A timer more than this far behind skips samples instead of bursting them (suspended process)."""
MAX_BURST_S = 0.5
"""At most this much of a stream is published in one catch-up tick (250 samples at 500 Hz). Bounded
apart from the keep-last depth: the profiles' 5 s histories would otherwise allow bursts of 625
samples per stream, each landing at once in every reader's shared-memory port (8192 descriptors
for all of a process's traffic)."""

_TYPES: dict[str, type] = {
    'sensor_msgs/msg/JointState': JointState,
    'sensor_msgs/msg/Imu': Imu,
    'geometry_msgs/msg/WrenchStamped': WrenchStamped,
    'sensor_msgs/msg/Image': Image,
    'sensor_msgs/msg/CameraInfo': CameraInfo,
    'nav_msgs/msg/Odometry': Odometry,
    'sensor_msgs/msg/BatteryState': BatteryState,
    'diagnostic_msgs/msg/DiagnosticArray': DiagnosticArray,
}


def camera_name(topic: str) -> str:
    """``camera/front/image_raw`` -> ``front``."""
    parts = topic.strip('/').split('/')
    return parts[-2] if len(parts) >= 2 else parts[0]


@dataclass
class _Stream:
    """One published topic: its spec, publisher, reused message and filler."""

    spec: TopicSpec
    publisher: object
    message: object
    fill: Callable[[object, int], bytes | None]
    """Refresh ``message`` for a stamp (returns None), or return its raw CDR bytes to publish."""


@dataclass
class _RateGroup:
    """Topics sharing one rate (and one timer); ``steps_model`` for the control-rate group."""

    rate_hz: float
    streams: list[_Stream] = field(default_factory=list)
    steps_model: bool = False
    t0_ns: int = 0
    count: int = 0
    timer: object = None


class SimRobotNode(LifecycleNode):
    """Lifecycle shell around :class:`SimModel`; see the module docstring for the interface."""

    def __init__(self, *, node_name: str = NODE_NAME, namespace: str | None = None,
                 **kwargs) -> None:
        super().__init__(node_name, namespace=namespace, **kwargs)
        self.declare_parameter('profile', 'quadruped_12dof',
                               ParameterDescriptor(description='robot profile name or YAML path',
                                                   read_only=True))
        self.declare_parameter('autostart', True, ParameterDescriptor(read_only=True))
        self.declare_parameter('seed', 0, ParameterDescriptor(read_only=True))
        self.declare_parameter('battery_fraction', 0.95)
        self.declare_parameter('drive', [0.0, 0.0, 0.0])
        self.declare_parameter('fault_overheat', '')
        self.declare_parameter('fault_overheat_rate', 15.0)
        self.declare_parameter('fault_silent', '')
        self.declare_parameter('fault_freeze', '')
        self.declare_parameter('fault_noise', 0.0)

        self.profile: RobotProfile = load_profile(self.get_parameter('profile').value)
        self.faults = Faults()
        self.drive = [0.0, 0.0, 0.0]
        self.model: SimModel | None = None
        self.groups: list[_RateGroup] = []
        self._command_sub = None
        self._renderers: dict[str, SceneRenderer] = {}
        self._last_stamp: dict[str, int] = {}
        self.commands_received = 0
        self.skipped_samples = 0
        # Apply the start values through the same validation as run-time changes.
        result = self._on_set_parameters([self.get_parameter(n) for n in (
            'drive', 'fault_overheat', 'fault_overheat_rate', 'fault_silent', 'fault_freeze',
            'fault_noise')])
        if not result.successful:
            raise ValueError(f'{node_name}: {result.reason}')
        self.add_on_set_parameters_callback(self._on_set_parameters)

        if self.get_parameter('autostart').value:
            self.trigger_configure()
            self.trigger_activate()

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        """Validate and apply fault / drive parameters; refuse unknown joints and topics."""
        joints = set(self.profile.joint_names)
        topics = {t.name for t in self.profile.topics}
        staged = Faults(overheat=set(self.faults.overheat), overheat_rate=self.faults.overheat_rate,
                        freeze=set(self.faults.freeze), silent=set(self.faults.silent),
                        noise=self.faults.noise)
        drive = list(self.drive)
        for p in params:
            value = p.value
            if p.name in ('fault_overheat', 'fault_freeze', 'fault_silent'):
                names = {v.strip() for v in str(value or '').split(',') if v.strip()}
                valid = topics if p.name == 'fault_silent' else joints
                unknown = sorted(names - valid)
                if unknown:
                    kind = 'topic' if p.name == 'fault_silent' else 'joint'
                    return SetParametersResult(
                        successful=False,
                        reason=f'{p.name}: robot {self.profile.name!r} has no {kind} '
                               f'{unknown[0]!r} (valid: {", ".join(sorted(valid))})')
                setattr(staged, p.name.removeprefix('fault_'), names)
            elif p.name in ('fault_noise', 'fault_overheat_rate'):
                if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                    return SetParametersResult(successful=False,
                                               reason=f'{p.name}: expected a number >= 0, got {value!r}')
                setattr(staged, p.name.removeprefix('fault_'), float(value))
            elif p.name == 'drive':
                if value is None or len(value) != 3 or not all(math.isfinite(v) for v in value):
                    return SetParametersResult(successful=False,
                                               reason=f'drive: expected [vx, vy, wz], got {value!r}')
                drive = [float(v) for v in value]
        self.faults = staged
        self.drive = drive
        if self.model is not None:
            self.model.faults = staged
            self.model.drive[:] = drive
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._build()
        except (ValueError, KeyError) as exc:
            self.get_logger().error(f'configure failed: {exc}')
            self._teardown_interfaces()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f'configured {self.profile.name} ({self.profile.dof} joints, '
                               f'{sum(len(g.streams) for g in self.groups)} topics); Fast DDS '
                               f'profile: {os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE") or "none"}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        now = self.get_clock().now().nanoseconds
        for group in self.groups:
            group.t0_ns = now
            group.count = 0
            group.timer = self.create_timer(1.0 / group.rate_hz, self._tick(group))
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_timers()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_timers()
        self._teardown_interfaces()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_timers()
        self._teardown_interfaces()
        return TransitionCallbackReturn.SUCCESS

    def _stop_timers(self) -> None:
        for group in self.groups:
            if group.timer is not None:
                self.destroy_timer(group.timer)
                group.timer = None

    def _teardown_interfaces(self) -> None:
        for group in self.groups:
            for stream in group.streams:
                self.destroy_lifecycle_publisher(stream.publisher)
        self.groups = []
        if self._command_sub is not None:
            self.destroy_subscription(self._command_sub)
            self._command_sub = None

    # ------------------------------------------------------------------ wiring
    def _build(self) -> None:
        profile = self.profile
        self.model = SimModel(profile, seed=int(self.get_parameter('seed').value),
                              battery_fraction=float(self.get_parameter('battery_fraction').value))
        self.model.faults = self.faults
        self.model.drive[:] = self.drive
        self._renderers = {}
        self._last_stamp = {}
        groups: dict[float, _RateGroup] = {}
        for spec in profile.topics:
            if spec.params.get('source') == 'safety_gate':
                if spec.type != 'sensor_msgs/msg/JointState':
                    raise ValueError(f'{profile.path}: topic {spec.name!r}: the safety gate topic '
                                     f'must be sensor_msgs/msg/JointState, not {spec.type}')
                self._command_sub = self.create_subscription(
                    JointState, spec.name, self._on_command, qos_profile(spec.qos))
                continue
            msg_type = _TYPES.get(spec.type)
            if msg_type is None:
                raise ValueError(f'{profile.path}: topic {spec.name!r}: sim_robot cannot simulate '
                                 f'type {spec.type} (it can: {", ".join(sorted(_TYPES))})')
            message, fill = self._make_filler(spec, msg_type)
            publisher = self.create_lifecycle_publisher(msg_type, spec.name, qos_profile(spec.qos))
            group = groups.setdefault(spec.rate_hz, _RateGroup(spec.rate_hz))
            group.streams.append(_Stream(spec, publisher, message, fill))
        control = profile.control_rate_hz
        if control not in groups:
            groups[control] = _RateGroup(control)  # steps the model even if nothing publishes
        groups[control].steps_model = True
        # Control group first: slower streams see the state of the current step.
        self.groups = sorted(groups.values(), key=lambda g: (not g.steps_model, -g.rate_hz))

    def _on_command(self, msg: JointState) -> None:
        if self.model is not None and msg.position is not None:
            self.model.command(list(msg.name), list(msg.position))
            self.commands_received += 1

    def _tick(self, group: _RateGroup) -> Callable[[], None]:
        period_ns = 1e9 / group.rate_hz
        max_behind = max(2, int(MAX_CATCH_UP_S * group.rate_hz))
        # A burst longer than a quarter of the smallest keep-last depth could overwrite samples
        # in the writer history before a reliable reader has acknowledged them, and a long one
        # floods the readers' ports: catch up gradually instead, a few extra samples per tick.
        depths = [s.spec.qos.depth for s in group.streams]
        max_burst = max(2, min(min(depths) // 4 if depths else max_behind,
                               int(MAX_BURST_S * group.rate_hz)))
        dt = 1.0 / group.rate_hz

        def on_timer() -> None:
            now = self.get_clock().now().nanoseconds
            due = int((now - group.t0_ns) / period_ns) + 1
            missing = due - group.count
            if missing > max_behind:
                # Far behind (suspended process, overloaded host): skip, do not burst.
                skipped = missing - 1
                group.count += skipped
                self.skipped_samples += skipped
                self.get_logger().warning(
                    f'{group.rate_hz:g} Hz timer {skipped / group.rate_hz:.2f} s behind: '
                    f'skipped {skipped} samples of '
                    f'{", ".join(s.spec.name for s in group.streams) or "the model"}')
                if group.steps_model and self.model is not None:
                    self.model.step(dt * skipped)
                missing = 1
            for _ in range(min(missing, max_burst)):
                stamp_ns = group.t0_ns + int(group.count * period_ns)
                group.count += 1
                if group.steps_model and self.model is not None:
                    self.model.step(dt)
                self._publish_group(group, stamp_ns)
        return on_timer

    def _publish_group(self, group: _RateGroup, stamp_ns: int) -> None:
        silent = self.faults.silent
        for stream in group.streams:
            if stream.spec.name in silent:
                continue
            last = self._last_stamp.get(stream.spec.name, -1)
            if stamp_ns <= last:
                stamp_ns = last + 1
            self._last_stamp[stream.spec.name] = stamp_ns
            payload = stream.fill(stream.message, stamp_ns)
            stream.publisher.publish(stream.message if payload is None else payload)

    # ------------------------------------------------------------------ message fillers
    def _make_filler(self, spec: TopicSpec, msg_type: type) -> tuple[object, Callable[[object, int], None]]:
        """A reusable message for ``spec`` and the function that refreshes it for a stamp."""
        model = self.model
        assert model is not None
        profile = self.profile
        msg = msg_type()

        if msg_type is JointState:
            msg.name = list(profile.joint_names)
            zeros = [0.0] * profile.dof
            msg.position, msg.velocity, msg.effort = zeros, zeros, zeros
            template = CdrTemplate(msg, arrays=('position', 'velocity', 'effort'))

            def fill(m: JointState, ns: int) -> bytes:
                return template.render(ns, arrays=model.joint_measurement())
            return msg, fill

        if msg_type is Imu:
            msg.header.frame_id = 'imu_link'
            msg.orientation_covariance[0::4] = [1e-4] * 3
            msg.angular_velocity_covariance[0::4] = [4e-6] * 3
            msg.linear_acceleration_covariance[0::4] = [4e-4] * 3
            template = CdrTemplate(msg, scalars=(
                'orientation.x', 'orientation.y', 'orientation.z', 'orientation.w',
                'angular_velocity.x', 'angular_velocity.y', 'angular_velocity.z',
                'linear_acceleration.x', 'linear_acceleration.y', 'linear_acceleration.z'))

            def fill(m: Imu, ns: int) -> bytes:
                quat, gyro, accel = model.imu()
                return template.render(ns, scalars=(*quat, *gyro.tolist(), *accel.tolist()))
            return msg, fill

        if msg_type is WrenchStamped:
            site = str(spec.params.get('site') or spec.name.rsplit('/', 1)[-1])
            msg.header.frame_id = site
            template = CdrTemplate(msg, scalars=(
                'wrench.force.x', 'wrench.force.y', 'wrench.force.z',
                'wrench.torque.x', 'wrench.torque.y', 'wrench.torque.z'))

            def fill(m: WrenchStamped, ns: int) -> bytes:
                return template.render(ns, scalars=model.wrench(site).tolist())
            return msg, fill

        if msg_type is Image:
            width = int(spec.params.get('width', 640))
            height = int(spec.params.get('height', 480))
            encoding = spec.params.get('encoding', 'rgb8')
            if encoding != 'rgb8':
                raise ValueError(f'{profile.path}: topic {spec.name!r}: params.encoding '
                                 f'{encoding!r} is not supported by sim_robot (only rgb8)')
            name = camera_name(spec.name)
            renderer = SceneRenderer(width, height, label=f'{profile.name} {name}')
            self._renderers[name] = renderer
            msg.header.frame_id = f'{name}_optical_frame'
            msg.height, msg.width, msg.encoding, msg.step = height, width, 'rgb8', width * 3

            def fill(m: Image, ns: int) -> None:
                set_stamp(m.header.stamp, ns)
                m.data = renderer.render(ns * 1e-9, float(model.pose[0]), float(model.pose[2]))
            return msg, fill

        if msg_type is CameraInfo:
            name = camera_name(spec.name)
            image_spec = next((t for t in profile.topics if t.type == 'sensor_msgs/msg/Image'
                               and camera_name(t.name) == name), None)
            params = image_spec.params if image_spec is not None else {}
            width = int(params.get('width', 640))
            height = int(params.get('height', 480))
            fx = width / (2.0 * math.tan(math.radians(90.0) / 2.0))  # 90° horizontal field of view
            msg.header.frame_id = f'{name}_optical_frame'
            msg.width, msg.height = width, height
            msg.distortion_model = 'plumb_bob'
            msg.d = [0.0] * 5
            msg.k = [fx, 0.0, width / 2.0, 0.0, fx, height / 2.0, 0.0, 0.0, 1.0]
            msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            msg.p = [fx, 0.0, width / 2.0, 0.0, 0.0, fx, height / 2.0, 0.0, 0.0, 0.0, 1.0, 0.0]

            def fill(m: CameraInfo, ns: int) -> None:
                set_stamp(m.header.stamp, ns)
            return msg, fill

        if msg_type is Odometry:
            msg.header.frame_id = 'odom'
            msg.child_frame_id = 'base_link'

            def fill(m: Odometry, ns: int) -> None:
                set_stamp(m.header.stamp, ns)
                x, y, yaw = (float(v) for v in model.pose)
                p = m.pose.pose
                p.position.x, p.position.y = x, y
                p.orientation.z, p.orientation.w = math.sin(yaw / 2.0), math.cos(yaw / 2.0)
                t = m.twist.twist
                t.linear.x, t.linear.y, t.angular.z = (float(v) for v in model.twist)
            return msg, fill

        if msg_type is BatteryState:
            msg.header.frame_id = 'battery'
            msg.design_capacity = float(model.battery_capacity_ah)
            msg.capacity = float(model.battery_capacity_ah)
            msg.power_supply_status = BatteryState.POWER_SUPPLY_STATUS_DISCHARGING
            msg.power_supply_technology = BatteryState.POWER_SUPPLY_TECHNOLOGY_LION
            msg.power_supply_health = BatteryState.POWER_SUPPLY_HEALTH_GOOD
            msg.present = True

            def fill(m: BatteryState, ns: int) -> None:
                set_stamp(m.header.stamp, ns)
                m.voltage = float(model.battery_voltage)
                m.current = -float(model.battery_current)
                m.charge = float(model.battery_charge_ah)
                m.percentage = float(model.battery_fraction)
                m.temperature = 30.0
            return msg, fill

        # DiagnosticArray
        return msg, self._diagnostics_filler()

    def _diagnostics_filler(self) -> Callable[[DiagnosticArray, int], None]:
        model = self.model
        assert model is not None
        profile = self.profile
        motors = []
        for joint in profile.joint_names:
            status = DiagnosticStatus(name=f'motor/{joint}', hardware_id=joint)
            status.values = [KeyValue(key=k) for k in ('temperature', 'current', 'voltage',
                                                       'error_code')]
            motors.append(status)
        components = sorted({t.component for t in profile.topics
                             if t.params.get('source') != 'safety_gate'
                             and t.type != 'diagnostic_msgs/msg/DiagnosticArray'
                             and t.component != 'robot/joints'})
        others = {c: DiagnosticStatus(name=c, hardware_id=c.rsplit('/', 1)[-1])
                  for c in components}
        battery_th = profile.battery_fraction
        levels = (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR)

        def fill(m: DiagnosticArray, ns: int) -> None:
            set_stamp(m.header.stamp, ns)
            voltage = f'{model.battery_voltage:.2f}'
            for i, (status, (level, code, text)) in enumerate(zip(motors, model.motor_levels(), strict=True)):
                status.level = levels[level]
                status.message = text
                values = status.values
                values[0].value = f'{model.temperature[i]:.2f}'
                values[1].value = f'{model.current[i]:.3f}'
                values[2].value = voltage
                values[3].value = str(code)
            for name, status in others.items():
                status.level = DiagnosticStatus.OK
                status.message = 'ok'
                if name.startswith('power/'):
                    frac = model.battery_fraction
                    if frac <= battery_th.error:
                        status.level, status.message = DiagnosticStatus.ERROR, 'battery critical'
                    elif frac <= battery_th.warn:
                        status.level, status.message = DiagnosticStatus.WARN, 'battery low'
                    status.values = [KeyValue(key='fraction', value=f'{frac:.4f}'),
                                     KeyValue(key='voltage', value=voltage)]
            m.status = [*motors, *others.values()]
        return fill


def main(args: list[str] | None = None) -> int:
    """Console script ``sim_robot``: spin until SIGINT / SIGTERM."""
    use_project_fastdds_profile()  # before the DDS participant exists
    init(args if args is not None else sys.argv)
    try:
        node = SimRobotNode()
    except (ProfileError, ValueError) as exc:
        print(f'sim_robot: {exc}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    run_nodes([node])
    return 0


if __name__ == '__main__':
    sys.exit(main())
