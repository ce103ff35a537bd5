"""Walk an MCAP file record by record, check every CRC, and resynchronise past damage (pure).

``mcap``'s readers and ``rosbags`` stop at the first bad byte or refuse the whole file on one bad
chunk CRC. Salvage needs the opposite: know exactly which bytes are good. :func:`scan` reads the
file through ``mmap`` (bounded memory) in three steps:

1. **Footer and summary** from the end of the file (as a seeking reader does), with the summary
   CRC checked. Its chunk and metadata indexes give *known offsets* to resynchronise on, and its
   statistics tell how many messages a damaged region held.
2. **Data section walk** from the start: every record's framing must parse strictly (a string or
   array may not run past its record); every Chunk is decompressed and its CRC checked. A bad
   chunk whose own framing is consistent is skipped whole (its length is trusted: the next
   record must parse, or we resynchronise). Anything else that does not parse starts a *damaged
   region*, and the walk **resynchronises**: it looks forward for the next byte ``0x06`` that
   starts a plausible Chunk record (compression ``''``/``lz4``/``zstd``, lengths that add up,
   inside the file) whose content decompresses and passes its CRC — or for the next offset the
   summary indexes, whichever comes first. So one bad sector costs the chunks it touches, not
   the rest of the file.
3. **Data section CRC** (when the writer set it) over everything before DataEnd: it catches
   damage outside the chunks (message indexes, schema records) that chunk CRCs cannot see.

The result (:class:`Scan`) lists every chunk found, good or bad, the damaged regions, and the
schemas/channels from wherever they survived (chunks, the data section, the summary).
"""

from __future__ import annotations

import bisect
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcap.records import (
    Attachment,
    AttachmentIndex,
    Channel,
    ChunkIndex,
    DataEnd,
    Footer,
    Header,
    McapRecord,
    Message,
    MessageIndex,
    Metadata,
    MetadataIndex,
    Schema,
    Statistics,
)
from mcap.summary import Summary

from data_recorder.bag.records import (
    CHUNK_HEAD,
    COMPRESSIONS,
    FOOTER_RECORD,
    MAGIC,
    MAX_CHUNK_BYTES,
    NO_FOOTER,
    OP_CHUNK,
    OP_FOOTER,
    OP_MESSAGE,
    READERS,
    RECORD_ERRORS,
    RECORD_HEAD,
    U64,
    chunk_contents,
    chunk_records,
    crc32,
    parse_record,
)

#: Summary states whose indexes and statistics are believed (a summary whose CRC fails is not).
TRUSTED = ('ok', 'crc not set')


class NotMcapError(ValueError):
    """The input is not an MCAP file at all (no magic and no valid chunk): nothing to salvage."""


@dataclass
class ChunkInfo:
    """One Chunk record found in the file (or listed by the summary but not found)."""

    offset: int
    end: int                              # offset just past the record (past EOF when cut)
    start_ns: int
    end_ns: int
    compression: str
    uncompressed_size: int
    crc: int
    number: int = -1                      # ordinal among the file's chunks (by offset)
    ok: bool = False
    problem: str = ''
    counts: dict[int, int] = field(default_factory=dict)   # channel id -> messages
    counts_known: bool = False            # counts are exact (parsed, or from message indexes)
    index: dict[int, list[tuple[int, int]]] = field(default_factory=dict, repr=False)

    @property
    def records_offset(self) -> int:
        return self.offset + 9 + 32 + len(self.compression.encode()) + 8


@dataclass
class Region:
    """A damaged stretch of the file: [start, end) bytes."""

    start: int
    end: int
    problem: str
    cut: bool = False                     # the file ends inside it (truncation, not corruption)


@dataclass
class Scan:
    """Everything :func:`scan` learnt about one file."""

    path: Path
    size: int
    magic: bool = False
    header: Header | None = None
    schemas: dict[int, Schema] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    chunks: list[ChunkInfo] = field(default_factory=list)
    loose: list[int] = field(default_factory=list)   # offsets of Message records outside chunks
    loose_counts: dict[int, int] = field(default_factory=dict)
    metadata: list[tuple[int, Metadata]] = field(default_factory=list)
    attachments: list[tuple[int, Attachment]] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # file-level: CRCs, footer, summary
    summary: Summary | None = None
    summary_state: str = 'missing'        # ok | crc not set | crc mismatch | damaged | unverified
    data_crc: str = 'missing'             # ok | not set | mismatch | missing (no DataEnd)

    @property
    def intact(self) -> bool:
        return not self.regions and not self.problems

    @property
    def cut_only(self) -> bool:
        """Only a truncation (the recorder killed): no corrupted byte before the cut."""
        return all(r.cut for r in self.regions) and all(p.startswith(NO_FOOTER)
                                                        for p in self.problems)

    @property
    def good_chunks(self) -> list[ChunkInfo]:
        return [c for c in self.chunks if c.ok]

    def topic(self, channel_id: int) -> str:
        channel = self.channels.get(channel_id)
        return channel.topic if channel else f'<channel {channel_id}>'


class _Scanner:
    def __init__(self, path: Path, buf: Any, size: int) -> None:
        self.buf = buf
        self.scan = Scan(path, size)
        self.size = size
        self.known: list[int] = []        # offsets the summary indexes (resynchronisation points)

    # -- records ---------------------------------------------------------------------------
    def chunk_header(self, pos: int, limit: int) -> ChunkInfo | None:
        """The chunk at ``pos`` if its framing is plausible (end may lie past ``limit``: a cut)."""
        buf = self.buf
        if pos + 9 + 32 > self.size or buf[pos] != OP_CHUNK:
            return None
        length = U64.unpack_from(buf, pos + 1)[0]
        start, end, usize, crc, clen = CHUNK_HEAD.unpack_from(buf, pos + 9)
        if clen > 4 or pos + 9 + 32 + clen + 8 > self.size:
            return None
        try:
            compression = bytes(buf[pos + 41: pos + 41 + clen]).decode()
        except UnicodeError:
            return None
        rlen = U64.unpack_from(buf, pos + 41 + clen)[0]
        if (compression not in COMPRESSIONS or 40 + clen + rlen != length or start > end
                or usize > MAX_CHUNK_BYTES or rlen > MAX_CHUNK_BYTES
                or (compression == '' and rlen != usize)):
            return None
        return ChunkInfo(pos, pos + 9 + length, start, end, compression, usize, crc)

    def chunk_records(self, info: ChunkInfo) -> bytes:
        return chunk_records(self.buf, self.size, info)

    def check_chunk(self, info: ChunkInfo, collect: bool) -> None:
        """Decompress, CRC-check and parse the chunk's records; sets ``ok``/``problem``/``counts``."""
        try:
            contents = chunk_contents(self.chunk_records(info))
        except ValueError as exc:
            info.ok, info.problem = False, str(exc)
            return
        info.ok, info.counts, info.counts_known = True, contents.counts, True
        info.index = contents.index
        if contents.start_ns is not None and (contents.start_ns, contents.end_ns) != \
                (info.start_ns, info.end_ns):
            self.scan.problems.append(
                f'chunk at byte {info.offset}: header time range {info.start_ns}..{info.end_ns} '
                f'is not its messages\' {contents.start_ns}..{contents.end_ns} (damaged header)')
            info.start_ns, info.end_ns = contents.start_ns, contents.end_ns
        if collect:
            for s in contents.schemas:
                self.scan.schemas.setdefault(s.id, s)
            for c in contents.channels:
                self.scan.channels.setdefault(c.id, c)

    def record_at(self, pos: int, limit: int) -> tuple[int, McapRecord, int] | None:
        """(opcode, record, end) of a strictly parsed non-chunk record at ``pos``, else None."""
        if pos + 9 > limit:
            return None
        op, length = RECORD_HEAD.unpack_from(self.buf, pos)
        end = pos + 9 + length
        if end > limit:
            return None
        if op >= 0x80:                                   # private record: skipped, as the spec says
            return op, McapRecord(), end
        if op not in READERS and op != OP_MESSAGE:
            return None
        try:
            return op, parse_record(op, bytes(self.buf[pos + 9: end])), end
        except RECORD_ERRORS:
            return None

    # -- steps -----------------------------------------------------------------------------
    def read_summary(self) -> int:
        """Footer and summary from the end; returns where the data section walk must stop."""
        scan, buf, size = self.scan, self.buf, self.size
        footer_at = size - 8 - FOOTER_RECORD
        if footer_at < 8 or bytes(buf[size - 8:]) != MAGIC or buf[footer_at] != OP_FOOTER:
            scan.problems.append(NO_FOOTER + ': the file was not closed (cut, or its end is damaged)')
            return size
        found = self.record_at(footer_at, size - 8)
        if found is None or not isinstance(found[1], Footer):
            scan.problems.append(f'footer at byte {footer_at} is damaged')
            return size
        footer = found[1]
        if footer.summary_start == 0:
            return footer_at
        if not 8 <= footer.summary_start <= footer_at:
            scan.problems.append(f'footer points at a summary at byte {footer.summary_start}, '
                                 'outside the file')
            return size
        state = 'crc not set'
        if footer.summary_crc:
            crc = crc32(buf, footer.summary_start, size - 8 - 4)
            state = 'ok' if crc == footer.summary_crc else 'crc mismatch'
            if state != 'ok':
                scan.problems.append(f'summary CRC mismatch (stored {footer.summary_crc:#010x}, '
                                     f'computed {crc:#010x})')
        end = self.read_summary_records(footer.summary_start, footer_at)
        if end < footer_at:
            state = 'damaged'
            scan.problems.append(f'summary damaged at byte {end}')
        scan.summary_state = state
        return footer.summary_start

    def read_summary_records(self, pos: int, limit: int) -> int:
        """Collect summary records from ``pos``; returns where parsing stopped."""
        summary = self.scan.summary = self.scan.summary or Summary()
        while pos < limit:
            found = self.record_at(pos, limit)
            if found is None:
                return pos
            _op, rec, pos = found
            if isinstance(rec, Schema):
                summary.schemas.setdefault(rec.id, rec)
            elif isinstance(rec, Channel):
                summary.channels.setdefault(rec.id, rec)
            elif isinstance(rec, ChunkIndex):
                summary.chunk_indexes.append(rec)
            elif isinstance(rec, Statistics):
                summary.statistics = rec
            elif isinstance(rec, MetadataIndex):
                summary.metadata_indexes.append(rec)
            elif isinstance(rec, AttachmentIndex):
                summary.attachment_indexes.append(rec)
            elif isinstance(rec, Footer):
                return pos
        return pos

    def resync(self, pos: int, limit: int) -> int:
        """The next offset >= ``pos`` where a verified Chunk or an indexed record starts."""
        at = bisect.bisect_left(self.known, pos)
        stop = min(self.known[at] if at < len(self.known) else limit, limit)
        buf = self.buf
        while True:
            pos = buf.find(b'\x06', pos, stop)
            if pos < 0:
                return stop
            info = self.chunk_header(pos, limit)
            if info is not None and info.end <= limit:
                try:
                    chunk_contents(self.chunk_records(info))
                    return pos
                except ValueError:
                    pass
            pos += 1

    def walk(self, limit: int) -> None:
        """The data section: records, chunks (CRC-checked), damaged regions and resyncs."""
        scan, size = self.scan, self.size
        pos = 8 if scan.magic else 0
        if not scan.magic:
            pos = self.resync(0, limit)
            scan.regions.append(Region(0, pos, 'no MCAP magic at the start of the file'))
        last: ChunkInfo | None = None
        while pos < limit:
            info = self.chunk_header(pos, limit)
            if info is not None:
                self.check_chunk(info, collect=True)
                scan.chunks.append(info)
                last = info
                after = min(info.end, limit)
                if not info.ok:
                    # a length past the end is a cut only if no valid chunk follows (a damaged
                    # length field would otherwise swallow the rest of the file)
                    after = self.resync(pos + 1, limit) if info.end > limit else after
                    cut = after >= limit and info.end > limit and limit == size
                    scan.regions.append(Region(pos, after, info.problem, cut))
                pos = after
                continue
            found = self.record_at(pos, limit)
            if found is None:
                after = self.resync(pos + 1, limit)
                cut = after >= limit and self._runs_past_end(pos, limit)
                scan.regions.append(Region(pos, after, (
                    f'the file ends inside a record (cut at byte {size})' if cut
                    else 'unreadable bytes (no valid record framing)'), cut))
                pos = after
                continue
            op, rec, end = found
            at = bisect.bisect_right(self.known, pos)
            inside = self.known[at] if at < len(self.known) and self.known[at] < end else None
            if inside is not None:       # a record may not swallow what the summary indexes
                scan.regions.append(Region(pos, inside, 'a damaged record runs over the chunk or '
                                           f'record the summary indexes at byte {inside}'))
                pos = inside
                continue
            if isinstance(rec, Schema):
                scan.schemas.setdefault(rec.id, rec)
            elif isinstance(rec, Channel):
                scan.channels.setdefault(rec.id, rec)
            elif isinstance(rec, Message):
                scan.loose.append(pos)
                scan.loose_counts[rec.channel_id] = scan.loose_counts.get(rec.channel_id, 0) + 1
            elif isinstance(rec, MessageIndex) and last is not None and not last.ok:
                last.counts[rec.channel_id] = len(rec.records)
                last.counts_known = True
            elif isinstance(rec, MessageIndex) and last is not None and \
                    sorted(rec.records) != sorted(last.index.get(rec.channel_id, [])):
                scan.problems.append(f'message index at byte {pos} does not match the chunk at '
                                     f'byte {last.offset} (damaged index)')
            elif isinstance(rec, Metadata):
                scan.metadata.append((pos, rec))
            elif isinstance(rec, Attachment):
                self._attachment(pos, end, rec)
            elif isinstance(rec, Header):
                scan.header = scan.header or rec
            elif isinstance(rec, DataEnd):
                self._data_crc(pos, rec)
                if limit == size:                         # no footer: the summary may still follow
                    stopped = self.read_summary_records(end, size)
                    scan.summary_state = 'unverified (no footer)'
                    if stopped < size:
                        scan.regions.append(Region(stopped, size, 'summary cut or damaged', True))
                elif end != limit:
                    scan.problems.append(f'{limit - end} bytes after DataEnd (byte {pos}) that the '
                                         'footer does not point at (damaged footer?)')
                    if scan.summary is None:
                        self.read_summary_records(end, limit)
                        scan.summary_state = 'unverified (damaged footer)'
                return
            elif op in (0x08, 0x0B, 0x0A, 0x0D, 0x0E, OP_FOOTER):   # summary records, no DataEnd
                scan.problems.append(f'summary records at byte {pos} without a DataEnd record')
                return
            pos = end
        if scan.data_crc == 'missing' and limit != size:
            scan.problems.append('no DataEnd record before the summary')

    def _runs_past_end(self, pos: int, limit: int) -> bool:
        """A record whose declared length runs past the end of a file without footer: a cut."""
        if limit != self.size or pos + 9 > self.size:
            return limit == self.size
        op, length = RECORD_HEAD.unpack_from(self.buf, pos)
        return (op in READERS or op in (OP_MESSAGE, OP_CHUNK)) and pos + 9 + length > self.size

    def _attachment(self, pos: int, end: int, rec: Attachment) -> None:
        (stored,) = struct.unpack_from('<I', self.buf, end - 4)
        if stored and crc32(self.buf, pos + 9, end - 4) != stored:
            self.scan.regions.append(Region(pos, end, f'attachment {rec.name!r} CRC mismatch'))
        else:
            self.scan.attachments.append((pos, rec))

    def _data_crc(self, pos: int, rec: DataEnd) -> None:
        if not rec.data_section_crc:
            self.scan.data_crc = 'not set'
            return
        crc = crc32(self.buf, 0, pos)
        self.scan.data_crc = 'ok' if crc == rec.data_section_crc else 'mismatch'
        if crc != rec.data_section_crc:
            self.scan.problems.append(f'data-section CRC mismatch (stored '
                                      f'{rec.data_section_crc:#010x}, computed {crc:#010x})')

    def merge_summary(self) -> None:
        """Fill schemas/channels the data section lost from the summary; add the chunks the
        summary lists but the walk did not find (they were inside a damaged region)."""
        scan, summary = self.scan, self.scan.summary
        if summary is None:
            return
        for table, copies in ((scan.schemas, summary.schemas), (scan.channels, summary.channels)):
            for key, record in copies.items():
                if table.setdefault(key, record) != record:
                    scan.problems.append(f'the summary\'s copy of {type(record).__name__} {key} '
                                         'differs from the data section\'s (one is damaged)')
        found = {c.offset: c for c in scan.chunks}
        for index in summary.chunk_indexes if scan.summary_state in TRUSTED else ():
            chunk = found.get(index.chunk_start_offset)
            if chunk is not None and chunk.ok and (
                    index.message_start_time, index.message_end_time, index.chunk_length) != (
                    chunk.start_ns, chunk.end_ns, chunk.end - chunk.offset):
                scan.problems.append(f'the summary\'s index of the chunk at byte {chunk.offset} '
                                     'does not match the chunk (damaged index)')
            if chunk is None:
                chunk = ChunkInfo(index.chunk_start_offset,
                                  index.chunk_start_offset + index.chunk_length,
                                  index.message_start_time, index.message_end_time,
                                  index.compression, index.uncompressed_size, 0,
                                  problem='not found where the summary says (damaged)')
                scan.chunks.append(chunk)
                if not any(r.start <= chunk.offset < max(r.end, r.start + 1)
                           for r in scan.regions):
                    scan.regions.append(Region(chunk.offset, chunk.end, 'chunk ' + chunk.problem))
            if not chunk.ok:               # the index knows the time range better than a header
                chunk.start_ns, chunk.end_ns = index.message_start_time, index.message_end_time
                if not chunk.counts_known:
                    self._index_counts(chunk, index)
        self._check_statistics()

    def _check_statistics(self) -> None:
        scan = self.scan
        stats = scan.summary.statistics if scan.summary else None
        if stats is None or scan.regions or scan.summary_state not in TRUSTED:
            return
        held = dict(scan.loose_counts)
        for chunk in scan.good_chunks:
            for cid, n in chunk.counts.items():
                held[cid] = held.get(cid, 0) + n
        recorded = {cid: n for cid, n in stats.channel_message_counts.items() if n}
        if recorded != {cid: n for cid, n in held.items() if n}:
            scan.problems.append(f'the summary\'s statistics count {stats.message_count} messages, '
                                 f'the chunks hold {sum(held.values())}')

    def _index_counts(self, chunk: ChunkInfo, index: ChunkIndex) -> None:
        """Messages per channel of a lost chunk from its MessageIndex records (when they survive)."""
        counts, known = {}, True
        for cid, offset in index.message_index_offsets.items():
            found = self.record_at(offset, self.size) if offset < self.size else None
            if found is not None and isinstance(found[1], MessageIndex) and \
                    found[1].channel_id == cid:
                counts[cid] = len(found[1].records)
            else:
                counts[cid], known = 0, False
        chunk.counts, chunk.counts_known = counts, known


def scan(path: Path | str) -> Scan:
    """Scan one MCAP file. ``NotMcapError`` (naming the file) when it is not MCAP at all."""
    path = Path(path)
    if path.is_dir():
        raise NotMcapError(f'{path}: is a directory, not an MCAP file')
    with path.open('rb') as stream:
        size = stream.seek(0, 2)
        if size == 0:
            raise NotMcapError(f'{path}: empty file, not an MCAP file')
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            scanner = _Scanner(path, buf, size)
            result = scanner.scan
            result.magic = size >= 8 and bytes(buf[:8]) == MAGIC
            limit = scanner.read_summary()
            if result.summary is not None and result.summary_state in TRUSTED:
                scanner.known = sorted(
                    [c.chunk_start_offset for c in result.summary.chunk_indexes]
                    + [m.offset for m in result.summary.metadata_indexes]
                    + [a.offset for a in result.summary.attachment_indexes])
            scanner.walk(limit)
            if not result.magic and not result.good_chunks:
                raise NotMcapError(f'{path}: not an MCAP file (no MCAP magic at the start and '
                                   'no valid chunk anywhere)')
            scanner.merge_summary()
    result.chunks.sort(key=lambda c: c.offset)
    for n, chunk in enumerate(result.chunks):
        chunk.number = n
    return result
