"""Write a new, fully indexed MCAP file from what a :class:`~data_recorder.bag.scan.Scan` found
intact, and put it in place of the damaged file without ever losing the original (pure).

What goes into the new file, in the original's order: every message of every chunk whose CRC
passed (a chunk without CRC counts when it decompresses to its stated size and its records tile
it exactly), messages outside chunks that parsed, Metadata records (episode markers) and
attachments that parsed (attachments CRC-checked). Schemas and channels come from wherever they
survived: inside the chunks, the data section, or the summary's repeated copies.

What does not: a chunk whose CRC fails is dropped **whole**, compressed or not. Without a
per-message checksum there is no telling which of its records the damage touched: a message
whose framing still parses may carry overwritten bytes, and a salvaged bag must not hand
corrupted sensor data to training or replay as if it were recorded. (``verify`` names the chunk,
its time range and topics, so the loss is visible.)
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Mapping
from pathlib import Path

from mcap.writer import CompressionType, Writer

from data_recorder.bag.records import chunk_records, iter_chunk_messages, parse_record
from data_recorder.bag.scan import ChunkInfo, Scan

_COMPRESSION = {'': CompressionType.NONE, 'lz4': CompressionType.LZ4,
                'zstd': CompressionType.ZSTD}


def write_salvaged(scan: Scan, out: Path, library: str,
                   extra_metadata: Mapping[str, Mapping[str, str]] | None = None,
                   skip_metadata: tuple[str, ...] = ()) -> int:
    """Write the intact content of ``scan.path`` to ``out`` (created, flushed and fsync'd).

    Keeps the original's chunk compression and chunk size. ``skip_metadata`` names Metadata
    records not to copy (they are rebuilt: ``extra_metadata``, written at the end). Returns the
    number of messages written.
    """
    good = scan.good_chunks
    compression = _COMPRESSION.get(good[0].compression if good else '', CompressionType.NONE)
    chunk_size = max([c.uncompressed_size for c in good] + [4096])
    written = 0
    with scan.path.open('rb') as source, out.open('xb') as target:
        size = source.seek(0, 2)
        with (mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) if size
              else contextlib.nullcontext(b'')) as buf:
            writer = Writer(target, chunk_size=chunk_size, compression=compression,
                            enable_data_crcs=True)
            writer.start(profile=scan.header.profile if scan.header else 'ros2', library=library)
            schemas = {sid: writer.register_schema(s.name, s.encoding, s.data)
                       for sid, s in sorted(scan.schemas.items())}
            channels = {cid: writer.register_channel(c.topic, c.message_encoding,
                                                     schemas.get(c.schema_id, 0), dict(c.metadata))
                        for cid, c in sorted(scan.channels.items())
                        if c.schema_id == 0 or c.schema_id in schemas}
            items: list[tuple[int, object]] = [(c.offset, c) for c in good]
            items += [(pos, 'message') for pos in scan.loose]
            items += [(pos, m) for pos, m in scan.metadata if m.name not in skip_metadata]
            items += [(pos, a) for pos, a in scan.attachments]
            for pos, item in sorted(items, key=lambda i: i[0]):
                if isinstance(item, ChunkInfo):
                    for cid, seq, log_time, pub_time, data in iter_chunk_messages(
                            chunk_records(buf, size, item)):
                        if cid in channels:
                            writer.add_message(channels[cid], log_time, data, pub_time, seq)
                            written += 1
                elif item == 'message':
                    length = int.from_bytes(buf[pos + 1: pos + 9], 'little')
                    msg = parse_record(0x05, bytes(buf[pos + 9: pos + 9 + length]))
                    if msg.channel_id in channels:   # type: ignore[attr-defined]
                        writer.add_message(channels[msg.channel_id], msg.log_time,  # type: ignore
                                           msg.data, msg.publish_time, msg.sequence)  # type: ignore
                        written += 1
                elif hasattr(item, 'media_type'):
                    writer.add_attachment(item.create_time, item.log_time,  # type: ignore
                                          item.name, item.media_type, item.data)  # type: ignore
                else:
                    writer.add_metadata(item.name, dict(item.metadata))  # type: ignore
            for name, values in (extra_metadata or {}).items():
                writer.add_metadata(name, dict(values))
            writer.finish()
        target.flush()
        os.fsync(target.fileno())
    return written


def free_name(path: Path, suffix: str) -> Path:
    """``<path><suffix>``, or ``<path><suffix>.2``, … : a kept original is never overwritten."""
    candidate, n = path.with_name(path.name + suffix), 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f'{path.name}{suffix}.{n}')
    return candidate


def replace_keeping_original(path: Path, new: Path, suffix: str) -> Path:
    """Put the complete, fsync'd ``new`` at ``path``; the original stays as ``path + suffix``.

    The original is first hard-linked to its kept name, so at every instant one name holds it;
    on a file system without hard links (FAT/exFAT sticks) it is renamed instead. The directory
    is fsync'd so the renames survive a power cut.
    """
    kept = free_name(path, suffix)
    try:
        os.link(path, kept)
    except OSError:
        os.rename(path, kept)
    os.replace(new, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return kept
