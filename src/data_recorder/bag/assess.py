"""What a damaged MCAP file still holds and what it lost: the report of ``bag verify`` and
``bag recover`` (pure).

Counts are given where they are knowable, and say so where they are not:

* messages **kept**: counted in every chunk whose CRC passed (exact);
* messages **lost** per topic: the summary's Statistics minus what was kept, when the summary is
  there and trustworthy (exact); per damaged region, from the lost chunks' MessageIndex records
  when those survived (exact) or only the topics the chunk index names (count unknown);
* the **time range** of each damaged region: from the lost chunks' index entries or headers, else
  between the neighbouring intact chunks (the last one before, the first one after).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_recorder.bag.scan import TRUSTED, ChunkInfo, Region, Scan

#: Summary states whose Statistics record can be trusted for "lost = recorded − kept": a cut
#: file's summary that survived whole after DataEnd counts too.
TRUSTED_SUMMARY = (*TRUSTED, 'unverified (no footer)')


@dataclass
class Lost:
    """One damaged region and what it cost."""

    start: int                             # bytes [start, end) of the file
    end: int
    problem: str
    cut: bool
    chunks: list[int]                      # ordinals of the lost chunks
    start_ns: int | None
    end_ns: int | None                     # None: to the end of the recording
    time_from: str                         # 'chunk index/header' | 'neighbouring chunks' | 'unknown'
    topics: dict[str, int | None]          # topic -> messages lost (None: unknown)


@dataclass
class Assessment:
    path: Path
    size: int
    intact: bool
    cut_only: bool
    chunks: int
    bad_chunks: list[ChunkInfo]
    problems: list[str]
    kept: dict[str, int]                   # topic -> messages in intact chunks (exact)
    lost: list[Lost]
    lost_by_topic: dict[str, int] | None   # from the summary's statistics (exact) or None
    orphans: int = 0                       # messages in intact chunks whose channel was lost
    no_crc: int = 0                        # intact chunks written without CRC (not verifiable)
    first_ns: int | None = None            # first intact message time (origin of "+s" times)
    summary_state: str = 'missing'
    data_crc: str = 'missing'
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kept_messages(self) -> int:
        return sum(self.kept.values())

    @property
    def lost_messages(self) -> int | None:
        if self.lost_by_topic is not None:
            return sum(self.lost_by_topic.values()) + self.orphans
        counts = [n for lost in self.lost for n in lost.topics.values()]
        if any(n is None for n in counts) or (self.lost and not counts):
            return None
        return sum(n for n in counts if n is not None) + self.orphans

    def as_dict(self) -> dict[str, Any]:
        return {
            'file': str(self.path), 'size_bytes': self.size, 'intact': self.intact,
            'chunks': self.chunks, 'summary': self.summary_state, 'data_section_crc': self.data_crc,
            'problems': list(self.problems),
            'bad_chunks': [{'chunk': c.number, 'offset': c.offset, 'length': c.end - c.offset,
                            'start_ns': c.start_ns, 'end_ns': c.end_ns, 'problem': c.problem}
                           for c in self.bad_chunks],
            'kept_messages': self.kept_messages, 'kept': dict(self.kept),
            'lost_messages': self.lost_messages, 'lost_by_topic': self.lost_by_topic,
            'orphans': self.orphans, 'chunks_without_crc': self.no_crc,
            'lost': [dict(vars(lost)) for lost in self.lost],
        }


def assess(scan: Scan) -> Assessment:
    kept: dict[str, int] = {}
    orphans = 0
    for chunk in scan.good_chunks:
        for cid, n in chunk.counts.items():
            if cid in scan.channels:
                kept[scan.channels[cid].topic] = kept.get(scan.channels[cid].topic, 0) + n
            else:
                orphans += n
    for cid, n in scan.loose_counts.items():
        topic = scan.topic(cid)
        kept[topic] = kept.get(topic, 0) + n
    for channel in scan.channels.values():
        kept.setdefault(channel.topic, 0)
    lost_by_topic = None
    stats = scan.summary.statistics if scan.summary else None
    if stats is not None and scan.summary_state in TRUSTED_SUMMARY and not scan.intact:
        recorded: dict[str, int] = {}
        for cid, n in stats.channel_message_counts.items():
            recorded[scan.topic(cid)] = recorded.get(scan.topic(cid), 0) + n
        lost_by_topic = {t: n - kept.get(t, 0) for t, n in recorded.items() if n > kept.get(t, 0)}
    return Assessment(scan.path, scan.size, scan.intact, scan.cut_only, len(scan.chunks),
                      [c for c in scan.chunks if not c.ok], list(scan.problems), kept,
                      [_lost(scan, r) for r in scan.regions], lost_by_topic, orphans,
                      sum(1 for c in scan.good_chunks if not c.crc),
                      min((c.start_ns for c in scan.good_chunks), default=None),
                      scan.summary_state, scan.data_crc)


def _lost(scan: Scan, region: Region) -> Lost:
    inside = [c for c in scan.chunks
              if not c.ok and region.start <= c.offset < max(region.end, region.start + 1)]
    topics: dict[str, int | None] = {}
    for chunk in inside:
        for cid, n in chunk.counts.items():
            topic = scan.topic(cid)
            if not chunk.counts_known or topics.get(topic, 0) is None:
                topics[topic] = None
            else:
                topics[topic] = (topics.get(topic) or 0) + n
    if inside:
        start, end, source = (min(c.start_ns for c in inside), max(c.end_ns for c in inside),
                              'chunk index/header')
    else:
        before = [c.end_ns for c in scan.good_chunks if c.end <= region.start]
        after = [c.start_ns for c in scan.good_chunks if c.offset >= region.end]
        start = max(before) if before else None
        end = min(after) if after else None
        source = 'neighbouring chunks' if before or after else 'unknown'
    return Lost(region.start, region.end, region.problem, region.cut,
                [c.number for c in inside], start, end, source, topics)


def _stamp(ns: int | None, origin: int | None) -> str:
    if ns is None:
        return '?'
    t = dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc)
    rel = f' (+{(ns - origin) / 1e9:.3f} s)' if origin is not None else ''
    return f'{t:%H:%M:%S}.{ns % 1_000_000_000:09d}{rel}'


def render(a: Assessment) -> list[str]:
    """Human lines: one verdict, then each problem (file, offset, chunk, time, topics); times
    as UTC clock time and seconds after the first intact message."""
    name, origin = str(a.path), a.first_ns
    no_crc = (f'; {a.no_crc} of them written without CRC (their bytes cannot be checked, only '
              'their framing)' if a.no_crc else '')
    if a.intact:
        return [f'{name}: intact ({a.chunks} chunks{no_crc}; data-section CRC {a.data_crc}; '
                f'summary {a.summary_state}; {a.kept_messages} messages)']
    lost = a.lost_messages
    lines = [f'{name}: DAMAGED: {len(a.bad_chunks)} of {a.chunks} chunks bad; '
             f'{a.kept_messages} messages intact; lost: '
             + (f'{lost} messages' if lost is not None else 'unknown number of messages')
             + (' (from the summary statistics)' if a.lost_by_topic is not None else '')]
    lines += [f'  {p}' for p in a.problems]
    for r in a.lost:
        what = ', '.join(f'{t} ({"?" if n is None else n})' for t, n in sorted(r.topics.items()))
        chunks = (f'chunk{"s" if len(r.chunks) > 1 else ""} '
                  f'#{", #".join(str(n) for n in r.chunks)}; ' if r.chunks else '')
        end = _stamp(r.end_ns, origin) if r.end_ns is not None else 'the end'
        lines.append(f'  bytes {r.start}..{r.end} ({r.end - r.start} B): {chunks}{r.problem}; '
                     f'time {_stamp(r.start_ns, origin)} .. {end} (from {r.time_from}); '
                     f'topics: {what or "unknown"}')
    if a.lost_by_topic:
        lines.append('  lost per topic: ' + ', '.join(f'{t} {n}' for t, n in
                                                      sorted(a.lost_by_topic.items())))
    if a.orphans:
        lines.append(f'  {a.orphans} messages in intact chunks lost: their channel record is gone')
    return lines
