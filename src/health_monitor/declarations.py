"""Supplier declarations of component models, read from a folder of YAML and CSV files.

A declaration is per model (every unit of a model is made the same way), per homogeneous material:
the concentration of each of the ten substances, the material class (which an exemption clause
must cover), the test report behind the figures, and any exemption claimed with its justification.
YAML is the project's form; CSV is the flat sheet a supplier's compliance system exports, one
row per homogeneous material with the model's fields repeated on each row.

Values are mg/kg (the unit of GB/T 39560 test reports) unless the file says ``unit: '%'``;
``ND`` (not detected: below the method's detection limit) reads as 0; an empty cell or a missing
key is *undeclared*, which the checks report and the table shows as ``?``. Anything malformed
raises :class:`DeclarationError` ``<file>: <part>: <field>: <problem>``.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

from field_deploy.profile import ConfigError, read_yaml
from field_deploy.rosenv import config_dir
from health_monitor.compliance import (
    Declaration,
    Evidence,
    MaterialDeclaration,
    Rules,
    percent_to_mg_kg,
)

TOP = '<declaration>'
UNITS = ('mg/kg', '%')
NOT_DETECTED = {'nd', 'n.d.', '<mdl', 'not detected'}
_YAML_TOP = {'model', 'supplier', 'declaration', 'efup_years', 'unit', 'parts'}
_YAML_PART = {'name', 'material', 'substances', 'test_report', 'exemptions'}
_CSV_MODEL = ('model', 'supplier', 'declaration_ref', 'declaration_date', 'declaration_lab',
              'efup_years', 'unit')
_CSV_PART = ('part', 'material', 'exemption_clause', 'exemption_justification', 'report_ref',
             'report_date', 'report_lab')
_CSV_REQUIRED = ('model', 'supplier', 'declaration_ref', 'declaration_date', 'part', 'material')


class DeclarationError(ConfigError):
    """A declaration file that does not validate: ``<file>: <part>: <field>: <problem>``."""

    def __init__(self, path: Path | str, part: str, field: str, problem: str) -> None:
        super().__init__(path, f'{part}: {field}', problem)
        self.part = part
        self.field = field


def default_declarations_dir() -> Path:
    return config_dir() / 'compliance' / 'declarations'


class _Reader:
    """Validation helpers bound to one file, so every error names it."""

    def __init__(self, path: Path, rules: Rules) -> None:
        self.path = path
        self.rules = rules

    def fail(self, part: str, field: str, problem: str) -> DeclarationError:
        return DeclarationError(self.path, part, field, problem)

    def text(self, value: Any, part: str, field: str) -> str:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise self.fail(part, field, 'missing')
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise self.fail(part, field, f'expected text, got {value!r}')
        return str(value).strip()

    def date(self, value: Any, part: str, field: str) -> str:
        text = self.text(value, part, field)
        try:
            dt.date.fromisoformat(text)
        except ValueError:
            raise self.fail(part, field, f'{text!r} is not a date YYYY-MM-DD') from None
        return text

    def unit(self, value: Any) -> str:
        unit = 'mg/kg' if value in (None, '') else str(value).strip()
        if unit not in UNITS:
            raise self.fail(TOP, 'unit', f'{unit!r} is not one of {", ".join(UNITS)}')
        return unit

    def efup(self, value: Any) -> int | None:
        if value in (None, ''):
            return None
        try:
            years = int(str(value).strip())
        except ValueError:
            years = -1
        if years <= 0 or str(value).strip() != str(years):
            raise self.fail(TOP, 'efup_years', f'{value!r} is not a whole number of years > 0')
        return years

    def value(self, raw: Any, unit: str, part: str, key: str) -> float | None:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        if isinstance(raw, str) and raw.strip().lower() in NOT_DETECTED:
            return 0.0
        if isinstance(raw, bool):
            raise self.fail(part, key, f'{raw!r} is not a concentration')
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise self.fail(part, key, f'{raw!r} is not a concentration in {unit} '
                                       '(a number, ND, or empty for undeclared)') from None
        if not number >= 0 or number != number or number == float('inf'):
            raise self.fail(part, key, f'{raw!r} must be a concentration >= 0')
        if unit == '%':
            if number > 100:
                raise self.fail(part, key, f'{raw!r} % is more than the whole material')
            return percent_to_mg_kg(number)
        if number > 1_000_000:
            raise self.fail(part, key, f'{raw!r} mg/kg is more than the whole material')
        return number

    def material(self, value: Any, part: str) -> str:
        material = self.text(value, part, 'material')
        if material not in self.rules.materials:
            raise self.fail(part, 'material', f'unknown material class {material!r} (one of '
                                              f'{", ".join(sorted(self.rules.materials))})')
        return material

    def exemption(self, clause: Any, justification: Any, part: str) -> tuple[str, str]:
        clause = self.text(clause, part, 'exemption')
        if clause not in self.rules.exemptions:
            raise self.fail(part, 'exemption', f'unknown clause {clause!r} (the rules file '
                                               f'{self.rules.path.name} lists '
                                               f'{", ".join(self.rules.exemptions)})')
        return clause, self.text(justification, part, 'justification')


def _yaml(path: Path, rules: Rules) -> Declaration:
    r = _Reader(path, rules)
    try:
        data = read_yaml(path, ConfigError, '<file>', 'no such file')
    except ConfigError as exc:
        raise r.fail(TOP, exc.key, exc.problem) from None
    if not isinstance(data, dict):
        raise r.fail(TOP, '<file>', 'expected a mapping with model, supplier, declaration, parts')
    for key in sorted(set(data) - _YAML_TOP):
        raise r.fail(TOP, key, f'unknown key (expected {", ".join(sorted(_YAML_TOP))})')
    model = r.text(data.get('model'), TOP, 'model')
    decl = data.get('declaration')
    if not isinstance(decl, dict):
        raise r.fail(TOP, 'declaration', 'expected {ref, date, lab}')
    evidence = Evidence(r.text(decl.get('ref'), TOP, 'declaration.ref'),
                        r.date(decl.get('date'), TOP, 'declaration.date'),
                        str(decl.get('lab') or ''))
    unit = r.unit(data.get('unit'))
    parts = data.get('parts')
    if not isinstance(parts, list) or not parts:
        raise r.fail(TOP, 'parts', 'expected a non-empty list of homogeneous materials')
    materials = []
    for i, p in enumerate(parts):
        name = (str(p.get('name')).strip() if isinstance(p, dict) and p.get('name')
                else f'parts[{i}]')
        if not isinstance(p, dict):
            raise r.fail(name, '<part>', 'expected a mapping')
        for key in sorted(set(p) - _YAML_PART):
            raise r.fail(name, key, f'unknown key (expected {", ".join(sorted(_YAML_PART))})')
        r.text(p.get('name'), name, 'name')
        subs = p.get('substances')
        if not isinstance(subs, dict):
            raise r.fail(name, 'substances', 'expected a mapping substance -> concentration')
        for key in subs:
            if key not in rules.keys:
                raise r.fail(name, str(key), f'unknown substance (one of {", ".join(rules.keys)})')
        values = {k: r.value(subs.get(k), unit, name, k) for k in rules.keys}
        claims = p.get('exemptions') or []
        if not isinstance(claims, list):
            raise r.fail(name, 'exemptions', 'expected a list of {clause, justification}')
        exemptions = tuple(r.exemption(c.get('clause') if isinstance(c, dict) else c,
                                       c.get('justification') if isinstance(c, dict) else None,
                                       name) for c in claims)
        report = p.get('test_report')
        if report is not None and not isinstance(report, dict):
            raise r.fail(name, 'test_report', 'expected {ref, date, lab}')
        materials.append(MaterialDeclaration(
            name, r.material(p.get('material'), name), values, exemptions,
            None if report is None else Evidence(r.text(report.get('ref'), name, 'test_report.ref'),
                                                 r.date(report.get('date'), name,
                                                        'test_report.date'),
                                                 str(report.get('lab') or ''))))
    _no_duplicate_parts(r, materials)
    return Declaration(model, r.text(data.get('supplier'), TOP, 'supplier'), evidence,
                       r.efup(data.get('efup_years')), tuple(materials), str(path))


def _csv(path: Path, rules: Rules) -> Declaration:
    r = _Reader(path, rules)
    try:
        with path.open(newline='', encoding='utf-8-sig') as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise r.fail(TOP, '<file>', f'cannot read: {exc}') from None
    if not rows:
        raise r.fail(TOP, '<file>', 'no rows (expected a header and one row per material)')
    known = set(_CSV_MODEL) | set(_CSV_PART) | set(rules.keys)
    for column in header:
        if column not in known:
            raise r.fail(TOP, str(column), 'unknown column (expected '
                                           f'{", ".join((*_CSV_MODEL, *_CSV_PART, *rules.keys))})')
    for column in (*_CSV_REQUIRED, *rules.keys):
        if column not in header:
            raise r.fail(TOP, column, 'missing column')
    first = rows[0]
    for n, row in enumerate(rows[1:], start=3):
        for column in _CSV_MODEL:
            if (row.get(column) or '').strip() != (first.get(column) or '').strip():
                raise r.fail(row.get('part') or f'row {n}', column,
                             f'{row.get(column)!r} differs from the first row\'s '
                             f'{first.get(column)!r} (one model per file)')
    unit = r.unit(first.get('unit'))
    materials = []
    for n, row in enumerate(rows, start=2):
        if None in row:
            raise r.fail(row.get('part') or f'row {n}', '<row>', 'more cells than columns')
        name = (row.get('part') or '').strip() or f'row {n}'
        r.text(row.get('part'), name, 'part')
        values = {k: r.value(row.get(k), unit, name, k) for k in rules.keys}
        clause = (row.get('exemption_clause') or '').strip()
        exemptions = (r.exemption(clause, row.get('exemption_justification'), name),) if clause else ()
        report = None
        if (row.get('report_ref') or '').strip():
            report = Evidence(r.text(row['report_ref'], name, 'report_ref'),
                              r.date(row.get('report_date'), name, 'report_date'),
                              (row.get('report_lab') or '').strip())
        materials.append(MaterialDeclaration(name, r.material(row.get('material'), name), values,
                                             exemptions, report))
    _no_duplicate_parts(r, materials)
    evidence = Evidence(r.text(first.get('declaration_ref'), TOP, 'declaration_ref'),
                        r.date(first.get('declaration_date'), TOP, 'declaration_date'),
                        (first.get('declaration_lab') or '').strip())
    return Declaration(r.text(first.get('model'), TOP, 'model'),
                       r.text(first.get('supplier'), TOP, 'supplier'), evidence,
                       r.efup(first.get('efup_years')), tuple(materials), str(path))


def _no_duplicate_parts(r: _Reader, materials: list[MaterialDeclaration]) -> None:
    seen: set[str] = set()
    for m in materials:
        if m.name in seen:
            raise r.fail(m.name, 'name', 'listed twice: each homogeneous material once')
        seen.add(m.name)


def load_declaration(path: Path, rules: Rules) -> Declaration:
    path = Path(path)
    return _csv(path, rules) if path.suffix.lower() == '.csv' else _yaml(path, rules)


def load_declarations(folder: Path | None, rules: Rules) -> dict[str, Declaration]:
    """Every ``*.yaml``/``*.yml``/``*.csv`` of ``folder``, by model; a model declared twice is refused."""
    folder = Path(folder) if folder else default_declarations_dir()
    if not folder.is_dir():
        raise DeclarationError(folder, TOP, '<folder>', 'no such declarations folder')
    out: dict[str, Declaration] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in ('.yaml', '.yml', '.csv') or not path.is_file():
            continue
        decl = load_declaration(path, rules)
        if decl.model in out:
            raise DeclarationError(path, TOP, 'model', f'{decl.model!r} is also declared in '
                                                       f'{Path(out[decl.model].source).name}')
        out[decl.model] = decl
    return out
