"""rosbag2 ``metadata.yaml`` (format version 9), as ``ros2 bag info`` and ``rosbags`` read it.

Pure data: the writer and the recover tool both produce it from per-file summaries, so a bag
rebuilt after a crash has the same metadata as one closed cleanly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

VERSION = 9
ROS_DISTRO = 'jazzy'
#: rmw's "infinite" duration as rosbag2 prints it.
INFINITE = {'sec': 9223372036, 'nsec': 854775807}


def qos_dict(reliability: str = 'reliable', durability: str = 'volatile', depth: int = 0,
             history: str = 'keep_last', liveliness: str = 'automatic') -> dict[str, Any]:
    """One offered QoS profile in the v9 form (lower-case policy names, as rosbag2 Jazzy writes)."""
    return {
        'history': history, 'depth': int(depth), 'reliability': reliability,
        'durability': durability, 'deadline': dict(INFINITE), 'lifespan': dict(INFINITE),
        'liveliness': liveliness, 'liveliness_lease_duration': dict(INFINITE),
        'avoid_ros_namespace_conventions': False,
    }


def qos_yaml(profiles: list[dict[str, Any]]) -> str:
    """The offered profiles as the YAML string rosbag2 stores in the MCAP channel metadata."""
    return yaml.safe_dump(profiles, default_flow_style=False, sort_keys=False).strip()


@dataclass
class TopicInfo:
    name: str
    type: str
    offered_qos_profiles: list[dict[str, Any]] = field(default_factory=list)
    serialization_format: str = 'cdr'
    type_description_hash: str = ''


@dataclass
class FileInfo:
    """Summary of one MCAP file of the bag."""

    path: str                      # relative to the bag directory
    start_ns: int = 0
    end_ns: int = 0
    message_count: int = 0
    topic_counts: dict[str, int] = field(default_factory=dict)

    def add(self, topic: str, log_time: int) -> None:
        if self.message_count == 0 or log_time < self.start_ns:
            self.start_ns = log_time
        self.end_ns = max(self.end_ns, log_time)
        self.message_count += 1
        self.topic_counts[topic] = self.topic_counts.get(topic, 0) + 1


def build(topics: Iterable[TopicInfo], files: Iterable[FileInfo], *, compression_format: str = '',
          custom_data: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``rosbag2_bagfile_information`` document for ``files`` (in order)."""
    files = list(files)
    counts: dict[str, int] = {}
    for f in files:
        for topic, n in f.topic_counts.items():
            counts[topic] = counts.get(topic, 0) + n
    with_messages = [f for f in files if f.message_count]
    start = min((f.start_ns for f in with_messages), default=0)
    end = max((f.end_ns for f in with_messages), default=0)
    return {'rosbag2_bagfile_information': {
        'version': VERSION,
        'storage_identifier': 'mcap',
        'duration': {'nanoseconds': max(0, end - start)},
        'starting_time': {'nanoseconds_since_epoch': start},
        'message_count': sum(f.message_count for f in files),
        'topics_with_message_count': [
            {'topic_metadata': {
                'name': t.name, 'type': t.type, 'serialization_format': t.serialization_format,
                'offered_qos_profiles': t.offered_qos_profiles,
                'type_description_hash': t.type_description_hash},
             'message_count': counts.get(t.name, 0)}
            for t in topics],
        'compression_format': compression_format,
        # chunk compression inside MCAP is storage-level: rosbag2 then leaves the mode empty
        'compression_mode': '',
        'relative_file_paths': [f.path for f in files],
        'files': [{'path': f.path,
                   'starting_time': {'nanoseconds_since_epoch': f.start_ns},
                   'duration': {'nanoseconds': max(0, f.end_ns - f.start_ns)},
                   'message_count': f.message_count} for f in files],
        'custom_data': dict(custom_data) if custom_data else None,
        'ros_distro': ROS_DISTRO,
    }}


def dump(document: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(document), default_flow_style=False, sort_keys=False)


def write(directory: Path, document: Mapping[str, Any]) -> Path:
    """Write ``metadata.yaml`` atomically (a crash never leaves a half-written file)."""
    path = Path(directory) / 'metadata.yaml'
    tmp = path.with_suffix('.yaml.tmp')
    with tmp.open('w') as stream:
        stream.write(dump(document))
        stream.flush()
        os.fsync(stream.fileno())
    tmp.replace(path)
    return path


def load(directory: Path) -> dict[str, Any]:
    """The ``rosbag2_bagfile_information`` mapping of a bag directory."""
    path = Path(directory) / 'metadata.yaml'
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict) or 'rosbag2_bagfile_information' not in document:
        raise ValueError(f'{path}: not a rosbag2 metadata file (no rosbag2_bagfile_information)')
    return document['rosbag2_bagfile_information']
