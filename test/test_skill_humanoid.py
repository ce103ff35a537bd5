"""Reference humanoid pack on ``sim_robot`` (humanoid_29dof): each skill runs and reaches its pose.

Also a runtime that is not autostarted waits for a lifecycle manager, as in the bring-up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState

from field_deploy.profile import load_profile
from field_deploy.ros import Spinner, qos_profile
from field_deploy.testing import NodeProcess, wait_until
from skill_runtime.client import SkillClient
from skill_runtime.node import SkillRuntimeNode

PROFILE = load_profile('humanoid_29dof')
PACK = '/skills/reference_humanoid'
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope='module')
def rig(ros: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    runtime = SkillRuntimeNode(parameter_overrides=[
        Parameter('profile', value='humanoid_29dof'), Parameter('autostart', value=False),
        Parameter('step_budget_ms', value=250.0)])
    node = Node('skill_humanoid_client')
    sim = NodeProcess('sim_robot', ['--ros-args', '-p', 'profile:=humanoid_29dof'],
                      log_dir=tmp_path_factory.mktemp('skill_hum'))
    seen: dict[str, np.ndarray] = {'q': np.full(PROFILE.dof, np.nan)}
    names = PROFILE.joint_names

    def on_state(msg: JointState) -> None:
        q = seen['q'].copy()
        for n, p in zip(msg.name, msg.position, strict=False):
            if n in names:
                q[names.index(n)] = p
        seen['q'] = q
        seen['max'] = np.fmax(seen.get('max', q), q)
        seen['min'] = np.fmin(seen.get('min', q), q)

    def on_cmd(msg: JointState) -> None:
        q = np.array(msg.position)
        seen['cmd_max'] = np.fmax(seen.get('cmd_max', q), q)
        seen['cmd_min'] = np.fmin(seen.get('cmd_min', q), q)

    node.create_subscription(JointState, 'joint_states', on_state,
                             qos_profile(PROFILE.topic('joint_states').qos))
    node.create_subscription(JointState, 'joint_commands', on_cmd,
                             qos_profile(PROFILE.topic('joint_commands').qos))
    spinner = Spinner([runtime]).start()
    probe_spinner = Spinner([node]).start()  # own executor, as a separate process would have
    try:
        yield runtime, SkillClient(node), seen, sim
    finally:
        probe_spinner.stop()
        spinner.stop()
        runtime.destroy_node()
        node.destroy_node()
        sim.stop()


def settle(seen: dict, goal: np.ndarray, idx: np.ndarray, tol: float = 0.06, timeout: float = 15.0) -> float:
    """Generous timeout: on a loaded CI host the sim runs seconds behind; it must still get there."""
    wait_until(lambda: float(np.max(np.abs(seen['q'][idx] - goal[idx]))) < tol, timeout)
    return float(np.max(np.abs(seen['q'][idx] - goal[idx])))


def run_to_end(client: SkillClient, skill: str, timeout: float = 30.0) -> str:
    assert client.run(skill), f'{skill} did not activate'
    assert wait_until(lambda: client.state(skill) != 'active', timeout, 0.1)
    return client.state(skill)


def test_runtime_waits_for_lifecycle_manager_then_loads_humanoid_pack(rig) -> None:
    runtime, client, seen, _sim = rig
    assert client.state('/skill_runtime') == 'unconfigured'
    assert not runtime.skill_nodes
    assert client.transition('/skill_runtime', 'configure')
    assert client.transition('/skill_runtime', 'activate')
    assert set(runtime.skill_nodes) == {f'reference_humanoid/{s}'
                                        for s in ('stand_up', 'crouch', 'wave', 'hold_pose')}
    assert wait_until(lambda: runtime.robot is not None and runtime.robot.have_state
                      and not np.isnan(seen['q']).any(), 30)


def test_stand_up_then_crouch_reach_their_poses(rig) -> None:
    _runtime, client, seen, _sim = rig
    everything = np.arange(PROFILE.dof)
    client.set_params(f'{PACK}/stand_up', min_duration=0.5, max_velocity=2.0)
    assert run_to_end(client, f'{PACK}/stand_up') == 'inactive'
    assert settle(seen, PROFILE.array('default'), everything) < 0.06
    client.set_params(f'{PACK}/crouch', depth=0.6, min_duration=0.5, max_velocity=2.0)
    assert run_to_end(client, f'{PACK}/crouch') == 'inactive'
    goal = PROFILE.array('default')
    for side in ('left', 'right'):
        goal[PROFILE.joint_index(f'{side}_hip_pitch_joint')] = -0.6
        goal[PROFILE.joint_index(f'{side}_knee_joint')] = 1.2
        goal[PROFILE.joint_index(f'{side}_ankle_pitch_joint')] = -0.6
    assert settle(seen, goal, everything) < 0.06


def test_wave_raises_the_right_arm_and_lowers_it(rig) -> None:
    _runtime, client, seen, _sim = rig
    client.set_params(f'{PACK}/wave', cycles=2, frequency=1.0)  # slow enough for a loaded CI host
    for key in ('min', 'max', 'cmd_min', 'cmd_max'):
        seen.pop(key, None)
    assert run_to_end(client, f'{PACK}/wave') == 'inactive'
    shoulder = PROFILE.joint_index('right_shoulder_pitch_joint')
    elbow = PROFILE.joint_index('right_elbow_joint')
    assert seen['min'][shoulder] < -0.9, 'arm was raised'
    assert seen['cmd_max'][elbow] - seen['cmd_min'][elbow] > 0.7, 'forearm wave commanded'
    # The sim follows; a starved sim process may smooth the swing, so only part of it is required.
    assert seen['max'][elbow] - seen['min'][elbow] > 0.1, 'forearm waved on the sim'
    arm = np.array([PROFILE.joint_index(j) for j in PROFILE.group_joints('right_arm')])
    assert settle(seen, PROFILE.array('default'), arm) < 0.06


def test_hold_pose_holds_until_stopped(rig) -> None:
    runtime, client, seen, _sim = rig
    time.sleep(0.5)  # let the sim finish any motion of the previous test
    assert client.run(f'{PACK}/hold_pose')
    before = seen['q'].copy()
    time.sleep(0.5)
    assert client.state(f'{PACK}/hold_pose') == 'active'
    assert np.max(np.abs(seen['q'] - before)) < 0.05
    assert client.trigger('stop').success
    assert client.state(f'{PACK}/hold_pose') == 'inactive'
    assert runtime.skill_nodes['reference_humanoid/hold_pose'].outcome == 'stopped'
