"""The robot's hazardous-substance disclosure from what is installed now, and its renderings.

:func:`robot_disclosure` joins the ledger's installed components (or, before the monitor ever ran,
the components file: the robot as built) with the supplier declarations and the rules;
:func:`render` prints the table as Markdown, CSV or JSON (``field_deploy health rohs``);
:func:`bag_metadata` is the compact JSON a recorder stores in each bag, so a dataset knows the
hardware it was recorded on. No rclpy.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from health_monitor.compliance import Disclosure, Installed, disclose, load_rules
from health_monitor.declarations import load_declarations

FORMATS = ('md', 'csv', 'json')
BAG_KEY = 'field_deploy.rohs'


def installed_from_ledger(path: Path) -> list[Installed]:
    from health_monitor.ledger import Ledger
    ledger = Ledger(path)
    try:
        return [Installed(c['id'], c['kind'], c['model'] or '', c['serial'] or '')
                for c in ledger.components() if not c['retired_at']]
    finally:
        ledger._db.close()


def robot_disclosure(profile: str, ledger: Path | None = None, declarations: Path | None = None,
                     rules: Path | None = None) -> Disclosure:
    """The table for ``profile`` from its ledger (default: the health configuration's path)."""
    from health_monitor.config import load_config
    from health_monitor.ledger import load_components
    cfg = load_config(None, profile)
    the_rules = load_rules(rules)
    decls = load_declarations(declarations, the_rules)
    path = Path(ledger) if ledger else cfg.ledger_path
    if path.is_file():
        installed, source = installed_from_ledger(path), f'ledger {path}'
    elif cfg.components_path is not None:
        specs = load_components(cfg.components_path, cfg.joint_paths)
        installed = [Installed(s.id, s.kind, s.model, s.serial) for s in specs]
        source = f'components file {cfg.components_path} (as built: no ledger at {path} yet)'
    else:
        raise FileNotFoundError(f'{path}: no ledger, and the health configuration names no '
                                'components file')
    return disclose(the_rules, cfg.profile.name, installed, decls, source)


def _row_efup(d: Disclosure, part: str) -> int | None:
    periods = [d.results[c.model].efup_years for c in d.members[part]
               if d.results[c.model].has_x and d.results[c.model].efup_years is not None]
    return min(periods) if periods else None


def as_dict(d: Disclosure) -> dict[str, Any]:
    std = d.rules.standard
    return {
        'robot': d.robot, 'source': d.source,
        'standard': {k: std.get(k) for k in ('number', 'title', 'published', 'effective')},
        'marking_standard': d.rules.marking['standard'],
        'substances': [{'key': s.key, 'name': s.name, 'limit_percent': s.limit_percent}
                       for s in d.rules.substances],
        'rows': [{'part': part, 'marks': marks, 'efup_years': _row_efup(d, part),
                  'components': [{'id': c.id, 'model': c.model, 'serial': c.serial}
                                 for c in d.members[part]]}
                 for part, marks in d.rows.items()],
        'efup_years': d.efup_years, 'mark': d.mark, 'efup_unknown': d.efup_unknown,
        'status': d.status, 'issues': d.issues(),
    }


def _issue_line(i: dict[str, Any], d: Disclosure, found: list[dict[str, Any]]) -> str:
    if not i['part']:
        return f'- {i["model"]}: {i["reason"]}'
    where = f'{i["model"]} / {i["part"]} ({i["material"]})'
    if i['status'] == 'undeclared':   # one line per material, naming all its missing substances
        missing = [j['substance'] for j in found
                   if (j['model'], j['part']) == (i['model'], i['part'])]
        return f'- {where}: {", ".join(missing)} not declared'
    value = f'{i["substance"]} {i["value_mg_kg"]:g} mg/kg (limit {i["limit_mg_kg"]:g})'
    if i['status'] == 'exempt':
        ex = d.rules.exemptions[i['clause']]
        return (f'- {where}: {value}, exempt by clause {ex.clause}: {ex.text}'
                + ('' if ex.verbatim else ' [paraphrased]'))
    return f'- {where}: {value}: NOT COMPLIANT ({i["reason"]})'


def render(d: Disclosure, fmt: str = 'md') -> str:
    if fmt == 'json':
        return json.dumps(as_dict(d), indent=2, ensure_ascii=False)
    keys = d.rules.keys
    if fmt == 'csv':
        out = io.StringIO()
        w = csv.writer(out, lineterminator='\n')
        w.writerow(['part', *keys, 'efup_years'])
        for part, marks in d.rows.items():
            efup = _row_efup(d, part)
            w.writerow([part, *(marks[k] for k in keys), '' if efup is None else efup])
        return out.getvalue().rstrip('\n')
    if fmt != 'md':
        raise ValueError(f'unknown format {fmt!r} (one of {", ".join(FORMATS)})')
    std, mk = d.rules.standard, d.rules.marking
    lines = [f'# Hazardous substances in {d.robot} (产品中有害物质的名称及含量)', '',
             f'Limits: {std["number"]} (published {std["published"]}, effective '
             f'{std.get("effective", "?")}); table and marking: {mk["standard"]}.',
             f'Installed components from: {d.source}.', '',
             '| Part (部件名称) | ' + ' | '.join(keys) + ' | EFUP |',
             '|---|' + '---|' * (len(keys) + 1)]
    for part, marks in d.rows.items():
        efup = _row_efup(d, part)
        lines.append(f'| {part} | ' + ' | '.join(marks[k] for k in keys)
                     + f' | {"-" if efup is None else efup} |')
    lines += ['', mk['o'], mk['x'], mk['undeclared'], '']
    if d.efup_unknown:
        lines.append(f'Robot mark: EFUP unknown: {", ".join(d.efup_unknown)} carry an X and '
                     'declare no EFUP.')
    elif d.efup_years is None:
        lines.append('Robot mark: green "e" (no substance above its limit).')
    else:
        lines.append(f'Robot mark: EFUP {d.efup_years} years: the shortest EFUP of the parts '
                     'that carry an X.')
    lines.append(f'EFUP rule: {mk["efup_rule"]}')
    issues = d.issues()
    for title, status in (('Exemptions used', 'exempt'), ('Not compliant', 'non_compliant'),
                          ('Undeclared', 'undeclared')):
        found = [i for i in issues if i['status'] == status]
        if found:
            lines += ['', f'{title}:', *dict.fromkeys(_issue_line(i, d, found) for i in found)]
    lines += ['', f'Status: {d.status}']
    return '\n'.join(lines)


def bag_metadata(profile: str, ledger: Path | None = None) -> dict[str, str]:
    """``{'field_deploy.rohs': <JSON>}`` for a bag's metadata; never raises.

    A recording must not fail because a declaration has a typo: the error is stored instead, so
    the dataset says that the hardware record is missing and why.
    """
    try:
        data = as_dict(robot_disclosure(profile, ledger))
    except Exception as exc:   # any failure becomes the recorded reason
        data = {'robot': profile, 'error': f'{type(exc).__name__}: {exc}'}
    return {BAG_KEY: json.dumps(data, ensure_ascii=False, separators=(',', ':'))}


class BagSink(Protocol):
    """What :func:`write_into_bag` needs of a recorder (``data_recorder.capture.recorder.Recorder``)."""

    def add_metadata(self, name: str, data: Mapping[str, str], *, wait: bool = True) -> None: ...
    def set_custom_data(self, key: str, value: str, *, wait: bool = True) -> None: ...


def write_into_bag(recorder: BagSink, profile: str,
                   log: Callable[[str], None] = lambda _msg: None,
                   ledger: Path | None = None) -> threading.Thread:
    """Put the robot's table into the bag being recorded, from a background thread.

    Why a thread: reading the profile, the health configuration, the ledger and every declaration
    takes about a second of YAML parsing on a loaded host, and the recorder configures itself
    before it answers the lifecycle manager; the table goes in as an MCAP metadata record (in the
    file open when it is ready: the first one, unless a split came sooner) and as metadata.yaml
    ``custom_data`` (the whole bag's, written at close).
    """
    def run() -> None:
        value = bag_metadata(profile, ledger)[BAG_KEY]
        try:
            recorder.add_metadata(BAG_KEY, {'json': value}, wait=False)
            recorder.set_custom_data(BAG_KEY, value, wait=False)
        except Exception as exc:   # the bag closed first: nothing to write into
            log(f'{BAG_KEY} not written: {exc}')

    thread = threading.Thread(target=run, name='rohs-into-bag', daemon=True)
    thread.start()
    return thread
