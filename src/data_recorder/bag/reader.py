"""Read rosbag2 MCAP bags as raw CDR, in log-time order, with bounded memory (no rclpy here).

A *bag* is a rosbag2 directory (``metadata.yaml`` + one or more MCAP files, e.g. after splits), a
directory of MCAP files without ``metadata.yaml`` (a crashed recording), or a single ``.mcap`` file.
Bags written by rosbag2 (metadata versions 4..9), by the ``rosbags`` library and by this project's
recorder all read the same way.

Why this shape:

* Messages are yielded as :class:`RawMessage` tuples holding the recorded CDR bytes: the player
  publishes them unchanged and the tools deserialise only what they need.
* Several files are merged by ``heapq.merge`` on log time, each file read chunk by chunk through
  its MCAP index, so memory stays bounded by a few chunks whatever the bag size.
* A file whose summary/footer is missing (the recorder was killed, the disk filled up) is read with
  ``mcap``'s non-seeking stream reader up to the last whole record; :attr:`Bag.truncated` lists such
  files so that callers say so before playing what is readable.
"""

from __future__ import annotations

import heapq
import io
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from mcap.exceptions import McapError
from mcap.reader import SeekingReader
from mcap.records import Channel, Message, Metadata, Schema
from mcap.stream_reader import StreamReader

from data_recorder.bag.marks import parse_marks

#: Exceptions a damaged MCAP file raises inside the ``mcap`` package (besides its own McapError).
_DAMAGE = (McapError, struct.error, EOFError, ValueError, KeyError, IndexError, OSError)
#: Reorder window (messages, bytes) for files read without an index: recorders write in arrival
#: order, which is log-time order up to a few messages, so a small heap restores order with
#: bounded memory (the byte bound matters for image streams).
_REORDER_WINDOW = 4096
_REORDER_BYTES = 64 << 20


class BagError(ValueError):
    """A bag that cannot be read; the message names the file and what is wrong."""


class RawMessage(NamedTuple):
    """One recorded message: the CDR bytes exactly as recorded."""

    topic: str
    type: str
    log_time_ns: int
    publish_time_ns: int
    data: bytes


@dataclass(frozen=True)
class TopicInfo:
    """A recorded topic: its type, message count and the QoS its publishers offered."""

    name: str
    type: str
    count: int
    qos: tuple[dict[str, Any], ...] = ()
    serialization_format: str = 'cdr'
    msgdef: str = ''


@dataclass(frozen=True)
class Episode:
    """A span of the bag marked by the recorder (e.g. one skill run from activate to done)."""

    name: str
    start_ns: int
    end_ns: int
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class _FileInfo:
    path: Path
    indexed: bool                        # summary with chunk indexes present: seek by index
    truncated: bool
    counts: dict[str, int]
    types: dict[str, str]
    channel_meta: dict[str, dict[str, str]]
    msgdefs: dict[str, str]
    start_ns: int | None
    end_ns: int | None
    metadata: list[tuple[str, dict[str, str]]]
    error: str = ''
    summary: Any = None                  # mcap Summary of an indexed file (read once, at open)


def parse_qos(value: Any) -> tuple[dict[str, Any], ...]:
    """``offered_qos_profiles`` as rosbag2 writes it: a YAML string (Humble..Jazzy), a list (newer
    metadata versions) or nothing. Returns a tuple of dicts; unreadable input gives ``()``."""
    if value is None or value == '':
        return ()
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            return ()
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(p for p in value if isinstance(p, dict))


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_episodes(records: Iterable[tuple[str, dict[str, str]]], custom_data: dict[str, Any],
                   bag_start: int, bag_end: int) -> list[Episode]:
    """Episodes from MCAP ``Metadata`` records named ``episode`` and from metadata.yaml custom_data.

    Accepted keys: ``start_ns``/``start``, ``end_ns``/``end``, ``name``/``skill``/``id``; records
    sharing an ``index`` (the recorder writes one at start, one at end) are merged. An episode
    without an end ends where the next one starts (or at the end of the bag). ``custom_data`` may
    carry ``field_deploy.episodes`` (or ``episodes``) as a JSON/YAML list of the same dicts.
    """
    raw: list[dict[str, Any]] = [dict(d) for name, d in records if name == 'episode']
    if any('index' in d for d in raw):        # this project's recorder: a start and an end record
        merged: dict[str, dict[str, Any]] = {}
        for d in raw:
            merged.setdefault(str(d['index']), {}).update({k: v for k, v in d.items() if v != ''})
        raw = list(merged.values())
    listed = None
    for key in ('field_deploy.episodes', 'episodes'):
        if custom_data and custom_data.get(key):
            listed = custom_data[key]
            break
    if isinstance(listed, str):
        try:
            listed = yaml.safe_load(listed)     # JSON is YAML
        except yaml.YAMLError:
            listed = None
    if isinstance(listed, list) and listed:   # the closed bag's complete list wins
        raw = [d for d in listed if isinstance(d, dict)]
    items: list[tuple[int, int | None, str, dict[str, str]]] = []
    for i, d in enumerate(raw):
        start = _int(d.get('start_ns', d.get('start', d.get('start_time_ns'))))
        if start is None:
            continue
        end = _int(d.get('end_ns', d.get('end', d.get('end_time_ns'))))
        name = str(d.get('name') or d.get('skill') or d.get('id') or f'episode_{i:03d}')
        items.append((start, end, name, {str(k): str(v) for k, v in d.items()}))
    items.sort(key=lambda t: t[0])
    episodes = []
    for i, (start, end, name, fields) in enumerate(items):
        if end is None:
            end = items[i + 1][0] if i + 1 < len(items) else bag_end
        episodes.append(Episode(name, start, max(start, end), fields))
    return episodes


class Bag:
    """An opened bag: topics, counts, time span, episodes; :meth:`messages` iterates raw messages.

    Raises :class:`BagError` (or ``FileNotFoundError``) naming the path when the bag cannot be read
    at all; a file that is only truncated is listed in :attr:`truncated` instead.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f'{self.path}: no such bag (file or directory)')
        self.metadata: dict[str, Any] = {}
        self.files = self._resolve_files()
        self._infos = [self._inspect(f) for f in self.files]
        self.truncated: list[Path] = [i.path for i in self._infos if i.truncated]
        self.topics: dict[str, TopicInfo] = self._build_topics()
        starts = [i.start_ns for i in self._infos if i.start_ns is not None]
        ends = [i.end_ns for i in self._infos if i.end_ns is not None]
        self.start_ns: int = min(starts) if starts else 0
        self.end_ns: int = max(ends) if ends else self.start_ns
        self.message_count = sum(t.count for t in self.topics.values())
        self.size_bytes = sum(f.stat().st_size for f in self.files)
        custom = self.metadata.get('custom_data') or {}
        self.custom_data: dict[str, Any] = dict(custom) if isinstance(custom, dict) else {}
        self.metadata_records = [r for i in self._infos for r in i.metadata]
        self.episodes = parse_episodes(self.metadata_records, self.custom_data,
                                       self.start_ns, self.end_ns)
        self.marks = parse_marks(self.metadata_records, self.custom_data)
        """Operator marks (:mod:`data_recorder.bag.marks`), in time order."""

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    # ---------------------------------------------------------------- opening
    def _resolve_files(self) -> list[Path]:
        if self.path.is_file():
            if self.path.name == 'metadata.yaml':
                self.path = self.path.parent
            else:
                return [self.path]
        meta_path = self.path / 'metadata.yaml'
        listed: list[Path] = []
        if meta_path.exists():
            try:
                doc = yaml.safe_load(meta_path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise BagError(f'{meta_path}: not valid YAML ({exc.__class__.__name__})') from None
            info = doc.get('rosbag2_bagfile_information') if isinstance(doc, dict) else None
            if not isinstance(info, dict):
                raise BagError(f'{meta_path}: missing key rosbag2_bagfile_information')
            self.metadata = info
            storage = info.get('storage_identifier', 'mcap')
            if storage not in ('mcap', '', None):
                raise BagError(f'{meta_path}: storage_identifier {storage!r} is not supported '
                               '(only MCAP bags; convert sqlite3 bags with `rosbags-convert`)')
            listed = [self.path / p for p in info.get('relative_file_paths') or []]
            if info.get('compression_mode') and str(info.get('compression_mode')).upper() == 'FILE':
                raise BagError(f'{meta_path}: file-level compression is not supported '
                               '(MCAP chunk compression is)')
            missing = [p for p in listed if not p.exists()]
            if missing:
                raise BagError(f'{missing[0]}: listed in {meta_path} but missing')
        files = listed or sorted(self.path.glob('*.mcap'))
        if not files:
            raise BagError(f'{self.path}: no MCAP files in this directory')
        return files

    def _inspect(self, path: Path) -> _FileInfo:
        """Topics, counts and time span of one file: from its summary, else by a linear scan."""
        try:
            stream = path.open('rb')
        except OSError as exc:
            raise BagError(f'{path}: cannot open ({exc.strerror})') from None
        with stream:
            try:
                reader = SeekingReader(stream)
            except _DAMAGE:
                raise BagError(f'{path}: not an MCAP file (bad magic)') from None
            summary = None
            try:
                summary = reader.get_summary()
            except _DAMAGE:
                summary = None
            if summary is not None and summary.statistics is not None and summary.chunk_indexes:
                counts: dict[str, int] = {}
                for cid, n in summary.statistics.channel_message_counts.items():
                    ch = summary.channels.get(cid)
                    if ch is not None:
                        counts[ch.topic] = counts.get(ch.topic, 0) + n
                types, meta, defs = self._channel_types(summary.channels.values(), summary.schemas)
                for topic in types:
                    counts.setdefault(topic, 0)
                records: list[tuple[str, dict[str, str]]] = []
                try:
                    records = [(m.name, dict(m.metadata)) for m in reader.iter_metadata()]
                except _DAMAGE:
                    records = []
                stats = summary.statistics
                has = stats.message_count > 0
                return _FileInfo(path, True, False, counts, types, meta, defs,
                                 stats.message_start_time if has else None,
                                 stats.message_end_time if has else None, records, '', summary)
            return self._scan(path, stream)

    @staticmethod
    def _channel_types(channels: Iterable[Channel], schemas: dict[int, Schema]
                       ) -> tuple[dict[str, str], dict[str, dict[str, str]], dict[str, str]]:
        types, meta, defs = {}, {}, {}
        for ch in channels:
            schema = schemas.get(ch.schema_id)
            types[ch.topic] = schema.name if schema is not None else ''
            meta[ch.topic] = dict(ch.metadata)
            if schema is not None:
                defs[ch.topic] = schema.data.decode(errors='replace')
        return types, meta, defs

    def _scan(self, path: Path, stream: io.BufferedReader) -> _FileInfo:
        """Linear scan of a file without a usable summary: counts up to the last whole record."""
        stream.seek(0)
        schemas: dict[int, Schema] = {}
        channels: dict[int, Channel] = {}
        counts: dict[int, int] = {}
        start = end = None
        records: list[tuple[str, dict[str, str]]] = []
        complete = False
        error = ''
        try:
            for record in StreamReader(stream, skip_magic=False).records:
                if isinstance(record, Message):
                    counts[record.channel_id] = counts.get(record.channel_id, 0) + 1
                    t = record.log_time
                    start = t if start is None or t < start else start
                    end = t if end is None or t > end else end
                elif isinstance(record, Channel):
                    channels[record.id] = record
                elif isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Metadata):
                    records.append((record.name, dict(record.metadata)))
            complete = True
        except _DAMAGE as exc:
            error = f'{exc.__class__.__name__}: {exc}'
        if not channels and not complete:
            raise BagError(f'{path}: not a readable MCAP file ({error})')
        types, meta, defs = self._channel_types(channels.values(), schemas)
        by_topic: dict[str, int] = dict.fromkeys(types, 0)
        for cid, n in counts.items():
            by_topic[channels[cid].topic] += n
        return _FileInfo(path, False, not complete, by_topic, types, meta, defs, start, end,
                         records, error)

    def _build_topics(self) -> dict[str, TopicInfo]:
        declared: dict[str, dict[str, Any]] = {}
        for entry in self.metadata.get('topics_with_message_count') or []:
            tm = entry.get('topic_metadata') if isinstance(entry, dict) else None
            if isinstance(tm, dict) and tm.get('name'):
                declared[tm['name']] = tm
        topics: dict[str, TopicInfo] = {}
        names = list(declared)
        for info in self._infos:
            names += [t for t in info.types if t not in names]
        for name in names:
            count = sum(i.counts.get(name, 0) for i in self._infos)
            tm = declared.get(name, {})
            type_name = tm.get('type') or next((i.types[name] for i in self._infos
                                                if i.types.get(name)), '')
            qos = parse_qos(tm.get('offered_qos_profiles'))
            if not qos:
                for i in self._infos:
                    qos = parse_qos(i.channel_meta.get(name, {}).get('offered_qos_profiles'))
                    if qos:
                        break
            msgdef = next((i.msgdefs[name] for i in self._infos if name in i.msgdefs), '')
            topics[name] = TopicInfo(name, type_name, count, qos,
                                     tm.get('serialization_format', 'cdr'), msgdef)
        return topics

    # ---------------------------------------------------------------- reading
    def messages(self, topics: Iterable[str] | None = None, start_ns: int | None = None,
                 end_ns: int | None = None) -> Iterator[RawMessage]:
        """Raw messages of ``topics`` (all if None) with ``start_ns <= log_time < end_ns``, in
        log-time order across every file of the bag."""
        wanted = None if topics is None else frozenset(topics)
        streams = [self._file_messages(i, wanted, start_ns, end_ns) for i in self._infos]
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=lambda m: m.log_time_ns)

    def _file_messages(self, info: _FileInfo, wanted: frozenset[str] | None, start: int | None,
                       end: int | None) -> Iterator[RawMessage]:
        if wanted is not None and not any(t in wanted for t in info.types):
            return
        with info.path.open('rb') as stream:
            if info.indexed:
                yield from _indexed_messages(info.path, stream, info.summary, wanted, start, end)
                return
            yield from self._stream_messages(info, stream, wanted, start, end)

    @staticmethod
    def _stream_messages(info: _FileInfo, stream: io.BufferedReader, wanted: frozenset[str] | None,
                         start: int | None, end: int | None) -> Iterator[RawMessage]:
        schemas: dict[int, Schema] = {}
        channels: dict[int, tuple[str, str]] = {}
        heap: list[tuple[int, int, RawMessage]] = []
        seq = 0
        held = 0
        try:
            for record in StreamReader(stream, skip_magic=False).records:
                if isinstance(record, Message):
                    ch = channels.get(record.channel_id)
                    if ch is None or (wanted is not None and ch[0] not in wanted):
                        continue
                    t = record.log_time
                    if (start is not None and t < start) or (end is not None and t >= end):
                        continue
                    seq += 1
                    heapq.heappush(heap, (t, seq, RawMessage(ch[0], ch[1], t, record.publish_time,
                                                             record.data)))
                    held += len(record.data)
                    while len(heap) > _REORDER_WINDOW or (held > _REORDER_BYTES and len(heap) > 1):
                        out = heapq.heappop(heap)[2]
                        held -= len(out.data)
                        yield out
                elif isinstance(record, Channel):
                    schema = schemas.get(record.schema_id)
                    channels[record.id] = (record.topic, schema.name if schema else '')
                elif isinstance(record, Schema):
                    schemas[record.id] = record
        except _DAMAGE:
            pass  # truncated: what was read is played; Bag.truncated said so
        while heap:
            yield heapq.heappop(heap)[2]


_MESSAGE_OP = 0x05
_SALVAGE = ' (`field_deploy bag verify` names the damage, `bag recover` keeps every intact chunk)'
_CHUNK_OP = 0x06


def _decompress(path: Path, compression: str, data: bytes, size: int) -> bytes:
    if compression == '':
        return data
    if compression == 'zstd':
        import zstandard
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    if compression == 'lz4':
        import lz4.frame
        return lz4.frame.decompress(data)
    raise BagError(f'{path}: chunk compression {compression!r} is not supported (zstd, lz4)')


def _chunk_messages(path: Path, stream: io.BufferedReader, index: Any, channels: dict[int, tuple[str, str]],
                    start: int | None, end: int | None) -> list[RawMessage]:
    """Every wanted message of one chunk, sorted by log time (stable)."""
    stream.seek(index.chunk_start_offset)
    buf = stream.read(index.chunk_length)
    if len(buf) != index.chunk_length or buf[0] != _CHUNK_OP:
        raise BagError(f'{path}: chunk at offset {index.chunk_start_offset} is damaged{_SALVAGE}')
    off = 9 + 28
    (clen,) = struct.unpack_from('<I', buf, off)
    compression = buf[off + 4: off + 4 + clen].decode()
    off += 4 + clen
    (rlen,) = struct.unpack_from('<Q', buf, off)
    records = _decompress(path, compression, buf[off + 8: off + 8 + rlen], index.uncompressed_size)
    out: list[RawMessage] = []
    unpack = struct.Struct('<BQ').unpack_from
    head = struct.Struct('<HIQQ').unpack_from
    p, n = 0, len(records)
    lo = -1 if start is None else start
    hi = 1 << 64 if end is None else end
    while p + 9 <= n:
        op, length = unpack(records, p)
        body = p + 9
        if op == _MESSAGE_OP:
            cid, _seq, log_time, pub_time = head(records, body)
            ch = channels.get(cid)
            if ch is not None and lo <= log_time < hi:
                out.append(RawMessage(ch[0], ch[1], log_time, pub_time,
                                      records[body + 22: body + length]))
        p = body + length
    out.sort(key=_log_time)
    return out


def _log_time(m: RawMessage) -> int:
    return m.log_time_ns


def _indexed_messages(path: Path, stream: io.BufferedReader, summary: Any,
                      wanted: frozenset[str] | None, start: int | None,
                      end: int | None) -> Iterator[RawMessage]:
    """Log-time-ordered messages of an indexed MCAP file, chunk by chunk.

    Measured on the reference load: ``mcap``'s ``iter_messages(log_time_order=True)`` spends most
    of its time comparing heap entries in Python (one per message); here each chunk is parsed
    with ``struct`` and sorted with ``list.sort``, and chunks are merged only where their time
    ranges overlap (recorders write in arrival order, so runs are one chunk long). Memory: the
    chunks of one overlapping run.
    """
    channels = {}
    for cid, ch in summary.channels.items():
        if wanted is None or ch.topic in wanted:
            schema = summary.schemas.get(ch.schema_id)
            channels[cid] = (ch.topic, schema.name if schema else '')
    if not channels:
        return
    chunks = [c for c in summary.chunk_indexes
              if (start is None or c.message_end_time >= start)
              and (end is None or c.message_start_time < end)
              and (not c.message_index_offsets or any(k in channels for k in c.message_index_offsets))]
    chunks.sort(key=lambda c: (c.message_start_time, c.chunk_start_offset))
    i = 0
    try:
        while i < len(chunks):
            run_end = chunks[i].message_end_time
            j = i + 1
            while j < len(chunks) and chunks[j].message_start_time < run_end:
                run_end = max(run_end, chunks[j].message_end_time)
                j += 1
            if j == i + 1:
                yield from _chunk_messages(path, stream, chunks[i], channels, start, end)
            else:
                yield from heapq.merge(*[_chunk_messages(path, stream, c, channels, start, end)
                                         for c in chunks[i:j]], key=_log_time)
            i = j
    except (struct.error, ValueError, OSError) as exc:
        if isinstance(exc, BagError):
            raise
        raise BagError(f'{path}: corrupt chunk ({exc}){_SALVAGE}') from None


def describe_qos(profiles: tuple[dict[str, Any], ...]) -> str:
    """One short line for ``bag info``: reliability/durability/depth of the first offered profile."""
    if not profiles:
        return 'unknown'
    p = profiles[0]
    rel = {1: 'reliable', 2: 'best_effort'}.get(_int(p.get('reliability')) or 0,
                                                  str(p.get('reliability', '?')))
    dur = {1: 'transient_local', 2: 'volatile'}.get(_int(p.get('durability')) or 0,
                                                     str(p.get('durability', '?')))
    extra = f' (+{len(profiles) - 1} more)' if len(profiles) > 1 else ''
    return f'{rel}, {dur}, depth {p.get("depth", "?")}{extra}'


def to_json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)
