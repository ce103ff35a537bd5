"""Skill parameters checked before anything is sent: names, types and ranges (no rclpy).

The truth is the running skill's parameter descriptors (what ``ros2 param describe`` prints):
their type and range come from the pack's manifest, and a value the node would refuse is refused
here first, with the file, the step and what is wrong, before the first skill of a mission moves.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

# rcl_interfaces/msg/ParameterType
_TYPES = {1: 'bool', 2: 'int', 3: 'double', 4: 'string', 5: 'byte[]', 6: 'bool[]', 7: 'int[]',
          8: 'double[]', 9: 'string[]'}
IGNORED = frozenset({'use_sim_time'})
"""Parameters every node has that are not the skill's."""


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: str
    min: float | None = None
    max: float | None = None
    read_only: bool = False
    description: str = ''

    def describe(self) -> str:
        bounds = f' in [{self.min:g}, {self.max:g}]' if self.min is not None else ''
        return f'{self.name} ({self.type}{bounds})'


def from_descriptor(d: Any) -> ParamInfo:
    """A ``rcl_interfaces/ParameterDescriptor`` (duck-typed) as a :class:`ParamInfo`."""
    lo = hi = None
    ranges = list(d.floating_point_range) or list(d.integer_range)
    if ranges:
        lo, hi = float(ranges[0].from_value), float(ranges[0].to_value)
    return ParamInfo(d.name, _TYPES.get(int(d.type), f'type {d.type}'), lo, hi, bool(d.read_only),
                     str(d.description))


def near(name: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Names close to ``name``; a bare skill name also matches ``<pack>/<name>``."""
    names = sorted(set(names))
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.8)
    tail = name.rsplit('/', 1)[-1]
    by_tail = {n.rsplit('/', 1)[-1]: n for n in names}
    for match in difflib.get_close_matches(tail, list(by_tail), n=n, cutoff=0.6):
        if by_tail[match] not in close:
            close.append(by_tail[match])
    return close[:n]


def unknown(what: str, name: str, names: Iterable[str]) -> str:
    """``unknown skill 'x' (did you mean: a, b?)`` or the list of what there is."""
    names = sorted(set(names))
    close = near(name, names)
    if close:
        return f'unknown {what} {name!r} (did you mean: {", ".join(close)}?)'
    return f'unknown {what} {name!r} ({"known: " + ", ".join(names) if names else "none known"})'


def coerce(info: ParamInfo, value: Any) -> Any:
    """``value`` as the parameter's type (an int is a valid double); ValueError says why not."""
    kind = info.type
    if info.read_only:
        raise ValueError(f'parameter {info.name!r} is read-only')
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    fits = {'double': number, 'int': number and isinstance(value, int),
            'bool': isinstance(value, bool), 'string': isinstance(value, str)}
    if not fits.get(kind, False):
        raise ValueError(f'parameter {info.name!r}: {value!r} is not a {kind}')
    if kind == 'double':
        value = float(value)
    if info.min is not None and info.max is not None and not info.min <= value <= info.max:
        raise ValueError(f'parameter {info.name!r}: {value:g} is out of range '
                         f'[{info.min:g}, {info.max:g}]')
    return value


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``['duration=4', 'name=x']`` → values as YAML reads them (ValueError names a bad item)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition('=')
        if not sep or not key.strip():
            raise ValueError(f'--param {item!r}: expected NAME=VALUE')
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ''
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def check(params: Mapping[str, Any], infos: Mapping[str, ParamInfo]) -> tuple[dict[str, Any], list[str]]:
    """The values typed as the node expects them, and one problem per bad parameter."""
    known = {k: v for k, v in infos.items() if k not in IGNORED}
    typed: dict[str, Any] = {}
    problems = []
    for key, value in params.items():
        info = known.get(key)
        if info is None:
            problems.append(unknown('parameter', key, known))
            continue
        if info.type == 'string' and not isinstance(value, str) and value is not None:
            value = str(value)      # `--param label=12` means the text 12 for a string
        try:
            typed[key] = coerce(info, value)
        except ValueError as exc:
            problems.append(str(exc))
    return typed, problems
