"""The status board drawn with rich: one screen, the same in ``status`` and ``status --watch``."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

_STYLE = {'OK': 'green', 'WARN': 'yellow', 'ERROR': 'bold red', 'STALE': 'magenta',
          'up': 'green', 'gone': 'bold red', 'estop': 'bold white on red', 'run': 'green',
          'done': 'green', 'stopped': 'yellow', 'failed': 'bold red', 'refused': 'yellow',
          'active': 'cyan'}


def _styled(value: Any) -> Text:
    text = '' if value is None else str(value)
    return Text(text, style=_STYLE.get(text, ''))


def _size(n: int | None) -> str:
    if n is None:
        return '—'
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if n < 1000 or unit == 'TB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1000
    return str(n)


def _gone(snap: dict[str, Any], node: str) -> Text:
    p = snap['nodes'][node]
    last = f', last heard {p["last_heard_s"]} s ago' if p.get('last_heard_s') is not None else ''
    return Text(f'{node}: gone ({p["why"]}{last})', style='bold red')


def render(snap: dict[str, Any], footer: str = '') -> Group:
    parts: list[Any] = []
    nodes = Table.grid(padding=(0, 2))
    nodes.add_row(*[Text.assemble(f'{n} ', _styled(p['presence'])) for n, p in snap['nodes'].items()])
    parts.append(nodes)

    if snap['gate'] is None and not snap['skills']:
        parts.append(_gone(snap, 'skill_runtime'))
    else:
        gate = snap['gate'] or {}
        line = Text.assemble('gate ', _styled(gate.get('mode', '?')))
        if gate.get('estop_reason'):
            line.append(f'  e-stop: {gate["estop_reason"]}  (release: field_deploy skills reset)',
                        style='bold red')
        if gate.get('owners'):
            line.append(f'  joints held by: {", ".join(gate["owners"])}')
        parts.append(line)
        skills = Table(title='skills', title_justify='left', expand=False)
        for col in ('skill', 'phase', 'progress', 'last outcome', 'reason'):
            skills.add_column(col)
        for s in snap['skills']:
            skills.add_row(s['skill'], _styled(s['phase']), f'{100 * s["progress"]:.0f} %',
                           _styled(s['outcome'] or '—'), s['reason'])
        parts.append(skills)

    if snap['health'] is None:
        parts.append(_gone(snap, 'health_monitor'))
    else:
        health = Table(title=f'health: {snap["health"]["level"]}', title_justify='left')
        for col in ('subsystem', 'level', 'summary', 'worst items'):
            health.add_column(col)
        for sub in snap['health']['subsystems']:
            worst = '\n'.join(f'{w["level"]} {w["path"]}: {w["message"]}'[:100] for w in sub['worst'])
            health.add_row(sub['name'], _styled(sub['level']), sub['message'], worst or '—')
        parts.append(health)
        if snap['lifecycle']:
            life = Table(title='lifecycle (health monitor)', title_justify='left')
            for col in ('node', 'state', 'phase', 'restarts', 'message'):
                life.add_column(col)
            for n in snap['lifecycle']:
                life.add_row(n['node'], _styled(n['state']), _styled(n['phase']), str(n['restarts']),
                             n['message'] if n['phase'] != 'active' else '')
            parts.append(life)

    rec = snap['recorder']
    if rec is None:
        parts.append(_gone(snap, 'data_recorder'))
    else:
        t = rec['totals']
        table = Table(title='recorder', title_justify='left', show_header=False)
        table.add_column()
        table.add_column()
        table.add_row('state', Text.assemble(_styled(rec['state']),
                                             f'  {rec["stop_reason"]}' if rec['stop_reason'] else ''))
        table.add_row('bag', f'{rec["bag"]}  ({rec["files"]} file(s), {rec["marks"]} mark(s))')
        rate = '—' if rec['rate_msgs_s'] is None else f'{rec["rate_msgs_s"]:.0f} msg/s'
        mb = '—' if rec['mb_s'] is None else f'{rec["mb_s"]:.2f} MB/s'
        table.add_row('rate', f'{rate}, {mb}; writer queue (lag) {rec["lag_queue"]} msg')
        table.add_row('messages', f'{t["received"]} received, {t["written"]} written')
        causes = ', '.join(f'{k.removeprefix("lost_")} {n}' for k, n in t.items()
                           if k.startswith('lost_') and n) or 'by cause: none'
        skipped = ', '.join(f'{k.removeprefix("skipped_")} {n}' for k, n in t.items()
                            if k.startswith('skipped_') and n) or 'none'
        table.add_row('lost', Text(f'{t["lost"]} ({causes}); skipped on purpose: {skipped}',
                                   style='yellow' if t['lost'] else ''))
        table.add_row('disk left', _size(rec['disk_free_bytes']))
        parts.append(table)
    if footer:
        parts.append(Text(footer, style='dim'))
    return Group(*parts)


def to_json(snap: dict[str, Any]) -> str:
    return json.dumps(snap, sort_keys=True)
