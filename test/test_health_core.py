"""Unit tests of the health monitor's pure cores: monitors, rules, aggregator, config, ledger,
lifecycle manager and policies (synthetic clocks, fakes for the lifecycle services)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import random
import sqlite3
from pathlib import Path

import pytest
import yaml

from field_deploy.profile import load_profile
from field_deploy.testing import wait_until
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
from health_monitor.spawner import PopenSpawner, runs_command

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
    """Processes of the fake nodes: each node's starts as one of the bring-up's (not ours)."""

    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.started: list[str] = []
        self.terminated: list[str] = []
        self.duplicates: list[str] = []
        self.procs = {n: 100 + i for i, n in enumerate(client.state)}  # name -> pid

    def start(self, name, argv):
        if name in self.procs:
            self.duplicates.append(name)      # a second process of the same node
        self.started.append(name)
        self.procs[name] = 1000 + len(self.started)
        self.client.alive[name] = True
        self.client.state[name] = 'unconfigured'

    def alive(self, name):
        return None

    def stop(self, name, timeout=5.0):
        self.client.alive[name] = False

    def running(self, name, argv):
        return [self.procs[name]] if name in self.procs and self.client.alive[name] else []

    def terminate(self, pid, timeout=5.0):
        name = next(n for n, p in self.procs.items() if p == pid)
        del self.procs[name]
        self.terminated.append(name)
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


def test_a_transition_whose_answer_is_lost_is_judged_by_the_nodes_state() -> None:
    """A just-started node can make a transition and lose its answer (its response writer had
    not matched the monitor's client yet): the node's state says it was made, so it is not a
    failure; a transition that really failed stays one."""
    mgr, client, _, _ = _manager(['sim_robot', 'skill_runtime'])
    change = client.change_state

    def answer_lost(node, transition, timeout):
        change(node, transition, timeout)
        return False

    client.change_state = answer_lost
    ok, summary = mgr.startup()
    assert ok, summary
    assert set(client.state.values()) == {'active'}
    assert client.calls == [('sim_robot', 'configure'), ('skill_runtime', 'configure'),
                            ('sim_robot', 'activate'), ('skill_runtime', 'activate')]
    mgr2, client2, _, _ = _manager(['sim_robot'], fail=['sim_robot'])
    ok, summary = mgr2.startup()
    assert not ok and client2.state['sim_robot'] == 'unconfigured'
    assert 'configure of sim_robot failed' in mgr2.nodes['sim_robot'].message


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
    # a node on the graph that does not answer at adoption is busy, not dead: adopted, and
    # watched (it answers later), never restarted
    mgr2, client2, spawner2, clock2 = _manager(['data_recorder'])
    client2.state['data_recorder'] = 'active'
    answer = client2.get_state
    client2.get_state = lambda node, timeout: None
    ok, summary = mgr2.adopt()
    assert ok and 'data_recorder: active (unknown)' in summary, summary
    client2.get_state = answer
    for _ in range(10):
        clock2.t += 0.5
        mgr2.heartbeat()
    assert spawner2.started == [] and client2.calls == []
    assert mgr2.nodes['data_recorder'].state == 'active'
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
    assert rec.phase != 'failed' and rec.retries <= 1
    for _ in range(10):
        clock.t += 0.1
        mgr.heartbeat()
    assert len(attempts) > 3, 'reset respawns the given-up node'
    client.alive['skill_runtime'] = True   # it comes back this time
    spawner.start = lambda name, argv: None
    for _ in range(100):
        clock.t += 0.1
        mgr.heartbeat()
    assert rec.phase == 'active', rec.message


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



def test_killed_node_is_restarted_only_after_it_left_the_graph() -> None:
    """kill -9: the dead participant stays on the graph (its services matched, never answering)
    until its DDS lease runs out, and peers keep sending to its shared-memory ports; a new
    process started meanwhile took those ports and was left deaf (docs/skill_runtime.md). The
    replacement starts once the old one has left the graph - and, bounded, if it never does."""
    mgr, client, spawner, clock = _manager(['sim_robot', 'skill_runtime'], leave_timeout_s=30.0)
    mgr.startup()
    killed = clock.t
    leaves = killed + 20.0                                  # the lease
    started_at = []
    real_start = spawner.start

    def start(name, argv):
        started_at.append(clock.t)
        real_start(name, argv)

    spawner.start = start
    client.get_state = lambda node, timeout: (
        client.state[node] if node != 'skill_runtime' or started_at else None)
    client.available = lambda node: (node != 'skill_runtime' or clock.t < leaves
                                     or bool(started_at))
    spawner.procs.pop('skill_runtime')                      # no process runs it any more
    for _ in range(400):
        clock.t += 0.1
        mgr.heartbeat()
    assert len(started_at) == 1 and started_at[0] >= leaves, (started_at, leaves)
    assert mgr.nodes['skill_runtime'].phase == 'active'
    assert ('skill_runtime', 'left the graph') in [e[1:] for e in mgr.events]
    # a copy that never leaves (not ours to stop): started anyway after leave_timeout
    mgr2, client2, spawner2, clock2 = _manager(['skill_runtime'], leave_timeout_s=30.0)
    mgr2.startup()
    spawner2.procs.pop('skill_runtime')
    client2.get_state = lambda node, timeout: client2.state[node] if spawner2.started else None
    starts = []
    spawner2.start = lambda name, argv: starts.append(clock2.t)
    t0 = clock2.t
    for _ in range(600):
        clock2.t += 0.1
        mgr2.heartbeat()
        if starts:
            break
    assert starts and 30.0 <= starts[0] - t0 < 30.0 + 15.0, (starts, t0)
    # the monitor shutting down during the wait: nothing is started (a process started then
    # would outlive the monitor that is stopping its children)
    mgr3, client3, spawner3, clock3 = _manager(['skill_runtime'], leave_timeout_s=30.0)
    mgr3.startup()
    spawner3.procs.pop('skill_runtime')
    client3.get_state = lambda node, timeout: None           # dead, still on the graph
    stop_at = clock3.t + 15.0
    mgr3.stopping = lambda: clock3.t >= stop_at
    for _ in range(400):
        clock3.t += 0.1
        mgr3.heartbeat()
    assert spawner3.started == [], spawner3.started


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
    # replaced, never duplicated: the bring-up's process is stopped before a new one starts
    assert spawner.terminated[:1] == ['data_recorder'], mgr.nodes['data_recorder']
    assert spawner.started[:1] == ['data_recorder'] and spawner.duplicates == []
    assert ('data_recorder', 'stopped pid 100') in [e[1:] for e in mgr.events]


def test_a_node_started_elsewhere_is_never_started_twice() -> None:
    """The bring-up started the node and it is slow to show its services (imports on a
    loaded host: longer than discover_timeout): the manager finds its process by the command
    line and waits for it instead of starting a second /data_recorder."""
    mgr, client, spawner, clock = _manager(['data_recorder'], spawn_timeout_s=20.0)
    spawner.running = lambda name, argv: [100]              # its process runs, but it is
    appears = clock.t + 8.0                                 # not on the graph for 8 s
    client.available = lambda node: clock.t >= appears
    ok, summary = mgr.startup()
    assert ok, summary
    assert spawner.started == [] and spawner.terminated == []
    assert client.state['data_recorder'] == 'active'
    # not there at all (no process, not on the graph): started, as before
    mgr2, client2, spawner2, _ = _manager(['data_recorder'])
    client2.alive['data_recorder'] = False
    ok, _ = mgr2.startup()
    assert ok and spawner2.started == ['data_recorder'] and spawner2.terminated == []


def test_runs_command_matches_a_process_of_the_node_only() -> None:
    argv = ['data_recorder', '--ros-args', '-p', 'output:=/bags/a']
    assert runs_command(['/v/bin/python3', '/v/bin/data_recorder', '--ros-args', '-p',
                         'output:=/bags/a'], argv)           # a console script
    assert runs_command(['/opt/bin/data_recorder', '--ros-args', '-p', 'output:=/bags/a'], argv)
    assert not runs_command(['/v/bin/python3', '/v/bin/data_recorder', '--ros-args', '-p',
                             'output:=/bags/b'], argv)       # another robot's recorder
    assert not runs_command(['/v/bin/python3', '/v/bin/sim_robot', '--ros-args', '-p',
                             'output:=/bags/a'], argv)
    assert not runs_command([], argv)


def test_popen_spawner_finds_and_replaces_a_process_it_did_not_start() -> None:
    """Real processes: one started elsewhere (here, by the test) is found by its command line
    and stopped (SIGINT) by terminate; ours are found too."""
    import subprocess
    import sys
    code = 'import time; time.sleep(60)  # test_health_core 8c1f'
    other = subprocess.Popen([sys.executable, '-c', code])
    env = dict(os.environ, ROS_DOMAIN_ID=str(int(os.environ.get('ROS_DOMAIN_ID', '0')) + 1))
    another_stack = subprocess.Popen([sys.executable, '-c', code], env=env)  # another domain
    spawner = PopenSpawner()
    try:
        argv = [sys.executable, '-c', code]
        assert wait_until(lambda: spawner.running('sleeper', argv) == [other.pid], 10.0)
        spawner.start('sleeper', argv)
        assert wait_until(lambda: sorted(spawner.running('sleeper', argv))
                          == sorted([other.pid, spawner.pid('sleeper')]), 10.0)
        spawner.terminate(other.pid, timeout=5.0)         # (it reaps our child, too)
        assert other.wait(5.0) is not None and spawner.alive('sleeper')
        assert spawner.running('sleeper', argv) == [spawner.pid('sleeper')]
        spawner.terminate(spawner.pid('sleeper'), timeout=5.0)
        assert spawner.alive('sleeper') is None and spawner.running('sleeper', argv) == []
        assert another_stack.poll() is None            # never touched
    finally:
        other.kill()
        another_stack.kill()
        spawner.stop_all()

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


def test_a_node_is_stopped_within_its_own_stop_timeout() -> None:
    """The monitor stops the processes it replaces or restarts with the stack's ``stop_timeout``
    of that node, not a fixed 5 s: a restarted recorder killed after 5 s left its bag without
    metadata (the e2e stack at load 15-37). The field stack gives the recorder 60 s."""
    from field_deploy.stack import load_stack
    from health_monitor.lifecycle_ros import managed_from_stack

    cfg = managed_from_stack(parse_config({}, 'default.yaml', QUAD),
                             'field_stack', ['robot=quadruped_12dof'])
    timeouts = {n.name: n.stop_timeout for n in cfg.lifecycle.nodes}
    described = {n.name: n.stop_timeout for n in load_stack('field_stack').managed}
    assert timeouts == described and timeouts['data_recorder'] == 60.0, timeouts

    names = ['sim_robot', 'data_recorder']
    mgr, _client, spawner, _clock = _manager(names)
    recorder = mgr.nodes['data_recorder']
    recorder.spec = dataclasses.replace(recorder.spec, stop_timeout=60.0)
    mgr.startup()
    stops: list[tuple[str, float]] = []
    spawner.stop = lambda name, timeout=5.0: stops.append((name, timeout))
    mgr.restart('data_recorder')
    assert stops == [('data_recorder', 60.0)]


def test_worker_runs_jobs_in_order_survives_a_failing_one_and_beats() -> None:
    """health_monitor.worker: jobs one at a time in order, a job that raises answers
    ``(False, reason)`` and the thread goes on, heartbeats run between jobs, a call that takes
    longer than its timeout says so."""
    import threading

    from health_monitor.worker import ManagerWorker

    class Manager:
        beats = 0

        def heartbeat(self) -> None:
            Manager.beats += 1

        def statuses(self) -> list:
            return [Manager.beats]

    errors: list[str] = []
    worker = ManagerWorker(Manager(), 50.0, threading.Event(), errors.append)
    order: list[int] = []
    worker.submit(lambda: order.append(1))
    assert worker.call(lambda: order.append(2) or 'two', 5.0) == (True, 'two')
    assert order == [1, 2]

    def broken() -> None:
        raise RuntimeError('no such node')
    assert worker.call(broken, 5.0) == (True, (False, 'no such node'))
    assert errors == ['health worker: RuntimeError: no such node']
    assert worker.call(lambda: 3, 5.0) == (True, 3)          # still serving
    release = threading.Event()
    assert worker.call(lambda: release.wait(5.0), 0.05) == (False, None)
    release.set()
    assert wait_until(lambda: Manager.beats >= 3, 5.0)
    worker.stop()
    assert not worker._thread.is_alive()
