"""Lifecycle events of the ledger: install, service, replace, retire; and each component's history.

A *component* is a place in the robot (``FL_calf_joint``, ``battery``); the *unit* installed there
has a serial. A replacement archives the outgoing unit's totals in ``units`` (its record is kept),
starts the new unit's hours and maintenance clock at zero, and when the model changes the
disclosure table follows (it is computed from the models installed now). A retirement archives
the unit and leaves the place empty until a replacement fills it.

Why each event is one transaction at ``synchronous=FULL``: the command returns only after the
WAL frame is on disk, so a kill -9 (or a power cut) after it returns loses nothing, and a kill
during it leaves the event wholly absent — never a replaced serial without its archived unit.
The monitor's own batched totals keep ``synchronous=NORMAL`` (tested to lose at most a flush).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SCHEMA_VERSION = 2

EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, component TEXT NOT NULL, at TEXT NOT NULL,
    kind TEXT NOT NULL, serial TEXT, model TEXT, firmware TEXT, previous_serial TEXT,
    operating_h REAL, note TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS events_component ON events(component, id);
CREATE TABLE IF NOT EXISTS units (
    id INTEGER PRIMARY KEY AUTOINCREMENT, component TEXT NOT NULL, serial TEXT, model TEXT,
    firmware TEXT, installed_at TEXT, removed_at TEXT NOT NULL, reason TEXT NOT NULL,
    operating_s REAL, cycles INTEGER, energy_j REAL, above_warn_s REAL,
    peak_temperature REAL, peak_current REAL);
"""
_NEW_COLUMNS = (('maintenance_every_days', 'INTEGER'), ('retired_at', 'TEXT'))
EVENT_KINDS = ('install', 'service', 'replace', 'retire')


class LifecycleError(ValueError):
    """An event that cannot apply (unknown component, retired one serviced, ...)."""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec='milliseconds')


def interval_days(installed_at: str | None, due_date: str | None) -> int | None:
    """The date interval of a maintenance plan: its first due date minus the installation date."""
    try:
        days = (dt.date.fromisoformat(str(due_date)) - dt.date.fromisoformat(str(installed_at))).days
    except ValueError:
        return None
    return days if days > 0 else None


def migrate(db: sqlite3.Connection) -> None:
    """Bring a ledger of any earlier version to this one; idempotent, one transaction.

    Version 1 (no ``user_version``) had components, totals and faults: it gains the events and
    units tables, the date interval of maintenance and the retirement date, and an ``install``
    event per component dated from its installation, so the history starts where the record did.
    """
    if db.execute('PRAGMA user_version').fetchone()[0] >= SCHEMA_VERSION:
        return
    with db:
        db.execute('BEGIN IMMEDIATE')
        if db.execute('PRAGMA user_version').fetchone()[0] >= SCHEMA_VERSION:
            return   # another process migrated while we waited for the lock
        for statement in EVENTS_SCHEMA.split(';'):
            if statement.strip():
                db.execute(statement)
        have = {r[1] for r in db.execute('PRAGMA table_info(components)')}
        for name, sql_type in _NEW_COLUMNS:
            if name not in have:
                db.execute(f'ALTER TABLE components ADD COLUMN {name} {sql_type}')
        rows = db.execute('SELECT id, serial, model, firmware, installed_at, maintenance_due_date'
                          ' FROM components WHERE id NOT IN'
                          " (SELECT component FROM events WHERE kind='install')").fetchall()
        for cid, serial, model, firmware, installed_at, due in rows:
            db.execute('UPDATE components SET maintenance_every_days=? WHERE id=?',
                       (interval_days(installed_at, due), cid))
            db.execute('INSERT INTO events (component, at, kind, serial, model, firmware,'
                       ' operating_h, note) VALUES (?,?,?,?,?,?,0,?)',
                       (cid, installed_at or now_iso(), 'install', serial, model, firmware,
                        'in the ledger before lifecycle events were recorded'))
        db.execute(f'PRAGMA user_version={SCHEMA_VERSION}')


@contextmanager
def durable(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One event transaction, fsync'd before it returns (``synchronous=FULL``)."""
    db.execute('PRAGMA synchronous=FULL')
    try:
        with db:
            db.execute('BEGIN IMMEDIATE')
            yield db
    finally:
        db.execute('PRAGMA synchronous=NORMAL')


def _component(db: sqlite3.Connection, cid: str) -> dict[str, Any]:
    cur = db.execute('SELECT c.*, t.operating_s, t.cycles, t.energy_j, t.above_warn_s,'
                     ' t.peak_temperature, t.peak_current FROM components c'
                     ' LEFT JOIN totals t ON t.component=c.id WHERE c.id=?', (cid,))
    row = cur.fetchone()
    if row is None:
        known = [r[0] for r in db.execute('SELECT id FROM components ORDER BY rowid')]
        shown = ', '.join(known[:8]) + (', ...' if len(known) > 8 else '')
        raise LifecycleError(f'no component {cid!r} in the ledger (it has {shown or "none"})')
    return dict(zip([d[0] for d in cur.description], row, strict=True))


def _hours(c: dict[str, Any]) -> float:
    return round((c['operating_s'] or 0.0) / 3600.0, 6)


def _due(c: dict[str, Any], today: dt.date) -> str | None:
    days = c.get('maintenance_every_days')
    return (today + dt.timedelta(days=days)).isoformat() if days else c['maintenance_due_date']


def _archive(db: sqlite3.Connection, c: dict[str, Any], at: str, reason: str) -> None:
    db.execute('INSERT INTO units (component, serial, model, firmware, installed_at, removed_at,'
               ' reason, operating_s, cycles, energy_j, above_warn_s, peak_temperature,'
               ' peak_current) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)',
               (c['id'], c['serial'], c['model'], c['firmware'], c['installed_at'], at, reason,
                c['operating_s'] or 0.0, c['cycles'] or 0, c['energy_j'] or 0.0,
                c['above_warn_s'] or 0.0, c['peak_temperature'], c['peak_current']))


def service(db: sqlite3.Connection, cid: str, note: str = '',
            today: dt.date | None = None) -> dict[str, Any]:
    """Maintenance done: the hours clock restarts from the unit's hours now, the date clock today."""
    today = today or dt.date.today()
    with durable(db):
        c = _component(db, cid)
        if c['retired_at']:
            raise LifecycleError(f'{cid} was retired on {c["retired_at"]}: replace it first')
        at, hours = now_iso(), _hours(c)
        db.execute('UPDATE components SET last_service_h=?, maintenance_due_date=? WHERE id=?',
                   (hours, _due(c, today), cid))
        db.execute('INSERT INTO events (component, at, kind, serial, model, firmware, operating_h,'
                   ' note) VALUES (?,?,?,?,?,?,?,?)',
                   (cid, at, 'service', c['serial'], c['model'], c['firmware'], hours, note))
    return {'component': cid, 'kind': 'service', 'at': at, 'serial': c['serial'],
            'operating_h': hours}


def replace(db: sqlite3.Connection, cid: str, serial: str, model: str | None = None,
            firmware: str | None = None, note: str = '',
            today: dt.date | None = None) -> dict[str, Any]:
    """A new unit in the place: the old one's record is archived, the new one starts at zero."""
    today = today or dt.date.today()
    if not serial.strip():
        raise LifecycleError('replace: --serial must not be empty')
    with durable(db):
        c = _component(db, cid)
        if serial == c['serial'] and not c['retired_at']:
            raise LifecycleError(f'{cid}: unit {serial} is the one installed')
        at = now_iso()
        old_hours = _hours(c)
        if not c['retired_at']:
            _archive(db, c, at, 'replaced')
        new_model = model or c['model']
        new_fw = firmware or c['firmware']
        db.execute('UPDATE components SET serial=?, model=?, firmware=?, installed_at=?,'
                   ' last_service_h=0, maintenance_due_date=?, retired_at=NULL, degraded=\'\''
                   ' WHERE id=?', (serial, new_model, new_fw, today.isoformat(), _due(c, today), cid))
        db.execute('UPDATE totals SET operating_s=0, cycles=0, energy_j=0, above_warn_s=0,'
                   ' peak_temperature=NULL, peak_current=NULL, updated_at=? WHERE component=?',
                   (at, cid))
        db.execute('INSERT INTO events (component, at, kind, serial, model, firmware,'
                   ' previous_serial, operating_h, note) VALUES (?,?,?,?,?,?,?,?,?)',
                   (cid, at, 'replace', serial, new_model, new_fw,
                    None if c['retired_at'] else c['serial'], old_hours, note))
    return {'component': cid, 'kind': 'replace', 'at': at, 'serial': serial, 'model': new_model,
            'previous_serial': c['serial'], 'previous_model': c['model'],
            'previous_operating_h': old_hours}


def retire(db: sqlite3.Connection, cid: str, note: str = '') -> dict[str, Any]:
    """The unit leaves the robot and nothing takes its place (yet)."""
    with durable(db):
        c = _component(db, cid)
        if c['retired_at']:
            raise LifecycleError(f'{cid} was already retired on {c["retired_at"]}')
        at, hours = now_iso(), _hours(c)
        _archive(db, c, at, 'retired')
        db.execute('UPDATE components SET retired_at=? WHERE id=?', (at, cid))
        db.execute('INSERT INTO events (component, at, kind, serial, model, firmware, operating_h,'
                   ' note) VALUES (?,?,?,?,?,?,?,?)',
                   (cid, at, 'retire', c['serial'], c['model'], c['firmware'], hours, note))
    return {'component': cid, 'kind': 'retire', 'at': at, 'serial': c['serial'],
            'operating_h': hours}


def history(db: sqlite3.Connection, cid: str) -> list[dict[str, Any]]:
    """Install, service, replace, retire events and the faults of a place, oldest first."""
    _component(db, cid)
    cur = db.execute('SELECT at, kind, serial, model, firmware, previous_serial, operating_h, note'
                     ' FROM events WHERE component=? ORDER BY id', (cid,))
    names = [d[0] for d in cur.description]
    out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    for at, level, rule, message, cleared in db.execute(
            'SELECT at, level, rule, message, cleared_at FROM faults WHERE component=?'
            ' ORDER BY id', (cid,)):
        out.append({'at': at, 'kind': 'fault', 'serial': None, 'model': None, 'firmware': None,
                    'previous_serial': None, 'operating_h': None,
                    'note': f'{level} {rule}: {message}'
                            + (f' (cleared {cleared})' if cleared else '')})
    # ISO dates and UTC times sort as text; within one millisecond a fault comes first (the
    # monitor stamps it when seen, a technician's event follows what they saw)
    out.sort(key=lambda e: (e['at'], e['kind'] != 'fault'))
    return out
