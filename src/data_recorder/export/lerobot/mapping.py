"""Which bag topics become which LeRobot features, from the robot profile (field_deploy.profile).

=============================  =========================================  =======================
feature                        source (profile topic, type)               names
=============================  =========================================  =======================
``observation.state``          ``joint_states`` position                  the profile's joints
``observation.velocity``       ``joint_states`` velocity (if recorded)    the profile's joints
``observation.effort``         ``joint_states`` effort (if recorded)      the profile's joints
``action``                     ``joint_commands`` position (the gate's)   the profile's joints
``observation.imu``            each sensor_msgs/Imu (``.<name>`` if >1)   orientation.x..w, ...
``observation.wrench.<site>``  each geometry_msgs/WrenchStamped           force.x..z, torque.x..z
``observation.odometry``       nav_msgs/Odometry                          position.x.., twist ...
``observation.images.<cam>``   every sensor_msgs/Image topic (video)      height, width, channels
=============================  =========================================  =======================

IMU names: ``orientation.x..w, angular_velocity.x..z, linear_acceleration.x..z``; odometry:
``position.x..z, orientation.x..w, linear_velocity.x..z, angular_velocity.x..z``.

Vectors are float32 (LeRobot's convention). Pure: no ROS import; messages come deserialised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_recorder.export.parquet import IMAGE_TYPE, SIGNALS
from field_deploy.profile import RobotProfile, available_profiles, load_profile

JOINT_STATE = 'sensor_msgs/msg/JointState'
_VECTOR_TYPES = {'sensor_msgs/msg/Imu': 'imu', 'geometry_msgs/msg/WrenchStamped': 'wrench',
                 'nav_msgs/msg/Odometry': 'odometry'}
_AXES = {3: ('x', 'y', 'z'), 4: ('x', 'y', 'z', 'w'), 1: ('',)}


class MappingError(ValueError):
    """The bag cannot be mapped to the profile's features; says which topic and why."""


@dataclass
class Source:
    """One bag topic feeding one or more features."""

    topic: str
    type: str
    features: list[str]
    getters: list[Callable[[Any], np.ndarray]] = field(default_factory=list)


@dataclass
class Plan:
    profile: RobotProfile
    features: dict[str, dict[str, Any]]          # LeRobot features (videos without 'info' yet)
    sources: dict[str, Source]                   # topic -> source
    cameras: dict[str, str]                      # topic -> video key
    state_topic: str
    action_topic: str

    @property
    def topics(self) -> list[str]:
        return list(self.sources)


def resolve_topic(profile_name: str, bag_topics: dict[str, str]) -> str | None:
    """The bag topic of a profile topic (relative to the robot namespace): ``/name`` or a single
    ``/<ns>/name``; None if absent."""
    name = profile_name.lstrip('/')
    if '/' + name in bag_topics:
        return '/' + name
    hits = [t for t in bag_topics if t.endswith('/' + name)]
    if len(hits) > 1:
        raise MappingError(f'profile topic {name!r} matches several bag topics: {", ".join(hits)}')
    return hits[0] if hits else None


def infer_profile(joint_names: Sequence[str]) -> RobotProfile:
    """The shipped profile whose joints are exactly ``joint_names`` (any order)."""
    wanted = set(joint_names)
    for name in available_profiles():
        profile = load_profile(name)
        if set(profile.joint_names) == wanted:
            return profile
    raise MappingError(f'the {len(wanted)} joints of joint_states match no shipped robot profile '
                       f'({", ".join(available_profiles())}); give --robot NAME|PROFILE.yaml')


def joint_vector(msg: Any, attr: str, index: dict[str, int]) -> np.ndarray:
    """``msg.<attr>`` in the profile's joint order; NaN for joints the message does not carry."""
    out = np.full(len(index), np.nan, dtype=np.float32)
    for name, value in zip(msg.name, getattr(msg, attr), strict=False):
        i = index.get(name)
        if i is not None:
            out[i] = value
    return out


def _signal_names(type_name: str, sample: Any) -> tuple[list[str], list[Callable[[Any], Sequence[float]]]]:
    names, getters = [], []
    for suffix, _unit, getter in SIGNALS[type_name]:
        width = len(getter(sample))
        names += [f'{suffix}.{a}' if a else suffix for a in _AXES.get(width, [str(i) for i in range(width)])]
        getters.append(getter)
    return names, getters


def _camera_key(topic: str) -> str:
    parts = topic.strip('/').split('/')
    if 'camera' in parts and parts.index('camera') + 1 < len(parts):
        return parts[parts.index('camera') + 1]
    return '_'.join(p for p in parts if p != 'image_raw')


def plan(profile: RobotProfile, bag_topics: dict[str, str], first: Callable[[str], Any],
         image_shape: Callable[[str], tuple[int, int]]) -> Plan:
    """Features and sources for a bag. ``first(topic)`` gives the topic's first message
    (deserialised), ``image_shape(topic)`` its first image's ``(height, width)``."""
    joints = profile.joint_names
    index = {n: i for i, n in enumerate(joints)}
    features: dict[str, dict[str, Any]] = {}
    sources: dict[str, Source] = {}
    cameras: dict[str, str] = {}
    state_topic = resolve_topic('joint_states', bag_topics)
    action_topic = resolve_topic('joint_commands', bag_topics)
    if state_topic is None:
        raise MappingError('no joint_states topic in the bag: observation.state has no source')
    if action_topic is None:
        raise MappingError("no joint_commands topic in the bag: a LeRobot dataset needs an action "
                           "(the safety gate's commands)")
    msg = first(state_topic)
    missing = [j for j in joints if j not in set(msg.name)]
    if missing:
        raise MappingError(f'{state_topic}: joints of profile {profile.name} not in the message: '
                           f'{", ".join(missing[:5])}')
    vec = {'dtype': 'float32', 'shape': [len(joints)], 'names': list(joints)}
    state = Source(state_topic, JOINT_STATE, ['observation.state'],
                   [lambda m: joint_vector(m, 'position', index)])
    features['observation.state'] = dict(vec)
    for attr in ('velocity', 'effort'):
        if len(getattr(msg, attr)):
            features[f'observation.{attr}'] = dict(vec)
            state.features.append(f'observation.{attr}')
            state.getters.append(lambda m, a=attr: joint_vector(m, a, index))
    sources[state_topic] = state
    features['action'] = dict(vec)
    sources[action_topic] = Source(action_topic, JOINT_STATE, ['action'],
                                   [lambda m: joint_vector(m, 'position', index)])
    imus = [t for t in profile.topics if t.type == 'sensor_msgs/msg/Imu']
    for spec in profile.topics:
        kind = _VECTOR_TYPES.get(spec.type)
        if kind is None and spec.type != IMAGE_TYPE:
            continue
        topic = resolve_topic(spec.name, bag_topics)
        if topic is None or bag_topics[topic] != spec.type:
            continue
        if spec.type == IMAGE_TYPE:
            h, w = image_shape(topic)
            key = f'observation.images.{_camera_key(spec.name)}'
            features[key] = {'dtype': 'video', 'shape': [h, w, 3], 'names': ['height', 'width', 'channels']}
            cameras[topic] = key
            continue
        if kind == 'wrench':
            key = f'observation.wrench.{spec.params.get("site") or spec.name.split("/")[-1]}'
        elif kind == 'imu' and len(imus) > 1:
            key = f'observation.imu.{spec.name.strip("/").replace("/", "_")}'
        else:
            key = f'observation.{kind}'
        names, getters = _signal_names(spec.type, first(topic))
        features[key] = {'dtype': 'float32', 'shape': [len(names)], 'names': names}
        sources[topic] = Source(topic, spec.type, [key], [
            lambda m, gs=tuple(getters): np.concatenate([np.asarray(g(m), np.float32) for g in gs])])
    for topic in sorted(t for t, ty in bag_topics.items() if ty == IMAGE_TYPE and t not in cameras):
        key = f'observation.images.{_camera_key(topic)}'      # a camera the profile does not list
        if key in features:
            raise MappingError(f'{topic}: its video key {key} is taken by another camera topic')
        h, w = image_shape(topic)
        features[key] = {'dtype': 'video', 'shape': [h, w, 3], 'names': ['height', 'width', 'channels']}
        cameras[topic] = key
    return Plan(profile, features, sources, cameras, state_topic, action_topic)


def feature_differences(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[str]:
    """Why two feature sets cannot share a dataset (video ``info`` blocks aside), one line each."""
    out = []
    for key in sorted(set(old) | set(new)):
        a = {k: v for k, v in old.get(key, {}).items() if k != 'info'}
        b = {k: v for k, v in new.get(key, {}).items() if k != 'info'}
        if key not in old:
            out.append(f'{key}: not in the dataset')
        elif key not in new:
            out.append(f'{key}: in the dataset, not in this bag')
        elif a != b:
            diff = [f'{k} {a.get(k)!r} != {b.get(k)!r}' for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
            out.append(f'{key}: ' + '; '.join(d[:160] for d in diff))
    return out
