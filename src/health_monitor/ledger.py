"""Component ledger: a per-robot SQLite record of each component's identity, use and faults.

Why SQLite in WAL mode with batched writes: the monitor observes 30 motors at 10 Hz, so writing
each sample would cost a transaction per 3 ms; instead running totals and peaks accumulate in
memory and :meth:`Ledger.flush` commits them every ``flush_interval`` seconds in one
transaction. WAL makes each commit atomic and durable against a kill -9 of the process (the
lost part is at most the last interval), and lets the CLI read while the monitor writes.
Lifecycle events (service, replace, retire) are written at once, fsync'd: :mod:`.lifecycle`.
No rclpy import here.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from health_monitor import lifecycle
from health_monitor.lifecycle import interval_days, migrate, now_iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS components (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, path TEXT NOT NULL, model TEXT, serial TEXT,
    firmware TEXT, installed_at TEXT, maintenance_every_h REAL, maintenance_due_date TEXT,
    last_service_h REAL NOT NULL DEFAULT 0, degraded TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS totals (
    component TEXT PRIMARY KEY REFERENCES components(id), operating_s REAL NOT NULL DEFAULT 0,
    cycles INTEGER NOT NULL DEFAULT 0, energy_j REAL NOT NULL DEFAULT 0,
    above_warn_s REAL NOT NULL DEFAULT 0, peak_temperature REAL, peak_current REAL,
    updated_at TEXT);
CREATE TABLE IF NOT EXISTS faults (
    id INTEGER PRIMARY KEY AUTOINCREMENT, component TEXT NOT NULL, at TEXT NOT NULL,
    level TEXT NOT NULL, rule TEXT NOT NULL, message TEXT NOT NULL, cleared_at TEXT);
"""

_COMPONENT_KEYS = {'id', 'kind', 'model', 'serial', 'firmware', 'installed_at'}
_OPTIONAL_KEYS = {'path', 'maintenance'}


class LedgerError(ValueError):
    """A components file that does not validate: ``<file>: <key>: <problem>``."""


@dataclass(frozen=True)
class ComponentSpec:
    id: str
    kind: str
    path: str
    model: str
    serial: str
    firmware: str
    installed_at: str
    maintenance_every_h: float | None = None
    maintenance_due_date: str | None = None


def load_components(path: Path, joint_paths: dict[str, str] | None = None
                    ) -> list[ComponentSpec]:
    """Parse a components YAML; a motor's ``path`` defaults to its joint's aggregation path."""
    joint_paths = joint_paths or {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LedgerError(f'{path}: <file>: cannot read: {exc}') from None
    if not isinstance(data, dict) or not isinstance(data.get('components'), list):
        raise LedgerError(f'{path}: components: expected a list of components')
    out: list[ComponentSpec] = []
    for i, entry in enumerate(data['components']):
        key = f'components[{i}]'
        if not isinstance(entry, dict):
            raise LedgerError(f'{path}: {key}: expected a mapping')
        if 'compliance' in entry:
            raise LedgerError(f'{path}: {key}.compliance: no longer here: RoHS declarations are '
                              'per model in config/compliance/declarations/ (remove this key)')
        unknown = set(entry) - _COMPONENT_KEYS - _OPTIONAL_KEYS
        missing = _COMPONENT_KEYS - set(entry)
        if unknown or missing:
            bad = sorted(unknown or missing)[0]
            raise LedgerError(f'{path}: {key}.{bad}: '
                              f'{"unknown key" if unknown else "missing required key"}')
        cid = str(entry['id'])
        comp_path = entry.get('path') or joint_paths.get(cid)
        if not comp_path:
            raise LedgerError(f'{path}: {key}.path: component {cid!r} is not a joint of the '
                              'robot; give its aggregation path')
        maint = entry.get('maintenance') or {}
        if not isinstance(maint, dict) or set(maint) - {'every_hours', 'due_date'}:
            raise LedgerError(f'{path}: {key}.maintenance: expected {{every_hours, due_date}}')
        every = maint.get('every_hours')
        if every is not None and (not isinstance(every, (int, float)) or every <= 0):
            raise LedgerError(f'{path}: {key}.maintenance.every_hours: must be > 0')
        due = maint.get('due_date')
        if due is not None:
            try:
                dt.date.fromisoformat(str(due))
            except ValueError:
                raise LedgerError(f'{path}: {key}.maintenance.due_date: {due!r} is not '
                                  'YYYY-MM-DD') from None
        if any(c.id == cid for c in out):
            raise LedgerError(f'{path}: {key}.id: component {cid!r} listed twice')
        out.append(ComponentSpec(cid, str(entry['kind']), str(comp_path).strip('/'),
                                 str(entry['model']), str(entry['serial']),
                                 str(entry['firmware']), str(entry['installed_at']),
                                 float(every) if every is not None else None,
                                 str(due) if due is not None else None))
    return out


@dataclass
class _Pending:
    operating_s: float = 0.0
    cycles: int = 0
    energy_j: float = 0.0
    above_warn_s: float = 0.0
    peak_temperature: float | None = None
    peak_current: float | None = None


@dataclass
class _Track:
    """Last sample of a component, to integrate time, energy and velocity reversals."""

    t: float = -1.0
    velocity_sign: int = 0
    cycles: float | None = None


class Ledger:
    """Writer (and reader) of one robot's ledger; thread-safe, one connection."""

    def __init__(self, path: Path | str, flush_interval: float = 1.0, *,
                 max_gap_s: float = 2.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_interval = flush_interval
        self.max_gap_s = max_gap_s
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10.0)
        self._db.execute('PRAGMA journal_mode=WAL')
        self._db.execute('PRAGMA synchronous=NORMAL')
        self._db.executescript(SCHEMA)
        migrate(self._db)
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._faults: list[tuple[str, str, str, str, str]] = []
        self._cleared: list[tuple[str, str, str]] = []
        self._track: dict[str, _Track] = {}
        self._last_flush = time.monotonic()
        self.known: set[str] = {r[0] for r in self._db.execute('SELECT id FROM components')}

    # ---------------------------------------------------------------- writing

    def load(self, specs: list[ComponentSpec]) -> None:
        """Insert or update the identities; keeps totals, faults and degraded marks.

        The components file describes the robot as built: once a place has been serviced,
        replaced or retired the ledger knows better, and only its kind and path follow the file.
        A place new to the ledger gets its ``install`` event.
        """
        with self._lock, self._db:
            for s in specs:
                days = interval_days(s.installed_at, s.maintenance_due_date)
                self._db.execute(
                    'UPDATE components SET kind=?, path=? WHERE id=?', (s.kind, s.path, s.id))
                self._db.execute(
                    'INSERT INTO components (id, kind, path, model, serial, firmware, installed_at,'
                    ' maintenance_every_h, maintenance_due_date, maintenance_every_days)'
                    ' VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET'
                    ' model=excluded.model, serial=excluded.serial,'
                    ' firmware=excluded.firmware, installed_at=excluded.installed_at,'
                    ' maintenance_every_h=excluded.maintenance_every_h,'
                    ' maintenance_due_date=excluded.maintenance_due_date,'
                    ' maintenance_every_days=excluded.maintenance_every_days'
                    ' WHERE components.id NOT IN'
                    " (SELECT component FROM events WHERE kind != 'install')",
                    (s.id, s.kind, s.path, s.model, s.serial, s.firmware, s.installed_at,
                     s.maintenance_every_h, s.maintenance_due_date, days))
                self._db.execute('INSERT OR IGNORE INTO totals (component) VALUES (?)', (s.id,))
                if s.id not in self.known:
                    self._db.execute(
                        'INSERT INTO events (component, at, kind, serial, model, firmware,'
                        " operating_h, note) VALUES (?,?,'install',?,?,?,0,'components file')",
                        (s.id, s.installed_at, s.serial, s.model, s.firmware))
                self.known.add(s.id)

    # ------------------------------------------------------- lifecycle events (fsync'd at once)

    def service(self, component: str, note: str = '') -> dict[str, Any]:
        with self._lock:
            return lifecycle.service(self._db, component, note)

    def replace(self, component: str, serial: str, model: str | None = None,
                firmware: str | None = None, note: str = '') -> dict[str, Any]:
        with self._lock:
            return lifecycle.replace(self._db, component, serial, model, firmware, note)

    def retire(self, component: str, note: str = '') -> dict[str, Any]:
        with self._lock:
            return lifecycle.retire(self._db, component, note)

    def history(self, component: str) -> list[dict[str, Any]]:
        with self._lock:
            return lifecycle.history(self._db, component)

    def units(self, component: str) -> list[dict[str, Any]]:
        """The units that left this place (replaced or retired), with their totals."""
        return self._rows('SELECT * FROM units WHERE component=? ORDER BY id', (component,))

    def _p(self, component: str) -> _Pending:
        p = self._pending.get(component)
        if p is None:
            p = self._pending[component] = _Pending()
        return p

    def observe(self, component: str, now: float, values: dict[str, float],
                warn_temperature: float | None = None) -> None:
        """One status sample of ``component`` at monotonic ``now``.

        The time since its previous sample (capped at ``max_gap_s``: a silence is not
        operation) counts as operating time; ``voltage × current`` integrates to energy;
        ``cycles`` (a driver counter) adds its increase, else each sign reversal of
        ``velocity`` is one actuation cycle.
        """
        if component not in self.known:
            return
        with self._lock:
            track = self._track.setdefault(component, _Track())
            p = self._p(component)
            gap = now - track.t if track.t >= 0 else 0.0
            track.t = now
            if 0 < gap <= self.max_gap_s:
                p.operating_s += gap
                if 'voltage' in values and 'current' in values:
                    p.energy_j += abs(values['voltage'] * values['current']) * gap
                temp = values.get('temperature')
                if warn_temperature is not None and temp is not None and temp >= warn_temperature:
                    p.above_warn_s += gap
            temp = values.get('temperature')
            if temp is not None and (p.peak_temperature is None or temp > p.peak_temperature):
                p.peak_temperature = temp
            cur = values.get('current')
            if cur is not None and (p.peak_current is None or abs(cur) > p.peak_current):
                p.peak_current = abs(cur)
            if 'cycles' in values:
                if track.cycles is not None and values['cycles'] >= track.cycles:
                    p.cycles += int(values['cycles'] - track.cycles)
                track.cycles = values['cycles']
            elif 'velocity' in values:
                sign = (values['velocity'] > 0) - (values['velocity'] < 0)
                if sign and track.velocity_sign and sign != track.velocity_sign:
                    p.cycles += 1
                if sign:
                    track.velocity_sign = sign

    def fault(self, component: str, level: str, rule: str, message: str) -> None:
        with self._lock:
            self._faults.append((component, now_iso(), level, rule, message))

    def clear_fault(self, component: str, rule: str) -> None:
        with self._lock:
            self._cleared.append((now_iso(), component, rule))

    def mark_degraded(self, component_path: str, reason: str) -> None:
        with self._lock, self._db:
            self._db.execute('UPDATE components SET degraded=? WHERE path=? OR id=?',
                             (reason, component_path.strip('/'), component_path))

    def clear_degraded(self) -> None:
        with self._lock, self._db:
            self._db.execute("UPDATE components SET degraded=''")

    def component_for_path(self, path: str) -> str | None:
        row = self._db.execute('SELECT id FROM components WHERE path=?',
                               (path.strip('/'),)).fetchone()
        return row[0] if row else None

    def maybe_flush(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now - self._last_flush < self.flush_interval:
            return False
        self.flush()
        self._last_flush = now
        return True

    def flush(self) -> None:
        """Commit the accumulated totals, peaks and faults in one transaction."""
        with self._lock:
            pending, self._pending = self._pending, {}
            faults, self._faults = self._faults, []
            cleared, self._cleared = self._cleared, []
            if not (pending or faults or cleared):
                return
            stamp = now_iso()
            with self._db:
                for comp, p in pending.items():
                    self._db.execute(
                        'UPDATE totals SET operating_s=operating_s+?, cycles=cycles+?,'
                        ' energy_j=energy_j+?, above_warn_s=above_warn_s+?,'
                        ' peak_temperature=CASE WHEN ? IS NULL THEN peak_temperature'
                        '  WHEN peak_temperature IS NULL OR ? > peak_temperature THEN ?'
                        '  ELSE peak_temperature END,'
                        ' peak_current=CASE WHEN ? IS NULL THEN peak_current'
                        '  WHEN peak_current IS NULL OR ? > peak_current THEN ?'
                        '  ELSE peak_current END, updated_at=? WHERE component=?',
                        (p.operating_s, p.cycles, p.energy_j, p.above_warn_s,
                         p.peak_temperature, p.peak_temperature, p.peak_temperature,
                         p.peak_current, p.peak_current, p.peak_current, stamp, comp))
                self._db.executemany('INSERT INTO faults (component, at, level, rule, message)'
                                     ' VALUES (?,?,?,?,?)', faults)
                self._db.executemany('UPDATE faults SET cleared_at=? WHERE component=? AND rule=?'
                                     ' AND cleared_at IS NULL', cleared)

    def close(self) -> None:
        self.flush()
        self._db.close()

    # ---------------------------------------------------------------- reading

    def _rows(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        cur = self._db.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def components(self) -> list[dict[str, Any]]:
        rows = self._rows(
            'SELECT c.*, t.operating_s, t.cycles, t.energy_j, t.above_warn_s,'
            ' t.peak_temperature, t.peak_current, t.updated_at FROM components c'
            ' LEFT JOIN totals t ON t.component=c.id ORDER BY c.rowid')
        for r in rows:
            r.pop('compliance', None)   # a version-1 ledger's fixed label, superseded
            r['operating_h'] = round((r.pop('operating_s') or 0.0) / 3600.0, 6)
        return rows

    def faults(self, component: str | None = None) -> list[dict[str, Any]]:
        if component:
            return self._rows('SELECT * FROM faults WHERE component=? ORDER BY id', (component,))
        return self._rows('SELECT * FROM faults ORDER BY id')

    def due(self, today: dt.date | None = None, soon_hours: float = 100.0,
            soon_days: int = 30) -> list[dict[str, Any]]:
        """Each component's maintenance state: ``due``, ``soon`` or ``ok``, by hours and date."""
        today = today or dt.date.today()
        out = []
        for c in self.components():
            if c['retired_at']:
                continue
            hours_left = None
            if c['maintenance_every_h']:
                hours_left = c['last_service_h'] + c['maintenance_every_h'] - c['operating_h']
            days_left = None
            if c['maintenance_due_date']:
                days_left = (dt.date.fromisoformat(c['maintenance_due_date']) - today).days
            state = 'ok'
            if (hours_left is not None and hours_left <= 0) or (days_left is not None
                                                                and days_left <= 0):
                state = 'due'
            elif (hours_left is not None and hours_left <= soon_hours) or (
                    days_left is not None and days_left <= soon_days):
                state = 'soon'
            out.append({'id': c['id'], 'kind': c['kind'], 'state': state,
                        'operating_h': c['operating_h'],
                        'hours_left': None if hours_left is None else round(hours_left, 3),
                        'due_date': c['maintenance_due_date'], 'days_left': days_left,
                        'degraded': c['degraded']})
        return out
