"""Operator marks: timestamped annotations (anomaly, disturbance, edge case, note) in a recording.

The person who sees an anomaly is the operator; a mark puts it in the bag at the time it was seen,
so a dataset can be searched for it. Transport, standard interfaces only: a ``std_msgs/String`` on
``<ns>/data_recorder/mark`` carrying a JSON object ``{"text", "kind", "stamp_ns", "id", "source"}``
(``field_deploy bag mark`` sends it; ``ros2 topic pub`` or a Foxglove publish panel can too: plain,
non-JSON text is taken as a ``note`` stamped on arrival). A topic rather than a service because no
standard service carries a string; the recorder confirms what it wrote through its ``/diagnostics``
status (``marks``: how many, ``marks_recent``: the ids of the last ones).

In the bag, like episodes: each mark is an MCAP Metadata record named ``mark`` (a cut bag still has
them) and the list is ``metadata.yaml`` custom data ``field_deploy.marks`` (JSON). No rclpy here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

MARK_RECORD = 'mark'
CUSTOM_DATA_KEY = 'field_deploy.marks'
KINDS = ('anomaly', 'disturbance', 'edge_case', 'note')
RECENT = 8
"""Ids of the last marks in the recorder's diagnostics (a sender looks for its own)."""


@dataclass(frozen=True)
class Mark:
    index: int
    stamp_ns: int
    kind: str
    text: str
    id: str = ''
    source: str = ''

    def record(self) -> dict[str, str]:
        """The MCAP Metadata map (string values, as MCAP requires)."""
        return {k: str(v) for k, v in asdict(self).items()}


def encode(text: str, kind: str, stamp_ns: int, mark_id: str = '', source: str = '') -> str:
    """The message a sender publishes (see the module docstring)."""
    check(text, kind)
    return json.dumps({'text': text, 'kind': kind, 'stamp_ns': int(stamp_ns), 'id': mark_id,
                       'source': source})


def check(text: str, kind: str) -> None:
    if not text.strip():
        raise ValueError('a mark needs a text')
    if kind not in KINDS:
        raise ValueError(f'kind {kind!r} is not one of {", ".join(KINDS)}')


def decode(data: str, received_ns: int) -> dict[str, Any]:
    """The fields of one received message (ValueError names what is wrong).

    A stamp more than a day away from the arrival is not the recorder's clock (a sender with
    sim time, a typo): the arrival time is used instead.
    """
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = {'text': data}
    text, kind = str(doc.get('text', '')), str(doc.get('kind') or 'note')
    check(text, kind)
    try:
        stamp = int(doc.get('stamp_ns') or received_ns)
    except (TypeError, ValueError):
        raise ValueError(f'stamp_ns {doc.get("stamp_ns")!r} is not an integer') from None
    if abs(stamp - received_ns) > 86_400 * 10**9:
        stamp = received_ns
    return {'stamp_ns': stamp, 'kind': kind, 'text': text, 'id': str(doc.get('id', '')),
            'source': str(doc.get('source', ''))}


@dataclass
class MarkLog:
    """The marks of one recording, in arrival order."""

    marks: list[Mark] = field(default_factory=list)

    def add(self, data: str, received_ns: int) -> Mark:
        mark = Mark(index=len(self.marks), **decode(data, received_ns))
        self.marks.append(mark)
        return mark

    def custom_data(self) -> dict[str, str]:
        return {CUSTOM_DATA_KEY: json.dumps([asdict(m) for m in self.marks])}

    def diagnostics(self) -> dict[str, str]:
        return {'marks': str(len(self.marks)),
                'marks_recent': ','.join(m.id for m in self.marks[-RECENT:] if m.id)}


def parse_marks(records: Iterable[tuple[str, Mapping[str, str]]],
                custom_data: Mapping[str, Any]) -> list[Mark]:
    """Marks of a bag: the closed bag's custom data list, else the MCAP ``mark`` records (a cut
    bag); sorted by time. Entries that do not parse are left out."""
    listed: Any = custom_data.get(CUSTOM_DATA_KEY) if custom_data else None
    if isinstance(listed, str):
        try:
            listed = json.loads(listed)
        except ValueError:
            listed = None
    raw: Sequence[Mapping[str, Any]] = (
        [d for d in listed if isinstance(d, dict)] if isinstance(listed, list) and listed
        else [d for name, d in records if name == MARK_RECORD])
    marks = []
    for d in raw:
        try:
            marks.append(Mark(index=int(d.get('index', len(marks))), stamp_ns=int(d['stamp_ns']),
                              kind=str(d.get('kind', 'note')), text=str(d.get('text', '')),
                              id=str(d.get('id', '')), source=str(d.get('source', ''))))
        except (KeyError, TypeError, ValueError):
            continue
    return sorted(marks, key=lambda m: m.stamp_ns)


def marks_between(marks: Iterable[Mark], start_ns: int, end_ns: int) -> list[dict[str, Any]]:
    """The marks in ``[start_ns, end_ns]`` for an export's episode metadata (``t`` in s from
    ``start_ns``)."""
    return [{'t': (m.stamp_ns - start_ns) / 1e9, **asdict(m)} for m in marks
            if start_ns <= m.stamp_ns <= end_ns]
