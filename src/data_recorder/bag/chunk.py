"""A lean MCAP chunk builder and chunk writer (pure): one ``struct`` pack per message record,
large messages never copied in user space.

Why: profiled at 2x the reference load, the ``mcap`` package's per-record Python
(``Writer.add_message`` builds a ``Message`` dataclass, ``ChunkBuilder.add_message`` updates the
index through dict look-ups, ``Message.write`` does five ``struct.pack`` + ``BytesIO.write`` calls
and a seek back for the length; at the chunk's end ``MessageIndex.write`` packs two integers per
message) was half of the recorder process's samples. This builder appends the 31-byte record head
and the CDR bytes to a ``bytearray`` and keeps each channel's index as a flat list of integers,
packed in one call when the chunk closes: ``bench/recorder/stage_cost.py`` has the figures.

Per MB, the ``mcap`` package copies a camera image five times on its way to the file (into the
chunk's ``BytesIO``, out of it, into the chunk record's ``BytesIO``, out of it, into the file).
Here a message of :data:`LARGE` bytes or more stays the ``bytes`` object that was received, one
piece of the chunk; :meth:`LeanChunkBuilder.write_chunk` computes the CRC over the pieces and
writes them to the file one after another (uncompressed chunks: no copy in Python; compressed
ones: one join for the compressor). The CRC-32 is ISA-L's (``isal``, carry-less multiply
instructions, the GIL released): 0.022 ms per MB against zlib's 0.261 (the same polynomial and
values; ``bench/recorder/stage_cost.py``), a twelfth of the per-MB cost it was.

It is plugged into ``mcap.writer.Writer`` in place of its own ``ChunkBuilder`` (schemas and
channels still reach it through ``add_schema`` / ``add_channel``), and writes its chunks itself,
appending their ``ChunkIndex`` to the writer's, so the summary, statistics and footer stay the
``mcap`` package's. The writer's ``Statistics`` message counts are brought up to date before the
summary is written (:meth:`LeanChunkBuilder.take_counts`).
"""

from __future__ import annotations

import struct
from typing import IO, Any

from isal.isal_zlib import crc32
from mcap.opcode import Opcode
from mcap.records import ChunkIndex

#: opcode, record length, channel id, sequence, log time, publish time
MESSAGE_HEAD = struct.Struct('<BQHIQQ')
MESSAGE_FIELDS = 2 + 4 + 8 + 8
#: opcode, record length, message start / end time, uncompressed size, uncompressed CRC
CHUNK_HEAD = struct.Struct('<BQQQQI')
#: A message this large is kept as its own piece of the chunk (not copied into the buffer).
LARGE = 64 * 1024


class LeanIndex:
    """One channel's message index in the open chunk: ``[log_time, offset, log_time, ...]``."""

    __slots__ = ('channel_id', 'entries')

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        self.entries: list[int] = []

    def record(self) -> bytes:
        """The MessageIndex record, packed in one call."""
        n = len(self.entries)
        return struct.pack(f'<BQHI{n}Q', Opcode.MESSAGE_INDEX, 6 + n * 8, self.channel_id, n * 8,
                           *self.entries)


class LeanChunkBuilder:
    """The open chunk's records and indexes (see the module docstring)."""

    def __init__(self) -> None:
        self.pieces: list[bytes | bytearray] = []    # before buffer, in file order
        self.buffer = bytearray()                      # the small records after the last piece
        self.size = 0
        self.message_indices: dict[int, LeanIndex] = {}
        self.message_start_time = 0
        self.message_end_time = 0
        self.num_messages = 0
        # per file, for the writer's Statistics (see take_counts)
        self.channel_counts: dict[int, int] = {}
        self.file_start = -1
        self.file_end = 0

    @property
    def count(self) -> int:
        return self.size

    def add(self, channel_id: int, sequence: int, log_time: int, publish_time: int,
            data: bytes) -> int:
        """Append one message record; returns the chunk's size after it."""
        index = self.message_indices.get(channel_id)
        if index is None:
            index = self.message_indices[channel_id] = LeanIndex(channel_id)
        index.entries += (log_time, self.size)
        n = len(data)
        head = MESSAGE_HEAD.pack(Opcode.MESSAGE, MESSAGE_FIELDS + n, channel_id,
                                 sequence & 0xFFFFFFFF, log_time, publish_time)
        if n < LARGE:
            self.buffer += head
            self.buffer += data
        else:                        # kept as it is: its bytes are copied once, by the kernel
            self.buffer += head
            self.pieces += (self.buffer, data if type(data) is bytes else bytes(data))
            self.buffer = bytearray()
        self.size += 31 + n
        if self.num_messages:
            if log_time < self.message_start_time:
                self.message_start_time = log_time
            elif log_time > self.message_end_time:
                self.message_end_time = log_time
        else:
            self.message_start_time = self.message_end_time = log_time
        self.num_messages += 1
        return self.size

    # -- the mcap ChunkBuilder interface used by mcap.writer.Writer -------------------------------

    def add_schema(self, schema: Any) -> None:
        self._record(schema)

    def add_channel(self, channel: Any) -> None:
        self._record(channel)

    def end(self) -> bytes:
        return b''.join((*self.pieces, self.buffer))

    def write_chunk(self, stream: IO[bytes], compression: str, writer_statistics: Any) -> ChunkIndex:
        """Write the open chunk record and its message indexes at the stream's position; returns
        the chunk's index entry (the caller adds it to the summary) and empties the builder.

        ``compression``: ``''``, ``'lz4'`` or ``'zstd'`` (the ``mcap`` package's defaults: lz4
        frame, zstd level 3)."""
        pieces = [*self.pieces, self.buffer]
        crc = 0
        for piece in pieces:
            crc = crc32(piece, crc)
        if compression:
            raw = b''.join(pieces)
            if compression == 'lz4':
                import lz4.frame
                pieces = [lz4.frame.compress(raw)]
            else:
                import zstandard
                pieces = [zstandard.compress(raw)]
        stored = sum(len(p) for p in pieces)
        name = compression.encode()
        start = stream.tell()
        stream.write(CHUNK_HEAD.pack(Opcode.CHUNK, 8 + 8 + 8 + 4 + 4 + len(name) + 8 + stored,
                                     self.message_start_time, self.message_end_time, self.size,
                                     crc))
        stream.write(struct.pack('<I', len(name)) + name + struct.pack('<Q', stored))
        for piece in pieces:
            stream.write(piece)
        chunk_end = stream.tell()
        offsets = {}
        for channel_id, index in self.message_indices.items():
            offsets[channel_id] = stream.tell()
            stream.write(index.record())
        entry = ChunkIndex(message_start_time=self.message_start_time,
                           message_end_time=self.message_end_time, chunk_start_offset=start,
                           chunk_length=chunk_end - start, message_index_offsets=offsets,
                           message_index_length=stream.tell() - chunk_end, compression=compression,
                           compressed_size=stored, uncompressed_size=self.size)
        writer_statistics.chunk_count += 1
        self.reset()
        return entry

    def reset(self) -> None:
        """The chunk was written: fold its counts into the file's, start an empty one."""
        for channel_id, index in self.message_indices.items():
            self.channel_counts[channel_id] = (self.channel_counts.get(channel_id, 0) +
                                               len(index.entries) // 2)
        if self.num_messages:
            if self.file_start < 0 or self.message_start_time < self.file_start:
                self.file_start = self.message_start_time
            self.file_end = max(self.file_end, self.message_end_time)
        self.pieces = []
        self.buffer = bytearray()
        self.size = 0
        self.message_indices = {}
        self.message_start_time = self.message_end_time = 0
        self.num_messages = 0

    def take_counts(self, statistics: Any) -> None:
        """Write the file's message counts and time range into the ``mcap`` writer's Statistics
        (call after the last chunk was closed, before the summary is written)."""
        statistics.message_count = sum(self.channel_counts.values())
        for channel_id, count in self.channel_counts.items():
            statistics.channel_message_counts[channel_id] = count
        if statistics.message_count:
            statistics.message_start_time = self.file_start
            statistics.message_end_time = self.file_end

    def _record(self, record: Any) -> None:
        from mcap.data_stream import RecordBuilder
        builder = RecordBuilder()
        record.write(builder)
        data = builder.end()
        self.buffer += data
        self.size += len(data)
