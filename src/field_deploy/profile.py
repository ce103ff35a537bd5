"""Robot profiles: the one description of a robot that every module reads.

A profile (``config/robots/<name>.yaml``) declares the robot kind, its joints with limits and
poses, the joint groups skills claim, the topics the robot publishes with rate and QoS, and the
health thresholds. :func:`load_profile` validates strictly — unknown keys, wrong types, ``min >
max``, duplicate joints, groups that name nothing — and refuses a bad file with a
:class:`ProfileError` that names the file, the key and what is wrong. No rclpy import here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from field_deploy.rosenv import config_dir

KINDS = ('humanoid', 'quadruped')
RELIABILITIES = ('reliable', 'best_effort')
DURABILITIES = ('volatile', 'transient_local')


class ConfigError(ValueError):
    """A configuration file that does not validate: ``<file>: <key>: <problem>``.

    The one error shape of every YAML the project reads (profiles, stacks, health configuration),
    so a user always learns which file, which key and what is wrong.
    """

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        super().__init__(f'{path}: {key}: {problem}')
        self.path = str(path)
        self.key = key
        self.problem = problem


def read_yaml(path: Path, error: type[ConfigError], missing_key: str, missing: str) -> Any:
    """Parse a configuration file, or raise ``error`` naming the file (missing, or not YAML)."""
    if not path.is_file():
        raise error(path, missing_key, missing)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise error(path, '<yaml>', f'not valid YAML: {exc}') from None


class ProfileError(ConfigError):
    """A robot profile that does not validate."""


@dataclass(frozen=True)
class QosSpec:
    """The QoS a stream is published with; subscribers (recorder, monitors) must match it."""

    reliability: str = 'reliable'
    durability: str = 'volatile'
    depth: int = 10


@dataclass(frozen=True)
class Joint:
    name: str
    group: str
    lower: float
    upper: float
    velocity: float
    effort: float
    default: float
    safe: float


@dataclass(frozen=True)
class TopicSpec:
    """One robot output stream: name relative to the robot namespace unless it starts with '/'."""

    name: str
    type: str
    rate_hz: float
    qos: QosSpec
    component: str
    """Health path of the component that produces it, e.g. ``sensors/imu``."""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Thresholds:
    warn: float
    error: float


@dataclass(frozen=True)
class RobotProfile:
    name: str
    kind: str
    description: str
    path: Path
    joints: tuple[Joint, ...]
    group_sets: dict[str, tuple[str, ...]]
    topics: tuple[TopicSpec, ...]
    control_rate_hz: float
    motor_temperature: Thresholds
    battery_fraction: Thresholds
    motor: dict[str, float]

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def dof(self) -> int:
        return len(self.joints)

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """Every claimable group: each joint's base group plus the declared group sets."""
        out: dict[str, list[str]] = {}
        for joint in self.joints:
            out.setdefault(joint.group, []).append(joint.name)
        for name, members in self.group_sets.items():
            out[name] = [j for g in members for j in out[g]]
        return {k: tuple(v) for k, v in out.items()}

    def group_joints(self, group: str) -> tuple[str, ...]:
        try:
            return self.groups[group]
        except KeyError:
            raise KeyError(f'robot {self.name!r} has no joint group {group!r} '
                           f'(it has {", ".join(sorted(self.groups))})') from None

    def joint_index(self, name: str) -> int:
        return self.joint_names.index(name)

    def array(self, attr: str) -> np.ndarray:
        """A per-joint attribute (``lower``, ``upper``, ``velocity``, ``effort``, ``default``, ``safe``)."""
        return np.array([getattr(j, attr) for j in self.joints], dtype=np.float64)

    def topic(self, name: str) -> TopicSpec:
        for spec in self.topics:
            if spec.name == name:
                return spec
        raise KeyError(f'robot {self.name!r} has no topic {name!r}')

    def topics_of_type(self, type_name: str) -> list[TopicSpec]:
        return [t for t in self.topics if t.type == type_name]


# --------------------------------------------------------------------------- validation helpers

class _Checker:
    """Walks a parsed YAML tree and raises :class:`ProfileError` with a dotted key path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ProfileError:
        return ProfileError(self.path, key, problem)

    def mapping(self, value: Any, key: str, required: set[str], optional: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key or '<top>', f'expected a mapping, got {type(value).__name__}')
        unknown = sorted(str(k) for k in set(value) - required - optional)
        if unknown:
            raise self.fail(f'{key}.{unknown[0]}' if key else unknown[0],
                            f'unknown key (allowed: {", ".join(sorted(required | optional))})')
        missing = sorted(required - set(value))
        if missing:
            raise self.fail(f'{key}.{missing[0]}' if key else missing[0], 'missing required key')
        return value

    def number(self, value: Any, key: str, *, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f'expected a number, got {type(value).__name__} {value!r}')
        if not math.isfinite(value):
            raise self.fail(key, f'expected a finite number, got {value!r}')
        if positive and value <= 0:
            raise self.fail(key, f'must be > 0, got {value!r}')
        return float(value)

    def string(self, value: Any, key: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f'expected a non-empty string, got {value!r}')
        if choices is not None and value not in choices:
            raise self.fail(key, f'{value!r} is not one of {", ".join(choices)}')
        return value

    def listing(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, 'expected a non-empty list')
        return value

    def thresholds(self, value: Any, key: str, *, rising: bool) -> Thresholds:
        m = self.mapping(value, key, {'warn', 'error'}, set())
        warn = self.number(m['warn'], f'{key}.warn')
        error = self.number(m['error'], f'{key}.error')
        if rising and warn >= error:
            raise self.fail(key, f'warn ({warn}) must be below error ({error})')
        if not rising and warn <= error:
            raise self.fail(key, f'warn ({warn}) must be above error ({error}) for a falling value')
        return Thresholds(warn, error)


def _parse_qos(c: _Checker, value: Any, key: str) -> QosSpec:
    m = c.mapping(value, key, set(), {'reliability', 'durability', 'depth'})
    depth = m.get('depth', 10)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise c.fail(f'{key}.depth', f'expected a whole number >= 1, got {depth!r}')
    return QosSpec(
        reliability=c.string(m.get('reliability', 'reliable'), f'{key}.reliability', RELIABILITIES),
        durability=c.string(m.get('durability', 'volatile'), f'{key}.durability', DURABILITIES),
        depth=depth,
    )


def _parse_joint(c: _Checker, value: Any, key: str) -> Joint:
    m = c.mapping(value, key, {'name', 'group', 'position', 'velocity', 'effort', 'default', 'safe'},
                  set())
    pos = m['position']
    if not isinstance(pos, list) or len(pos) != 2:
        raise c.fail(f'{key}.position', f'expected [min, max], got {pos!r}')
    lower = c.number(pos[0], f'{key}.position[0]')
    upper = c.number(pos[1], f'{key}.position[1]')
    if lower >= upper:
        raise c.fail(f'{key}.position', f'min ({lower}) must be below max ({upper})')
    joint = Joint(
        name=c.string(m['name'], f'{key}.name'),
        group=c.string(m['group'], f'{key}.group'),
        lower=lower,
        upper=upper,
        velocity=c.number(m['velocity'], f'{key}.velocity', positive=True),
        effort=c.number(m['effort'], f'{key}.effort', positive=True),
        default=c.number(m['default'], f'{key}.default'),
        safe=c.number(m['safe'], f'{key}.safe'),
    )
    for pose in ('default', 'safe'):
        q = getattr(joint, pose)
        if not lower <= q <= upper:
            raise c.fail(f'{key}.{pose}', f'{q} is outside the position limits [{lower}, {upper}]')
    return joint


def _parse_topic(c: _Checker, value: Any, key: str) -> TopicSpec:
    m = c.mapping(value, key, {'name', 'type', 'rate', 'qos', 'component'}, {'params'})
    type_name = c.string(m['type'], f'{key}.type')
    if type_name.count('/') != 2 or '/msg/' not in type_name:
        raise c.fail(f'{key}.type', f'expected "pkg/msg/Type", got {type_name!r}')
    params = m.get('params', {})
    if not isinstance(params, dict):
        raise c.fail(f'{key}.params', 'expected a mapping')
    return TopicSpec(
        name=c.string(m['name'], f'{key}.name'),
        type=type_name,
        rate_hz=c.number(m['rate'], f'{key}.rate', positive=True),
        qos=_parse_qos(c, m['qos'], f'{key}.qos'),
        component=c.string(m['component'], f'{key}.component'),
        params=dict(params),
    )


def parse_profile(data: Any, path: Path | str) -> RobotProfile:
    """Validate an already-parsed profile document; ``path`` is only used in messages."""
    path = Path(path)
    c = _Checker(path)
    top = c.mapping(data, '', {'name', 'kind', 'joints', 'topics', 'health', 'control_rate'},
                    {'description', 'group_sets', 'motor'})
    joints = tuple(_parse_joint(c, j, f'joints[{i}]')
                   for i, j in enumerate(c.listing(top['joints'], 'joints')))
    seen: set[str] = set()
    for i, joint in enumerate(joints):
        if joint.name in seen:
            raise c.fail(f'joints[{i}].name', f'duplicate joint {joint.name!r}')
        seen.add(joint.name)
    base_groups = {j.group for j in joints}
    group_sets_raw = top.get('group_sets', {}) or {}
    if not isinstance(group_sets_raw, dict):
        raise c.fail('group_sets', 'expected a mapping of name -> list of joint groups')
    group_sets: dict[str, tuple[str, ...]] = {}
    for name, members in group_sets_raw.items():
        members = c.listing(members, f'group_sets.{name}')
        for member in members:
            if member not in base_groups:
                raise c.fail(f'group_sets.{name}',
                             f'group {member!r} is not the group of any joint '
                             f'(joint groups: {", ".join(sorted(base_groups))})')
        if name in base_groups:
            raise c.fail(f'group_sets.{name}', 'name clashes with a joint group')
        group_sets[name] = tuple(members)

    topics = tuple(_parse_topic(c, t, f'topics[{i}]')
                   for i, t in enumerate(c.listing(top['topics'], 'topics')))
    names = [t.name for t in topics]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise c.fail(f'topics[{i}].name', f'duplicate topic {name!r}')

    health = c.mapping(top['health'], 'health', {'motor_temperature', 'battery_fraction'}, set())
    motor_raw = c.mapping(top.get('motor', {}), 'motor', set(),
                          {'thermal_resistance', 'thermal_time_constant', 'ambient',
                           'copper_loss', 'voltage', 'torque_constant'})
    motor = {k: c.number(v, f'motor.{k}', positive=(k != 'ambient')) for k, v in motor_raw.items()}
    return RobotProfile(
        name=c.string(top['name'], 'name'),
        kind=c.string(top['kind'], 'kind', KINDS),
        description=str(top.get('description', '')),
        path=path,
        joints=joints,
        group_sets=group_sets,
        topics=topics,
        control_rate_hz=c.number(top['control_rate'], 'control_rate', positive=True),
        motor_temperature=c.thresholds(health['motor_temperature'], 'health.motor_temperature',
                                       rising=True),
        battery_fraction=c.thresholds(health['battery_fraction'], 'health.battery_fraction',
                                      rising=False),
        motor=motor,
    )


def profile_path(name_or_path: str | Path) -> Path:
    """A profile name (``quadruped_12dof``) resolves in ``config/robots``; anything else is a path."""
    candidate = Path(name_or_path)
    if candidate.suffix in ('.yaml', '.yml') or candidate.exists():
        return candidate
    return config_dir() / 'robots' / f'{name_or_path}.yaml'


def available_profiles() -> list[str]:
    return sorted(p.stem for p in (config_dir() / 'robots').glob('*.yaml'))


def load_profile(name_or_path: str | Path) -> RobotProfile:
    path = profile_path(name_or_path)
    data = read_yaml(path, ProfileError, 'name', 'no such profile file (shipped profiles: '
                     f'{", ".join(available_profiles())})')
    return parse_profile(data, path)
