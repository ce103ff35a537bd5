"""Unit tests of sim_robot's pure parts: model physics and faults, renderer, stream accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from field_deploy.profile import load_profile
from sim_robot.model import ERROR_OVER_TEMPERATURE, GRAVITY, SimModel
from sim_robot.render import SceneRenderer
from sim_robot.streamcheck import cdr_header_stamp_ns, stream_stats

DT = 0.002


@pytest.fixture(params=['quadruped_12dof', 'humanoid_29dof'])
def profile(request):
    return load_profile(request.param)


def run(model: SimModel, seconds: float) -> None:
    for _ in range(round(seconds / DT)):
        model.step(DT)


def test_starts_in_safe_pose_and_holds_it_without_commands(profile):
    model = SimModel(profile, sensor_noise=0.0)
    np.testing.assert_allclose(model.q, profile.array('safe'))
    run(model, 2.0)
    np.testing.assert_allclose(model.q, profile.array('safe'), atol=1e-9)
    assert np.all(np.abs(model.tau) < 1e-6)


def test_tracks_commands_within_effort_velocity_and_position_limits(profile):
    model = SimModel(profile, sensor_noise=0.0)
    target = profile.array('default')
    assert model.command(profile.joint_names, target) == profile.dof
    peak_tau = np.zeros(profile.dof)
    peak_dq = np.zeros(profile.dof)
    for _ in range(int(3.0 / DT)):
        model.step(DT)
        peak_tau = np.maximum(peak_tau, np.abs(model.tau))
        peak_dq = np.maximum(peak_dq, np.abs(model.dq))
        assert np.all(model.q >= model.lower) and np.all(model.q <= model.upper)
    np.testing.assert_allclose(model.q, target, atol=1e-3)
    assert np.all(peak_tau <= profile.array('effort') + 1e-9)
    assert np.all(peak_dq <= profile.array('velocity') + 1e-9)


def test_large_step_saturates_the_motor_at_its_effort_limit(profile):
    model = SimModel(profile, sensor_noise=0.0)
    # The joint with the longest way from its safe pose to a limit: demand >> effort limit.
    spans = np.maximum(model.safe - model.lower, model.upper - model.safe)
    i = int(np.argmax(spans))
    goal = model.lower[i] if model.safe[i] - model.lower[i] >= model.upper[i] - model.safe[i] \
        else model.upper[i]
    model.command([profile.joint_names[i]], [goal])
    peak = 0.0
    for _ in range(int(1.0 / DT)):
        model.step(DT)
        peak = max(peak, abs(model.tau[i]))
        assert abs(model.tau[i]) <= model.effort_limit[i] + 1e-9
    assert peak >= 0.99 * model.effort_limit[i]


def test_targets_outside_limits_are_clamped_and_bad_values_ignored(profile):
    model = SimModel(profile, sensor_noise=0.0)
    first = profile.joints[0]
    applied = model.command([first.name, 'no_such_joint', profile.joints[1].name],
                            [first.upper + 5.0, 0.0, math.nan])
    assert applied == 1
    assert model.target[0] == first.upper
    assert model.target[1] == profile.joints[1].safe
    run(model, 3.0)
    assert model.q[0] <= first.upper and model.q[0] == pytest.approx(first.upper, abs=1e-3)


def test_long_steps_are_split_and_stay_stable(profile):
    model = SimModel(profile, sensor_noise=0.0)
    model.command(profile.joint_names, profile.array('default'))
    model.step(1.0)  # what the node does after a stall
    model.step(2.0)
    assert np.all(np.isfinite(model.q))
    np.testing.assert_allclose(model.q, profile.array('default'), atol=1e-3)


def test_thermal_model_heats_with_current_towards_its_steady_state(profile):
    model = SimModel(profile, sensor_noise=0.0)
    motor = profile.motor
    current = 0.5 * profile.array('effort') / motor['torque_constant']
    temps = []
    for _ in range(3):
        for _ in range(int(10.0 / DT)):
            model.heat(current, DT)
        temps.append(model.temperature.copy())
    steady = motor['ambient'] + motor['thermal_resistance'] * motor['copper_loss'] * current ** 2
    expected = steady + (motor['ambient'] - steady) * math.exp(-30.0 / motor['thermal_time_constant'])
    np.testing.assert_allclose(temps[-1], expected, rtol=0.01)
    assert np.all(temps[0] < temps[1]) and np.all(temps[1] < temps[2])


def test_moving_joints_draw_current_and_warm_up_idle_ones_do_not(profile):
    model = SimModel(profile, sensor_noise=0.0)
    moving = int(np.argmax(np.abs(model.default - model.safe)))
    model.command([profile.joint_names[moving]], [model.default[moving]])
    peak = 0.0
    for _ in range(int(1.0 / DT)):
        model.step(DT)
        peak = max(peak, abs(model.current[moving]))
    full = model.effort_limit[moving] / model.k_t
    assert 0.5 * full < peak <= full + 1e-9
    assert model.temperature[moving] > model.ambient + 0.01
    idle = [i for i in range(profile.dof) if i != moving]
    np.testing.assert_allclose(model.temperature[idle], model.ambient)


def test_battery_drains_and_voltage_sags(profile):
    model = SimModel(profile, battery_fraction=0.5)
    v0, f0 = model.battery_voltage, model.battery_fraction
    model.command(profile.joint_names, profile.array('default'))
    run(model, 5.0)
    assert model.battery_fraction < f0
    assert model.battery_voltage < v0
    assert model.battery_current > 0


def test_overheat_fault_ramps_past_error_threshold(profile):
    model = SimModel(profile)
    joint = profile.joint_names[2]
    model.faults.overheat = {joint}
    model.faults.overheat_rate = 30.0
    run(model, 1.0)
    i = profile.joint_index(joint)
    assert model.temperature[i] == pytest.approx(model.ambient + 30.0, abs=0.5)
    run(model, 3.0)
    assert model.temperature[i] > profile.motor_temperature.error
    levels = model.motor_levels()
    assert levels[i][0] == 2 and levels[i][1] == ERROR_OVER_TEMPERATURE
    assert all(level == 0 for k, (level, _, _) in enumerate(levels) if k != i)


def test_frozen_encoder_keeps_reporting_the_last_position(profile):
    model = SimModel(profile)
    i = 1
    joint = profile.joint_names[i]
    model.faults.freeze = {joint}
    model.step(DT)
    frozen = model.joint_measurement()[0][i]
    model.command([joint], [profile.joints[i].default])
    run(model, 1.0)
    position, velocity, _ = model.joint_measurement()
    assert position[i] == frozen
    assert velocity[i] == 0.0
    assert abs(model.q[i] - profile.joints[i].default) < 1e-2  # the joint itself did move
    model.faults.freeze = set()
    model.step(DT)
    assert abs(model.joint_measurement()[0][i] - model.q[i]) < 0.01


def test_noise_fault_adds_white_noise(profile):
    model = SimModel(profile, sensor_noise=0.0, seed=3)
    run(model, 0.1)
    assert np.all(model.joint_measurement()[0] == model.q)
    model.faults.noise = 0.05
    samples = []
    for _ in range(500):
        model.step(DT)
        samples.append(model.joint_measurement()[0] - model.q)
    assert np.std(samples) == pytest.approx(0.05, rel=0.1)


def test_imu_reads_gravity_and_wrenches_carry_the_weight_when_standing(profile):
    model = SimModel(profile, sensor_noise=0.0)
    _, gyro, accel = model.imu()
    assert accel[2] == pytest.approx(GRAVITY)
    assert np.allclose(gyro, 0.0)
    feet = [s for s in model.sites if 'foot' in s]
    assert feet
    lying = sum(model.wrench(s)[2] for s in feet)
    model.command(profile.joint_names, profile.array('default'))
    run(model, 3.0)
    standing = sum(model.wrench(s)[2] for s in feet)
    assert lying == pytest.approx(0.0, abs=1e-6)
    assert standing == pytest.approx(model.mass * GRAVITY, rel=0.01)
    with pytest.raises(KeyError, match='no wrench site'):
        model.wrench('tail')


def test_odometry_integrates_the_drive_twist(profile):
    model = SimModel(profile, sensor_noise=0.0)
    model.drive[:] = [0.5, 0.0, 0.0]
    run(model, 4.0)
    # First-order 0.2 s approach: distance = v (t - 0.2 (1 - e^{-t/0.2})).
    assert model.pose[0] == pytest.approx(0.5 * (4.0 - 0.2), rel=0.02)
    model.drive[:] = [0.0, 0.0, 1.0]
    run(model, 2.0)
    assert model.pose[2] > 1.0
    _, gyro, _ = model.imu()
    assert gyro[2] == pytest.approx(1.0, abs=0.01)


def test_renderer_reuses_one_buffer_and_frames_change_over_time():
    renderer = SceneRenderer(640, 480, label='cam')
    first = renderer.render(0.0)
    snapshot = bytes(first)
    second = renderer.render(1.5)
    assert second is first and len(second) == 640 * 480 * 3
    assert bytes(second) != snapshot
    assert renderer.image.shape == (480, 640, 3)
    with pytest.raises(ValueError, match='too small'):
        SceneRenderer(10, 10)


def test_stream_stats_counts_loss_duplicates_and_order():
    period = 2_000_000
    stamps = [1_000 + k * period for k in range(10)]
    del stamps[4]
    stamps.append(stamps[-1])
    stats = stream_stats(stamps, 500.0)
    assert (stats.expected, stats.lost, stats.duplicates, stats.non_monotonic) == (10, 1, 1, 1)
    assert stream_stats([], 10.0).received == 0


def test_cdr_header_stamp_of_a_real_serialised_message():
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    msg = JointState()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000, 123_456_789
    assert cdr_header_stamp_ns(serialize_message(msg)) == 1_700_000_000_123_456_789
    with pytest.raises(ValueError):
        cdr_header_stamp_ns(b'\x00\x01')


@pytest.mark.parametrize('profile_name', ['quadruped_12dof', 'humanoid_29dof'])
def test_raw_cdr_of_the_500hz_streams_deserialises_to_the_model_values(profile_name):
    """The node publishes joint_states / imu / wrench as patched CDR templates: check every field."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Imu, JointState

    from field_deploy.ros import stamp_to_ns
    from sim_robot.node import SimRobotNode

    profile = load_profile(profile_name)
    model = SimModel(profile, seed=5)
    model.command(profile.joint_names, profile.array('default'))
    model.drive[:] = [0.2, 0.0, 0.3]
    run(model, 0.5)
    fake = SimRobotNode.__new__(SimRobotNode)  # only the filler factory, no ROS node needed
    fake.model, fake.profile = model, profile
    stamp = 1_790_000_000_123_456_789
    for spec in profile.topics:
        if spec.params.get('source') == 'safety_gate':
            continue
        if spec.type == 'sensor_msgs/msg/JointState':
            msg, fill = fake._make_filler(spec, JointState)
            out = deserialize_message(fill(msg, stamp), JointState)
            assert list(out.name) == profile.joint_names
            for got, want in zip((out.position, out.velocity, out.effort),
                                 model.joint_measurement(), strict=True):
                np.testing.assert_array_equal(np.array(got), want)
        elif spec.type == 'sensor_msgs/msg/Imu':
            msg, fill = fake._make_filler(spec, Imu)
            out = deserialize_message(fill(msg, stamp), Imu)
            quat, gyro, accel = model.imu()
            o, w, a = out.orientation, out.angular_velocity, out.linear_acceleration
            assert (o.x, o.y, o.z, o.w) == quat
            assert [w.x, w.y, w.z] == gyro.tolist() and [a.x, a.y, a.z] == accel.tolist()
            assert out.header.frame_id == 'imu_link' and out.orientation_covariance[0] == 1e-4
        elif spec.type == 'geometry_msgs/msg/WrenchStamped':
            from geometry_msgs.msg import WrenchStamped

            msg, fill = fake._make_filler(spec, WrenchStamped)
            out = deserialize_message(fill(msg, stamp), WrenchStamped)
            f, t = out.wrench.force, out.wrench.torque
            assert [f.x, f.y, f.z, t.x, t.y, t.z] == model.wrench(spec.params['site']).tolist()
            assert out.header.frame_id == spec.params['site']
        else:
            continue
        assert stamp_to_ns(out.header.stamp) == stamp
