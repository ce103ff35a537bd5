"""Skill pack manifest (``skillpack.yaml``): schema, strict validation, file digests. Pure.

A pack is a folder with ``skillpack.yaml`` and Python modules. The manifest says who made it,
which skill API and robots it needs, and for each skill its entry point, claimed joint groups,
parameter schema (type, default, range, unit), control rate, timeout and step budget; and the
sha256 of every other file in the folder. Validation refuses unknown keys, wrong types, defaults
out of range, and names pack, file and field in every message (:class:`PackError`).

Example (see docs/skill_runtime.md for the full guide)::

    name: acme_quadruped
    version: 1.2.0
    vendor: acme
    api_version: '1.0'
    robot_kinds: [quadruped]
    joint_groups: [legs]
    skills:
      stand_up:
        entry: skills:StandUp
        description: rise to the default pose
        claims: [legs]
        control_rate: 500
        timeout: 10.0
        params:
          max_velocity: {type: double, default: 1.0, min: 0.1, max: 3.0, unit: rad/s}
    digests:
      skills.py: 3f1c…
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from field_deploy.profile import KINDS, _Checker

MANIFEST = 'skillpack.yaml'
PARAM_TYPES = ('double', 'int', 'bool', 'string')
_NAME = re.compile(r'^[a-z][a-z0-9_]*$')
_ENTRY = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$')
_VERSION = re.compile(r'^\d+\.\d+$')
_IGNORED_PARTS = ('__pycache__', '.git')
_IGNORED_SUFFIXES = ('.pyc', '.pyo')


class PackError(ValueError):
    """A pack refused: the message names the pack, the file and the field."""

    def __init__(self, pack: str, file: str, field: str, problem: str) -> None:
        super().__init__(f'pack {pack!r}: {file}: {field}: {problem}')
        self.pack = pack
        self.file = file
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str
    default: Any
    min: float | None = None
    max: float | None = None
    unit: str = ''
    description: str = ''


@dataclass(frozen=True)
class SkillSpec:
    name: str
    entry: str
    description: str
    claims: tuple[str, ...]
    control_rate: float | None
    """Hz; None: the robot's control rate."""
    timeout: float
    """Seconds of activity after which the skill is stopped (failed)."""
    step_budget: float | None
    """Seconds one step may take before the watchdog stops the skill; None: runtime default."""
    params: tuple[ParamSpec, ...]


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    vendor: str
    api_version: str
    description: str
    robot_kinds: tuple[str, ...]
    joint_groups: tuple[str, ...]
    skills: tuple[SkillSpec, ...]
    digests: dict[str, str]
    path: Path

    def skill(self, name: str) -> SkillSpec:
        for spec in self.skills:
            if spec.name == name:
                return spec
        raise KeyError(f'pack {self.name!r} has no skill {name!r}')


class _Check(_Checker):
    """The profile loader's checks, with errors that name the pack and its file."""

    def __init__(self, pack: str, file: str) -> None:
        self.pack = pack
        self.file = file

    def fail(self, key: str, problem: str) -> PackError:
        return PackError(self.pack, self.file, key, problem)

    def string(self, value: Any, key: str, pattern: re.Pattern[str] | None = None,
               what: str = '') -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f'expected a non-empty string, got {value!r}')
        if pattern is not None and not pattern.match(value):
            raise self.fail(key, f'{value!r} is not {what}')
        return value

    def number(self, value: Any, key: str, *, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, f'expected a finite number, got {value!r}')
        if positive and value <= 0:
            raise self.fail(key, f'must be > 0, got {value!r}')
        return float(value)

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, 'expected a non-empty list of strings')
        return tuple(self.string(v, f'{key}[{i}]') for i, v in enumerate(value))


def _param(c: _Check, name: str, value: Any, key: str) -> ParamSpec:
    c.string(name, key, _NAME, 'a lower_case parameter name')
    m = c.mapping(value, key, {'type', 'default'}, {'min', 'max', 'unit', 'description'})
    ptype = m['type']
    if ptype not in PARAM_TYPES:
        raise c.fail(f'{key}.type', f'{ptype!r} is not one of {", ".join(PARAM_TYPES)}')
    default = m['default']
    lo = hi = None
    if ptype in ('double', 'int'):
        if ptype == 'int' and (isinstance(default, bool) or not isinstance(default, int)):
            raise c.fail(f'{key}.default', f'expected a whole number, got {default!r}')
        default = c.number(default, f'{key}.default')
        if ptype == 'int':
            default = int(default)
        if 'min' not in m or 'max' not in m:
            raise c.fail(f'{key}.{"min" if "min" not in m else "max"}',
                         'a numeric parameter needs both min and max (the gate of what an operator '
                         'may set)')
        lo = c.number(m['min'], f'{key}.min')
        hi = c.number(m['max'], f'{key}.max')
        if ptype == 'int' and (lo != int(lo) or hi != int(hi)):
            raise c.fail(f'{key}.min', 'int parameter bounds must be whole numbers')
        if lo > hi:
            raise c.fail(f'{key}.min', f'min ({lo}) is above max ({hi})')
        if not lo <= default <= hi:
            raise c.fail(f'{key}.default', f'{default} is outside [{lo}, {hi}]')
    else:
        for bound in ('min', 'max'):
            if bound in m:
                raise c.fail(f'{key}.{bound}', f'a {ptype} parameter has no range')
        if ptype == 'bool' and not isinstance(default, bool):
            raise c.fail(f'{key}.default', f'expected true or false, got {default!r}')
        if ptype == 'string' and not isinstance(default, str):
            raise c.fail(f'{key}.default', f'expected a string, got {default!r}')
    return ParamSpec(name=name, type=ptype, default=default, min=lo, max=hi,
                     unit=str(m.get('unit', '')), description=str(m.get('description', '')))


def _skill(c: _Check, name: Any, value: Any, key: str, pack_groups: tuple[str, ...]) -> SkillSpec:
    c.string(name, key, _NAME, 'a lower_case skill name')
    m = c.mapping(value, key, {'entry', 'claims', 'timeout'},
                  {'description', 'control_rate', 'step_budget', 'params'})
    claims = c.strings(m['claims'], f'{key}.claims')
    for i, group in enumerate(claims):
        if group not in pack_groups:
            raise c.fail(f'{key}.claims[{i}]', f'group {group!r} is not in the pack\'s joint_groups '
                                               f'({", ".join(pack_groups)})')
    params_raw = m.get('params') or {}
    if not isinstance(params_raw, dict):
        raise c.fail(f'{key}.params', 'expected a mapping of name -> schema')
    rate = m.get('control_rate')
    budget = m.get('step_budget')
    return SkillSpec(
        name=name,
        entry=c.string(m['entry'], f'{key}.entry', _ENTRY, 'of the form module:Class'),
        description=str(m.get('description', '')),
        claims=claims,
        control_rate=None if rate is None else c.number(rate, f'{key}.control_rate', positive=True),
        timeout=c.number(m['timeout'], f'{key}.timeout', positive=True),
        step_budget=None if budget is None else c.number(budget, f'{key}.step_budget', positive=True),
        params=tuple(_param(c, str(p), v, f'{key}.params.{p}') for p, v in params_raw.items()),
    )


def parse_manifest(data: Any, path: Path | str, pack_hint: str = '?') -> Manifest:
    """Validate a parsed manifest; ``path`` is the manifest file (its folder is the pack)."""
    path = Path(path)
    pack = data.get('name', pack_hint) if isinstance(data, dict) else pack_hint
    c = _Check(str(pack), str(path))
    top = c.mapping(data, '', {'name', 'version', 'vendor', 'api_version', 'robot_kinds',
                               'joint_groups', 'skills', 'digests'}, {'description'})
    name = c.string(top['name'], 'name', _NAME, 'a lower_case pack name')
    version = c.string(str(top['version']) if isinstance(top['version'], (int, float))
                       else top['version'], 'version')
    api = top['api_version']
    if not isinstance(api, str):  # YAML reads 1.10 as the float 1.1: insist on a string
        raise c.fail('api_version', f"expected a quoted string MAJOR.MINOR such as '1.0', got {api!r}")
    api = c.string(api, 'api_version', _VERSION, 'of the form MAJOR.MINOR')
    kinds = c.strings(top['robot_kinds'], 'robot_kinds')
    for i, kind in enumerate(kinds):
        if kind not in KINDS:
            raise c.fail(f'robot_kinds[{i}]', f'{kind!r} is not one of {", ".join(KINDS)}')
    groups = c.strings(top['joint_groups'], 'joint_groups')
    skills_raw = top['skills']
    if not isinstance(skills_raw, dict) or not skills_raw:
        raise c.fail('skills', 'expected a non-empty mapping of skill name -> spec')
    skills = tuple(_skill(c, s, v, f'skills.{s}', groups) for s, v in skills_raw.items())
    digests_raw = top['digests']
    if not isinstance(digests_raw, dict) or not digests_raw:
        raise c.fail('digests', 'expected a mapping of file -> sha256 (run `field_deploy skills '
                                'digest PACK_DIR`)')
    digests: dict[str, str] = {}
    for file, digest in digests_raw.items():
        if not isinstance(digest, str) or not re.fullmatch(r'[0-9a-f]{64}', digest):
            raise c.fail(f'digests.{file}', f'expected 64 lower-case hex digits, got {digest!r}')
        digests[str(file)] = digest
    return Manifest(name=name, version=version, vendor=c.string(top['vendor'], 'vendor'),
                    api_version=api, description=str(top.get('description', '')),
                    robot_kinds=kinds, joint_groups=groups, skills=skills, digests=digests,
                    path=path)


def read_manifest(pack_dir: Path | str) -> Manifest:
    pack_dir = Path(pack_dir)
    path = pack_dir / MANIFEST
    if not path.is_file():
        raise PackError(pack_dir.name, str(path), '<file>', 'no skillpack.yaml in the pack folder')
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PackError(pack_dir.name, str(path), '<yaml>', f'not valid YAML: {exc}') from None
    return parse_manifest(data, path, pack_dir.name)


# --------------------------------------------------------------------------- digests

def pack_files(pack_dir: Path) -> list[str]:
    """Every file of the pack that a digest must cover (all but the manifest and caches)."""
    out = []
    for path in sorted(pack_dir.rglob('*')):
        rel = path.relative_to(pack_dir)
        if (path.is_file() and rel.as_posix() != MANIFEST
                and not any(p in _IGNORED_PARTS for p in rel.parts)
                and path.suffix not in _IGNORED_SUFFIXES):
            out.append(rel.as_posix())
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open('rb') as f:
        for block in iter(lambda: f.read(1 << 16), b''):
            h.update(block)
    return h.hexdigest()


def compute_digests(pack_dir: Path | str) -> dict[str, str]:
    pack_dir = Path(pack_dir)
    return {rel: sha256_file(pack_dir / rel) for rel in pack_files(pack_dir)}


def verify_digests(manifest: Manifest) -> None:
    """Raise :class:`PackError` unless the folder holds exactly the files listed, byte for byte.

    Run before any module of the pack is imported: an added, missing or altered file refuses it.
    """
    pack_dir = manifest.path.parent
    actual = compute_digests(pack_dir)
    for rel, digest in manifest.digests.items():
        if rel not in actual:
            raise PackError(manifest.name, str(pack_dir / rel), f'digests.{rel}',
                            'file listed in the manifest is missing')
        if actual[rel] != digest:
            raise PackError(manifest.name, str(pack_dir / rel), f'digests.{rel}',
                            f'sha256 mismatch: manifest {digest[:12]}…, file {actual[rel][:12]}…')
    extra = sorted(set(actual) - set(manifest.digests))
    if extra:
        raise PackError(manifest.name, str(pack_dir / extra[0]), 'digests',
                        'file not covered by a digest (re-run `field_deploy skills digest`)')


def write_digests(pack_dir: Path | str) -> dict[str, str]:
    """Refresh the ``digests`` block of the pack's manifest in place (the vendor's release step).

    Only the ``digests:`` block is rewritten, so comments and layout of the rest stay.
    """
    pack_dir = Path(pack_dir)
    path = pack_dir / MANIFEST
    if not path.is_file():
        raise PackError(pack_dir.name, str(path), '<file>', 'no skillpack.yaml in the pack folder')
    digests = compute_digests(pack_dir)
    lines = path.read_text().splitlines()
    kept: list[str] = []
    skipping = False
    for line in lines:
        if line.startswith('digests:'):
            skipping = True
            continue
        if skipping and (line.startswith((' ', '\t', '-')) or not line.strip()):
            continue
        skipping = False
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    block = ['digests:'] + [f'  {rel}: {digest}' for rel, digest in digests.items()]
    path.write_text('\n'.join([*kept, *block]) + '\n')
    return digests
