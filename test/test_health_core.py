"""Unit tests of the health monitor's pure cores: monitors, rules, aggregator, config, ledger,
lifecycle manager and policies (synthetic clocks, fakes for the lifecycle services)."""

from __future__ import annotations

import copy
import itertools
import json
import random
import sqlite3
import struct
from pathlib import Path

import pytest
import yaml

from field_deploy.profile import load_profile
from health_monitor.config import HealthConfigError, LifecycleConfig, ManagedNode, parse_config
from health_monitor.config import default_config_path as _default_path
from health_monitor.core import (
    ERROR,
    OK,
    STALE,
    WARN,
    Aggregator,
    ComponentHealth,
    HostLimits,
    HostMonitor,
    RuleSpec,
    Status,
    ThresholdRule,
    header_stamp_ns,
)
from health_monitor.ledger import Ledger, load_components
from health_monitor.manager import (
    ACTIVATE,
    CLEANUP,
    CONFIGURE,
    DEACTIVATE,
    LifecycleManager,
    PolicyEngine,
    backoff_delay,
)
from health_monitor.topics import (
    DeliveryGaps,
    FreezeWatch,
    Punctuality,
    TopicLimits,
    TopicMonitor,
    WriterRuns,
    joint_state_positions,
)

QUAD = load_profile('quadruped_12dof')
HUM = load_profile('humanoid_29dof')
DEFAULT = yaml.safe_load(_default_path().read_text())


def _cfg(changes: dict | None = None, profile=QUAD):
    data = copy.deepcopy(DEFAULT)
    for key, value in (changes or {}).items():
        node = data
        parts = key.split('.')
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return parse_config(data, 'cfg.yaml', profile)


# --------------------------------------------------------------------------- stamps

def test_header_stamp_read_from_real_cdr_bytes(ros: None) -> None:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image, JointState
    for cls in (JointState, Image):
        msg = cls()
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1_795_000_000, 123_456_789
        assert header_stamp_ns(serialize_message(msg)) == 1_795_000_000_123_456_789
    with pytest.raises(ValueError, match='too short'):
        header_stamp_ns(b'\x00\x01\x00\x00')


# --------------------------------------------------------------------------- topic monitor

def _feed(mon: TopicMonitor, t0: float, t1: float, rate: float, stamp_offset: float = 0.0):
    t = t0
    while t < t1:
        wall = int(1e18 + t * 1e9)
        mon.on_message(t, wall, wall + int(stamp_offset * 1e9))
        t += 1.0 / rate
    return t


def test_topic_stale_within_two_periods_and_clears() -> None:
    mon = TopicMonitor('imu', 'sensors/imu/imu', TopicLimits(rate_hz=100.0))
    assert mon.status(0.0).level == STALE  # never seen
    t = _feed(mon, 0.0, 2.0, 100.0)
    assert mon.status(t).level == OK
    last = mon.last_rx
    assert mon.limits.stale_after_s == pytest.approx(0.06)  # floor, 2 periods = 20 ms
    assert mon.limits.stale_raise_s == pytest.approx(0.08)  # + the 20 ms STALE hold
    assert mon.status(last + 0.07).level == OK and not mon.stale(last + 0.07)
    s = mon.status(last + 0.081)
    assert s.level == STALE and 'no message for' in s.message and mon.stale(last + 0.081)
    t = _feed(mon, last + 1.0, last + 1.1, 100.0)  # 10 messages: 25 (250 ms) needed to clear
    assert mon.status(t).level == STALE and 'again' in mon.status(t).message
    t = _feed(mon, t, t + 0.2, 100.0)
    assert mon.status(t).level == OK
    assert mon.stale_raised == 1 and mon.delivery_gaps == 0
    slow = TopicMonitor('cam', 'c', TopicLimits(rate_hz=10.0, stale_hold_s=0.0))
    _feed(slow, 0.0, 1.0, 10.0)
    assert slow.status(slow.last_rx + 0.19).level == OK
    assert slow.status(slow.last_rx + 0.21).level == STALE  # 2 periods of 100 ms


def _seq_feed(mon: TopicMonitor, t0: float, t1: float, rate: float, seq: int,
              every: float = 0.01) -> tuple[float, int]:
    """Checks every ``every`` s, each taking the newest of the samples published since."""
    t = t0
    while t < t1 - 1e-9:
        t += every
        seq += round(rate * every)
        wall = int(1e18 + t * 1e9)
        mon.on_message(t, wall, wall, seq=seq)
    return t, seq


def test_late_check_with_no_gap_is_not_stale() -> None:
    """Synthetic timeline: the monitor starved 300 ms (its check fired late); the samples it
    takes when it wakes, and those its DDS threads deliver just after, show no gap."""
    punct = Punctuality(period_s=0.01, tolerance_s=0.02)
    mon = TopicMonitor('imu', 'sensors/imu', TopicLimits(rate_hz=1000.0))
    t, seq = 0.0, 0
    for _ in range(100):                       # 1 s of on-time checks, 10 samples each
        t, seq = _seq_feed(mon, t, t + 0.01, 1000.0, seq)
        assert punct.check(t) == pytest.approx(0.0, abs=1e-9)
        assert not mon.stale(t, punct.blind_since)
    last_rx = mon.last_rx
    t_wake = t + 0.3                            # starved: the next check comes 300 ms late
    assert punct.check(t_wake) == pytest.approx(0.29)
    assert punct.late_checks == 1
    assert punct.blind_since(last_rx) == pytest.approx(0.29)   # not looking for 290 ms
    # the DDS threads of the starved process have not delivered yet: nothing newer was taken
    assert mon.silence(t_wake) > 0.29          # silent by the clock ...
    assert not mon.stale(t_wake, punct.blind_since)     # ... but not watched: not STALE
    assert mon.status(t_wake, punct.blind_since).level == OK
    # 10 ms later (on time) the backlog arrives: 310 publications in a run, no gap
    t2 = t_wake + 0.01
    assert punct.check(t2) == pytest.approx(0.0, abs=1e-9)
    seq += 310
    mon.on_message(t2, int(1e18 + t2 * 1e9), int(1e18 + t2 * 1e9), seq=seq)
    assert mon.count == seq - 9 and mon.last_rx > last_rx  # (the first sample counts 1)
    assert not mon.stale(t2, punct.blind_since)
    assert mon.stale_raised == 0


def test_on_time_check_with_real_silence_is_stale_after_the_hold() -> None:
    punct = Punctuality(period_s=0.01, tolerance_s=0.02)
    lim = TopicLimits(rate_hz=1000.0, stale_hold_s=0.05)
    mon = TopicMonitor('imu', 'sensors/imu', lim)
    t, _ = _seq_feed(mon, 0.0, 1.0, 1000.0, 0)
    last = mon.last_rx
    levels = []
    while t < last + 0.2:                      # the publisher stops; checks stay on time
        t += 0.01
        punct.check(t)
        levels.append((round(t - last, 3), mon.stale(t, punct.blind_since)))
    first = next(dt for dt, stale in levels if stale)
    assert lim.stale_raise_s == pytest.approx(0.11)
    assert 0.11 <= first <= 0.11 + 0.01 + 1e-9  # 60 ms stale time + 50 ms hold, next check
    s = mon.status(t, punct.blind_since)
    assert s.level == STALE and 'no message for' in s.message and mon.stale_raised == 1
    # a late check during the silence: its 90 ms of blindness are not counted as silence
    mon2 = TopicMonitor('imu', 'sensors/imu', lim)
    p2 = Punctuality(period_s=0.01, tolerance_s=0.02)
    t, _ = _seq_feed(mon2, 0.0, 1.0, 1000.0, 0)
    p2.check(t)
    p2.check(t + 0.1)                           # 90 ms late
    assert not mon2.stale(t + 0.1, p2.blind_since)
    assert not mon2.stale(t + 0.19, p2.blind_since)          # 190 ms quiet, 100 ms watched
    assert mon2.stale(t + 0.09 + 0.111, p2.blind_since)      # 111 ms watched
    # a monitor late at every check (a saturated host) still sees a real silence, later
    mon3 = TopicMonitor('imu', 'sensors/imu', lim)
    p3 = Punctuality(period_s=0.01, tolerance_s=0.02)
    t, _ = _seq_feed(mon3, 0.0, 1.0, 1000.0, 0)
    p3.check(t)
    last, caught = mon3.last_rx, None
    while caught is None:
        t += 0.035                              # every check 25 ms late
        p3.check(t)
        if mon3.stale(t, p3.blind_since):
            caught = t - last
    assert 0.11 < caught < 0.11 * 3.5 + 0.035, caught   # watched 10 ms in every 35 ms


def test_stale_that_lost_nothing_clears_at_once_and_says_so() -> None:
    """Raised (the samples were late on an on-time check), then every publication of the
    silent time arrives in a burst: it clears on that evidence, counted as a delivery gap."""
    mon = TopicMonitor('imu', 'sensors/imu', TopicLimits(rate_hz=1000.0))
    t, seq = _seq_feed(mon, 0.0, 1.0, 1000.0, 0)
    assert mon.status(t + 0.1).level == STALE
    t, seq = t + 0.11, seq + 110               # all 110 publications, in one run
    mon.on_message(t, int(1e18 + t * 1e9), int(1e18 + t * 1e9), seq=seq)
    assert mon.status(t + 0.001).level == OK and mon.delivery_gaps == 1
    assert mon.stale_raised == 1


def test_hold_stretches_after_gaps_that_lost_nothing_up_to_the_cap() -> None:
    """A loaded host: a stream goes quiet 250 ms and then delivers all 250 publications.
    Afterwards (shared by every topic of the monitor) the hold covers a gap that long, so the
    next such gap raises nothing, while a real silence is still STALE within the cap."""
    gaps = DeliveryGaps(horizon_s=30.0)
    lim = TopicLimits(rate_hz=1000.0, stale_hold_max_s=0.35)
    imu = TopicMonitor('imu', 'sensors/imu', lim, gaps)
    other = TopicMonitor('wrench', 'sensors/wrench', TopicLimits(rate_hz=500.0), gaps)
    t, seq = _seq_feed(imu, 0.0, 1.0, 1000.0, 0)
    assert imu.raise_after(t) == pytest.approx(0.08)         # quiet host: 60 ms + 20 ms
    assert imu.stale(t + 0.09)                                  # (this one is raised)
    t, seq = t + 0.25, seq + 250                               # ... then all 250 arrive
    imu.on_message(t, int(1e18 + t * 1e9), int(1e18 + t * 1e9), seq=seq)
    assert gaps.seen == 1 and not imu.stale(t + 0.001)
    assert imu.raise_after(t) == pytest.approx(1.25 * 0.25)   # covers that gap, with margin
    assert other.raise_after(t) == pytest.approx(1.25 * 0.25)  # the host's, not one stream's
    t, seq = _seq_feed(imu, t, t + 1.0, 1000.0, seq)
    last = imu.last_rx
    assert not imu.stale(last + 0.25)                          # the same gap again: no alarm
    assert imu.stale(last + 0.32)                              # a real silence: still caught
    gaps.record(t, 5.0)                                         # a very long no-loss gap
    assert imu.raise_after(t) == pytest.approx(0.06 + 0.35)    # capped: detection stays bounded
    assert imu.raise_after(t + 31.0) == pytest.approx(0.08)    # forgotten after the horizon
    t, seq = _seq_feed(imu, t + 1.0, t + 1.01, 1000.0, seq)
    t, seq = t + 0.3, seq + 3                                   # quiet 300 ms, 3 published: a
    imu.on_message(t, int(1e18 + t * 1e9), 0, seq=seq)          # real gap, not learnt
    assert gaps.seen == 2


def test_images_watched_on_their_camera_info(tmp_path: Path) -> None:
    data = yaml.safe_load(_default_path().read_text())
    profile = load_profile('quadruped_12dof')
    assert data['topics']['images_via_camera_info'] is True
    cfg = parse_config(data, 'h.yaml', profile)
    names = {w.name for w in cfg.topics}
    assert 'camera/front/camera_info' in names and 'camera/front/image_raw' not in names
    assert 'sensors/camera/front/image_raw' not in cfg.expected
    data['topics']['images_via_camera_info'] = False
    assert 'camera/front/image_raw' in {w.name for w in parse_config(data, 'h.yaml', profile).topics}
    data['topics']['images_via_camera_info'] = True
    data['topics']['ignore'] = ['camera/front/camera_info']   # no info watched: take the images
    assert 'camera/front/image_raw' in {w.name for w in parse_config(data, 'h.yaml', profile).topics}
    data['topics']['images_via_camera_info'] = 'yes'
    with pytest.raises(HealthConfigError, match=r'topics\.images_via_camera_info: expected true'):
        parse_config(data, 'h.yaml', profile)


def test_writers_told_apart_by_sequence_runs() -> None:
    runs = WriterRuns()
    runs.max_writers = 2
    a = [runs.add(s, 0.01 * s, 100.0)[1] for s in range(1, 4)]          # writer A: 1 2 3
    b = [runs.add(s, 0.035 + 0.01 * i, 100.0)[1] for i, s in enumerate((100, 101, 102))]
    assert a == [1, 1, 1] and b == [1, 1, 1] and len(runs.writers) == 2  # B: from 100 on
    assert runs.add(4, 0.07, 100.0) == (runs.writers[0], 1)  # A continues (3 is the run below)
    assert runs.add(105, 0.1, 100.0)[1] == 3                  # B: 2 not taken, counts 3
    assert sorted(w.count for w in runs.writers) == [4, 6]
    # one publisher: a number below the run is the writer restarting, not a second writer
    one = WriterRuns()
    one.add(500, 0.0)
    one.add(1, 1.0)
    assert len(one.writers) == 1 and one.writers[0].last_seq == 1


def test_topic_rate_and_staleness_per_writer() -> None:
    """Two writers at 100 Hz each on a 100 Hz topic: the rate is right per writer, and one
    writer going silent is STALE though the topic still flows."""
    mon = TopicMonitor('odom', 'robot/odom', TopicLimits(rate_hz=100.0, rate_hold_s=0.3))
    mon.writers.max_writers = 2
    t = 0.0
    sb = 1000
    levels = []
    for i in range(300):
        t += 0.01
        mon.on_message(t, int(1e18 + t * 1e9), None, seq=i + 1)
        if i < 200:
            sb += 1
            mon.on_message(t + 0.001, int(1e18 + t * 1e9), None, seq=sb)
        if i % 10 == 0:
            levels.append(mon.status(t + 0.002).level)
    assert levels[5:20] == [OK] * 15, levels          # 200 Hz on the topic, 100 Hz a writer
    s = mon.status(t + 0.002)
    assert s.level == STALE and '1 of 2 writers silent' in s.message, s.message
    assert s.values['writers'] == '2'


def test_frozen_joint_from_real_joint_state_bytes() -> None:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState
    msg = JointState(name=['hip', 'knee'], position=[0.5, -1.25], velocity=[0.0, 0.0])
    msg.header.frame_id = 'base'
    data = serialize_message(msg)
    names, off = joint_state_positions(data)
    assert names == ['hip', 'knee']
    assert struct.unpack_from('<2d', data, off) == (0.5, -1.25)
    mon = TopicMonitor('joint_states', 'robot/joints',
                       TopicLimits(rate_hz=500.0, freeze_after_s=0.05))
    watch = FreezeWatch(0.05)
    t = 0.0
    for i in range(100):                        # knee frozen from the start, hip moving
        t += 0.01
        msg.position = [0.5 + 0.001 * i, -1.25]
        data = serialize_message(msg)
        n, off = joint_state_positions(data)
        watch.observe(n, data, off, t, mon.frozen)
        mon.on_message(t, int(1e18 + t * 1e9), int(1e18 + t * 1e9), seq=5 * i + 5)
        if i == 3:
            assert not mon.frozen
    assert set(mon.frozen) == {'knee'}
    s = mon.status(t)
    assert s.level == STALE and 'knee frozen' in s.message
    msg.position = [0.6, -1.2]
    data = serialize_message(msg)
    n, off = joint_state_positions(data)
    watch.observe(n, data, off, t + 0.01, mon.frozen)
    assert not mon.frozen


def test_topic_rate_band_with_hold_and_clear() -> None:
    mon = TopicMonitor('j', 'p', TopicLimits(rate_hz=100.0, rate_hold_s=0.5, clear_s=1.0))
    t, levels = 0.0, []
    for _ in range(30):  # 3 s at half rate, evaluated every 100 ms
        t = _feed(mon, t, t + 0.1, 50.0)
        levels.append(mon.status(t).level)
    assert levels[-1] == WARN and 'rate' in mon.status(t).message
    assert levels[:5] == [OK] * 5  # the hold: no instant trip
    for _ in range(5):  # back to nominal: still WARN until the clear time passed
        t = _feed(mon, t, t + 0.1, 100.0)
        mon.status(t)
    for _ in range(25):
        t = _feed(mon, t, t + 0.1, 100.0)
        level = mon.status(t).level
    assert level == OK


def test_topic_stamp_sanity_future_backwards_lagging() -> None:
    lim = TopicLimits(rate_hz=100.0, future_tolerance_s=0.05, max_lag_s=0.5, clear_s=0.5)
    for offset, word in ((0.2, 'future'), (-1.0, 'lagging')):
        mon = TopicMonitor('j', 'p', lim)
        t = _feed(mon, 0.0, 1.0, 100.0)
        assert mon.status(t).level == OK
        t = _feed(mon, t, t + 0.2, 100.0, stamp_offset=offset)
        s = mon.status(t)
        assert s.level == WARN and word in s.message
        for _ in range(10):  # back to good stamps (one goes 'backwards' after the future ones)
            t = _feed(mon, t, t + 0.1, 100.0)
            mon.status(t)
        assert mon.status(t + 0.001).level == OK
    mon = TopicMonitor('j', 'p', lim)
    mon.on_message(0.0, int(1e18), int(1e18))
    mon.on_message(0.01, int(1e18) + 10_000_000, int(1e18) - 5_000_000)
    assert mon.backwards == 1 and 'backwards' in mon.status(0.02).message


# --------------------------------------------------------------------------- rules

TEMP = RuleSpec('motor_temperature', '*_joint', 'temperature', 'rising', 70.0, 85.0,
                hysteresis=3.0, raise_s=0.05, clear_s=1.0)


def test_rule_trips_and_clears_with_hysteresis() -> None:
    rule = ThresholdRule(TEMP, 'robot/legs/FL_calf_joint')
    t = 0.0
    for value in (60, 72):
        t += 0.1
        rule.update(value, t)
    assert rule.level == OK  # 72 seen once: not held yet
    t += 0.1
    assert rule.update(73, t) == WARN
    t += 0.1
    rule.update(86, t)
    t += 0.1
    assert rule.update(86, t) == ERROR
    assert 'ERROR limit 85' in rule.status().message
    for _ in range(30):  # 83 is below 85 but inside the 3 °C band: stays ERROR
        t += 0.1
        assert rule.update(83, t) == ERROR
    for _ in range(9):
        t += 0.1
        rule.update(80, t)
    assert rule.level == ERROR  # below the band but not for the clear time yet
    for _ in range(3):
        t += 0.1
        rule.update(80, t)
    assert rule.level == WARN
    assert rule.peak == 86


def test_rule_no_flapping_on_noise() -> None:
    rng = random.Random(7)
    rule = ThresholdRule(TEMP, 'p')
    t, changes, last = 0.0, 0, OK
    for _ in range(600):  # 60 s at 10 Hz of 85 ± 2 °C noise around the ERROR limit
        t += 0.1
        level = rule.update(85.0 + rng.uniform(-2.0, 2.0), t)
        changes += level != last
        last = level
    assert last == ERROR and changes <= 2  # OK -> (WARN ->) ERROR, never back


def test_falling_and_nonzero_rules() -> None:
    batt = ThresholdRule(RuleSpec('battery', '*', 'fraction', 'falling', 0.2, 0.1, 0.02, 0.0, 0.0),
                         'power/battery')
    assert batt.update(0.5, 0.0) == OK
    assert batt.update(0.15, 0.1) == WARN
    assert batt.update(0.05, 0.2) == ERROR
    assert batt.update(0.11, 0.3) == ERROR  # inside the hysteresis band
    assert batt.update(0.13, 0.4) == WARN
    code = ThresholdRule(RuleSpec('code', '*', 'error_code', 'nonzero', raise_s=0.0, clear_s=0.0),
                         'p')
    assert code.update(0, 0.0) == OK and code.update(17, 0.1) == ERROR


def test_component_health_combines_driver_and_rules() -> None:
    comp = ComponentHealth('robot/legs/FL_calf_joint', [TEMP])
    assert comp.status().level == STALE
    comp.update(Status('FL_calf_joint', OK, 'ok', values={'temperature': '40'}), 0.0)
    assert comp.status().level == OK
    comp.update(Status('FL_calf_joint', WARN, 'encoder noise', values={'temperature': '41'}), 0.1)
    s = comp.status()
    assert s.level == WARN and 'encoder noise' in s.message
    for i in range(3):
        comp.update(Status('FL_calf_joint', OK, 'ok', values={'temperature': '90'}), 0.2 + i / 10)
    assert comp.status().level == ERROR and comp.failing == {'motor_temperature': ERROR}
    comp.degraded = 'motor_over_temperature'
    assert 'degraded' in comp.status().message


# --------------------------------------------------------------------------- host

class _FakePsutil:
    def __init__(self) -> None:
        self.cpu, self.free = 10.0, 50e9

    def cpu_percent(self, _interval):
        return self.cpu

    def virtual_memory(self):
        return type('M', (), {'percent': 40.0, 'available': 4 * 2**30})()

    def disk_usage(self, _path):
        return type('D', (), {'free': self.free, 'percent': 50.0})()

    def sensors_temperatures(self):
        return {'coretemp': [type('T', (), {'label': 'Package', 'current': 55.0})()]}


def test_host_monitor_levels_with_hold() -> None:
    ps = _FakePsutil()
    host = HostMonitor(HostLimits(hold_s=2.0, clear_s=2.0), ps)
    by = {s.name: s for s in host.sample(0.0)}
    assert {k: v.level for k, v in by.items()} == {'host/cpu': OK, 'host/memory': OK,
                                                   'host/disk': OK, 'host/temperature': OK}
    ps.cpu, ps.free = 99.0, 0.5e9
    assert {s.name: s.level for s in host.sample(1.0)}['host/cpu'] == OK  # held
    by = {s.name: s for s in host.sample(3.5)}
    assert by['host/cpu'].level == ERROR and by['host/disk'].level == ERROR
    assert '0.5 GB free' in by['host/disk'].message
    real = HostMonitor(HostLimits(disk_path='/'))  # real psutil: readable on this machine
    assert {s.name for s in real.sample(0.0)} >= {'host/cpu', 'host/memory', 'host/disk'}


# --------------------------------------------------------------------------- aggregator

def test_aggregator_rolls_up_worst_and_stale() -> None:
    agg = Aggregator(stale_after_s=1.0, expected=['robot/legs/FR_calf_joint'])
    agg.update(Status('robot/legs/FL_calf_joint', WARN, 'warm'), 0.0)
    agg.update(Status('host/disk', OK, 'ok'), 0.0)
    agg.update(Status('sensors/camera/front/image_raw', OK, 'ok'), 0.0)
    out = {s.name: s.level for s in agg.aggregate(0.5)}
    assert out['/robot/legs/FR_calf_joint'] == STALE  # expected, never reported
    assert out['/robot/legs'] == ERROR  # a stale child counts as an error ...
    assert out['/host'] == OK and out['/sensors/camera'] == OK
    agg.update(Status('robot/legs/FR_calf_joint', OK, 'ok'), 0.5)
    out = {s.name: s.level for s in agg.aggregate(0.6)}
    assert out['/robot/legs'] == WARN and out['/robot'] == WARN
    agg.update(Status('robot/legs/FL_calf_joint', ERROR, 'hot'), 0.6)
    out = {s.name: s.level for s in agg.aggregate(0.7)}
    assert out['/robot'] == ERROR
    out = {s.name: s.level for s in agg.aggregate(5.0)}
    assert out['/sensors/camera'] == STALE  # ... all children stale: the group is stale
    assert Aggregator.top_level(agg.aggregate(5.0)) == STALE


# --------------------------------------------------------------------------- configuration

def test_shipped_config_loads_for_both_robots() -> None:
    for profile in (QUAD, HUM):
        cfg = parse_config(DEFAULT, _default_path(), profile)
        images = [t for t in profile.topics if t.type == 'sensor_msgs/msg/Image']
        assert images  # each watched on its camera_info instead
        assert len(cfg.topics) == len(profile.topics) - len(images)
        assert len(cfg.joint_paths) == profile.dof
    hum = parse_config(DEFAULT, _default_path(), HUM)
    assert hum.joint_paths['left_knee_joint'] == 'robot/legs/left_knee_joint'
    assert hum.joint_paths['left_elbow_joint'] == 'robot/arms/left_elbow_joint'
    assert hum.joint_paths['waist_yaw_joint'] == 'robot/waist/waist_yaw_joint'
    quad = parse_config(DEFAULT, _default_path(), QUAD)
    assert quad.joint_path('motor FL_calf_joint') == 'robot/legs/FL_calf_joint'
    assert {r.name for r in quad.rules} >= {'motor_temperature', 'motor_current'}
    assert quad.rules[0].warn == QUAD.motor_temperature.warn
    assert quad.policies[0].actions == ('stop_skills', 'snapshot', 'mark_degraded')


@pytest.mark.parametrize(('changes', 'key', 'words'), [
    ({'lifecycle.nodes': ['sim_robot', 'lidar_driver']}, 'lifecycle.nodes[1].name',
     "unknown node 'lidar_driver'"),
    ({'rules.1.thresholds': {'warn': 50.0, 'error': 40.0}}, 'rules[1].thresholds',
     'warn (50) must be below error (40)'),
    ({'rules.0.thresholds': 'profile.motor_heat'}, 'rules[0].thresholds',
     "no threshold 'motor_heat'"),
    ({'rules.0.direction': 'up'}, 'rules[0].direction', "'up' is not one of"),
    ({'policies.0.actions': ['stop_skills', 'reboot']}, 'policies[0].actions[1]',
     "unknown action 'reboot'"),
    ({'policies.0.on': {'path': 'robot/*', 'rule': 'motor_heat'}}, 'policies[0].on.rule',
     "no rule named 'motor_heat'"),
    ({'policies.0.on': {'path': 'robot/*', 'level': 'BAD'}}, 'policies[0].on.level',
     "'BAD' is not a level"),
    ({'policies.1.actions': ['restart'], 'policies.1.restart': 'nav2'}, 'policies[1].restart',
     "unknown node 'nav2'"),
    ({'topics.defaults': {'min_ratio': 1.2}}, 'topics.defaults', 'must contain 1.0'),
    ({'topics.ignore': ['lidar']}, 'topics.ignore[0]', "no topic 'lidar'"),
    ({'host.disk_free_gb': {'warn': 1.0, 'error': 5.0}}, 'host.disk_free_gb',
     'must be above error'),
    ({'lifecycle.backoff': {'factor': 0.5}}, 'lifecycle.backoff.factor', 'must be >= 1'),
    ({'check_rate': -1}, 'check_rate', 'must be > 0'),
    ({'ledger.components': 'components_nope.yaml'}, 'ledger.components', 'no such components'),
])
def test_bad_config_refused_naming_file_and_key(changes: dict, key: str, words: str) -> None:
    with pytest.raises(HealthConfigError) as err:
        _cfg(changes)
    assert err.value.key == key, str(err.value)
    assert words in str(err.value) and str(err.value).startswith('cfg.yaml: ')


def test_unknown_top_level_key_refused() -> None:
    with pytest.raises(HealthConfigError, match=r'cfg.yaml: polices: unknown key'):
        parse_config({**DEFAULT, 'polices': []}, 'cfg.yaml', QUAD)


# --------------------------------------------------------------------------- ledger

def test_ledger_totals_peaks_faults_due_and_reopen(tmp_path: Path) -> None:
    cfg = _cfg()
    specs = load_components(cfg.components_path, cfg.joint_paths)
    assert {s.kind for s in specs} >= {'motor', 'imu', 'camera', 'battery', 'compute'}
    assert len([s for s in specs if s.kind == 'motor']) == QUAD.dof
    assert all(s.model and s.serial for s in specs)   # RoHS: test_compliance.py
    db = tmp_path / 'quad.sqlite'
    ledger = Ledger(db, flush_interval=0.5)
    ledger.load(specs)
    t = 0.0
    for i in range(100):  # 10 s at 10 Hz, 48 V x 5 A, velocity reversing every second
        t += 0.1
        ledger.observe('FL_calf_joint', t, {'temperature': 60.0 + i * 0.2, 'current': 5.0,
                                            'voltage': 48.0,
                                            'velocity': 1.0 if (i // 10) % 2 else -1.0}, 70.0)
        ledger.maybe_flush(t)
    ledger.observe('FL_calf_joint', t + 60.0, {})  # a one-minute silence is not operation
    ledger.fault('FL_calf_joint', 'ERROR', 'motor_temperature', 'temperature 86 above 85')
    ledger.clear_fault('FL_calf_joint', 'motor_temperature')
    ledger.mark_degraded('robot/legs/FL_calf_joint', 'motor_over_temperature')
    ledger.close()
    again = Ledger(db)
    again.load(specs)  # a restart re-reads the YAML: totals and marks are kept
    row = next(c for c in again.components() if c['id'] == 'FL_calf_joint')
    assert row['operating_h'] * 3600 == pytest.approx(9.9, abs=0.05)
    assert row['energy_j'] == pytest.approx(48 * 5 * 9.9, rel=0.01)
    assert row['cycles'] == 9
    assert row['above_warn_s'] == pytest.approx(4.9, abs=0.15)
    assert row['peak_temperature'] == pytest.approx(79.8)
    assert row['degraded'] == 'motor_over_temperature'
    faults = again.faults('FL_calf_joint')
    assert len(faults) == 1 and faults[0]['cleared_at'] is not None
    assert sqlite3.connect(db).execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
    import datetime as dt
    due = {d['id']: d for d in again.due(today=dt.date(2027, 2, 20))}
    assert due['FL_calf_joint']['state'] == 'soon' and due['compute']['state'] == 'ok'
    assert {d['state'] for d in again.due(today=dt.date(2027, 4, 1))} >= {'due'}
    json.dumps(again.components())  # exportable


# --------------------------------------------------------------------------- lifecycle manager

class FakeClient:
    """Lifecycle services of fake nodes; ``alive[name]`` False = gone from the graph."""

    def __init__(self, names, fail_configure=()) -> None:
        self.state = {n: 'unconfigured' for n in names}
        self.alive = {n: True for n in names}
        self.fail_configure = set(fail_configure)
        self.calls: list[tuple[str, str]] = []

    def available(self, node):
        return self.alive[node]

    def get_state(self, node, timeout):
        return self.state[node] if self.alive[node] else None

    def change_state(self, node, transition, timeout):
        if not self.alive[node]:
            return False
        self.calls.append((node, {CONFIGURE: 'configure', ACTIVATE: 'activate'}.get(
            transition, str(transition))))
        if transition == CONFIGURE:
            if node in self.fail_configure:
                return False
            self.state[node] = 'inactive'
        elif transition == ACTIVATE:
            self.state[node] = 'active'
        elif transition == DEACTIVATE:
            self.state[node] = 'inactive'
        elif transition == CLEANUP:
            self.state[node] = 'unconfigured'
        return True


class FakeSpawner:
    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.started: list[str] = []

    def start(self, name, argv):
        self.started.append(name)
        self.client.alive[name] = True
        self.client.state[name] = 'unconfigured'

    def alive(self, name):
        return None

    def stop(self, name, timeout=5.0):
        self.client.alive[name] = False


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


def _manager(names, commands=True, fail=(), **kw):
    cfg = LifecycleConfig(nodes=tuple(ManagedNode(n, ('x',) if commands else ()) for n in names),
                          discover_timeout_s=0.5, backoff_initial_s=0.5, backoff_factor=2.0,
                          backoff_max_s=4.0, max_retries=3, **kw)
    client = FakeClient(names, fail)
    clock = Clock()
    spawner = FakeSpawner(client)
    return LifecycleManager(cfg, client, spawner, clock=clock, sleep=clock.sleep,
                            log=lambda *_: None), client, spawner, clock


def test_bring_up_in_order_configure_all_then_activate_all() -> None:
    mgr, client, _, _ = _manager(['sim_robot', 'data_recorder', 'skill_runtime'])
    ok, summary = mgr.startup()
    assert ok, summary
    assert client.calls == [('sim_robot', 'configure'), ('data_recorder', 'configure'),
                            ('skill_runtime', 'configure'), ('sim_robot', 'activate'),
                            ('data_recorder', 'activate'), ('skill_runtime', 'activate')]
    assert all(s.level == OK for s in mgr.statuses())
    ok, _ = mgr.shutdown()
    assert ok and set(client.state.values()) == {'unconfigured'}


def test_adopt_takes_over_the_running_stack_changing_nothing() -> None:
    """A restarted monitor adopts: active nodes watched, others left as they are, nothing
    transitioned or started; a node missing at adoption is recovered as a dead one is."""
    mgr, client, spawner, clock = _manager(['sim_robot', 'data_recorder', 'skill_runtime',
                                            'bag_player'])
    client.state.update(sim_robot='active', data_recorder='active', skill_runtime='inactive')
    client.alive['bag_player'] = False
    ok, summary = mgr.adopt()
    assert not ok and 'bag_player: down' in summary
    assert client.calls == [] and spawner.started == []
    phases = {n: r.phase for n, r in mgr.nodes.items()}
    assert phases == {'sim_robot': 'active', 'data_recorder': 'active',
                      'skill_runtime': 'stopped', 'bag_player': 'down'}
    assert 'left as it is' in mgr.nodes['skill_runtime'].message
    for _ in range(30):           # heartbeats: the inactive node stays inactive, the missing
        clock.t += 0.1            # one is started and brought up
        mgr.heartbeat()
    assert client.state['skill_runtime'] == 'inactive'
    assert spawner.started == ['bag_player'] and mgr.nodes['bag_player'].phase == 'active'
    assert ('sim_robot', 'configure') not in client.calls
    assert ('sim_robot', 'activate') not in client.calls
    client.alive['sim_robot'] = False  # an adopted node that dies is recovered as usual
    for _ in range(60):
        clock.t += 0.1
        mgr.heartbeat()
    assert spawner.started == ['bag_player', 'sim_robot']


def test_dead_node_respawned_with_backoff_then_given_up() -> None:
    mgr, client, spawner, clock = _manager(['sim_robot', 'skill_runtime'])
    mgr.startup()
    client.alive['skill_runtime'] = False  # killed
    attempts = []
    spawner.start = lambda name, argv: attempts.append(clock.t)  # never comes back
    for _ in range(400):
        clock.t += 0.1
        mgr.heartbeat()
    rec = mgr.nodes['skill_runtime']
    assert rec.phase == 'failed' and 'gave up' in rec.message
    assert len(attempts) == 3
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[1] > gaps[0]  # exponential back-off
    status = {s.name: s for s in mgr.statuses()}['lifecycle/skill_runtime']
    assert status.level == ERROR and 'gave up' in status.message
    assert mgr.nodes['sim_robot'].phase == 'active'
    mgr.reset()  # manual reset forgets the give-up and tries again
    assert mgr.nodes['skill_runtime'].phase in ('down', 'failed', 'active')


def test_dead_node_brought_back() -> None:
    mgr, client, spawner, clock = _manager(['sim_robot', 'skill_runtime'])
    mgr.startup()
    client.alive['skill_runtime'] = False
    for _ in range(30):
        clock.t += 0.1
        mgr.heartbeat()
    assert spawner.started == ['skill_runtime']
    assert mgr.nodes['skill_runtime'].phase == 'active'
    assert client.state['skill_runtime'] == 'active'
    assert mgr.nodes['skill_runtime'].restarts == 1



def test_busy_node_is_waited_for_and_a_hung_one_restarted() -> None:
    """On the graph but not answering get_state: late (a recorder catching up on its queue) is
    left alone; silent for unresponsive_timeout is hung and is respawned."""
    mgr, client, spawner, clock = _manager(['data_recorder'], unresponsive_timeout_s=5.0)
    mgr.startup()
    answering = [False]
    client.get_state = lambda node, timeout: client.state[node] if answering[0] else None
    for _ in range(40):                       # 4 s without an answer: busy
        clock.t += 0.1
        mgr.heartbeat()
    assert mgr.nodes['data_recorder'].phase == 'active' and spawner.started == []
    answering[0] = True
    clock.t += 0.1
    mgr.heartbeat()                           # it answers: the silence starts afresh
    answering[0] = False
    for _ in range(45):
        clock.t += 0.1
        mgr.heartbeat()
    assert mgr.nodes['data_recorder'].phase == 'active' and spawner.started == []
    for _ in range(30):                       # now more than 5 s silent: hung
        clock.t += 0.1
        mgr.heartbeat()
    assert spawner.started[:1] == ['data_recorder'], mgr.nodes['data_recorder']

def test_error_state_node_recovered_without_respawn_and_retry_limit() -> None:
    mgr, client, spawner, clock = _manager(['data_recorder'], fail=['data_recorder'])
    ok, _ = mgr.startup()
    assert not ok and mgr.nodes['data_recorder'].phase == 'down'
    for _ in range(300):
        clock.t += 0.1
        mgr.heartbeat()
    assert mgr.nodes['data_recorder'].phase == 'failed'
    assert spawner.started == []  # it answered: no respawn, only transitions
    assert [c for c in client.calls if c[1] == 'configure'].__len__() == 1 + 3


def test_backoff_delay_is_exponential_and_capped() -> None:
    cfg = LifecycleConfig(backoff_initial_s=0.5, backoff_factor=2.0, backoff_max_s=3.0)
    assert [backoff_delay(cfg, n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_policy_fires_once_per_episode() -> None:
    cfg = _cfg()
    engine = PolicyEngine(cfg.policies)
    hot = {'motor_temperature': ERROR}
    fired = engine.evaluate('robot/legs/FL_calf_joint', ERROR, hot)
    assert [(p.name, path) for p, path in fired] == [('motor_over_temperature',
                                                      'robot/legs/FL_calf_joint')]
    assert engine.evaluate('robot/legs/FL_calf_joint', ERROR, hot) == []
    assert engine.evaluate('robot/legs/FL_calf_joint', WARN, {'motor_temperature': WARN}) == []
    assert len(engine.evaluate('robot/legs/FL_calf_joint', ERROR, hot)) == 1
    assert engine.evaluate('robot/legs/FL_calf_joint', ERROR, {'motor_current': ERROR}) == []
    assert engine.evaluate('sensors/imu/stream', STALE, {}, 10.0) == []  # held 1 s first
    assert engine.tick(10.5) == []
    assert engine.evaluate('sensors/imu/stream', OK, {}, 10.6) == []  # a blip: never acts
    assert engine.tick(12.0) == []
    engine.evaluate('sensors/imu/stream', STALE, {}, 20.0)
    assert [p.name for p, _ in engine.tick(21.1)] == ['sensor_lost']
    assert engine.tick(30.0) == []
