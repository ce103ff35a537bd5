"""``field_deploy health ...``: read a robot's component ledger and record what technicians do.

Reads the SQLite file while the monitor may be writing it (WAL allows concurrent readers).
Tables for people, ``--json`` for the fleet and for export. ``service``, ``replace`` and
``retire`` write one fsync'd event each; ``rohs`` prints the disclosure table of what is
installed now.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from field_deploy.cli import CliError

_READERS = (('components', 'each component: identity, totals, peaks and its RoHS status'),
            ('faults', 'fault history with timestamps'),
            ('due', 'maintenance due by operating hours or date'))
_EVENTS = (('service', 'record maintenance done: restarts the maintenance clock'),
           ('replace', 'a new unit in place of the old (whose record is kept): new hours, new '
                       'maintenance clock, and the disclosure table follows its model'),
           ('retire', 'the unit leaves the robot and nothing takes its place'),
           ('history', 'install, service, faults, replacement and retirement of a component'))


def register(subparsers: argparse._SubParsersAction) -> None:
    health = subparsers.add_parser('health', help='component ledger: identities, use, faults, '
                                                  'maintenance, lifecycle events, RoHS table')
    sub = health.add_subparsers(dest='health_command', required=True, metavar='HEALTH_COMMAND')
    parsers = {}
    for name, text in (*_READERS, *_EVENTS, ('rohs', 'the robot\'s hazardous-substance '
                                                     'disclosure table (GB 26572 / SJ/T 11364)')):
        p = parsers[name] = sub.add_parser(name, help=text, description=text)
        p.add_argument('--db', help='ledger file (default: the path in config/health/default.yaml '
                                    'for --robot)')
        p.add_argument('--robot', default='quadruped_12dof', help='robot profile (for the default '
                                                                  'ledger path)')
        p.set_defaults(func=_run)
    for name in ('components', 'faults', 'due', 'history'):
        parsers[name].add_argument('--json', action='store_true', help='print JSON, not a table')
    parsers['faults'].add_argument('--component', help='only this component id')
    for name, _ in _EVENTS:
        parsers[name].add_argument('component', metavar='COMPONENT', help='component id '
                                                                          '(e.g. FL_calf_joint)')
    for name in ('service', 'replace', 'retire'):
        parsers[name].add_argument('--note', default='', help='free text kept with the event')
    parsers['replace'].add_argument('--serial', required=True, help='serial of the new unit')
    parsers['replace'].add_argument('--model', help='its model, when it differs')
    parsers['replace'].add_argument('--firmware', help='its firmware, when it differs')
    for name in ('rohs', 'components'):
        parsers[name].add_argument('--declarations', type=Path, help='declarations folder '
                                   '(default: config/compliance/declarations)')
        parsers[name].add_argument('--rules', type=Path, help='rules file (default: '
                                   'config/compliance/gb26572_2025.yaml)')
    rohs = parsers['rohs']
    rohs.add_argument('--format', choices=('md', 'csv', 'json'), default='md')
    rohs.add_argument('--check', action='store_true', help='exit 1 unless every installed '
                      'component is declared and compliant (or compliant by exemption)')


def _ledger_path(args: argparse.Namespace) -> Path:
    if args.db:
        return Path(args.db)
    from health_monitor.config import load_config
    return load_config(None, args.robot).ledger_path


def _open(args: argparse.Namespace) -> Any:
    """The ledger; an event command on a robot whose monitor never ran seeds it from its file."""
    from health_monitor.ledger import Ledger, load_components
    path = _ledger_path(args)
    if path.is_file():
        return Ledger(path)
    if args.health_command not in ('service', 'replace', 'retire'):
        raise CliError(f'{path}: no ledger here (run health_monitor first, or give --db PATH)')
    from health_monitor.config import load_config
    cfg = load_config(None, args.robot)
    if cfg.components_path is None:
        raise CliError(f'{path}: no ledger, and no components file to start one from')
    ledger = Ledger(path)
    ledger.load(load_components(cfg.components_path, cfg.joint_paths))
    print(f'started the ledger {path} from {cfg.components_path}')
    return ledger


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return '-'
        if isinstance(v, float):
            return f'{v:.4g}' if abs(v) < 1e4 else f'{v:.0f}'
        return str(v)
    cells = [[fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]
    lines = ['  '.join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True))]
    lines.append('  '.join('-' * w for w in widths))
    lines += ['  '.join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return '\n'.join(lines)


def _rohs_status(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Each component's RoHS status from its model's declaration (replaces the old fixed label)."""
    from health_monitor.compliance import judge, load_rules
    from health_monitor.declarations import load_declarations
    rules = load_rules(args.rules)
    decls = load_declarations(args.declarations, rules)
    for r in rows:
        result = judge(rules, r['model'] or '', decls.get(r['model'] or ''))
        clauses = sorted({f.clause for m in result.materials for f in m.findings if f.clause})
        r['rohs'] = result.status + (f' {",".join(clauses)}' if clauses else '')


def _run(args: argparse.Namespace) -> int:
    cmd = args.health_command
    if cmd == 'rohs':
        return _rohs(args)
    ledger = _open(args)
    try:
        if cmd in ('service', 'replace', 'retire'):
            return _event(args, ledger)
        if cmd == 'components':
            rows = ledger.components()
            _rohs_status(args, rows)
            columns = [('id', 'component'), ('kind', 'kind'), ('model', 'model'),
                       ('serial', 'serial'), ('firmware', 'fw'), ('installed_at', 'installed'),
                       ('operating_h', 'hours'), ('cycles', 'cycles'), ('energy_j', 'energy J'),
                       ('above_warn_s', 'hot s'), ('peak_temperature', 'peak °C'),
                       ('peak_current', 'peak A'), ('degraded', 'degraded'),
                       ('retired_at', 'retired'), ('rohs', 'RoHS')]
        elif cmd == 'faults':
            rows = ledger.faults(args.component)
            columns = [('at', 'at (UTC)'), ('component', 'component'), ('level', 'level'),
                       ('rule', 'rule'), ('message', 'message'), ('cleared_at', 'cleared')]
        elif cmd == 'history':
            rows = ledger.history(args.component)
            columns = [('at', 'at (UTC)'), ('kind', 'event'), ('serial', 'serial'),
                       ('model', 'model'), ('firmware', 'fw'), ('operating_h', 'hours'),
                       ('previous_serial', 'replaced'), ('note', 'note')]
        else:
            rows = ledger.due()
            columns = [('id', 'component'), ('kind', 'kind'), ('state', 'state'),
                       ('operating_h', 'hours'), ('hours_left', 'hours left'),
                       ('due_date', 'due date'), ('days_left', 'days left'),
                       ('degraded', 'degraded')]
    finally:
        ledger._db.close()
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    elif rows:
        print(_table(rows, columns))
    else:
        print(f'no {cmd} recorded')
    return 0


def _event(args: argparse.Namespace, ledger: Any) -> int:
    if args.health_command == 'service':
        e = ledger.service(args.component, args.note)
        print(f'{e["component"]}: serviced unit {e["serial"]} at {e["operating_h"]:.2f} h '
              f'({e["at"]}); maintenance clock restarted')
    elif args.health_command == 'replace':
        e = ledger.replace(args.component, args.serial, args.model, args.firmware, args.note)
        model = (f', model {e["previous_model"]} -> {e["model"]}'
                 if e['model'] != e['previous_model'] else '')
        print(f'{e["component"]}: unit {e["previous_serial"]} ({e["previous_operating_h"]:.2f} h, '
              f'record kept) replaced by {e["serial"]}{model} ({e["at"]})')
    else:
        e = ledger.retire(args.component, args.note)
        print(f'{e["component"]}: unit {e["serial"]} retired at {e["operating_h"]:.2f} h '
              f'({e["at"]})')
    return 0


def _rohs(args: argparse.Namespace) -> int:
    from health_monitor.rohs import render, robot_disclosure
    d = robot_disclosure(args.robot, Path(args.db) if args.db else None, args.declarations,
                         args.rules)
    print(render(d, args.format))
    return 1 if args.check and d.status not in ('compliant', 'exempt') else 0
