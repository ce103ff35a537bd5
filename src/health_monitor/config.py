"""Health monitor configuration: the robot profile plus ``config/health/*.yaml``, validated strictly.

The profile gives the topics with their expected rates and components, the motor temperature
and battery thresholds; the YAML file gives the tolerances, the rules, the managed nodes, the
policies and the ledger. Anything wrong — an unknown key, a threshold the wrong way round, a
policy naming an action or a node that does not exist — is refused with a
:class:`HealthConfigError` naming the file, the key and the problem, before any node starts.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from field_deploy.profile import ConfigError, RobotProfile, _Checker, load_profile, read_yaml
from field_deploy.rosenv import config_dir
from health_monitor.config_topics import TopicWatch, parse_topics
from health_monitor.core import LEVELS, HostLimits, RuleSpec

KNOWN_NODES = ('sim_robot', 'data_recorder', 'skill_runtime', 'bag_player')
"""Stack nodes a config may manage without a ``command`` (someone else starts them)."""

ACTIONS = ('stop_skills', 'estop', 'snapshot', 'mark_degraded', 'restart')
DIRECTIONS = ('rising', 'falling', 'nonzero')
_NODE_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


class HealthConfigError(ConfigError):
    """A health configuration that does not validate: ``<file>: <key>: <problem>``."""


class _C(_Checker):
    """The profile loader's strict checker, raising :class:`HealthConfigError` instead."""

    def fail(self, key: str, problem: str) -> HealthConfigError:  # type: ignore[override]
        return HealthConfigError(self.path, key, problem)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f'expected true or false, got {value!r}')
        return value

    def level(self, value: Any, key: str) -> int:
        if value not in LEVELS or value == 'OK':
            raise self.fail(key, f'{value!r} is not a level (WARN, ERROR, STALE)')
        return LEVELS[value]


@dataclass(frozen=True)
class ManagedNode:
    name: str
    command: tuple[str, ...] = ()
    stop_timeout: float = 15.0
    """Seconds a process of this node gets between SIGINT and SIGKILL (the stack description's
    ``stop_timeout``: the recorder needs its drain and the close of its bag)."""


@dataclass(frozen=True)
class LifecycleConfig:
    nodes: tuple[ManagedNode, ...] = ()
    autostart: bool = True
    heartbeat_hz: float = 2.0
    transition_timeout_s: float = 5.0
    discover_timeout_s: float = 3.0
    backoff_initial_s: float = 0.5
    backoff_factor: float = 2.0
    backoff_max_s: float = 30.0
    max_retries: int = 5
    stable_after_s: float = 30.0
    missed_heartbeats: int = 2
    unresponsive_timeout_s: float = 10.0
    """How long a node still on the graph may leave heartbeats unanswered before it is taken
    for hung (and restarted): a busy executor answers late, it is not dead."""
    spawn_timeout_s: float = 20.0
    """How long a process we started may take to show its lifecycle services (Python + rclpy
    imports take several seconds on a loaded 2-core robot computer)."""
    leave_timeout_s: float = 30.0
    """How long a replacement waits for the node it replaces to leave the graph. A process
    killed (kill -9, OOM) stays on the graph until its DDS lease runs out (20 s in
    ``config/fastdds.xml``), and until then every peer still sends to its shared-memory ports;
    a new process that takes those ports meanwhile can be left deaf (docs/skill_runtime.md,
    "Restart after a kill -9"). Past this bound the replacement starts anyway."""


@dataclass(frozen=True)
class PolicySpec:
    name: str
    path: str
    level: int
    rule: str | None
    actions: tuple[str, ...]
    restart: str | None = None
    hold_s: float = 0.0
    """The condition must last this long before the actions run (a blip does not act)."""

    def matches(self, path: str, level: int, failing: dict[str, int]) -> bool:
        if level < self.level or not fnmatch.fnmatchcase(path.strip('/'), self.path):
            return False
        if self.rule is None:
            return True
        return failing.get(self.rule, 0) >= self.level


@dataclass(frozen=True)
class TopicRule:
    """A rule fed from a field of a (deserialised, low-rate) topic rather than /diagnostics."""

    spec: RuleSpec
    topic: str
    type: str
    field: str
    path: str
    scale: float = 1.0


@dataclass(frozen=True)
class HealthConfig:
    path: Path
    profile: RobotProfile
    check_hz: float
    publish_hz: float
    stale_after_s: float
    topics: tuple[TopicWatch, ...]
    rules: tuple[RuleSpec, ...]
    topic_rules: tuple[TopicRule, ...]
    joint_paths: dict[str, str]
    host: HostLimits
    host_hz: float
    lifecycle: LifecycleConfig
    policies: tuple[PolicySpec, ...]
    services: dict[str, str]
    ledger_path: Path
    components_path: Path | None
    flush_interval_s: float
    expected: tuple[str, ...] = field(default_factory=tuple)
    check_late_s: float = 0.02
    """A check later than this behind its schedule judges no staleness (the monitor was starved)."""

    def joint_path(self, status_name: str) -> str | None:
        """The component path of a /diagnostics status naming a joint (``…FL_calf_joint``)."""
        token = re.split(r'[\s:/]+', status_name.strip())[-1] if status_name.strip() else ''
        return self.joint_paths.get(token)

    def status_path(self, status_name: str) -> str:
        joint = self.joint_path(status_name)
        if joint is not None:
            return joint
        clean = re.sub(r'[^A-Za-z0-9_/]+', '_', status_name.strip()).strip('_/') or 'unnamed'
        if '/' in clean:  # already a component path (sim_robot: ``sensors/imu``, ``power/battery``)
            return f'{clean}/status'
        return f'robot/other/{clean}'


def _thresholds(c: _C, raw: Any, key: str, profile: RobotProfile, direction: str
                ) -> tuple[float, float]:
    if direction == 'nonzero':
        if raw is not None:
            raise c.fail(key, 'a nonzero rule takes no thresholds')
        return 0.0, 0.0
    if isinstance(raw, str):
        if not raw.startswith('profile.'):
            raise c.fail(key, f'expected {{warn, error}} or "profile.<threshold>", got {raw!r}')
        attr = raw.removeprefix('profile.')
        if attr not in ('motor_temperature', 'battery_fraction'):
            raise c.fail(key, f'the profile has no threshold {attr!r} '
                              '(motor_temperature, battery_fraction)')
        t = getattr(profile, attr)
        warn, error = t.warn, t.error
    else:
        m = c.mapping(raw, key, {'warn', 'error'}, set())
        warn, error = c.number(m['warn'], f'{key}.warn'), c.number(m['error'], f'{key}.error')
    if direction == 'rising' and warn >= error:
        raise c.fail(key, f'warn ({warn:g}) must be below error ({error:g}) for a rising value')
    if direction == 'falling' and warn <= error:
        raise c.fail(key, f'warn ({warn:g}) must be above error ({error:g}) for a falling value')
    return warn, error


def _rule(c: _C, raw: Any, key: str, profile: RobotProfile) -> tuple[RuleSpec, dict[str, Any]]:
    m = c.mapping(raw, key, {'name', 'key', 'direction'},
                  {'match', 'thresholds', 'hysteresis', 'raise', 'clear', 'topic', 'field',
                   'path', 'scale'})
    direction = c.string(m['direction'], f'{key}.direction', DIRECTIONS)
    warn, error = _thresholds(c, m.get('thresholds'), f'{key}.thresholds', profile, direction)
    hysteresis = c.number(m.get('hysteresis', 0.0), f'{key}.hysteresis')
    if hysteresis < 0:
        raise c.fail(f'{key}.hysteresis', f'must be >= 0, got {hysteresis:g}')
    spec = RuleSpec(
        name=c.string(m['name'], f'{key}.name'),
        match=c.string(m.get('match', '*'), f'{key}.match'),
        key=c.string(m['key'], f'{key}.key'), direction=direction, warn=warn, error=error,
        hysteresis=hysteresis,
        raise_s=c.number(m.get('raise', 0.1), f'{key}.raise'),
        clear_s=c.number(m.get('clear', 1.0), f'{key}.clear'))
    if spec.raise_s < 0 or spec.clear_s < 0:
        raise c.fail(f'{key}.raise', 'durations must be >= 0')
    return spec, m


def _expand(value: str, robot: str) -> str:
    return os.path.expanduser(value.replace('{robot}', robot))


def _joint_paths(c: _C, raw: Any, profile: RobotProfile) -> dict[str, str]:
    m = c.mapping(raw or {}, 'joint_paths', set(), {'template', 'limbs'})
    template = c.string(m.get('template', 'robot/{limb}/{joint}'), 'joint_paths.template')
    limbs = m.get('limbs', [])
    if not isinstance(limbs, list):
        raise c.fail('joint_paths.limbs', 'expected a list of joint group names')
    groups = profile.groups
    for i, limb in enumerate(limbs):
        if not isinstance(limb, str) or not limb:
            raise c.fail(f'joint_paths.limbs[{i}]', f'expected a joint group name, got {limb!r}')
    # One file serves every robot: a limb the robot does not have (arms on a quadruped) is skipped.
    limbs = [g for g in limbs if g in groups]
    out = {}
    for joint in profile.joints:
        limb = next((g for g in limbs if joint.name in groups[g]), joint.group)
        try:
            out[joint.name] = template.format(limb=limb, joint=joint.name,
                                              group=joint.group).strip('/')
        except (KeyError, IndexError) as exc:
            raise c.fail('joint_paths.template', f'unknown placeholder {exc} '
                                                 '(use {limb}, {group}, {joint})') from None
    return out


def _lifecycle(c: _C, raw: Any) -> LifecycleConfig:
    m = c.mapping(raw or {}, 'lifecycle', set(),
                  {'nodes', 'autostart', 'heartbeat_rate', 'transition_timeout',
                   'discover_timeout', 'backoff', 'max_retries', 'stable_after',
                   'missed_heartbeats', 'unresponsive_timeout', 'spawn_timeout',
                   'leave_timeout'})
    nodes: list[ManagedNode] = []
    for i, entry in enumerate(m.get('nodes', []) or []):
        key = f'lifecycle.nodes[{i}]'
        if isinstance(entry, str):
            entry = {'name': entry}
        e = c.mapping(entry, key, {'name'}, {'command'})
        name = c.string(e['name'], f'{key}.name')
        if not _NODE_NAME.match(name):
            raise c.fail(f'{key}.name', f'{name!r} is not a ROS node name')
        command = e.get('command', [])
        if not isinstance(command, list) or not all(isinstance(a, str) and a for a in command):
            raise c.fail(f'{key}.command', 'expected an argv list of non-empty strings')
        if name not in KNOWN_NODES and not command:
            raise c.fail(f'{key}.name', f'unknown node {name!r} (the stack has '
                                        f'{", ".join(KNOWN_NODES)}; give a command to manage '
                                        'another node)')
        if any(n.name == name for n in nodes):
            raise c.fail(f'{key}.name', f'node {name!r} listed twice')
        nodes.append(ManagedNode(name, tuple(command)))
    backoff = c.mapping(m.get('backoff', {}) or {}, 'lifecycle.backoff', set(),
                        {'initial', 'factor', 'max'})
    retries = m.get('max_retries', 5)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise c.fail('lifecycle.max_retries', f'expected a whole number >= 0, got {retries!r}')
    missed = m.get('missed_heartbeats', 2)
    if isinstance(missed, bool) or not isinstance(missed, int) or missed < 1:
        raise c.fail('lifecycle.missed_heartbeats', f'expected a whole number >= 1, got {missed!r}')
    factor = c.number(backoff.get('factor', 2.0), 'lifecycle.backoff.factor', positive=True)
    if factor < 1.0:
        raise c.fail('lifecycle.backoff.factor', f'must be >= 1, got {factor:g}')
    return LifecycleConfig(
        nodes=tuple(nodes),
        autostart=c.boolean(m.get('autostart', True), 'lifecycle.autostart'),
        heartbeat_hz=c.number(m.get('heartbeat_rate', 2.0), 'lifecycle.heartbeat_rate',
                              positive=True),
        transition_timeout_s=c.number(m.get('transition_timeout', 5.0),
                                      'lifecycle.transition_timeout', positive=True),
        discover_timeout_s=c.number(m.get('discover_timeout', 3.0), 'lifecycle.discover_timeout',
                                    positive=True),
        backoff_initial_s=c.number(backoff.get('initial', 0.5), 'lifecycle.backoff.initial',
                                   positive=True),
        backoff_factor=factor,
        backoff_max_s=c.number(backoff.get('max', 30.0), 'lifecycle.backoff.max', positive=True),
        max_retries=retries,
        stable_after_s=c.number(m.get('stable_after', 30.0), 'lifecycle.stable_after',
                                positive=True),
        missed_heartbeats=missed,
        unresponsive_timeout_s=c.number(m.get('unresponsive_timeout', 10.0),
                                        'lifecycle.unresponsive_timeout', positive=True),
        spawn_timeout_s=c.number(m.get('spawn_timeout', 20.0), 'lifecycle.spawn_timeout',
                                 positive=True),
        leave_timeout_s=c.number(m.get('leave_timeout', 30.0), 'lifecycle.leave_timeout',
                                 positive=True))


def _policies(c: _C, raw: Any, rules: set[str], lifecycle: LifecycleConfig
              ) -> tuple[PolicySpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise c.fail('policies', 'expected a list of policies')
    out = []
    managed = {n.name for n in lifecycle.nodes}
    for i, entry in enumerate(raw):
        key = f'policies[{i}]'
        if isinstance(entry, dict) and True in entry:  # YAML 1.1 reads a bare `on:` key as true
            entry = {('on' if k is True else k): v for k, v in entry.items()}
        m = c.mapping(entry, key, {'name', 'on', 'actions'}, {'restart'})
        on = c.mapping(m['on'], f'{key}.on', {'path'}, {'level', 'rule', 'for'})
        hold = c.number(on.get('for', 0.0), f'{key}.on.for')
        if hold < 0:
            raise c.fail(f'{key}.on.for', f'must be >= 0 seconds, got {hold:g}')
        rule = on.get('rule')
        if rule is not None and rule not in rules:
            raise c.fail(f'{key}.on.rule', f'no rule named {rule!r} (rules: '
                                           f'{", ".join(sorted(rules)) or "none"})')
        actions = c.listing(m['actions'], f'{key}.actions')
        for j, action in enumerate(actions):
            if action not in ACTIONS:
                raise c.fail(f'{key}.actions[{j}]', f'unknown action {action!r} '
                                                    f'(known: {", ".join(ACTIONS)})')
        restart = m.get('restart')
        if 'restart' in actions:
            if restart not in managed:
                raise c.fail(f'{key}.restart', f'unknown node {restart!r}: a restart action '
                                               'needs a managed node (lifecycle.nodes: '
                                               f'{", ".join(sorted(managed)) or "none"})')
        elif restart is not None:
            raise c.fail(f'{key}.restart', 'given without a restart action')
        out.append(PolicySpec(name=c.string(m['name'], f'{key}.name'),
                              path=c.string(on['path'], f'{key}.on.path').strip('/'),
                              level=c.level(on.get('level', 'ERROR'), f'{key}.on.level'),
                              rule=rule, actions=tuple(actions), restart=restart,
                              hold_s=hold))
    return tuple(out)


def _host(c: _C, raw: Any, robot: str) -> tuple[HostLimits, float]:
    m = c.mapping(raw or {}, 'host', set(), {'rate', 'disk_path', 'cpu_percent',
                                             'memory_percent', 'disk_free_gb', 'temperature_c',
                                             'hold', 'clear'})
    d = HostLimits()

    def pair(k: str, rising: bool) -> tuple[float, float]:
        if k not in m:
            return getattr(d, k)
        t = c.thresholds(m[k], f'host.{k}', rising=rising)
        return t.warn, t.error

    limits = HostLimits(cpu_percent=pair('cpu_percent', True),
                        memory_percent=pair('memory_percent', True),
                        disk_free_gb=pair('disk_free_gb', False),
                        temperature_c=pair('temperature_c', True),
                        disk_path=_expand(c.string(m.get('disk_path', '/'), 'host.disk_path'),
                                          robot),
                        hold_s=c.number(m.get('hold', d.hold_s), 'host.hold'),
                        clear_s=c.number(m.get('clear', d.clear_s), 'host.clear'))
    return limits, c.number(m.get('rate', 1.0), 'host.rate', positive=True)


def default_config_path() -> Path:
    return config_dir() / 'health' / 'default.yaml'


def parse_config(data: Any, path: Path | str, profile: RobotProfile) -> HealthConfig:
    path = Path(path)
    c = _C(path)
    top = c.mapping(data, '', set(), {'check_rate', 'check_late', 'publish_rate', 'aggregator',
                                      'topics',
                                      'joint_paths', 'rules', 'host', 'lifecycle', 'policies',
                                      'services', 'ledger'})
    robot = profile.name

    watches = parse_topics(c, top.get('topics'), profile)
    names = {t.name for t in profile.topics}
    joint_paths = _joint_paths(c, top.get('joint_paths'), profile)
    rules: list[RuleSpec] = []
    topic_rules: list[TopicRule] = []
    raw_rules = top.get('rules', []) or []
    if not isinstance(raw_rules, list):
        raise c.fail('rules', 'expected a list of rules')
    for i, raw in enumerate(raw_rules):
        spec, m = _rule(c, raw, f'rules[{i}]', profile)
        if any(r.name == spec.name for r in rules) or any(
                t.spec.name == spec.name for t in topic_rules):
            raise c.fail(f'rules[{i}].name', f'rule {spec.name!r} defined twice')
        if 'topic' in m:
            topic = c.string(m['topic'], f'rules[{i}].topic')
            if topic not in names:
                raise c.fail(f'rules[{i}].topic', f'robot {robot!r} has no topic {topic!r}')
            tspec = profile.topic(topic)
            topic_rules.append(TopicRule(
                spec, topic, tspec.type, c.string(m.get('field', spec.key), f'rules[{i}].field'),
                c.string(m.get('path', f'{tspec.component}/{spec.name}'),
                         f'rules[{i}].path').strip('/'),
                c.number(m.get('scale', 1.0), f'rules[{i}].scale', positive=True)))
        else:
            for k in ('field', 'path', 'scale'):
                if k in m:
                    raise c.fail(f'rules[{i}].{k}', 'only for a rule with a topic')
            rules.append(spec)

    agg = c.mapping(top.get('aggregator', {}) or {}, 'aggregator', set(), {'stale_after'})
    host, host_hz = _host(c, top.get('host'), robot)
    lifecycle = _lifecycle(c, top.get('lifecycle'))
    rule_names = {r.name for r in rules} | {t.spec.name for t in topic_rules}
    policies = _policies(c, top.get('policies'), rule_names, lifecycle)
    services = c.mapping(top.get('services', {}) or {}, 'services', set(),
                         {'stop_skills', 'estop', 'snapshot'})
    svc = {'stop_skills': '/skill_runtime/stop', 'estop': '/skill_runtime/estop',
           'snapshot': '/data_recorder/snapshot'}
    for k, v in services.items():
        svc[k] = c.string(v, f'services.{k}')
    ledger = c.mapping(top.get('ledger', {}) or {}, 'ledger', set(),
                       {'path', 'components', 'flush_interval'})
    components = ledger.get('components', 'components_{robot}.yaml')
    components_path = None
    if components:
        components_path = Path(_expand(c.string(components, 'ledger.components'), robot))
        if not components_path.is_absolute():
            components_path = config_dir() / 'health' / components_path
        if not components_path.is_file():
            raise c.fail('ledger.components', f'no such components file {components_path}')
    expected = [w.path for w in watches] + list(joint_paths.values())
    return HealthConfig(
        path=path, profile=profile,
        check_hz=c.number(top.get('check_rate', 50.0), 'check_rate', positive=True),
        check_late_s=c.number(top.get('check_late', 0.02), 'check_late', positive=True),
        publish_hz=c.number(top.get('publish_rate', 2.0), 'publish_rate', positive=True),
        stale_after_s=c.number(agg.get('stale_after', 5.0), 'aggregator.stale_after',
                               positive=True),
        topics=tuple(watches), rules=tuple(rules), topic_rules=tuple(topic_rules),
        joint_paths=joint_paths, host=host, host_hz=host_hz, lifecycle=lifecycle,
        policies=policies, services=svc,
        ledger_path=Path(_expand(c.string(ledger.get('path', '~/.field_deploy/health/{robot}'
                                                              '.sqlite'), 'ledger.path'), robot)),
        components_path=components_path,
        flush_interval_s=c.number(ledger.get('flush_interval', 1.0), 'ledger.flush_interval',
                                  positive=True),
        expected=tuple(expected))


def load_config(path: Path | str | None, profile: RobotProfile | str) -> HealthConfig:
    """Load and validate ``path`` (default ``config/health/default.yaml``) for ``profile``."""
    if not isinstance(profile, RobotProfile):
        profile = load_profile(profile)
    path = Path(path) if path else default_config_path()
    data = read_yaml(path, HealthConfigError, '<file>', 'no such health configuration file')
    return parse_config(data if data is not None else {}, path, profile)
