"""rosbag2-compatible MCAP bag writer: pure core, no rclpy.

A bag is a directory (``metadata.yaml`` + ``<name>_<i>.mcap``) exactly as rosbag2's MCAP storage
plugin lays it out: profile ``ros2``, schemas in ``ros2msg`` with the complete definition, channels
with ``offered_qos_profiles`` metadata, message encoding ``cdr``, a ``rosbag2`` metadata record at
the end of each file. Messages are the CDR bytes as received (never deserialised).

Crash safety: chunks are closed and the file flushed + fsync'd every ``flush_interval`` seconds
(wall clock) and whenever a chunk reaches ``chunk_size``, so a kill -9 or a power cut loses at most
the open chunk; :mod:`data_recorder.bag.recover` rebuilds the index of what is on disk.

Used by the recorder node from its writer thread, and directly by anyone who wants to produce a
bag without ROS (the integrator's episode markers: :meth:`BagWriter.add_metadata` and
:meth:`BagWriter.set_custom_data`). Not thread-safe: one thread owns a writer.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mcap.writer import CompressionType, Writer

from data_recorder.bag import metadata as md
from data_recorder.bag import msgdefs
from data_recorder.bag.chunk import LeanChunkBuilder

COMPRESSION = {'': CompressionType.NONE, 'none': CompressionType.NONE,
               'lz4': CompressionType.LZ4, 'zstd': CompressionType.ZSTD}
LIBRARY = 'field_deploy data_recorder (rosbag2-compatible)'

_STAMP_LE = struct.Struct('<iI')
_STAMP_BE = struct.Struct('>iI')


def header_stamp_ns(data: bytes) -> int | None:
    """Stamp of a CDR message whose first field is ``std_msgs/Header`` (None when too short).

    The CDR encapsulation header is 4 bytes (byte 1: 0x01 little endian, 0x00 big endian); the
    stamp's ``int32 sec`` and ``uint32 nanosec`` follow at offset 4, already aligned.
    """
    if len(data) < 12:
        return None
    sec, nanosec = (_STAMP_LE if data[1] & 1 else _STAMP_BE).unpack_from(data, 4)
    return sec * 1_000_000_000 + nanosec


class BagError(OSError):
    """A bag cannot be created or written; the message names the path and the reason."""


@dataclass
class _Topic:
    info: md.TopicInfo
    header: bool
    written: int = 0


def check_output_dir(path: Path) -> Path:
    """Refuse an existing bag directory or a parent we cannot write; returns the resolved path."""
    path = Path(path).expanduser().resolve()
    if path.exists():
        raise FileExistsError(f'{path}: output directory already exists (a bag is never overwritten)')
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PermissionError(f'{path}: cannot create the bag here ({parent} is not a directory)')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f'{path}: cannot create the bag here ({parent} is not writable)')
    return path


def check_metadata(name: str, data: Mapping[str, str]) -> None:
    """An MCAP Metadata record needs a name and string keys and values: refused here, in the
    caller's thread, rather than in the writer's where the error would reach nobody."""
    if not name:
        raise ValueError('metadata record name must not be empty')
    bad = [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ValueError(f'metadata {name!r}: keys and values must be strings ({bad!r})')


def declare_topic(topics: dict[str, _Topic], name: str, type_name: str,
                  offered_qos_profiles: list[dict[str, Any]] | None,
                  serialization_format: str) -> _Topic | None:
    """Add ``name`` to ``topics`` (a bag writer's, in process or in the writer process); the new
    entry, or None if it was declared already with the same type. ``ValueError`` for another
    type, ``LookupError`` for an unknown one: raised in the caller, not mid-recording."""
    type_name = msgdefs.normalise(type_name)
    existing = topics.get(name)
    if existing is not None:
        if existing.info.type != type_name:
            raise ValueError(f'topic {name!r}: already recorded as {existing.info.type}, '
                             f'cannot also record it as {type_name}')
        return None
    msgdefs.full_definition(type_name)
    info = md.TopicInfo(name, type_name, list(offered_qos_profiles or []), serialization_format)
    topics[name] = topic = _Topic(info, msgdefs.has_header(type_name))
    return topic


class BagWriter:
    """Write a rosbag2 MCAP bag directory.

    ``compression`` is chunk compression (``none`` | ``lz4`` | ``zstd``); ``max_bag_size`` (bytes)
    and ``max_bag_duration`` (seconds) split into a new file when exceeded (0: never);
    ``flush_interval`` bounds the data a crash can lose (seconds of wall clock).

    Message records go through :class:`data_recorder.bag.chunk.LeanChunkBuilder` (one pack per
    record); ``lean_chunks = False`` (class attribute) writes them through the ``mcap`` package's
    ``Writer.add_message`` instead - the same file, kept for the stage benchmark's comparison.
    """

    lean_chunks = True

    def __init__(self, path: Path | str, *, compression: str = 'none',
                 chunk_size: int = 1024 * 1024, flush_interval: float = 1.0,
                 max_bag_size: int = 0, max_bag_duration: float = 0.0, fsync: bool = True) -> None:
        if compression not in COMPRESSION:
            raise ValueError(f'compression_format: {compression!r} is not one of none, lz4, zstd')
        if chunk_size < 1024:
            raise ValueError(f'chunk_size: {chunk_size} is too small (at least 1024 bytes)')
        if flush_interval <= 0:
            raise ValueError(f'flush_interval: {flush_interval} must be > 0 seconds')
        if max_bag_size < 0 or max_bag_duration < 0:
            raise ValueError('max_bag_size / max_bag_duration must be >= 0 (0: no split)')
        self.path = check_output_dir(Path(path))
        try:
            self.path.mkdir(parents=True)
        except OSError as exc:
            raise BagError(f'{self.path}: cannot create the bag directory: {exc.strerror}') from None
        self.compression = 'none' if compression == '' else compression
        self.chunk_size = chunk_size
        self.flush_interval = flush_interval
        self.max_bag_size = max_bag_size
        self.max_bag_duration_ns = int(max_bag_duration * 1e9)
        self.fsync = fsync
        self.topics: dict[str, _Topic] = {}
        self.files: list[md.FileInfo] = []
        self.custom_data: dict[str, str] = {}
        self.closed = False
        self._stream: IO[bytes] | None = None
        self._mcap: Writer | None = None
        self._chunk: LeanChunkBuilder | None = None
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self._pending_bytes = 0
        self._last_flush = time.monotonic()
        self._open_file()

    # -- public API ---------------------------------------------------------------------------

    def add_topic(self, name: str, type_name: str,
                  offered_qos_profiles: list[dict[str, Any]] | None = None,
                  serialization_format: str = 'cdr') -> None:
        """Declare a topic before writing to it. ``LookupError`` if the type's .msg is unknown."""
        if declare_topic(self.topics, name, type_name, offered_qos_profiles, serialization_format):
            self._register(name)

    def write(self, topic: str, data: bytes, log_time: int, publish_time: int | None = None) -> None:
        """Append one serialized message. ``log_time``: receive time (ns since the epoch).

        ``publish_time`` defaults to the header stamp for stamped types, else ``log_time``.
        """
        entry = self.topics.get(topic)
        if entry is None:
            raise KeyError(f'topic {topic!r} was not added to the bag (call add_topic first)')
        if publish_time is None:
            publish_time = (header_stamp_ns(data) if entry.header else None) or log_time
        current = self.files[-1]
        if current.message_count and self._should_split(current, log_time):
            self.split()
            current = self.files[-1]
        if self._chunk is not None:
            size = self._chunk.add(self._channels[topic], entry.written, log_time, publish_time,
                                   data)
            entry.written += 1
            current.add(topic, log_time)
            if size >= self.chunk_size:
                self._close_chunk()
                self._stream_flush(sync=False)
        else:
            assert self._mcap is not None
            self._mcap.add_message(self._channels[topic], log_time, data, publish_time,
                                   sequence=entry.written)
            entry.written += 1
            current.add(topic, log_time)
            self._pending_bytes += len(data) + 31   # + message record overhead
            if self._pending_bytes >= self.chunk_size:
                self._pending_bytes = 0              # mcap closed the chunk itself
                self._stream_flush(sync=False)
        if time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def tick(self) -> None:
        """Flush when the flush interval has passed (call when idle: no new message to trigger it)."""
        if not self.closed and time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        """Close the open chunk and push it to the disk: everything so far survives a crash."""
        if self._mcap is None:
            return
        self._close_chunk()
        self._stream_flush(sync=self.fsync)

    def split(self) -> None:
        """Finish the current file and continue in a new one (same topics)."""
        self._finish_file()
        self._open_file()
        for name in self.topics:
            self._register(name)

    def add_metadata(self, name: str, data: Mapping[str, str]) -> None:
        """Write an MCAP Metadata record (e.g. an episode marker) into the current file."""
        check_metadata(name, data)
        assert self._mcap is not None
        self._mcap.add_metadata(name, dict(data))

    def set_custom_data(self, key: str, value: str) -> None:
        """An entry of ``custom_data`` in metadata.yaml (written at close)."""
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f'custom_data {key!r}: key and value must be strings')
        self.custom_data[key] = value

    @property
    def file_bytes(self) -> int:
        """Approximate size of the current file on disk, including the open chunk."""
        pending = self._chunk.count if self._chunk is not None else self._pending_bytes
        return (self._stream.tell() if self._stream else 0) + pending

    @property
    def message_count(self) -> int:
        return sum(f.message_count for f in self.files)

    @property
    def file_count(self) -> int:
        return len(self.files)

    @property
    def file_messages(self) -> int:
        """Messages in the current file."""
        return self.files[-1].message_count

    @property
    def current_file(self) -> str:
        return self.files[-1].path

    def written(self) -> dict[str, int]:
        return {name: t.written for name, t in self.topics.items()}

    def metadata(self) -> dict[str, Any]:
        return md.build([t.info for t in self.topics.values()], self.files,
                        compression_format='' if self.compression == 'none' else self.compression,
                        custom_data=self.custom_data)

    def close(self) -> Path:
        """Finish the last file and write metadata.yaml; returns the bag directory. Idempotent."""
        if not self.closed:
            self.closed = True
            self._finish_file()
            md.write(self.path, self.metadata())
        return self.path

    def rewrite_metadata(self) -> Path:
        """Write metadata.yaml again after :meth:`close` (the custom data changed since: a
        recorder stopped by its disk guard keeps counting what it does not write)."""
        if not self.closed:
            raise RuntimeError(f'{self.path}: rewrite_metadata before close')
        return md.write(self.path, self.metadata())

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _should_split(self, current: md.FileInfo, log_time: int) -> bool:
        if self.max_bag_size and self.file_bytes >= self.max_bag_size:
            return True
        return bool(self.max_bag_duration_ns and
                    log_time - current.start_ns >= self.max_bag_duration_ns)

    def _open_file(self) -> None:
        name = f'{self.path.name}_{len(self.files)}.mcap'
        try:
            self._stream = (self.path / name).open('xb')
        except OSError as exc:
            raise BagError(f'{self.path / name}: cannot create: {exc.strerror}') from None
        self._mcap = Writer(self._stream, chunk_size=self.chunk_size,
                            compression=COMPRESSION[self.compression])
        self._chunk = LeanChunkBuilder() if self.lean_chunks else None
        if self._chunk is not None:   # the mcap writer's own builder, replaced (same interface)
            self._mcap._Writer__chunk_builder = self._chunk  # type: ignore[attr-defined]
        self._mcap.start(profile='ros2', library=LIBRARY)
        self._schemas = {}
        self._channels = {}
        self.files.append(md.FileInfo(name))
        self._stream_flush(sync=self.fsync)

    def _register(self, name: str) -> None:
        assert self._mcap is not None
        info = self.topics[name].info
        if info.type not in self._schemas:
            self._schemas[info.type] = self._mcap.register_schema(
                info.type, 'ros2msg', msgdefs.full_definition(info.type).encode())
        self._channels[name] = self._mcap.register_channel(
            name, info.serialization_format, self._schemas[info.type],
            {'offered_qos_profiles': md.qos_yaml(info.offered_qos_profiles)})

    def _finish_file(self) -> None:
        if self._mcap is None or self._stream is None:
            return
        self._close_chunk()
        if self._chunk is not None:
            self._chunk.take_counts(self._mcap._Writer__statistics)  # type: ignore[attr-defined]
        document = md.build([t.info for t in self.topics.values()], self.files[-1:])
        self._mcap.add_metadata('rosbag2', {'serialized_metadata': md.dump(
            document['rosbag2_bagfile_information'])})
        self._mcap.finish()
        self._stream_flush(sync=self.fsync)
        self._stream.close()
        self._mcap = None
        self._stream = None

    def _close_chunk(self) -> None:
        """Write the open chunk (with its message indexes) to the stream; no public API for it."""
        assert self._mcap is not None
        if self._chunk is None:
            self._mcap._Writer__finalize_chunk()  # type: ignore[attr-defined]
        elif self._chunk.num_messages:
            mcap = self._mcap
            mcap._Writer__flush()  # type: ignore[attr-defined]  # records buffered before it
            assert self._stream is not None
            mcap._Writer__chunk_indices.append(self._chunk.write_chunk(  # type: ignore[attr-defined]
                self._stream, '' if self.compression == 'none' else self.compression,
                mcap._Writer__statistics))  # type: ignore[attr-defined]
        self._pending_bytes = 0

    def _stream_flush(self, *, sync: bool) -> None:
        assert self._stream is not None
        self._stream.flush()
        if sync:
            os.fsync(self._stream.fileno())
        self._last_flush = time.monotonic()
