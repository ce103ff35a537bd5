"""Robot profile validation: the shipped profiles load; each kind of bad file is refused by name."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from field_deploy.profile import ProfileError, available_profiles, load_profile, profile_path


@pytest.fixture
def quad_doc() -> dict:
    return yaml.safe_load(profile_path('quadruped_12dof').read_text())


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / 'robot.yaml'
    path.write_text(yaml.safe_dump(doc))
    return path


def test_shipped_profiles_load() -> None:
    assert available_profiles() == ['humanoid_29dof', 'quadruped_12dof']
    humanoid = load_profile('humanoid_29dof')
    quad = load_profile('quadruped_12dof')
    assert (humanoid.kind, humanoid.dof) == ('humanoid', 29)
    assert (quad.kind, quad.dof) == ('quadruped', 12)
    assert quad.group_joints('FL_leg') == ('FL_hip_joint', 'FL_thigh_joint', 'FL_calf_joint')
    assert len(quad.group_joints('legs')) == 12
    assert len(humanoid.group_joints('whole_body')) == 29
    assert 'left_hip_pitch_joint' in humanoid.joint_names
    for profile in (humanoid, quad):
        lower, upper = profile.array('lower'), profile.array('upper')
        for pose in ('default', 'safe'):
            q = profile.array(pose)
            assert ((lower <= q) & (q <= upper)).all()
        assert profile.topic('joint_states').qos.reliability == 'reliable'


def mutate(doc: dict, path: str, value: object) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = path.split('.')
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is KeyError:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(('path', 'value', 'key', 'words'), [
    ('colour', 'red', 'colour', 'unknown key'),
    ('joints.0.velocity', 'fast', 'joints[0].velocity', 'expected a number'),
    ('joints.0.position', [1.0, -1.0], 'joints[0].position', 'must be below max'),
    ('joints.1.name', 'FL_hip_joint', 'joints[1].name', 'duplicate joint'),
    ('group_sets.legs', ['FL_leg', 'tail'], 'group_sets.legs', "'tail' is not the group"),
    ('kind', 'hexapod', 'kind', 'is not one of'),
    ('joints.0.default', 3.0, 'joints[0].default', 'outside the position limits'),
    ('health.motor_temperature', {'warn': 90, 'error': 80}, 'health.motor_temperature', 'must be below'),
    ('topics.0.qos.reliability', 'sometimes', 'topics[0].qos.reliability', 'is not one of'),
    ('control_rate', KeyError, 'control_rate', 'missing required key'),
])
def test_bad_profile_is_refused_naming_file_and_key(tmp_path: Path, quad_doc: dict, path: str,
                                                    value: object, key: str, words: str) -> None:
    if path == 'colour':
        quad_doc['colour'] = value
        bad = quad_doc
    else:
        bad = mutate(quad_doc, path, value)
    file = write(tmp_path, bad)
    with pytest.raises(ProfileError) as info:
        load_profile(file)
    message = str(info.value)
    assert message.startswith(f'{file}: {key}: '), message
    assert words in message


def test_missing_profile_names_the_shipped_ones() -> None:
    with pytest.raises(ProfileError, match='humanoid_29dof, quadruped_12dof'):
        load_profile('nope')


def test_invalid_yaml_is_refused(tmp_path: Path) -> None:
    file = tmp_path / 'broken.yaml'
    file.write_text('name: [unclosed\n')
    with pytest.raises(ProfileError, match='not valid YAML'):
        load_profile(file)
