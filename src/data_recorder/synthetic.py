"""Synthetic bags written with the independent ``rosbags`` writer (tests and benchmarks).

The *reference humanoid load* of the recorder issue: JointState (29 joints) and Imu at 1 kHz,
four WrenchStamped at 500 Hz, Odometry at 100 Hz, three 640×480 rgb8 Images at 30 Hz,
DiagnosticArray at 10 Hz and joint_commands at 500 Hz. Messages are real ROS messages serialised
by ``rclpy.serialization.serialize_message`` so that the bytes are exactly what a node would send;
the bag itself is written by ``rosbags.rosbag2.Writer`` (MCAP storage), i.e. not by this project,
which is what makes it a fair fixture for the reader and the player.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from field_deploy.profile import load_profile

HUMANOID_CAMERAS = ('head', 'left_wrist', 'right_wrist')
HUMANOID_WRENCH_SITES = ('left_foot', 'right_foot', 'left_wrist', 'right_wrist')
START_NS = 1_700_000_000_000_000_000


@dataclass(frozen=True)
class Stream:
    """One synthetic topic: name, ROS type, rate (Hz)."""

    topic: str
    type: str
    rate_hz: float


def reference_streams(images: bool = True, image_rate_hz: float = 30.0) -> list[Stream]:
    """The reference humanoid load (see module docstring)."""
    streams = [Stream('/joint_states', 'sensor_msgs/msg/JointState', 1000.0),
               Stream('/imu', 'sensor_msgs/msg/Imu', 1000.0),
               *[Stream(f'/wrench/{s}', 'geometry_msgs/msg/WrenchStamped', 500.0)
                 for s in HUMANOID_WRENCH_SITES],
               Stream('/odom', 'nav_msgs/msg/Odometry', 100.0),
               Stream('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray', 10.0),
               Stream('/joint_commands', 'sensor_msgs/msg/JointState', 500.0)]
    if images:
        streams += [Stream(f'/camera/{c}/image_raw', 'sensor_msgs/msg/Image', image_rate_hz)
                    for c in HUMANOID_CAMERAS]
    return streams


class _Factory:
    """Builds the serialised message of a stream at a time (deterministic signals)."""

    def __init__(self, width: int = 640, height: int = 480) -> None:
        import numpy as np
        from rclpy.serialization import serialize_message

        from field_deploy.ros import message_class, set_stamp
        self._np = np
        self._ser = serialize_message
        self._cls = message_class
        self._set_stamp = set_stamp
        self.joints = list(load_profile('humanoid_29dof').joint_names)
        self.w, self.h = width, height
        base = np.zeros((height, width, 3), np.uint8)
        base[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
        base[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
        self._base = base

    def build(self, stream: Stream, t_ns: int, index: int) -> bytes:
        cls = self._cls(stream.type)
        msg = cls()
        t = (t_ns - START_NS) * 1e-9
        if hasattr(msg, 'header'):
            self._set_stamp(msg.header.stamp, t_ns)
            msg.header.frame_id = 'base_link'
        if stream.type == 'sensor_msgs/msg/JointState':
            n = len(self.joints)
            msg.name = self.joints
            msg.position = [0.5 * math.sin(2 * math.pi * 0.5 * t + j * 0.2) for j in range(n)]
            if stream.topic.endswith('joint_states'):
                msg.velocity = [0.5 * math.pi * math.cos(2 * math.pi * 0.5 * t + j * 0.2)
                                for j in range(n)]
                msg.effort = [10.0 * math.sin(2 * math.pi * 1.0 * t + j) for j in range(n)]
        elif stream.type == 'sensor_msgs/msg/Imu':
            msg.orientation.w = 1.0
            msg.angular_velocity.z = 0.1 * math.sin(t)
            msg.linear_acceleration.z = 9.81 + 0.05 * math.sin(20 * t)
        elif stream.type == 'geometry_msgs/msg/WrenchStamped':
            msg.wrench.force.z = 300.0 + 50.0 * math.sin(2 * math.pi * t)
            msg.wrench.torque.x = 2.0 * math.cos(2 * math.pi * t)
        elif stream.type == 'nav_msgs/msg/Odometry':
            msg.child_frame_id = 'base_link'
            msg.pose.pose.position.x = 0.3 * t
            msg.pose.pose.orientation.w = 1.0
            msg.twist.twist.linear.x = 0.3
        elif stream.type == 'sensor_msgs/msg/Image':
            msg.height, msg.width, msg.encoding, msg.step = self.h, self.w, 'rgb8', self.w * 3
            frame = self._np.roll(self._base, index * 4, axis=1)
            msg.data = frame.tobytes()
        elif stream.type == 'diagnostic_msgs/msg/DiagnosticArray':
            status_cls = self._cls('diagnostic_msgs/msg/DiagnosticStatus')
            kv_cls = self._cls('diagnostic_msgs/msg/KeyValue')
            msg.status = [status_cls(level=b'\x00', name=f'motor/{j}', message='ok', hardware_id=j,
                                     values=[kv_cls(key='temperature', value=f'{40 + t % 5:.1f}')])
                          for j in self.joints[:4]]
        return self._ser(msg)


def _qos(depth: int = 10):
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE, QosDurability.VOLATILE,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


def write_bag(path: str | Path, streams: Sequence[Stream], seconds: float, *, version: int = 9,
              start_ns: int = START_NS, jitter_ns: int = 0,
              extra: Iterable[tuple[str, str, int, bytes]] = (),
              image_size: tuple[int, int] = (640, 480)) -> Path:
    """Write ``streams`` for ``seconds`` into a rosbag2 MCAP directory with the rosbags writer.

    ``extra`` adds hand-made ``(topic, type, log_time_ns, data)`` messages (e.g. a type that is not
    installed). Returns the bag directory.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    factory = _Factory(*image_size)
    path = Path(path)
    events: list[tuple[int, int, int]] = []
    for i, s in enumerate(streams):
        period = int(1e9 / s.rate_hz)
        events += [(start_ns + k * period + (k * 7919 % (jitter_ns + 1) if jitter_ns else 0), i, k)
                   for k in range(int(seconds * s.rate_hz))]
    heapq.heapify(events)
    with Writer(path, version=version, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {}
        for s in streams:
            conns[s.topic] = writer.add_connection(s.topic, s.type, typestore=store,
                                                   offered_qos_profiles=[_qos()])
        extras = sorted(extra, key=lambda e: e[2])
        for topic, type_name, _, _ in extras:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, type_name, msgdef='int32 data',
                                                     rihs01='RIHS01_' + '0' * 64,
                                                     offered_qos_profiles=[_qos()])
        ei = 0
        while events:
            t, i, k = heapq.heappop(events)
            while ei < len(extras) and extras[ei][2] <= t:
                writer.write(conns[extras[ei][0]], extras[ei][2], extras[ei][3])
                ei += 1
            writer.write(conns[streams[i].topic], t, factory.build(streams[i], t, k))
        for topic, _, t, data in extras[ei:]:
            writer.write(conns[topic], t, data)
    return path
