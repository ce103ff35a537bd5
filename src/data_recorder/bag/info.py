"""``bag info``: what ``ros2 bag info`` prints, plus episodes and the recorder's loss accounting."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import yaml

from data_recorder.bag.marks import CUSTOM_DATA_KEY as MARKS_KEY
from data_recorder.bag.reader import Bag, describe_qos

#: custom_data keys (or key fragments) the recorder uses for its loss accounting.
LOSS_KEYS = ('loss', 'lost', 'drop', 'missed', 'gap', 'accounting', 'totals')


def _stamp(ns: int) -> str:
    t = dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc)
    return f'{t:%b %d %Y %H:%M:%S}.{ns % 1_000_000_000:09d} UTC ({ns // 10**9}.{ns % 10**9:09d})'


def _size(n: int) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if n < 1024 or unit == 'GiB':
            return f'{n:.1f} {unit}' if unit != 'B' else f'{n} B'
        n /= 1024
    return f'{n} B'


def _decoded(value: Any) -> Any:
    """custom_data values are strings; the recorder stores JSON in them."""
    if isinstance(value, str) and value[:1] in '{[':
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def summary(bag: Bag) -> dict[str, Any]:
    """The info as a plain dict (what ``bag info --yaml`` prints; tests read it)."""
    dur = bag.duration_ns / 1e9
    topics = []
    for t in bag.topics.values():
        rate = (t.count - 1) / dur if t.count > 1 and dur > 0 else 0.0
        topics.append({'topic': t.name, 'type': t.type, 'count': t.count, 'rate_hz': round(rate, 3),
                       'serialization_format': t.serialization_format,
                       'qos': describe_qos(t.qos)})
    loss = {k: _decoded(v) for k, v in bag.custom_data.items()
            if any(f in k.lower() for f in LOSS_KEYS)}
    return {
        'path': str(bag.path), 'files': [str(f) for f in bag.files],
        'truncated_files': [str(f) for f in bag.truncated], 'size_bytes': bag.size_bytes,
        'storage': bag.metadata.get('storage_identifier', 'mcap'),
        'metadata_version': bag.metadata.get('version'), 'ros_distro': bag.metadata.get('ros_distro'),
        'duration_s': dur, 'start_ns': bag.start_ns, 'end_ns': bag.end_ns,
        'message_count': bag.message_count, 'topics': topics,
        'episodes': [{'name': e.name, 'start_ns': e.start_ns, 'end_ns': e.end_ns,
                      'duration_s': (e.end_ns - e.start_ns) / 1e9} for e in bag.episodes],
        'marks': [{'t_s': (m.stamp_ns - bag.start_ns) / 1e9, 'stamp_ns': m.stamp_ns, 'kind': m.kind,
                   'text': m.text} for m in bag.marks],
        'loss': loss,
        'custom_data': {k: _decoded(v) for k, v in bag.custom_data.items()
                        if k not in loss and 'episodes' not in k and k != MARKS_KEY},
    }


def render(bag: Bag) -> str:
    """Human text in the layout of ``ros2 bag info``."""
    s = summary(bag)
    lines = [f'Files:             {s["files"][0]}', *[f'                   {f}' for f in s['files'][1:]],
             f'Bag size:          {_size(s["size_bytes"])}',
             f'Storage id:        {s["storage"]}' + (f' (metadata v{s["metadata_version"]})'
                                                    if s['metadata_version'] else ''),
             f'Duration:          {s["duration_s"]:.9f}s',
             f'Start:             {_stamp(s["start_ns"])}',
             f'End:               {_stamp(s["end_ns"])}',
             f'Messages:          {s["message_count"]}']
    if s['truncated_files']:
        lines.append(f'Truncated:         {", ".join(s["truncated_files"])} '
                     '(counts are what is readable; `field_deploy bag recover` rewrites the index)')
    width = max((len(t['topic']) for t in s['topics']), default=0)
    lines.append('Topic information: ' + ('' if s['topics'] else '(none)'))
    for t in s['topics']:
        lines.append(f'  Topic: {t["topic"]:<{width}} | Type: {t["type"]} | Count: {t["count"]} | '
                     f'Rate: {t["rate_hz"]:.1f} Hz | Serialization: {t["serialization_format"]} | '
                     f'QoS: {t["qos"]}')
    lines.append(f'Episodes:          {len(s["episodes"]) or "none (the whole bag is one episode)"}')
    for i, e in enumerate(s['episodes']):
        lines.append(f'  [{i}] {e["name"]}: +{(e["start_ns"] - bag.start_ns) / 1e9:.3f} s, '
                     f'{e["duration_s"]:.3f} s')
    lines.append(f'Marks:             {len(s["marks"]) or "none"}')
    lines += [f'  +{m["t_s"]:.3f} s [{m["kind"]}] {m["text"]}' for m in s['marks']]
    if s['loss']:
        lines.append('Loss accounting:')
        lines += ['  ' + ln for ln in yaml.safe_dump(s['loss'], sort_keys=True).splitlines()]
    else:
        lines.append('Loss accounting:   not recorded in this bag')
    if s['custom_data']:
        lines.append('Custom data:')
        lines += ['  ' + ln for ln in yaml.safe_dump(s['custom_data'], sort_keys=True).splitlines()]
    return '\n'.join(lines)
