"""The ``topics:`` section of the health configuration: which streams are watched, and how.

Split from :mod:`health_monitor.config` (the rest of the file's sections) by concept: the
stream tolerances (:class:`~health_monitor.topics.TopicLimits`) per topic, defaults and
overrides, ignored topics and cameras watched on their ``camera_info``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from field_deploy.profile import RobotProfile
from health_monitor.topics import TopicLimits


@dataclass(frozen=True)
class TopicWatch:
    name: str
    type: str
    path: str
    limits: TopicLimits
    stamped: bool
    qos: Any


# Types whose first field is std_msgs/Header (so their stamps are read from the CDR bytes).
STAMPED_TYPES = {
    'sensor_msgs/msg/JointState', 'sensor_msgs/msg/Imu', 'sensor_msgs/msg/Image',
    'sensor_msgs/msg/CameraInfo', 'sensor_msgs/msg/BatteryState', 'nav_msgs/msg/Odometry',
    'geometry_msgs/msg/WrenchStamped', 'diagnostic_msgs/msg/DiagnosticArray',
    'sensor_msgs/msg/CompressedImage', 'sensor_msgs/msg/PointCloud2', 'sensor_msgs/msg/LaserScan',
    'geometry_msgs/msg/PoseStamped', 'geometry_msgs/msg/TwistStamped',
}

_TOPIC_KEYS = {'min_ratio', 'max_ratio', 'window', 'stale_periods', 'stale_floor', 'stale_hold',
               'stale_hold_max',
               'future_tolerance', 'max_lag', 'check_stamps', 'rate_hold', 'clear', 'stale_clear',
               'freeze_after'}


def _topic_limits(c: Any, raw: Any, key: str, rate: float, base: TopicLimits | None = None
                  ) -> TopicLimits:
    m = c.mapping(raw or {}, key, set(), _TOPIC_KEYS)
    b = base or TopicLimits(rate_hz=rate)

    def num(k: str, default: float, positive: bool = True) -> float:
        return c.number(m[k], f'{key}.{k}', positive=positive) if k in m else default

    limits = TopicLimits(
        rate_hz=rate,
        min_ratio=num('min_ratio', b.min_ratio), max_ratio=num('max_ratio', b.max_ratio),
        window_s=num('window', b.window_s), stale_periods=num('stale_periods', b.stale_periods),
        stale_floor_s=num('stale_floor', b.stale_floor_s, positive=False),
        stale_hold_s=num('stale_hold', b.stale_hold_s, positive=False),
        stale_hold_max_s=num('stale_hold_max', b.stale_hold_max_s, positive=False),
        freeze_after_s=num('freeze_after', b.freeze_after_s, positive=False),
        future_tolerance_s=num('future_tolerance', b.future_tolerance_s),
        max_lag_s=num('max_lag', b.max_lag_s),
        check_stamps=c.boolean(m['check_stamps'], f'{key}.check_stamps')
        if 'check_stamps' in m else b.check_stamps,
        rate_hold_s=num('rate_hold', b.rate_hold_s), clear_s=num('clear', b.clear_s),
        stale_clear_s=num('stale_clear', b.stale_clear_s))
    for k, v in (('stale_floor', limits.stale_floor_s), ('stale_hold', limits.stale_hold_s),
                 ('stale_hold_max', limits.stale_hold_max_s),
                 ('freeze_after', limits.freeze_after_s)):
        if v < 0:
            raise c.fail(f'{key}.{k}', f'must be >= 0, got {v!r}')
    if limits.min_ratio >= 1.0 or limits.max_ratio <= 1.0:
        raise c.fail(key, f'rate band [min_ratio {limits.min_ratio}, max_ratio '
                          f'{limits.max_ratio}] must contain 1.0 (the expected rate)')
    return limits


def _topic_path(component: str, topic: str) -> str:
    """``sensors/camera/head`` + ``camera/head/image_raw`` -> ``sensors/camera/head/image_raw``."""
    component = component.strip('/')
    base = topic.strip('/').split('/')[-1]
    if base == component.split('/')[-1]:
        base = 'stream'
    return f'{component}/{base}'


def parse_topics(c: Any, raw: Any, profile: RobotProfile) -> list[TopicWatch]:
    """The watched streams of ``profile`` under the ``topics:`` section ``raw`` (``c``: the
    config file's checker, which names the file and key of a bad value)."""
    robot = profile.name
    topics_cfg = c.mapping(raw or {}, 'topics', set(),
                           {'defaults', 'ignore', 'overrides', 'images_via_camera_info'})
    via_info = c.boolean(topics_cfg.get('images_via_camera_info', False),
                         'topics.images_via_camera_info')
    ignore = topics_cfg.get('ignore', []) or []
    names = {t.name for t in profile.topics}
    for i, name in enumerate(ignore):
        if name not in names:
            raise c.fail(f'topics.ignore[{i}]', f'robot {robot!r} has no topic {name!r}')
    overrides = c.mapping(topics_cfg.get('overrides', {}) or {}, 'topics.overrides', set(), names)
    watches = []
    for spec in profile.topics:
        if spec.name in ignore:
            continue
        info = spec.name.rpartition('/')[0] + '/camera_info'
        if via_info and spec.type == 'sensor_msgs/msg/Image' and info in names and (
                info not in ignore):
            continue  # the camera's rate and silence are watched on its camera_info
        base = _topic_limits(c, topics_cfg.get('defaults'), 'topics.defaults', spec.rate_hz)
        limits = _topic_limits(c, overrides.get(spec.name), f'topics.overrides.{spec.name}',
                               spec.rate_hz, base)
        watches.append(TopicWatch(spec.name, spec.type, _topic_path(spec.component, spec.name),
                                  limits, spec.type in STAMPED_TYPES, spec.qos))
    return watches
