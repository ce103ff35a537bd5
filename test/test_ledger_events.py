"""Ledger lifecycle events: service, replace, retire, history; migration of a version-1 ledger;
durability under kill -9 (a real writer process); the CLI commands through a subprocess."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from health_monitor.config import load_config
from health_monitor.ledger import Ledger, LedgerError, load_components
from health_monitor.lifecycle import LifecycleError
from health_monitor.rohs import robot_disclosure

ROBOT = 'quadruped_12dof'
CFG = load_config(None, ROBOT)
SPECS = load_components(CFG.components_path, CFG.joint_paths)
COMPUTE_ROW = 'Compute unit (计算单元)'


@pytest.fixture
def ledger(tmp_path: Path):
    led = Ledger(tmp_path / 'quad.sqlite')
    led.load(SPECS)
    yield led
    led.close()


def _run_hours(led: Ledger, component: str, seconds: float) -> None:
    t = 0.0
    while t < seconds:
        t += 0.5
        led.observe(component, t, {'current': 2.0, 'voltage': 48.0, 'temperature': 50.0})
    led.flush()


def _row(led: Ledger, cid: str) -> dict:
    return next(c for c in led.components() if c['id'] == cid)


# ------------------------------------------------------------------------------ events

def test_replace_keeps_the_old_unit_and_starts_the_new_ones_clocks(ledger: Ledger) -> None:
    _run_hours(ledger, 'FL_calf_joint', 30.0)
    ledger.fault('FL_calf_joint', 'ERROR', 'motor_temperature', 'temperature 86 above 85')
    ledger.flush()
    before = _row(ledger, 'FL_calf_joint')
    assert before['operating_h'] * 3600 == pytest.approx(29.5, abs=0.01)
    e = ledger.replace('FL_calf_joint', 'QXM9990001', firmware='3.5.0', note='bearing noise')
    assert (e['previous_serial'], e['previous_operating_h']) == ('QXM2611002',
                                                                before['operating_h'])
    after = _row(ledger, 'FL_calf_joint')
    assert (after['serial'], after['model'], after['firmware']) == ('QXM9990001', 'FD-Q6012-45Nm',
                                                                    '3.5.0')
    assert after['operating_h'] == 0 and after['energy_j'] == 0 and after['peak_current'] is None
    assert after['installed_at'] == dt.date.today().isoformat()
    due = {d['id']: d for d in ledger.due()}['FL_calf_joint']
    assert due['hours_left'] == 3000   # the new unit's maintenance clock starts at zero
    assert due['due_date'] == (dt.date.today() + dt.timedelta(days=365)).isoformat()
    (old,) = ledger.units('FL_calf_joint')
    assert (old['serial'], old['reason']) == ('QXM2611002', 'replaced')
    assert old['operating_s'] == pytest.approx(29.5) and old['peak_temperature'] == 50.0
    kinds = [h['kind'] for h in ledger.history('FL_calf_joint')]
    assert kinds == ['install', 'fault', 'replace']
    replace = ledger.history('FL_calf_joint')[-1]
    assert (replace['serial'], replace['previous_serial'], replace['note']) == (
        'QXM9990001', 'QXM2611002', 'bearing noise')


def test_service_restarts_the_maintenance_clock(ledger: Ledger) -> None:
    _run_hours(ledger, 'battery', 20.0)
    hours = _row(ledger, 'battery')['operating_h']
    e = ledger.service('battery', note='cells balanced')
    assert e['operating_h'] == hours
    due = {d['id']: d for d in ledger.due()}['battery']
    assert due['hours_left'] == pytest.approx(1500)
    assert due['due_date'] == (dt.date.today() + dt.timedelta(days=365)).isoformat()
    h = ledger.history('battery')[-1]
    assert (h['kind'], h['operating_h'], h['note']) == ('service', hours, 'cells balanced')


def test_retire_then_replace(ledger: Ledger) -> None:
    ledger.retire('camera_front', note='lens cracked')
    assert 'camera_front' not in {d['id'] for d in ledger.due()}
    with pytest.raises(LifecycleError, match=r'camera_front was retired on .*: replace it first'):
        ledger.service('camera_front')
    with pytest.raises(LifecycleError, match='already retired'):
        ledger.retire('camera_front')
    ledger.replace('camera_front', 'QXS7770001')
    assert _row(ledger, 'camera_front')['retired_at'] is None
    assert [u['reason'] for u in ledger.units('camera_front')] == ['retired']   # archived once
    assert [h['kind'] for h in ledger.history('camera_front')] == ['install', 'retire', 'replace']
    with pytest.raises(LifecycleError, match="no component 'nope' in the ledger"):
        ledger.replace('nope', 'X')
    with pytest.raises(LifecycleError, match='unit QXS7770001 is the one installed'):
        ledger.replace('camera_front', 'QXS7770001')


def test_a_restart_does_not_undo_an_event(tmp_path: Path, ledger: Ledger) -> None:
    """The monitor re-reads the components file at each start: the ledger keeps what happened."""
    ledger.replace('compute', 'QXC0000009', model='FD-CPU-16C')
    ledger.close()
    again = Ledger(tmp_path / 'quad.sqlite')
    again.load(SPECS)
    row = _row(again, 'compute')
    assert (row['serial'], row['model']) == ('QXC0000009', 'FD-CPU-16C')
    assert _row(again, 'battery')['serial'] == 'QXB2613001'
    assert [h['kind'] for h in again.history('compute')] == ['install', 'replace']
    again.close()


def test_disclosure_table_before_and_after_a_replacement_with_another_model(
        ledger: Ledger) -> None:
    before = robot_disclosure(ROBOT, ledger.path)
    assert before.source == f'ledger {ledger.path}'
    assert before.rows[COMPUTE_ROW]['Pb'] == 'O' and before.efup_years == 20
    ledger.replace('compute', 'QXC0000009', model='FD-CPU-16C')   # thick-film resistors, 7(c)-I
    after = robot_disclosure(ROBOT, ledger.path)
    assert after.rows[COMPUTE_ROW]['Pb'] == 'X'
    assert after.efup_years == 10                  # the shortest EFUP of the parts with an X
    assert [c.model for c in after.members[COMPUTE_ROW]] == ['FD-CPU-16C']
    ledger.replace('compute', 'QXC0000010', model='FD-CPU-99X')    # nobody declared this one
    gap = robot_disclosure(ROBOT, ledger.path)
    assert set(gap.rows[COMPUTE_ROW].values()) == {'?'}
    assert {'model': 'FD-CPU-99X', 'part': '', 'substance': '', 'status': 'undeclared',
            'reason': 'no declaration for this model'} in gap.issues()
    ledger.retire('camera_front')                  # the undeclared camera cable leaves the robot
    ledger.replace('compute', 'QXC0000011', model='FD-CPU-8C')
    assert robot_disclosure(ROBOT, ledger.path).status == 'exempt'


def test_components_file_refuses_the_old_compliance_label(tmp_path: Path) -> None:
    path = tmp_path / 'c.yaml'
    path.write_text(textwrap.dedent('''\
        components:
        - {id: imu, kind: imu, path: sensors/imu, model: M, serial: S, firmware: F,
           installed_at: '2026-03-02', compliance: {standard: GB/T 26572-2011}}
        '''))
    with pytest.raises(LedgerError) as err:
        load_components(path)
    assert str(err.value) == (f'{path}: components[0].compliance: no longer here: RoHS '
                              'declarations are per model in config/compliance/declarations/ '
                              '(remove this key)')


# ------------------------------------------------------------------------------ migration

V1_SCHEMA = """
CREATE TABLE components (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, path TEXT NOT NULL, model TEXT, serial TEXT,
    firmware TEXT, installed_at TEXT, maintenance_every_h REAL, maintenance_due_date TEXT,
    last_service_h REAL NOT NULL DEFAULT 0, compliance TEXT, degraded TEXT NOT NULL DEFAULT '');
CREATE TABLE totals (
    component TEXT PRIMARY KEY REFERENCES components(id), operating_s REAL NOT NULL DEFAULT 0,
    cycles INTEGER NOT NULL DEFAULT 0, energy_j REAL NOT NULL DEFAULT 0,
    above_warn_s REAL NOT NULL DEFAULT 0, peak_temperature REAL, peak_current REAL,
    updated_at TEXT);
CREATE TABLE faults (
    id INTEGER PRIMARY KEY AUTOINCREMENT, component TEXT NOT NULL, at TEXT NOT NULL,
    level TEXT NOT NULL, rule TEXT NOT NULL, message TEXT NOT NULL, cleared_at TEXT);
PRAGMA journal_mode=WAL;
INSERT INTO components VALUES ('FL_calf_joint', 'motor', 'robot/legs/FL_calf_joint',
    'FD-Q6012-45Nm', 'QXM2611002', '3.4.1', '2026-03-02', 3000, '2027-03-02', 0,
    '{"standard": "GB/T 26572-2011"}', '');
INSERT INTO totals VALUES ('FL_calf_joint', 7200, 40, 1000, 0, 71.5, 12.0, '2026-04-01');
INSERT INTO faults (component, at, level, rule, message) VALUES ('FL_calf_joint',
    '2026-04-01T10:00:00.000+00:00', 'ERROR', 'motor_temperature', 'temperature 86 above 85');
"""


def test_a_version_1_ledger_opens_and_gains_the_event_tables(tmp_path: Path) -> None:
    db = tmp_path / 'v1.sqlite'
    with sqlite3.connect(db) as old:
        old.executescript(V1_SCHEMA)
    led = Ledger(db)
    row = _row(led, 'FL_calf_joint')
    assert row['operating_h'] == 2.0 and row['maintenance_every_days'] == 365
    assert 'compliance' not in row
    assert [(h['kind'], h['at']) for h in led.history('FL_calf_joint')] == [
        ('install', '2026-03-02'), ('fault', '2026-04-01T10:00:00.000+00:00')]
    led.load(SPECS)   # the monitor starting on the migrated file: no second install event
    assert [h['kind'] for h in led.history('FL_calf_joint')].count('install') == 1
    led.replace('FL_calf_joint', 'QXM0000001')
    assert led.units('FL_calf_joint')[0]['operating_s'] == 7200
    led.close()
    with sqlite3.connect(db) as check:
        assert check.execute('PRAGMA user_version').fetchone()[0] == 2
        assert check.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
    Ledger(db).close()   # opening again is a no-op


# ------------------------------------------------------------------------------ kill -9

WRITER = '''
import sys
from health_monitor.ledger import Ledger
led = Ledger(sys.argv[1])
n = 0
while True:
    if n % 3 == 2:
        led.replace('FL_calf_joint', f'S{n}', note=f'#{n}')
    else:
        led.service('FL_calf_joint', note=f'#{n}')
    print(n, flush=True)      # the event's call returned
    n += 1
'''


@pytest.mark.parametrize('kill_after', [7, 40])
def test_events_survive_kill_9_of_the_writer(tmp_path: Path, kill_after: int) -> None:
    """A separate process writes events in a loop; kill -9 while it writes the next one."""
    db = tmp_path / 'kill.sqlite'
    seed = Ledger(db)
    seed.load(SPECS)
    seed.close()
    proc = subprocess.Popen([sys.executable, '-c', WRITER, str(db)], stdout=subprocess.PIPE,
                            text=True, env=os.environ.copy())
    assert proc.stdout is not None
    returned = []
    for line in proc.stdout:
        returned.append(int(line))
        if len(returned) >= kill_after:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    with sqlite3.connect(db) as con:
        assert con.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
        notes = [r[0] for r in con.execute(
            "SELECT note FROM events WHERE component='FL_calf_joint' AND kind != 'install'"
            ' ORDER BY id')]
        numbers = [int(n[1:]) for n in notes]
        # every event whose call returned is there, in order; at most the ones in flight more
        assert numbers == list(range(len(numbers)))
        assert len(numbers) >= len(returned)
        replaces = con.execute("SELECT serial FROM events WHERE component='FL_calf_joint' AND "
                               "kind='replace' ORDER BY id").fetchall()
        units = con.execute("SELECT COUNT(*) FROM units WHERE component='FL_calf_joint'"
                            ).fetchone()[0]
        serial = con.execute("SELECT serial FROM components WHERE id='FL_calf_joint'").fetchone()[0]
    assert units == len(replaces)          # each replacement archived its unit, or neither
    assert serial == (replaces[-1][0] if replaces else 'QXM2611002')
    after = Ledger(db)                     # and the ledger opens and reads as usual
    assert len(after.history('FL_calf_joint')) == len(numbers) + 1   # + the install
    after.close()
    print(f'killed after {len(returned)} returned events: {len(numbers)} in the ledger')


# ------------------------------------------------------------------------------ the CLI

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name('field_deploy')
    return subprocess.run([str(exe), 'health', *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_cli_rohs_replace_history(tmp_path: Path) -> None:
    db = str(tmp_path / 'cli.sqlite')
    out = _cli('rohs', '--robot', ROBOT, '--db', db, '--format', 'csv')
    assert out.returncode == 0, out.stderr
    assert 'Compute unit (计算单元),O,O,O,O,O,O,O,O,O,O,' in out.stdout.splitlines()
    out = _cli('replace', 'compute', '--robot', ROBOT, '--db', db, '--serial', 'QXC0000009',
               '--model', 'FD-CPU-16C', '--note', 'fan failure')
    assert out.returncode == 0, out.stderr
    assert 'started the ledger' in out.stdout   # the first event seeds it from the file
    assert ('compute: unit QXC2614001 (0.00 h, record kept) replaced by QXC0000009, model '
            'FD-CPU-8C -> FD-CPU-16C') in out.stdout
    out = _cli('rohs', '--robot', ROBOT, '--db', db, '--format', 'json')
    table = json.loads(out.stdout)
    row = next(r for r in table['rows'] if r['part'] == COMPUTE_ROW)
    assert row['marks']['Pb'] == 'X' and row['components'][0]['serial'] == 'QXC0000009'
    assert table['efup_years'] == 10 and table['standard']['number'] == 'GB 26572-2025'
    md = _cli('rohs', '--robot', ROBOT, '--db', db).stdout
    assert '| Compute unit (计算单元) | X | O |' in md and 'clause 7(c)-I' in md
    out = _cli('history', 'compute', '--db', db, '--json')
    events = json.loads(out.stdout)
    assert [(e['kind'], e['serial']) for e in events] == [('install', 'QXC2614001'),
                                                          ('replace', 'QXC0000009')]
    assert events[1]['note'] == 'fan failure'
    rows = {r['id']: r for r in json.loads(_cli('components', '--db', db, '--json').stdout)}
    assert rows['compute']['rohs'] == 'exempt 7(c)-I' and rows['camera_front']['rohs'] == 'undeclared'
    assert rows['FL_calf_joint']['rohs'] == 'exempt 6(c)'
    out = _cli('history', 'compute', '--db', db)
    assert 'replace' in out.stdout and 'QXC2614001' in out.stdout
    check = _cli('rohs', '--robot', ROBOT, '--db', db, '--check')
    assert check.returncode == 1   # the camera's undeclared phthalates
    bad = _cli('retire', 'nope', '--robot', ROBOT, '--db', db)
    assert bad.returncode == 1
    assert bad.stderr.startswith("field_deploy health: error: no component 'nope' in the ledger")
