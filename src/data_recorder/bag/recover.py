"""Rebuild a readable, indexed bag from damaged MCAP files: cut short by kill -9 or a power
loss, or corrupted inside (overwritten bytes, a zeroed sector, a bad CRC, a broken summary).

Every file of the bag is scanned first (:mod:`data_recorder.bag.scan`: every chunk CRC-checked,
resynchronising past damage); input that is not MCAP at all is refused before anything is
written. Each damaged file is rebuilt from its intact chunks into a new, fully indexed MCAP file
(:mod:`data_recorder.bag.salvage`), fsync'd, and only then put in its place; the original is kept
beside it as ``<name>.mcap.truncated`` (only cut short) or ``<name>.mcap.damaged`` (corrupted).
``metadata.yaml`` is rebuilt from the files' summaries, with what was lost under
``custom_data['data_recorder.salvage']``. Intact files are left alone (idempotent). Pure core
(no rclpy).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mcap.reader import make_reader
from mcap.records import Channel, Schema

from data_recorder.bag import metadata as md
from data_recorder.bag.assess import Assessment, assess
from data_recorder.bag.records import NO_FOOTER
from data_recorder.bag.salvage import replace_keeping_original, write_salvaged
from data_recorder.bag.scan import NotMcapError, Scan, scan
from data_recorder.bag.writer import LIBRARY


@dataclass
class FileReport:
    path: Path
    recovered: bool              # False: the file was intact, left untouched
    messages: int = 0            # messages in the file now
    error: str = ''              # the first problem found (the cut, a bad CRC, ...)
    kept_as: Path | None = None  # where the original is kept
    assessment: Assessment | None = None


@dataclass
class RecoverReport:
    bag: Path
    files: list[FileReport] = field(default_factory=list)
    metadata_path: Path | None = None

    @property
    def messages(self) -> int:
        return sum(f.messages for f in self.files)


def is_complete(path: Path) -> bool:
    """True when the file has its summary and footer (a clean close; CRCs not checked)."""
    try:
        with path.open('rb') as stream:
            return make_reader(stream).get_summary() is not None
    except Exception:   # (any parse error means: not complete)
        return False


def recover_file(path: Path, found: Scan | None = None) -> FileReport:
    """Rebuild ``path`` in place from every intact chunk (the original kept beside it).

    The original is kept as ``<name>.truncated`` when it was only cut short (a crash), as
    ``<name>.damaged`` when bytes inside it were corrupted; an intact file is left alone.
    """
    path = Path(path)
    found = found or scan(path)
    report = assess(found)
    if found.intact:
        return FileReport(path, False, report.kept_messages, assessment=report)
    tmp = path.with_name(path.name + '.recovering')
    tmp.unlink(missing_ok=True)          # a previous recover interrupted before its rename
    record = _rosbag2_record(found, path.name, report)
    written = write_salvaged(found, tmp, LIBRARY, extra_metadata={'rosbag2': record},
                             skip_metadata=('rosbag2',))
    kept = replace_keeping_original(path, tmp, '.truncated' if found.cut_only else '.damaged')
    first = report.lost[0].problem if report.lost else (report.problems or [''])[0]
    return FileReport(path, True, written, first, kept, report)


def _rosbag2_record(found: Scan, name: str, report: Assessment) -> dict[str, str]:
    """The ``rosbag2`` Metadata record rosbag2 writes into each file, for what was kept."""
    info = md.FileInfo(name)
    good = found.good_chunks
    if good and report.kept_messages:
        info.start_ns = min(c.start_ns for c in good)
        info.end_ns = max(c.end_ns for c in good)
    info.message_count = report.kept_messages
    info.topic_counts = dict(report.kept)
    document = md.build(topic_infos(found.channels.values(), found.schemas), [info])
    return {'serialized_metadata': md.dump(document['rosbag2_bagfile_information'])}


def topic_infos(channels: Iterable[Channel], schemas: Mapping[int, Schema]) -> list[md.TopicInfo]:
    """metadata.yaml topics from MCAP channels (QoS from their ``offered_qos_profiles``)."""
    topics: dict[str, md.TopicInfo] = {}
    for channel in channels:
        if channel.topic in topics:
            continue
        schema = schemas.get(channel.schema_id)
        try:
            qos = yaml.safe_load(channel.metadata.get('offered_qos_profiles', '') or '[]') or []
        except yaml.YAMLError:
            qos = []
        topics[channel.topic] = md.TopicInfo(channel.topic, schema.name if schema else '',
                                             qos if isinstance(qos, list) else [],
                                             channel.message_encoding)
    return list(topics.values())


def _file_number(path: Path) -> tuple[int, str]:
    match = re.search(r'_(\d+)\.mcap$', path.name)
    return (int(match.group(1)) if match else 0, path.name)


def rebuild_metadata(bag: Path, custom_extra: Mapping[str, str] | None = None) -> Path:
    """Write ``metadata.yaml`` for every ``*.mcap`` of ``bag`` from the files' own summaries.

    Keeps the ``custom_data`` of an existing metadata.yaml (accounting, episodes) and adds
    ``custom_extra`` (the salvage report).
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
        for topic in topic_infos(summary.channels.values(), summary.schemas):
            topics.setdefault(topic.name, topic)
        for cid, channel in summary.channels.items():
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
    custom.update(custom_extra or {})
    return md.write(bag, md.build(topics.values(), infos, compression_format=compression,
                                  custom_data=custom))


def bag_files(target: Path | str) -> tuple[Path, list[Path]]:
    """(bag directory, its MCAP files) of a bag directory or of one MCAP file."""
    target = Path(target).expanduser()
    if target.is_dir():
        files = sorted(target.glob('*.mcap'), key=_file_number)
        if not files:
            raise FileNotFoundError(f'{target}: no .mcap file in this directory')
        return target, files
    if target.is_file():
        return target.parent, [target]
    raise FileNotFoundError(f'{target}: no such bag directory or MCAP file')


def recover(target: Path | str) -> RecoverReport:
    """Recover a bag directory (all its files) or one MCAP file (and its bag directory's metadata)."""
    bag, files = bag_files(target)
    if len(files) == 1 and files[0].suffix != '.mcap':
        raise ValueError(f'{files[0]}: not an .mcap file')
    scans = _scan_all(files)             # NotMcapError before anything is written
    report = RecoverReport(bag)
    report.files = [recover_file(f, s) for f, s in zip(files, scans, strict=True)]
    salvaged = {str(f.path.name): {'kept_as': f.kept_as.name if f.kept_as else '',
                                   **_loss_summary(f.assessment)}
                for f in report.files if f.recovered and f.assessment is not None}
    if Path(target).is_dir() or _in_its_bag(files[0]):
        report.metadata_path = rebuild_metadata(
            bag, {'data_recorder.salvage': json.dumps(salvaged, sort_keys=True)} if salvaged
            else None)
    return report


def _in_its_bag(path: Path) -> bool:
    """A file of a rosbag2 directory (``metadata.yaml`` beside it, or named ``<dir>_<n>.mcap``),
    not a lone MCAP file in some folder: only then is ``metadata.yaml`` (re)written."""
    return (path.parent / 'metadata.yaml').is_file() or re.fullmatch(
        re.escape(path.parent.name) + r'_\d+\.mcap', path.name) is not None


def _scan_all(files: list[Path]) -> list[Scan]:
    """Scan every file first. An *empty* file beside real MCAP files is what a crash at a split
    leaves (created, header not yet on disk): it is rebuilt as an empty MCAP file so the bag's
    metadata stays whole. Anything else that is not MCAP refuses the whole bag."""
    scans: list[Scan | None] = []
    for path in files:
        try:
            scans.append(scan(path))
        except NotMcapError:
            if path.stat().st_size or len(files) == 1:
                raise
            scans.append(None)
    if all(s is None for s in scans):
        raise NotMcapError(f'{files[0].parent}: every .mcap file is empty')
    return [s or Scan(p, 0, problems=[NO_FOOTER + ': empty file (cut before its header was '
                                      'written)'])
            for p, s in zip(files, scans, strict=True)]


def _loss_summary(a: Assessment) -> dict[str, object]:
    """What metadata.yaml keeps of a salvage: kept/lost counts and the lost time ranges."""
    return {'kept_messages': a.kept_messages, 'lost_messages': a.lost_messages,
            'lost_by_topic': a.lost_by_topic,
            'lost_ranges': [{'bytes': [r.start, r.end], 'problem': r.problem,
                             'start_ns': r.start_ns, 'end_ns': r.end_ns,
                             'topics': r.topics} for r in a.lost]}


def is_cut(bag: Path) -> bool:
    """A bag directory a crash left behind: MCAP files but no ``metadata.yaml`` (written at close)."""
    return bag.is_dir() and not (bag / 'metadata.yaml').is_file() and any(bag.glob('*.mcap'))


def free_output(path: Path | str) -> tuple[Path, list[Path]]:
    """The first free bag directory of ``path``, ``path_2``, ``path_3``, …, and the bags on the
    way that a crash cut short (left as they are: :func:`recover_cut_bags` rebuilds them).

    For a recorder restarted after a crash with its old command line: the bag it was writing is
    never overwritten, and the recording goes on next to it at once."""
    base = Path(path).expanduser()
    cut: list[Path] = []
    candidate, n = base, 1
    while candidate.exists():
        if is_cut(candidate):
            cut.append(candidate)
        n += 1
        candidate = base.with_name(f'{base.name}_{n}')
    return candidate, cut


def recover_cut_bags(bags: Iterable[Path | str], log: Callable[[str], None] = print) -> list[RecoverReport]:
    """Recover each bag that is still cut, one process at a time per bag.

    Why not in the restarted recorder's configure: a bag of a few hundred files takes tens of
    seconds to scan (the one-hour soak of 2026-12-02: 1,260,570 messages in 224 files, 35 s,
    455 MB), longer than the lifecycle manager waits for a transition, and nothing is recorded
    meanwhile. So the recorder records at once and runs this in a child process
    (``python -m data_recorder.bag.recover BAG…``, niced). A lock file beside each bag
    (``.<name>.recovering``, ``flock``) keeps a second restart's child off a bag already being
    recovered; a recovery killed halfway leaves the bag cut, and the next start takes it up again.
    """
    import fcntl

    reports: list[RecoverReport] = []
    for bag in map(Path, bags):
        lock_path = bag.with_name(f'.{bag.name}.recovering')
        with lock_path.open('a') as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f'{bag}: being recovered by another process')
                continue
            try:
                if not is_cut(bag):               # recovered meanwhile
                    continue
                report = recover(bag)
                reports.append(report)
                log(f'{bag}: a recording cut short (no metadata.yaml): recovered '
                    f'{report.messages} messages in {len(report.files)} file(s)')
            except NotMcapError as exc:            # killed before the header: nothing to rebuild
                log(f'{bag}: nothing to recover: {exc}')
            finally:
                lock_path.unlink(missing_ok=True)
    return reports


if __name__ == '__main__':
    import os
    import sys

    os.nice(10)                 # beside a recorder that is capturing: it comes first
    recover_cut_bags(sys.argv[1:], log=lambda line: print(f'[data_recorder recover] {line}', flush=True))
