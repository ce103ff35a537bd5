"""The lean chunk writer (data_recorder.bag.chunk): camera-sized messages kept as their own piece
of a chunk and small ones packed in one call must give the same messages, indexes and summary as
the ``mcap`` package's writer, read by ``mcap`` (CRCs checked), ``rosbags`` and our scan."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from mcap.reader import make_reader
from rosbags.highlevel import AnyReader

from data_recorder.bag import metadata as md
from data_recorder.bag.chunk import LARGE
from data_recorder.bag.scan import scan
from data_recorder.bag.writer import BagWriter


def _mixed() -> list[tuple[str, bytes, int]]:
    """Small messages with a large one every 7th: the recorder's mix (1 kHz joints, cameras)."""
    out = []
    for i in range(400):
        if i % 7 == 3:
            data = random.Random(i).randbytes(LARGE + 1000 * (i % 5))
            out.append(('/image', b'\x00\x01\x00\x00' + data, i))
        else:
            out.append(('/blob', b'\x00\x01\x00\x00' + bytes([i % 256]) * (20 + i % 50), i))
    return out


def _write(bag: Path, compression: str, lean: bool) -> None:
    BagWriter.lean_chunks = lean
    try:
        with BagWriter(bag, compression=compression, chunk_size=256 * 1024,
                       max_bag_size=2 * 1024 * 1024) as writer:
            writer.add_topic('/image', 'std_msgs/msg/ByteMultiArray')
            writer.add_topic('/blob', 'std_msgs/msg/ByteMultiArray')
            for k, (topic, data, i) in enumerate(_mixed()):
                writer.write(topic, data, log_time=1_000_000_000 + i * 1_000_000,
                             publish_time=5 + i)
                if k == 200:
                    writer.flush()                       # a chunk closed by the 1 s flush
                    writer.add_metadata('mark', {'k': str(k)})
    finally:
        BagWriter.lean_chunks = True


def _messages(bag: Path) -> list[tuple[str, int, int, int, bytes]]:
    out = []
    for name in md.load(bag)['relative_file_paths']:
        with (bag / name).open('rb') as f:
            reader = make_reader(f, validate_crcs=True)
            for _schema, channel, message in reader.iter_messages(log_time_order=False):
                out.append((channel.topic, message.sequence, message.log_time,
                            message.publish_time, message.data))
    return out


@pytest.mark.parametrize('compression', ['none', 'lz4', 'zstd'])
def test_lean_chunks_read_as_the_mcap_writers(tmp_path: Path, compression: str) -> None:
    _write(tmp_path / 'lean', compression, lean=True)
    _write(tmp_path / 'mcap', compression, lean=False)
    lean, reference = _messages(tmp_path / 'lean'), _messages(tmp_path / 'mcap')
    assert len(lean) == 400 and lean == reference
    assert [m[2] for m in lean] == sorted(m[2] for m in lean)    # file order is time order
    info = md.load(tmp_path / 'lean')
    assert info['message_count'] == 400 and len(info['relative_file_paths']) >= 2
    for name in info['relative_file_paths']:
        path = tmp_path / 'lean' / name
        assert scan(path).intact, scan(path).problems
        with path.open('rb') as f:
            summary = make_reader(f).get_summary()
        with (tmp_path / 'mcap' / name.replace('lean', 'mcap')).open('rb') as f:
            expected = make_reader(f).get_summary()
        assert summary.statistics.message_count == expected.statistics.message_count
        assert summary.statistics.channel_message_counts == expected.statistics.channel_message_counts
        assert (summary.statistics.message_start_time, summary.statistics.message_end_time) == (
            expected.statistics.message_start_time, expected.statistics.message_end_time)
        assert {c.compression for c in summary.chunk_indexes} == {
            '' if compression == 'none' else compression}
    with AnyReader([tmp_path / 'lean']) as reader:
        got = [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]
    assert got == [(m[0], m[2], m[4]) for m in lean]
