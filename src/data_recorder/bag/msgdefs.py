"""Complete ``ros2msg`` message definitions, as rosbag2's MCAP storage writes them into schemas.

Readers without the message packages installed (Foxglove, ``rosbags``, ``mcap_ros2``) build their
decoders from the schema alone, so it must hold the root ``.msg`` text followed by every type it
uses, recursively, each preceded by a line of 80 ``=`` and ``MSG: pkg/msg/Type``. The text comes
verbatim from ``share/<pkg>/msg/<Type>.msg`` of the installed packages (no rclpy import).
"""

from __future__ import annotations

import functools
import re

from field_deploy.rosenv import share_dir

SEPARATOR = '=' * 80

PRIMITIVES = frozenset({
    'bool', 'byte', 'char', 'float32', 'float64', 'int8', 'uint8', 'int16', 'uint16', 'int32',
    'uint32', 'int64', 'uint64', 'string', 'wstring',
})

_FIELD_TYPE = re.compile(r'^\s*([A-Za-z_][\w/]*)')


def normalise(type_name: str) -> str:
    """``pkg/Type`` or ``pkg/msg/Type`` → ``pkg/msg/Type``; raises ``LookupError`` otherwise."""
    parts = type_name.split('/')
    if len(parts) == 2 and all(parts):
        return f'{parts[0]}/msg/{parts[1]}'
    if len(parts) == 3 and all(parts) and parts[1] == 'msg':
        return type_name
    raise LookupError(f'{type_name!r} is not a message type name (expected pkg/msg/Type)')


@functools.cache
def msg_text(type_name: str) -> str:
    """The verbatim ``.msg`` file of ``pkg/msg/Type``; ``LookupError`` naming the file if absent."""
    package, _, name = normalise(type_name).split('/')
    try:
        path = share_dir(package) / 'msg' / f'{name}.msg'
    except FileNotFoundError:
        raise LookupError(f'message type {type_name!r}: package {package!r} is not installed') from None
    if not path.is_file():
        raise LookupError(f'message type {type_name!r}: {path} does not exist')
    return path.read_text()


def _field_types(text: str) -> list[str]:
    """The field base types of a .msg text, in order (constants and comments skipped)."""
    types = []
    for raw in text.splitlines():
        line = raw.split('#', 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 2 or '=' in tokens[1] or (len(tokens) > 2 and tokens[2].startswith('=')):
            continue  # a constant (``uint8 FOO=1``) or malformed line
        base = re.sub(r'\[.*\]$', '', tokens[0])
        base = re.sub(r'<=\d+$', '', base)
        types.append(base)
    return types


def _resolve(base: str, package: str) -> str | None:
    """Full name of a field's base type, or None for a primitive."""
    if base in PRIMITIVES:
        return None
    if base == 'Header':
        return 'std_msgs/msg/Header'
    if '/' in base:
        return normalise(base)
    return f'{package}/msg/{base}'


def dependencies(type_name: str) -> list[str]:
    """Every message type ``type_name`` uses, depth-first in order of first use."""
    seen: list[str] = []

    def visit(name: str) -> None:
        package = name.split('/')[0]
        for base in _field_types(msg_text(name)):
            dep = _resolve(base, package)
            if dep is not None and dep not in seen:
                seen.append(dep)
                visit(dep)

    visit(normalise(type_name))
    return seen


@functools.cache
def full_definition(type_name: str) -> str:
    """The complete ``ros2msg`` definition (root text, then each dependency after a delimiter)."""
    parts = [msg_text(type_name).rstrip('\n')]
    for dep in dependencies(type_name):
        parts.append(f'{SEPARATOR}\nMSG: {dep}\n{msg_text(dep).rstrip(chr(10))}')
    return '\n'.join(parts) + '\n'


@functools.cache
def has_header(type_name: str) -> bool:
    """True when the first field is a ``std_msgs/Header`` (its stamp is then the first CDR bytes)."""
    normalised = normalise(type_name)
    fields = _field_types(msg_text(normalised))
    return bool(fields) and _resolve(fields[0], normalised.split('/')[0]) == 'std_msgs/msg/Header'
