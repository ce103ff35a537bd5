"""MCAP records at the byte level (pure): strict record parsing, chunk decompression with its
CRC check, and what a chunk's records hold. The spec: https://mcap.dev/spec."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import TYPE_CHECKING, Any, NamedTuple

from isal import isal_zlib
from mcap.data_stream import ReadDataStream
from mcap.exceptions import EndOfFile
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
    SummaryOffset,
)

if TYPE_CHECKING:
    from data_recorder.bag.scan import ChunkInfo

MAGIC = b'\x89MCAP0\r\n'
OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = 0x02, 0x03, 0x04, 0x05, 0x06
OP_MESSAGE_INDEX, OP_DATA_END = 0x07, 0x0F
FOOTER_RECORD = 9 + 20                 # opcode, length, summary_start, summary_offset_start, crc
COMPRESSIONS = ('', 'lz4', 'zstd')
NO_FOOTER = 'no footer'
#: A chunk larger than this is not believed (a damaged length field must not allocate GiBs).
MAX_CHUNK_BYTES = 1 << 31
U64 = struct.Struct('<Q')
CHUNK_HEAD = struct.Struct('<QQQII')   # start, end, uncompressed size, CRC, compression length
MESSAGE_HEAD = struct.Struct('<HIQ')    # channel id, sequence, log time
RECORD_HEAD = struct.Struct('<BQ')

READERS: dict[int, Callable[[ReadDataStream], McapRecord]] = {
    0x01: Header.read, OP_FOOTER: Footer.read, OP_SCHEMA: Schema.read, OP_CHANNEL: Channel.read,
    0x07: MessageIndex.read, 0x08: ChunkIndex.read, 0x09: Attachment.read,
    0x0A: AttachmentIndex.read, 0x0B: Statistics.read, 0x0C: Metadata.read,
    0x0D: MetadataIndex.read, 0x0E: SummaryOffset.read, OP_DATA_END: DataEnd.read}


class _Strict(ReadDataStream):
    """A record body reader where a field running past the record is an error, never a short read."""

    def read(self, length: int) -> bytes:
        data = super().read(length)
        if len(data) != length:
            raise EndOfFile()
        return data


def parse_record(op: int, body: bytes) -> McapRecord:
    """One record body, strictly (ValueError/EndOfFile/struct.error/UnicodeError when damaged)."""
    if op == OP_MESSAGE_INDEX:              # thousands of entries per chunk: not one read per field
        channel_id, length = struct.unpack_from('<HI', body)
        if length % 16 or 6 + length != len(body):     # its layout is fixed: exact, or damaged
            raise ValueError('message index entries do not fill the record')
        return MessageIndex(channel_id, list(struct.iter_unpack('<QQ', body[6: 6 + length])))
    stream = _Strict(BytesIO(body))
    if op == OP_MESSAGE:
        return Message.read(stream, len(body))
    return READERS[op](stream)


RECORD_ERRORS = (EndOfFile, struct.error, ValueError, KeyError, IndexError, UnicodeError)


def chunk_records(buf: Any, size: int, info: ChunkInfo) -> bytes:
    """The chunk's records, decompressed and CRC-checked (ValueError says what is wrong)."""
    if info.end > size:
        raise ValueError(f'the file ends inside this chunk (cut at byte {size})')
    raw = memoryview(buf)[info.records_offset: info.end]
    try:
        data = decompress(info.compression, raw, info.uncompressed_size)
    except Exception as exc:   # (zstd/lz4 raise their own types on damaged frames)
        raise ValueError(f'{info.compression} data does not decompress ({exc})') from None
    finally:
        raw.release()
    if len(data) != info.uncompressed_size:
        raise ValueError(f'decompressed to {len(data)} bytes, the header says '
                         f'{info.uncompressed_size}')
    if info.crc:
        crc = isal_zlib.crc32(data)
        if crc != info.crc:
            raise ValueError(f'CRC mismatch (stored {info.crc:#010x}, computed {crc:#010x})')
    return data


def crc32(buf: Any, start: int, end: int) -> int:
    """CRC-32 of ``buf[start:end]`` without copying it (the data section can be GiBs)."""
    crc = 0
    view = memoryview(buf)
    try:
        for at in range(start, end, 16 << 20):
            crc = isal_zlib.crc32(view[at: min(end, at + (16 << 20))], crc)
    finally:
        view.release()
    return crc


def decompress(compression: str, data: bytes | memoryview, size: int) -> bytes:
    if compression == 'zstd':
        import zstandard
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    if compression == 'lz4':
        import lz4.frame
        return lz4.frame.decompress(data)
    return bytes(data)


class ChunkContents(NamedTuple):
    counts: dict[int, int]                     # channel id -> messages
    schemas: list[Schema]
    channels: list[Channel]
    index: dict[int, list[tuple[int, int]]]    # channel id -> [(log time, offset)], as MessageIndex
    start_ns: int | None
    end_ns: int | None


def chunk_contents(data: bytes) -> ChunkContents:
    """What a chunk's records hold (ValueError if they do not tile the chunk exactly: a framing
    error)."""
    counts: dict[int, int] = {}
    index: dict[int, list[tuple[int, int]]] = {}
    schemas: list[Schema] = []
    channels: list[Channel] = []
    lo = hi = None
    pos, n = 0, len(data)
    while pos < n:
        if pos + 9 > n:
            raise ValueError(f'records inside do not parse (at byte {pos} of the chunk)')
        op, length = RECORD_HEAD.unpack_from(data, pos)
        end = pos + 9 + length
        if end > n:
            raise ValueError(f'records inside do not parse (at byte {pos} of the chunk)')
        if op == OP_MESSAGE:
            if length < 22:
                raise ValueError(f'message record too short at byte {pos} of the chunk')
            cid, _seq, log_time = MESSAGE_HEAD.unpack_from(data, pos + 9)
            counts[cid] = counts.get(cid, 0) + 1
            index.setdefault(cid, []).append((log_time, pos))
            lo = log_time if lo is None or log_time < lo else lo
            hi = log_time if hi is None or log_time > hi else hi
        elif op in (OP_SCHEMA, OP_CHANNEL):
            try:
                rec = parse_record(op, data[pos + 9: end])
            except RECORD_ERRORS:
                raise ValueError(f'damaged schema/channel record at byte {pos} of the chunk') \
                    from None
            (schemas if op == OP_SCHEMA else channels).append(rec)   # type: ignore[arg-type]
        pos = end
    return ChunkContents(counts, schemas, channels, index, lo, hi)


def iter_chunk_messages(data: bytes) -> Iterator[tuple[int, int, int, int, bytes]]:
    """(channel id, sequence, log time, publish time, data) of every Message in chunk records."""
    head = struct.Struct('<HIQQ').unpack_from
    pos, n = 0, len(data)
    while pos + 9 <= n:
        op, length = RECORD_HEAD.unpack_from(data, pos)
        if op == OP_MESSAGE:
            cid, seq, log_time, pub_time = head(data, pos + 9)
            yield cid, seq, log_time, pub_time, data[pos + 31: pos + 9 + length]
        pos += 9 + length
