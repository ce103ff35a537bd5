"""``skill_runtime`` as a real process (the console script), as the bring-up starts it."""

from __future__ import annotations

import signal
import time

import pytest
from rclpy.node import Node
from sensor_msgs.msg import JointState

from field_deploy.profile import load_profile
from field_deploy.ros import qos_profile
from field_deploy.testing import wait_until
from skill_runtime.client import SkillClient

pytestmark = pytest.mark.timeout(90)
PROFILE = load_profile('quadruped_12dof')


def test_runtime_process_runs_a_skill_and_shuts_down_cleanly(spin, node_process) -> None:
    sim = node_process('sim_robot', ['--ros-args', '-p', 'profile:=quadruped_12dof'])
    runtime = node_process('skill_runtime', ['--ros-args', '-p', 'profile:=quadruped_12dof'])
    node = Node('skill_process_probe')
    frames: list[tuple[float, str]] = []
    node.create_subscription(JointState, 'joint_commands',
                             lambda m: frames.append((time.monotonic(), m.header.frame_id)),
                             qos_profile(PROFILE.topic('joint_commands').qos))
    spin(node)
    client = SkillClient(node)
    assert wait_until(lambda: len(frames) > 50, 40), runtime.log()[-3000:]
    skill = '/skills/reference_quadruped/stand_up'
    client.set_params(skill, min_duration=0.5)
    assert client.run(skill)
    assert wait_until(lambda: client.state(skill) == 'inactive', 20, 0.1)
    assert client.trigger('estop').success
    assert wait_until(lambda: frames[-1][1] == 'estop', 10)
    assert runtime.stop(signal.SIGINT) == 0
    log = runtime.log()
    assert 'loaded pack reference_quadruped' in log and 'process scheduling' in log
    assert 'refused entry_point:reference_humanoid' in log
    assert 'done: pose reached' in log
    n = len(frames)
    time.sleep(0.3)
    assert len(frames) == n, 'nothing is published after shutdown'
    assert sim.alive()
