"""China RoHS rules as the standard judges them: limits per homogeneous material, exemptions by clause.

Pure: no I/O beyond reading the one rules file (``config/compliance/gb26572_2025.yaml``), no
rclpy. Why one data file: the limits, the exemption clauses and the table's legend change with
each revision of GB 26572 and of the exemption list; code that only interprets them survives a
revision unchanged.

Judgement of one substance in one homogeneous material: no declared value -> ``undeclared``; at
or below the limit -> ``compliant``; above it -> ``exempt`` if the material claims a clause that
covers this substance in this material class (and the value is within the clause's own ceiling),
else ``non_compliant``. A part, a component and the robot take the worst of what they contain
(``non_compliant`` > ``undeclared`` > ``exempt`` > ``compliant``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from field_deploy.profile import ConfigError, read_yaml
from field_deploy.rosenv import config_dir

STATUSES = ('compliant', 'exempt', 'undeclared', 'non_compliant')   # best to worst
MG_PER_KG_PER_PERCENT = 10_000.0


class RulesError(ConfigError):
    """The rules file does not validate: ``<file>: <key>: <problem>``."""


def default_rules_path() -> Path:
    return config_dir() / 'compliance' / 'gb26572_2025.yaml'


def percent_to_mg_kg(value: float) -> float:
    """0.1 % -> 1000 mg/kg, rounded so that a limit read as a percentage compares exactly."""
    return round(value * MG_PER_KG_PER_PERCENT, 6)


@dataclass(frozen=True)
class Substance:
    key: str
    name: str
    name_zh: str
    limit_mg_kg: float

    @property
    def limit_percent(self) -> float:
        return self.limit_mg_kg / MG_PER_KG_PER_PERCENT


@dataclass(frozen=True)
class Exemption:
    clause: str
    substances: frozenset[str]
    materials: frozenset[str]
    max_mg_kg: float | None
    text: str
    verbatim: bool

    def covers(self, substance: str, material: str, value_mg_kg: float) -> str | None:
        """``None`` if the clause covers this value, else why not (for the report)."""
        if substance not in self.substances:
            return f'clause {self.clause} covers {", ".join(sorted(self.substances))}, not {substance}'
        if material not in self.materials:
            return (f'clause {self.clause} covers {", ".join(sorted(self.materials))}, '
                    f'not {material}')
        if self.max_mg_kg is not None and value_mg_kg > self.max_mg_kg:
            return (f'clause {self.clause} allows up to {self.max_mg_kg:g} mg/kg, '
                    f'declared {value_mg_kg:g}')
        return None


@dataclass(frozen=True)
class Rules:
    path: Path
    standard: dict[str, Any]
    substances: tuple[Substance, ...]
    materials: frozenset[str]
    exemptions: dict[str, Exemption]
    exemption_source: str
    marking: dict[str, Any]
    rows: dict[str, str]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.substances)

    def row_of(self, kind: str) -> str:
        return self.rows.get(kind, kind)


def load_rules(path: Path | None = None) -> Rules:
    path = Path(path) if path else default_rules_path()
    data = read_yaml(path, RulesError, '<file>', 'no such rules file')

    def need(mapping: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
        if not isinstance(mapping, dict) or key not in mapping:
            raise RulesError(path, f'{where}{key}', 'missing')
        value = mapping[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise RulesError(path, f'{where}{key}', f'expected {getattr(kind, "__name__", kind)},'
                                                    f' got {value!r}')
        return value

    standard = need(data, 'standard', '', dict)
    for key in ('number', 'title', 'published'):
        need(standard, key, 'standard.', str)
    substances = []
    for i, s in enumerate(need(data, 'substances', '', list)):
        where = f'substances[{i}].'
        limit = need(s, 'limit_percent', where, (int, float))
        if not 0 < limit < 100:
            raise RulesError(path, f'{where}limit_percent', f'{limit} is not a percentage > 0')
        substances.append(Substance(str(need(s, 'key', where, str)), str(need(s, 'name', where, str)),
                                    str(s.get('name_zh', '')), percent_to_mg_kg(float(limit))))
    if len({s.key for s in substances}) != len(substances):
        raise RulesError(path, 'substances', 'a substance key is listed twice')
    keys = {s.key for s in substances}
    materials = frozenset(str(m) for m in need(data, 'materials', '', list))
    ex = need(data, 'exemptions', '', dict)
    exemptions: dict[str, Exemption] = {}
    for i, c in enumerate(need(ex, 'clauses', 'exemptions.', list)):
        where = f'exemptions.clauses[{i}].'
        clause = str(need(c, 'clause', where, str))
        subs = frozenset(need(c, 'substances', where, list))
        mats = frozenset(need(c, 'materials', where, list))
        if subs - keys:
            raise RulesError(path, f'{where}substances', f'unknown {sorted(subs - keys)}')
        if mats - materials:
            raise RulesError(path, f'{where}materials', f'unknown {sorted(mats - materials)} '
                                                         '(not in materials:)')
        cap = c.get('max_percent')
        if clause in exemptions:
            raise RulesError(path, f'{where}clause', f'{clause!r} listed twice')
        exemptions[clause] = Exemption(
            clause, subs, mats, None if cap is None else percent_to_mg_kg(float(cap)),
            str(need(c, 'text', where, str)), bool(c.get('verbatim', False)))
    marking = need(data, 'marking', '', dict)
    for key in ('standard', 'o', 'x', 'undeclared', 'efup_rule'):
        need(marking, key, 'marking.', str)
    rows = need(need(data, 'disclosure', '', dict), 'rows', 'disclosure.', dict)
    return Rules(path, dict(standard), tuple(substances), materials, exemptions,
                 str(ex.get('source', '')), dict(marking), {str(k): str(v) for k, v in rows.items()})


# ------------------------------------------------------------------------------ declarations


@dataclass(frozen=True)
class Evidence:
    """Where a figure comes from: a supplier declaration or a lab's test report."""

    ref: str
    date: str
    lab: str = ''


@dataclass(frozen=True)
class MaterialDeclaration:
    """One homogeneous material (or part) of a component model, concentrations in mg/kg."""

    name: str
    material: str
    values: dict[str, float | None]            # substance key -> mg/kg, None = undeclared
    exemptions: tuple[tuple[str, str], ...] = ()   # (clause, justification)
    report: Evidence | None = None


@dataclass(frozen=True)
class Declaration:
    """A supplier's declaration of one component model (not one unit)."""

    model: str
    supplier: str
    evidence: Evidence
    efup_years: int | None
    materials: tuple[MaterialDeclaration, ...]
    source: str                                # the file it came from


# ------------------------------------------------------------------------------ judgement


@dataclass(frozen=True)
class Finding:
    substance: str
    status: str
    value_mg_kg: float | None
    limit_mg_kg: float
    clause: str = ''
    reason: str = ''

    @property
    def over_limit(self) -> bool:
        return self.value_mg_kg is not None and self.value_mg_kg > self.limit_mg_kg


@dataclass(frozen=True)
class MaterialResult:
    name: str
    material: str
    findings: tuple[Finding, ...]

    @property
    def status(self) -> str:
        return worst(f.status for f in self.findings)


@dataclass(frozen=True)
class ComponentResult:
    model: str
    declared: bool
    materials: tuple[MaterialResult, ...]
    efup_years: int | None = None
    supplier: str = ''
    evidence: Evidence | None = None
    source: str = ''

    @property
    def status(self) -> str:
        return worst(m.status for m in self.materials) if self.declared else 'undeclared'

    def mark(self, substance: str) -> str:
        """The O / X / ? of this component for one substance."""
        if not self.declared:
            return '?'
        found = [f for m in self.materials for f in m.findings if f.substance == substance]
        if any(f.over_limit for f in found):
            return 'X'
        return '?' if any(f.status == 'undeclared' for f in found) else 'O'

    @property
    def has_x(self) -> bool:
        return any(f.over_limit for m in self.materials for f in m.findings)


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=STATUSES.index, default='compliant')


def judge_material(rules: Rules, m: MaterialDeclaration) -> MaterialResult:
    findings = []
    claimed = [rules.exemptions[c] for c, _ in m.exemptions if c in rules.exemptions]
    for s in rules.substances:
        value = m.values.get(s.key)
        if value is None:
            findings.append(Finding(s.key, 'undeclared', None, s.limit_mg_kg,
                                    reason='no value declared'))
            continue
        if value <= s.limit_mg_kg:
            findings.append(Finding(s.key, 'compliant', value, s.limit_mg_kg))
            continue
        reasons = []
        for ex in claimed:
            why_not = ex.covers(s.key, m.material, value)
            if why_not is None:
                findings.append(Finding(s.key, 'exempt', value, s.limit_mg_kg, ex.clause))
                break
            reasons.append(why_not)
        else:
            findings.append(Finding(s.key, 'non_compliant', value, s.limit_mg_kg,
                                    reason='; '.join(reasons) or 'no exemption claimed'))
    return MaterialResult(m.name, m.material, tuple(findings))


def judge(rules: Rules, model: str, declaration: Declaration | None) -> ComponentResult:
    if declaration is None:
        return ComponentResult(model, False, ())
    return ComponentResult(model, True,
                           tuple(judge_material(rules, m) for m in declaration.materials),
                           declaration.efup_years, declaration.supplier, declaration.evidence,
                           declaration.source)


# ------------------------------------------------------------------------------ disclosure


@dataclass(frozen=True)
class Installed:
    """A component as installed now (from the ledger, or from the components file)."""

    id: str
    kind: str
    model: str
    serial: str


@dataclass
class Disclosure:
    """The robot's hazardous-substance table (SJ/T 11364 form) and the findings behind it."""

    robot: str
    source: str
    rules: Rules
    rows: dict[str, dict[str, str]] = field(default_factory=dict)     # part -> substance -> mark
    members: dict[str, list[Installed]] = field(default_factory=dict)
    results: dict[str, ComponentResult] = field(default_factory=dict)  # by model
    efup_years: int | None = None
    efup_unknown: list[str] = field(default_factory=list)              # models with X, no EFUP

    @property
    def status(self) -> str:
        return worst(r.status for r in self.results.values())

    @property
    def mark(self) -> str:
        if self.efup_unknown:
            return 'EFUP ?'
        return 'e' if self.efup_years is None else f'EFUP {self.efup_years}'

    def issues(self) -> list[dict[str, Any]]:
        """Every finding that is not plain compliance: exemptions used, breaches, gaps."""
        out: list[dict[str, Any]] = []
        for model, r in sorted(self.results.items()):
            if not r.declared:
                out.append({'model': model, 'part': '', 'substance': '', 'status': 'undeclared',
                            'reason': 'no declaration for this model'})
                continue
            for m in r.materials:
                for f in m.findings:
                    if f.status != 'compliant':
                        out.append({'model': model, 'part': m.name, 'material': m.material,
                                    'substance': f.substance, 'status': f.status,
                                    'value_mg_kg': f.value_mg_kg, 'limit_mg_kg': f.limit_mg_kg,
                                    'clause': f.clause, 'reason': f.reason})
        return out


def disclose(rules: Rules, robot: str, installed: list[Installed],
             declarations: dict[str, Declaration], source: str) -> Disclosure:
    """The table for the components installed now: a row per part, O / X / ? per substance.

    A row is X for a substance when any homogeneous material of any of its components is above the
    limit (exempt or not: an exemption permits the content, it does not hide it); ``?`` when none
    is above but a value is missing; else O. The robot's EFUP is the shortest EFUP of the
    components that carry an X (``marking.efup_rule`` in the rules file).
    """
    d = Disclosure(robot, source, rules)
    for c in installed:
        if c.model not in d.results:
            d.results[c.model] = judge(rules, c.model, declarations.get(c.model))
        d.members.setdefault(rules.row_of(c.kind), []).append(c)
    for part, members in d.members.items():
        marks = {}
        for key in rules.keys:
            found = {d.results[c.model].mark(key) for c in members}
            marks[key] = 'X' if 'X' in found else '?' if '?' in found else 'O'
        d.rows[part] = marks
    periods = []
    for model in sorted({c.model for c in installed}):
        r = d.results[model]
        if r.has_x:
            if r.efup_years is None:
                d.efup_unknown.append(model)
            else:
                periods.append(r.efup_years)
    d.efup_years = min(periods) if periods else None
    return d
