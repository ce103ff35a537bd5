"""``field_deploy health components|faults|due``: read a robot's component ledger.

Reads the SQLite file while the monitor may be writing it (WAL allows concurrent readers).
Tables for people, ``--json`` for the fleet and for export.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from field_deploy.cli import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    health = subparsers.add_parser('health', help="component ledger: identities, use, faults, "
                                                  'maintenance due')
    sub = health.add_subparsers(dest='health_command', required=True, metavar='HEALTH_COMMAND')
    for name, text in (('components', 'each component: identity, compliance, totals and peaks'),
                       ('faults', 'fault history with timestamps'),
                       ('due', 'maintenance due by operating hours or date')):
        p = sub.add_parser(name, help=text)
        p.add_argument('--db', help='ledger file (default: the path in config/health/default.yaml '
                                    'for --robot)')
        p.add_argument('--robot', default='quadruped_12dof', help='robot profile (for the default '
                                                                  'ledger path)')
        p.add_argument('--json', action='store_true', help='print JSON instead of a table')
        if name == 'faults':
            p.add_argument('--component', help='only this component id')
        p.set_defaults(func=_run)


def _ledger_path(args: argparse.Namespace) -> Path:
    if args.db:
        path = Path(args.db)
    else:
        from health_monitor.config import load_config
        path = load_config(None, args.robot).ledger_path
    if not path.is_file():
        raise CliError(f'{path}: no ledger here (run health_monitor first, or give --db PATH)')
    return path


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


def _run(args: argparse.Namespace) -> int:
    from health_monitor.ledger import Ledger
    ledger = Ledger(_ledger_path(args))
    try:
        if args.health_command == 'components':
            rows = ledger.components()
            for r in rows:
                c = r['compliance']
                r['rohs'] = (f"{c.get('marking', '-')}"
                             + (f" {c['efup_years']} y" if c.get('efup_years') else '')
                             + (' +exemption' if c.get('exemption') else ''))
            columns = [('id', 'component'), ('kind', 'kind'), ('model', 'model'),
                       ('serial', 'serial'), ('firmware', 'fw'), ('installed_at', 'installed'),
                       ('operating_h', 'hours'), ('cycles', 'cycles'), ('energy_j', 'energy J'),
                       ('above_warn_s', 'hot s'), ('peak_temperature', 'peak °C'),
                       ('peak_current', 'peak A'), ('degraded', 'degraded'), ('rohs', 'RoHS')]
        elif args.health_command == 'faults':
            rows = ledger.faults(args.component)
            columns = [('at', 'at (UTC)'), ('component', 'component'), ('level', 'level'),
                       ('rule', 'rule'), ('message', 'message'), ('cleared_at', 'cleared')]
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
        print(f'no {args.health_command} recorded')
    return 0
