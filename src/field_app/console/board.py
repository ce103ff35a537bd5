"""The status board: what the robot is doing, folded from the stack's diagnostics (no rclpy).

Sources, all standard ``diagnostic_msgs/DiagnosticArray`` topics:

* ``/skill_runtime/status`` (10 Hz): one status per skill (phase, progress, outcome, reason) and
  the safety gate (mode, e-stop reason, owners);
* ``/diagnostics_agg`` (health monitor): the roll-up per subsystem (top-level group) and its
  leaves, of which the worst are shown; its ``lifecycle/<node>`` leaves carry each managed node's
  lifecycle state, phase and restarts;
* ``/diagnostics``: the recorder's ``data_recorder`` status (state, bag, files, writer queue,
  received / written / lost by cause, marks); rate and MB/s are the growth between two statuses.

A section is shown only while its node is heard: a node silent for ``stale_after`` seconds, or
gone from the ROS graph, is shown as *gone* with the time it was last heard, never with its last
values as if they were current. It comes back with its first new status.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LEVELS = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}
SOURCES = ('skill_runtime', 'data_recorder', 'health_monitor')
_LIFECYCLE = re.compile(r'^/?(?:[\w/]*: )?lifecycle/(?P<node>[\w/]+)$')
_RECORDER_TOTALS = ('received', 'written', 'lost', 'not_written')


def _counter(key: str) -> bool:
    """A recorder total: the main counts, and every loss or skip cause it reports (whatever causes
    its accounting has: the console lists them, it does not keep its own list)."""
    return key in _RECORDER_TOTALS or key.startswith(('lost_', 'skipped_'))


@dataclass(frozen=True)
class Diag:
    """One ``DiagnosticStatus``, decoded."""

    name: str
    level: int
    message: str = ''
    values: Mapping[str, str] = field(default_factory=dict)


def level_of(raw: Any) -> int:
    """``DiagnosticStatus.level`` is a byte in rclpy (``b'\\x01'``), an int elsewhere."""
    return int.from_bytes(raw, 'little') if isinstance(raw, (bytes, bytearray)) else int(raw)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


class Board:
    """Feed it statuses as they arrive (``on_*``, with the monotonic time); read :meth:`snapshot`."""

    GRAPH_GRACE = 2.0

    def __init__(self, stale_after: float = 3.5, worst: int = 3) -> None:
        self.stale_after = stale_after
        self.worst = worst
        self.heard: dict[str, float] = {}
        self.graph: set[str] | None = None
        self.skills: dict[str, Diag] = {}
        self.gate: Diag | None = None
        self.agg: dict[str, Diag] = {}
        self.recorder: Diag | None = None
        self._recorder_samples: deque[tuple[float, int, int | None]] = deque(maxlen=8)

    # ------------------------------------------------------------------ inputs
    def on_runtime_status(self, statuses: Iterable[Diag], now: float) -> None:
        skills, gate = {}, None
        for s in statuses:
            if s.name.startswith('skills/'):
                skills[s.name.removeprefix('skills/')] = s
            elif s.name.endswith('safety_gate'):
                gate = s
        self.skills, self.gate = skills, gate     # the runtime reports every skill every time
        self.heard['skill_runtime'] = now

    def on_agg(self, statuses: Iterable[Diag], now: float) -> None:
        self.agg = {s.name.strip('/'): s for s in statuses}  # each message is the whole tree
        self.heard['health_monitor'] = now

    def on_diagnostics(self, statuses: Iterable[Diag], now: float,
                       bag_bytes: int | None = None) -> None:
        """``bag_bytes``: the recording's size on disk when this host can see it (for MB/s)."""
        for s in statuses:
            if s.name == 'data_recorder':
                if self.recorder is not None and self.recorder.values.get('path') != s.values.get('path'):
                    self._recorder_samples.clear()        # a new bag: rates start again
                self.recorder = s
                self.heard['data_recorder'] = now
                self._recorder_samples.append((now, _int(s.values.get('written')), bag_bytes))

    def on_graph(self, nodes: Iterable[str]) -> None:
        """Node names now on the ROS graph (a node that left it is gone at once)."""
        self.graph = {n.rsplit('/', 1)[-1] for n in nodes}

    # ------------------------------------------------------------------ reading
    def presence(self, source: str, now: float) -> dict[str, Any]:
        """``up`` while its statuses keep coming; ``gone`` once silent for ``stale_after`` s, or
        for :attr:`GRAPH_GRACE` s when it has left the graph (a clean exit is seen sooner; the
        graph alone is not trusted, as discovery can lag a node that is talking)."""
        last = self.heard.get(source)
        age = None if last is None else round(now - last, 1)
        off_graph = self.graph is not None and source not in self.graph
        if last is not None and (now - last <= (self.GRAPH_GRACE if off_graph else self.stale_after)):
            return {'presence': 'up', 'last_heard_s': age}
        why = ('never heard' if last is None else
               f'not on the ROS graph, silent for {now - last:.1f} s' if off_graph else
               f'silent for {now - last:.1f} s')
        return {'presence': 'gone', 'why': why, 'last_heard_s': age}

    def _up(self, source: str, now: float) -> bool:
        return self.presence(source, now)['presence'] == 'up'

    def snapshot(self, now: float, disk_free: int | None = None) -> dict[str, Any]:
        """Everything shown, as plain data (``status --json`` prints it)."""
        return {
            'nodes': {s: self.presence(s, now) for s in SOURCES},
            'gate': self._gate() if self._up('skill_runtime', now) else None,
            'skills': self._skills() if self._up('skill_runtime', now) else [],
            'health': self._health() if self._up('health_monitor', now) else None,
            'lifecycle': self._lifecycle() if self._up('health_monitor', now) else [],
            'recorder': (self._recorder(disk_free) if self._up('data_recorder', now) else None),
        }

    def _gate(self) -> dict[str, Any] | None:
        if self.gate is None:
            return None
        v = self.gate.values
        return {'mode': v.get('mode', self.gate.message), 'estop_reason': v.get('estop_reason', ''),
                'owners': [o for o in v.get('owners', '').split(',') if o],
                'level': LEVELS.get(self.gate.level, str(self.gate.level)),
                'message': self.gate.message}

    def _skills(self) -> list[dict[str, Any]]:
        out = []
        for name, s in sorted(self.skills.items()):
            v = s.values
            try:
                progress = float(v.get('progress', 0.0))
            except ValueError:
                progress = 0.0
            out.append({'skill': name, 'phase': v.get('phase', ''), 'progress': progress,
                        'outcome': v.get('outcome', ''), 'reason': v.get('reason', ''),
                        'params': v.get('params', '')})
        return out

    def _health(self) -> dict[str, Any]:
        tops = sorted(p for p in self.agg if '/' not in p)
        subsystems = []
        for top in tops:
            group = self.agg[top]
            leaves = [d for p, d in self.agg.items() if p.startswith(top + '/')
                      and not any(o.startswith(p + '/') for o in self.agg)]
            bad = sorted((d for d in leaves if d.level > 0), key=lambda d: (-d.level, d.name))
            subsystems.append({
                'name': top, 'level': LEVELS.get(group.level, str(group.level)),
                'message': group.message, 'leaves': len(leaves),
                'worst': [{'path': d.name.strip('/'), 'level': LEVELS.get(d.level, str(d.level)),
                           'message': d.message} for d in bad[:self.worst]]})
        worst = max((self.agg[t].level for t in tops), default=3)
        return {'level': LEVELS.get(worst, str(worst)), 'subsystems': subsystems}

    def _lifecycle(self) -> list[dict[str, Any]]:
        out = []
        for path, d in sorted(self.agg.items()):
            match = _LIFECYCLE.match(path)
            if match and ('state' in d.values or 'phase' in d.values):
                out.append({'node': match['node'], 'state': d.values.get('state', ''),
                            'phase': d.values.get('phase', ''),
                            'restarts': _int(d.values.get('restarts')),
                            'retries': _int(d.values.get('retries')),
                            'level': LEVELS.get(d.level, str(d.level)), 'message': d.message,
                            'on_graph': None if self.graph is None else match['node'] in self.graph})
        return out

    def _recorder(self, disk_free: int | None) -> dict[str, Any] | None:
        if self.recorder is None:
            return None
        v = self.recorder.values
        rate = mb_s = None
        samples = self._recorder_samples
        if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
            (t0, w0, b0), (t1, w1, b1) = samples[0], samples[-1]
            rate = round((w1 - w0) / (t1 - t0), 1)
            if b0 is not None and b1 is not None:
                mb_s = round((b1 - b0) / (t1 - t0) / 1e6, 2)
        return {'state': v.get('state', self.recorder.message), 'message': self.recorder.message,
                'level': LEVELS.get(self.recorder.level, str(self.recorder.level)),
                'bag': v.get('path', ''), 'files': _int(v.get('files')),
                'rate_msgs_s': rate, 'mb_s': mb_s,
                'lag_queue': _int(v.get('queue')),
                'totals': {k: _int(v.get(k)) for k in _RECORDER_TOTALS} | {
                    k: _int(x) for k, x in v.items() if _counter(k)},
                'marks': _int(v.get('marks')), 'disk_free_bytes': disk_free,
                'stop_reason': v.get('stop_reason', '')}
