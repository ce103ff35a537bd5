"""Which topics to record and with which QoS: pure rules the node applies to the ROS graph.

Mirrors ``ros2 bag record``: explicit topics, ``--all``, ``--regex`` include, ``--exclude``
regex; hidden topics (a ``_``-prefixed name part) only when asked; QoS adapted to what the
publishers offer, with per-topic overrides from a YAML file in rosbag2's format::

    /camera/front/image_raw: {reliability: best_effort, depth: 10}
    /map: {durability: transient_local}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_POLICIES = {'reliability': ('reliable', 'best_effort'),
             'durability': ('volatile', 'transient_local'),
             'history': ('keep_last', 'keep_all')}


@dataclass(frozen=True)
class Selection:
    topics: tuple[str, ...] = ()       # absolute names
    all_topics: bool = False
    regex: str = ''
    exclude_regex: str = ''
    include_hidden: bool = False

    def __post_init__(self) -> None:
        for name in ('regex', 'exclude_regex'):
            pattern = getattr(self, name)
            if pattern:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f'{name}: {pattern!r} is not a valid regular expression: '
                                     f'{exc}') from None
        if not (self.topics or self.all_topics or self.regex):
            raise ValueError('nothing to record: give topics, all_topics (-a) or regex (-e)')

    def matches(self, topic: str) -> bool:
        if self.exclude_regex and re.search(self.exclude_regex, topic):
            return False
        if topic in self.topics:
            return True
        if not self.include_hidden and any(p.startswith('_') for p in topic.split('/')):
            return False
        if self.all_topics:
            return True
        return bool(self.regex and re.search(self.regex, topic))


def load_qos_overrides(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{topic: {reliability, durability, history, depth}}``; ValueError naming file/topic/key."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ValueError(f'qos_profile_overrides_path: {path}: {exc.strerror}') from None
    except yaml.YAMLError as exc:
        raise ValueError(f'qos_profile_overrides_path: {path}: invalid YAML: {exc}') from None
    document = document or {}
    if not isinstance(document, dict):
        raise ValueError(f'{path}: expected a mapping of topic names to QoS settings')
    out: dict[str, dict[str, Any]] = {}
    for topic, settings in document.items():
        if not isinstance(topic, str) or not topic.startswith('/'):
            raise ValueError(f'{path}: {topic!r}: topic names must be absolute (start with /)')
        if not isinstance(settings, dict):
            raise ValueError(f'{path}: {topic}: expected a mapping of QoS policies')
        clean: dict[str, Any] = {}
        for key, value in settings.items():
            if key in _POLICIES:
                value = str(value).lower()
                if value not in _POLICIES[key]:
                    raise ValueError(f'{path}: {topic}: {key}: {value!r} is not one of '
                                     f'{", ".join(_POLICIES[key])}')
            elif key == 'depth':
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f'{path}: {topic}: depth: {value!r} must be an integer >= 1')
            else:
                raise ValueError(f'{path}: {topic}: unknown QoS key {key!r} (reliability, '
                                 'durability, history, depth)')
            clean[key] = value
        out[topic] = clean
    return out


def adapt_qos(offered: Sequence[tuple[str, str]], depth: int,
              override: dict[str, Any] | None = None) -> dict[str, Any]:
    """Subscription QoS from the publishers' offered ``(reliability, durability)`` pairs.

    Reliable only if every publisher is reliable (a reliable reader does not match a best-effort
    writer); transient-local only if every publisher is (same rule for durability).
    """
    qos: dict[str, Any] = {
        'history': 'keep_last', 'depth': depth,
        'reliability': ('reliable' if offered and all(r == 'reliable' for r, _ in offered)
                        else 'best_effort'),
        'durability': ('transient_local' if offered and all(d == 'transient_local'
                                                            for _, d in offered) else 'volatile'),
    }
    qos.update(override or {})
    return qos


def unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
