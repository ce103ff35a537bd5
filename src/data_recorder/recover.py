"""Rebuild a readable, indexed bag from MCAP files cut short by kill -9 or a power loss.

A recording killed mid-way leaves MCAP files without summary, footer or closing magic, and no
``metadata.yaml``. Every completed chunk on disk is intact and CRC-checked, so: read the file
sequentially until the first broken record, write what was read into a new, fully indexed
MCAP file, keep the original beside it as ``<name>.mcap.truncated`` (nothing is deleted), and
write ``metadata.yaml`` from the summaries of all the bag's files. Pure core (no rclpy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mcap.reader import make_reader
from mcap.records import Channel, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer

from data_recorder import metadata as md
from data_recorder.writer import LIBRARY


@dataclass
class FileReport:
    path: Path
    recovered: bool              # False: the file was complete, left untouched
    messages: int = 0
    error: str = ''              # what stopped the sequential read (the truncation)


@dataclass
class RecoverReport:
    bag: Path
    files: list[FileReport] = field(default_factory=list)
    metadata_path: Path | None = None

    @property
    def messages(self) -> int:
        return sum(f.messages for f in self.files)


def is_complete(path: Path) -> bool:
    """True when the file has its summary and footer (a clean close)."""
    try:
        with path.open('rb') as stream:
            return make_reader(stream).get_summary() is not None
    except Exception:   # (any parse error means: not complete)
        return False


def recover_file(path: Path) -> FileReport:
    """Rebuild ``path`` in place from its readable prefix (the original kept as ``.truncated``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no such MCAP file')
    if is_complete(path):
        with path.open('rb') as stream:
            summary = make_reader(stream).get_summary()
        count = summary.statistics.message_count if summary and summary.statistics else 0
        return FileReport(path, recovered=False, messages=count)
    tmp = path.with_name(path.name + '.recovering')
    report = FileReport(path, recovered=True)
    schemas: dict[int, int] = {}
    channels: dict[int, int] = {}
    with path.open('rb') as source, tmp.open('wb') as target:
        writer = Writer(target, compression=CompressionType.ZSTD)
        writer.start(profile='ros2', library=LIBRARY)
        records = StreamReader(source, validate_crcs=True).records
        iterator = iter(records)
        while True:
            try:
                record = next(iterator)
            except StopIteration:
                break
            except Exception as exc:   # (truncation shows as many error types)
                report.error = f'{type(exc).__name__}: {exc}' if str(exc) else type(exc).__name__
                break
            if isinstance(record, Schema) and record.id not in schemas:
                schemas[record.id] = writer.register_schema(record.name, record.encoding,
                                                            record.data)
            elif isinstance(record, Channel) and record.id not in channels:
                channels[record.id] = writer.register_channel(
                    record.topic, record.message_encoding, schemas.get(record.schema_id, 0),
                    dict(record.metadata))
            elif isinstance(record, Message) and record.channel_id in channels:
                writer.add_message(channels[record.channel_id], record.log_time, record.data,
                                   record.publish_time, record.sequence)
                report.messages += 1
            elif isinstance(record, Metadata) and record.name != 'rosbag2':
                writer.add_metadata(record.name, dict(record.metadata))
        writer.finish()
    path.replace(path.with_name(path.name + '.truncated'))
    tmp.replace(path)
    return report


def _file_number(path: Path) -> tuple[int, str]:
    match = re.search(r'_(\d+)\.mcap$', path.name)
    return (int(match.group(1)) if match else 0, path.name)


def rebuild_metadata(bag: Path) -> Path:
    """Write ``metadata.yaml`` for every ``*.mcap`` of ``bag`` from the files' own summaries.

    Keeps the ``custom_data`` of an existing metadata.yaml (accounting, episodes).
    """
    files = sorted(bag.glob('*.mcap'), key=_file_number)
    if not files:
        raise FileNotFoundError(f'{bag}: no .mcap file to build metadata from')
    topics: dict[str, md.TopicInfo] = {}
    infos: list[md.FileInfo] = []
    compression = ''
    for path in files:
        with path.open('rb') as stream:
            summary = make_reader(stream).get_summary()
        if summary is None:
            raise ValueError(f'{path}: no summary (run recover on it first)')
        info = md.FileInfo(path.name)
        stats = summary.statistics
        for cid, channel in summary.channels.items():
            schema = summary.schemas.get(channel.schema_id)
            if channel.topic not in topics:
                qos = yaml.safe_load(channel.metadata.get('offered_qos_profiles', '') or '[]') or []
                topics[channel.topic] = md.TopicInfo(channel.topic, schema.name if schema else '',
                                                     qos if isinstance(qos, list) else [],
                                                     channel.message_encoding)
            n = stats.channel_message_counts.get(cid, 0) if stats else 0
            info.topic_counts[channel.topic] = info.topic_counts.get(channel.topic, 0) + n
        if stats and stats.message_count:
            info.message_count = stats.message_count
            info.start_ns, info.end_ns = stats.message_start_time, stats.message_end_time
        for index in summary.chunk_indexes:
            compression = compression or index.compression
        infos.append(info)
    custom: dict[str, str] = {}
    old = bag / 'metadata.yaml'
    if old.is_file():
        try:
            custom = md.load(bag).get('custom_data') or {}
        except (ValueError, yaml.YAMLError):
            custom = {}
    return md.write(bag, md.build(topics.values(), infos, compression_format=compression,
                                  custom_data=custom))


def recover(target: Path | str) -> RecoverReport:
    """Recover a bag directory (all its files) or one MCAP file (and its bag directory's metadata)."""
    target = Path(target).expanduser()
    if target.is_dir():
        bag = target
        files = sorted(bag.glob('*.mcap'), key=_file_number)
        if not files:
            raise FileNotFoundError(f'{bag}: no .mcap file in this directory')
    elif target.is_file():
        if target.suffix != '.mcap':
            raise ValueError(f'{target}: not an .mcap file')
        bag, files = target.parent, [target]
    else:
        raise FileNotFoundError(f'{target}: no such bag directory or MCAP file')
    report = RecoverReport(bag)
    report.files = [recover_file(f) for f in files]
    report.metadata_path = rebuild_metadata(bag)
    return report


def is_cut(bag: Path) -> bool:
    """A bag directory a crash left behind: MCAP files but no ``metadata.yaml`` (written at close)."""
    return bag.is_dir() and not (bag / 'metadata.yaml').is_file() and any(bag.glob('*.mcap'))


def take_over_output(path: Path | str) -> tuple[Path, list[RecoverReport]]:
    """The first free bag directory of ``path``, ``path_2``, ``path_3``, …, recovering on the way
    every one a crash cut short.

    For a recorder restarted after a crash with its old command line: the bag it was writing is
    made readable (never overwritten) and the recording goes on next to it.
    """
    base = Path(path).expanduser()
    reports: list[RecoverReport] = []
    candidate, n = base, 1
    while candidate.exists():
        if is_cut(candidate):
            reports.append(recover(candidate))
        n += 1
        candidate = base.with_name(f'{base.name}_{n}')
    return candidate, reports
