"""Pure monitor cores (no rclpy): threshold rules, host monitor, aggregator (topics: topics.py).

Every monitor is fed with observations and asked for its :class:`Status` at a time ``now``
(monotonic seconds), so the cores are unit-tested with synthetic clocks and the node shell only
wires them to subscriptions and timers. Levels follow diagnostic_msgs/DiagnosticStatus
(OK 0, WARN 1, ERROR 2, STALE 3) so a status maps 1:1 onto the ROS message.
"""

from __future__ import annotations

import fnmatch
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: 'OK', WARN: 'WARN', ERROR: 'ERROR', STALE: 'STALE'}
LEVELS = {v: k for k, v in LEVEL_NAMES.items()}

_STAMP = struct.Struct('<iI')


def header_stamp_ns(cdr: bytes) -> int:
    """``header.stamp`` of a serialised message whose first field is a std_msgs/Header.

    CDR layout: 4-byte encapsulation header, then ``int32 sec``, ``uint32 nanosec`` (both
    4-aligned, little-endian for the usual CDR_LE encapsulation ``00 01``). Reading eight bytes
    costs nothing, where deserialising a 900 kB image would dominate the monitor's CPU.
    """
    if len(cdr) < 12:
        raise ValueError(f'serialised message of {len(cdr)} bytes is too short for a header stamp')
    if cdr[1] == 0:  # CDR_BE / PL_CDR_BE encapsulation
        sec, nanosec = struct.unpack_from('>iI', cdr, 4)
    else:
        sec, nanosec = _STAMP.unpack_from(cdr, 4)
    return sec * 1_000_000_000 + nanosec


@dataclass
class Status:
    """One diagnostic status: ``name`` is the aggregation path (``sensors/imu``)."""

    name: str
    level: int
    message: str
    hardware_id: str = ''
    values: dict[str, str] = field(default_factory=dict)


class Debounce:
    """Level with asymmetric minimum durations: trip after ``raise_s``, clear after ``clear_s``.

    A candidate level must hold for its duration before it becomes the reported level, so a
    value that crosses a threshold for one noisy sample does not flap the output. Raising is
    quick (fault latency matters), clearing is slow (an operator must not see OK/ERROR/OK).
    """

    def __init__(self, raise_s: float, clear_s: float) -> None:
        self.raise_s = raise_s
        self.clear_s = clear_s
        self.level = OK
        self._candidate = OK
        self._since = 0.0

    def update(self, candidate: int, now: float) -> int:
        if candidate == self.level:
            self._candidate = candidate
            return self.level
        if candidate != self._candidate:
            self._candidate = candidate
            self._since = now
        hold = self.raise_s if candidate > self.level else self.clear_s
        if now - self._since >= hold:
            self.level = candidate
        return self.level

    def reset(self) -> None:
        self.level = self._candidate = OK


# --------------------------------------------------------------------------- threshold rules

@dataclass(frozen=True)
class RuleSpec:
    """A rule on one key of matching /diagnostics statuses (or of a topic value).

    ``direction`` ``rising``: warn/error when the value goes above; ``falling``: below;
    ``nonzero``: error when the value (an error code) is not zero.
    """

    name: str
    match: str
    key: str
    direction: str
    warn: float = 0.0
    error: float = 0.0
    hysteresis: float = 0.0
    raise_s: float = 0.1
    clear_s: float = 1.0

    def matches(self, status_name: str) -> bool:
        return fnmatch.fnmatchcase(status_name, self.match)


class ThresholdRule:
    """Level of one value stream under a :class:`RuleSpec`, with hysteresis and min durations.

    Once WARN (ERROR), the value must come back past ``warn - hysteresis`` (``error -
    hysteresis``) before the level drops, and the drop must hold ``clear_s``.
    """

    def __init__(self, spec: RuleSpec, path: str) -> None:
        self.spec = spec
        self.path = path
        self.value: float | None = None
        self.last_update = -1.0
        self.peak: float | None = None
        self._debounce = Debounce(spec.raise_s, spec.clear_s)

    def _candidate(self, value: float) -> int:
        s = self.spec
        current = self._debounce.level
        if s.direction == 'nonzero':
            return ERROR if value != 0 else OK
        sign = 1.0 if s.direction == 'rising' else -1.0
        v = sign * value

        def beyond(limit: float, held: bool) -> bool:
            margin = s.hysteresis if held else 0.0
            return v >= sign * limit - margin

        if beyond(s.error, current >= ERROR):
            return ERROR
        if beyond(s.warn, current >= WARN):
            return WARN
        return OK

    def update(self, value: float, now: float) -> int:
        self.value = value
        self.last_update = now
        if self.peak is None or (value > self.peak if self.spec.direction != 'falling'
                                 else value < self.peak):
            self.peak = value
        return self._debounce.update(self._candidate(value), now)

    @property
    def level(self) -> int:
        return self._debounce.level

    def status(self) -> Status:
        s = self.spec
        if self.value is None:
            return Status(self.path, STALE, f'{s.name}: no value yet')
        if s.direction == 'nonzero':
            text = f'{s.key} {self.value:g}' + (' (fault code)' if self.level else '')
        else:
            limit = {OK: None, WARN: s.warn, ERROR: s.error}[self.level]
            word = 'above' if s.direction == 'rising' else 'below'
            text = f'{s.key} {self.value:g}' + (f' {word} {s.name} {LEVEL_NAMES[self.level]} '
                                                f'limit {limit:g}' if limit is not None else '')
        values = {s.key: f'{self.value:g}', 'peak': f'{self.peak:g}', 'rule': s.name}
        return Status(self.path, self.level, text, values=values)


# --------------------------------------------------------------------------- host monitor

@dataclass(frozen=True)
class HostLimits:
    cpu_percent: tuple[float, float] = (90.0, 98.0)
    memory_percent: tuple[float, float] = (85.0, 95.0)
    disk_free_gb: tuple[float, float] = (5.0, 1.0)
    temperature_c: tuple[float, float] = (85.0, 95.0)
    disk_path: str = '/'
    hold_s: float = 3.0
    clear_s: float = 5.0


class HostMonitor:
    """CPU, memory, free disk on the recording volume and readable temperatures (psutil).

    CPU is averaged over the sampling interval (the ``psutil.cpu_percent(None)`` delta), and
    each quantity is debounced so a one-second compile burst does not raise the host level.
    """

    def __init__(self, limits: HostLimits, psutil_module=None) -> None:
        if psutil_module is None:
            import psutil as psutil_module
        self.psutil = psutil_module
        self.limits = limits
        self.psutil.cpu_percent(None)
        self._debounce = {k: Debounce(limits.hold_s, limits.clear_s)
                          for k in ('cpu', 'memory', 'disk', 'temperature')}

    @staticmethod
    def _level(value: float, warn: float, error: float) -> int:
        if warn <= error:  # rising
            return ERROR if value >= error else WARN if value >= warn else OK
        return ERROR if value <= error else WARN if value <= warn else OK

    def sample(self, now: float) -> list[Status]:
        lim = self.limits
        out: list[Status] = []
        cpu = float(self.psutil.cpu_percent(None))
        level = self._debounce['cpu'].update(self._level(cpu, *lim.cpu_percent), now)
        out.append(Status('host/cpu', level, f'CPU {cpu:.0f} %', values={'percent': f'{cpu:.1f}'}))
        mem = self.psutil.virtual_memory()
        level = self._debounce['memory'].update(self._level(mem.percent, *lim.memory_percent), now)
        out.append(Status('host/memory', level, f'memory {mem.percent:.0f} % used',
                          values={'percent': f'{mem.percent:.1f}',
                                  'available (MB)': f'{mem.available / 2**20:.0f}'}))
        try:
            disk = self.psutil.disk_usage(lim.disk_path)
        except OSError as exc:
            out.append(Status('host/disk', ERROR, f'{lim.disk_path}: cannot read: {exc}'))
        else:
            free_gb = disk.free / 1e9
            level = self._debounce['disk'].update(self._level(free_gb, *lim.disk_free_gb), now)
            out.append(Status('host/disk', level, f'{free_gb:.1f} GB free on {lim.disk_path}',
                              values={'path': lim.disk_path, 'free (GB)': f'{free_gb:.2f}',
                                      'used (%)': f'{disk.percent:.1f}'}))
        readings = {}
        try:
            sensors = self.psutil.sensors_temperatures() or {}
        except (AttributeError, OSError):
            sensors = {}
        for chip, entries in sensors.items():
            for i, entry in enumerate(entries):
                if entry.current is not None:
                    readings[f'{chip}/{entry.label or i}'] = float(entry.current)
        if readings:
            hottest = max(readings.values())
            level = self._debounce['temperature'].update(
                self._level(hottest, *lim.temperature_c), now)
            out.append(Status('host/temperature', level, f'hottest sensor {hottest:.0f} °C',
                              values={k: f'{v:.1f}' for k, v in readings.items()}))
        else:
            out.append(Status('host/temperature', OK, 'no temperature sensor readable here'))
        return out


# --------------------------------------------------------------------------- aggregator

@dataclass
class _Leaf:
    status: Status
    updated: float


class Aggregator:
    """Groups statuses by path like diagnostic_aggregator and rolls the worst level up.

    A leaf not updated for ``stale_after_s`` (or an expected leaf never seen) is STALE. A group's
    level is the worst of its children, where a STALE child counts as ERROR unless every child
    is STALE (then the group is STALE), as diagnostic_aggregator does.
    """

    def __init__(self, stale_after_s: float = 5.0, expected: Iterable[str] = ()) -> None:
        self.stale_after_s = stale_after_s
        self.expected = {p.strip('/') for p in expected}
        self._leaves: dict[str, _Leaf] = {}

    def update(self, status: Status, now: float) -> None:
        self._leaves[status.name.strip('/')] = _Leaf(status, now)

    def leaf_levels(self, now: float) -> dict[str, Status]:
        out: dict[str, Status] = {}
        for path in self.expected - set(self._leaves):
            out[path] = Status(path, STALE, 'never reported')
        for path, leaf in self._leaves.items():
            s = leaf.status
            if now - leaf.updated > self.stale_after_s:
                s = Status(path, STALE, f'no update for {now - leaf.updated:.1f} s '
                                        f'(last: {s.message})', s.hardware_id, s.values)
            out[path] = s
        return out

    def aggregate(self, now: float) -> list[Status]:
        """Leaves plus every ancestor group, paths with a leading '/', sorted (parents first)."""
        leaves = self.leaf_levels(now)
        children: dict[str, list[int]] = {}
        for path, status in leaves.items():
            parts = path.split('/')
            for depth in range(1, len(parts)):
                children.setdefault('/'.join(parts[:depth]), []).append(status.level)
        out = [Status('/' + p, s.level, s.message, s.hardware_id, s.values)
               for p, s in leaves.items()]
        for group, levels in children.items():
            if all(lv == STALE for lv in levels):
                level = STALE
            else:
                level = max(ERROR if lv == STALE else lv for lv in levels)
            counts = {LEVEL_NAMES[lv]: levels.count(lv) for lv in sorted(set(levels))}
            message = ', '.join(f'{n} {name}' for name, n in counts.items())
            out.append(Status('/' + group, level, message,
                              values={k: str(v) for k, v in counts.items()}))
        out.sort(key=lambda s: s.name)
        return out

    @staticmethod
    def top_level(statuses: Iterable[Status]) -> int:
        tops = [s.level for s in statuses if s.name.count('/') == 1]
        if not tops:
            return STALE
        return max(tops)


# --------------------------------------------------------------------------- components

class ComponentHealth:
    """One component's leaf (``robot/legs/FL_calf_joint``): its driver status plus our rules.

    The reported level is the worst of the level the driver itself reports in /diagnostics and
    of every rule on its key-values; ``failing`` names the rules at WARN or above, which the
    policies match on. ``degraded`` (set by a policy, cleared by reset) keeps it at least WARN.
    """

    def __init__(self, path: str, rules: Iterable[RuleSpec]) -> None:
        self.path = path
        self.rules = {spec.name: ThresholdRule(spec, path) for spec in rules}
        self.driver: Status | None = None
        self.degraded = ''

    def update(self, status: Status, now: float) -> None:
        self.driver = status
        for rule in self.rules.values():
            raw = status.values.get(rule.spec.key)
            if raw is None:
                continue
            try:
                value = float(raw)
            except ValueError:
                continue
            rule.update(value, now)

    def update_value(self, rule_name: str, value: float, now: float) -> None:
        self.rules[rule_name].update(value, now)

    @property
    def failing(self) -> dict[str, int]:
        return {name: r.level for name, r in self.rules.items() if r.level > OK}

    def status(self) -> Status:
        levels = [r.level for r in self.rules.values() if r.value is not None]
        parts = [r.status().message for r in self.rules.values() if r.level > OK]
        values: dict[str, str] = {}
        hardware_id = ''
        if self.driver is not None:
            levels.append(min(self.driver.level, ERROR))
            values.update(self.driver.values)
            hardware_id = self.driver.hardware_id
            if self.driver.level > OK:
                parts.insert(0, f'driver: {self.driver.message}')
        if self.degraded:
            levels.append(WARN)
            parts.append(f'degraded ({self.degraded})')
            values['degraded'] = self.degraded
        if not levels:
            return Status(self.path, STALE, 'no status yet')
        for r in self.rules.values():
            if r.peak is not None:
                values[f'peak {r.spec.key}'] = f'{r.peak:g}'
        return Status(self.path, max(levels), '; '.join(parts) or 'OK', hardware_id, values)
