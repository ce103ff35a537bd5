"""data_recorder pure core: writer, metadata, msgdefs, accounting, snapshot, recover, disk guard.

No ROS graph here (rclpy is only used to serialise reference messages); the node is tested over
real DDS in test_recorder.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rclpy.serialization import serialize_message
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from data_recorder.bag import metadata as md
from data_recorder.bag import msgdefs
from data_recorder.bag.recover import free_output, is_complete, recover, recover_cut_bags
from data_recorder.bag.writer import BagWriter, header_stamp_ns
from data_recorder.capture.accounting import TopicStats
from data_recorder.capture.recorder import Recorder, RecorderConfig, _Command
from data_recorder.capture.snapshot import SnapshotBuffer
from field_deploy.testing import wait_until

CONTRACT_TYPES = ['sensor_msgs/msg/JointState', 'sensor_msgs/msg/Imu',
                  'geometry_msgs/msg/WrenchStamped', 'sensor_msgs/msg/Image',
                  'sensor_msgs/msg/CameraInfo', 'nav_msgs/msg/Odometry',
                  'sensor_msgs/msg/BatteryState', 'diagnostic_msgs/msg/DiagnosticArray']


TYPESTORE = get_typestore(Stores.ROS2_JAZZY)


def joint_state(i: int, period_ns: int = 1_000_000, extra: int = 0) -> bytes:
    """Exact CDR bytes (rclpy's serialize_message leaves uninitialised padding after the data)."""
    js, header, time_ = (TYPESTORE.types[n] for n in (
        'sensor_msgs/msg/JointState', 'std_msgs/msg/Header', 'builtin_interfaces/msg/Time'))
    sec, nanosec = divmod(1_000_000_000 + i * period_ns, 10**9)
    msg = js(header=header(stamp=time_(sec=sec, nanosec=nanosec), frame_id=''), name=['a', 'b'],
             position=np.array([float(i), 2.0, *np.random.default_rng(i).random(extra)]),
             velocity=np.array([], dtype=np.float64),
             effort=np.array([], dtype=np.float64))
    return bytes(TYPESTORE.serialize_cdr(msg, 'sensor_msgs/msg/JointState'))


def read_mcap(path: Path) -> list:
    with path.open('rb') as f:
        return list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())


def rosbags_counts(bag: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with AnyReader([bag]) as reader:
        for conn, _t, raw in reader.messages():
            reader.deserialize(raw, conn.msgtype)
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
    return counts


# -- message definitions -----------------------------------------------------------------------

@pytest.mark.parametrize('type_name', CONTRACT_TYPES)
def test_full_definition_has_every_dependency_and_header_detected(type_name: str) -> None:
    text = msgdefs.full_definition(type_name)
    assert 'MSG: std_msgs/msg/Header' in text and 'MSG: builtin_interfaces/msg/Time' in text
    assert f'\n{"=" * 80}\nMSG: ' in text
    assert msgdefs.has_header(type_name)


def test_msgdefs_errors_and_headerless_types() -> None:
    assert not msgdefs.has_header('std_msgs/msg/String')
    assert msgdefs.dependencies('std_msgs/String') == []
    with pytest.raises(LookupError, match='no_such_pkg'):
        msgdefs.full_definition('no_such_pkg/msg/Thing')
    with pytest.raises(LookupError, match='not a message type'):
        msgdefs.normalise('JointState')


def test_header_stamp_read_from_cdr_bytes_little_and_big_endian() -> None:
    data = joint_state(5)
    assert header_stamp_ns(data) == 1_000_000_000 + 5_000_000
    big = b'\x00\x00\x00\x00' + struct.pack('>iI', 7, 9) + b'\x00' * 8
    assert header_stamp_ns(big) == 7_000_000_009
    assert header_stamp_ns(b'\x00\x01\x00\x00') is None


# -- writer ------------------------------------------------------------------------------------

def test_writer_round_trip_readable_by_mcap_rosbags_and_mcap_ros2(tmp_path: Path) -> None:
    bag = tmp_path / 'bag'
    with BagWriter(bag, compression='zstd') as writer:
        writer.add_topic('/joint_states', 'sensor_msgs/msg/JointState',
                         [md.qos_dict('best_effort', 'volatile', 10)])
        for i in range(100):
            writer.write('/joint_states', joint_state(i), log_time=2_000_000_000 + i)
        writer.add_metadata('episode', {'skill': 'walk', 'event': 'start'})
        writer.set_custom_data('episodes', '1')
    messages = read_mcap(bag / 'bag_0.mcap')
    assert len(messages) == 100
    for i, (schema, channel, message, decoded) in enumerate(messages):
        assert schema.encoding == 'ros2msg' and channel.message_encoding == 'cdr'
        assert message.data == joint_state(i) and message.log_time == 2_000_000_000 + i
        assert message.publish_time == 1_000_000_000 + i * 1_000_000
        assert decoded.position[0] == float(i)
    with (bag / 'bag_0.mcap').open('rb') as f:
        reader = make_reader(f)
        assert reader.get_header().profile == 'ros2'
        names = [m.name for m in reader.iter_metadata()]
        qos = yaml.safe_load(next(iter(reader.get_summary().channels.values()))
                             .metadata['offered_qos_profiles'])
    assert names == ['episode', 'rosbag2'] and qos[0]['reliability'] == 'best_effort'
    info = md.load(bag)
    assert info['version'] == 9 and info['storage_identifier'] == 'mcap'
    assert info['message_count'] == 100 and info['relative_file_paths'] == ['bag_0.mcap']
    assert info['custom_data'] == {'episodes': '1'}
    assert info['topics_with_message_count'][0]['message_count'] == 100
    assert rosbags_counts(bag) == {'/joint_states': 100}
    with AnyReader([bag]) as reader:
        assert reader.message_count == 100 and reader.start_time == 2_000_000_000


@pytest.mark.parametrize('compression', ['none', 'lz4', 'zstd'])
def test_split_by_size_and_chunk_compression(tmp_path: Path, compression: str) -> None:
    bag = tmp_path / 'bag'
    payload = joint_state(0, extra=500)
    with BagWriter(bag, compression=compression, chunk_size=16 * 1024,
                   max_bag_size=64 * 1024) as writer:
        writer.add_topic('/js', 'sensor_msgs/JointState')
        for i in range(200):
            writer.write('/js', payload, log_time=i)
    files = md.load(bag)['relative_file_paths']
    sizes = [(bag / name).stat().st_size for name in files]
    assert len(files) >= 3 and len(files) >= sum(sizes) // (64 * 1024 + 24 * 1024)
    for name in files:
        assert (bag / name).stat().st_size < 64 * 1024 + 24 * 1024   # one chunk of overshoot
        with (bag / name).open('rb') as f:
            chunks = make_reader(f).get_summary().chunk_indexes
        assert {c.compression for c in chunks} == {'' if compression == 'none' else compression}
    assert rosbags_counts(bag) == {'/js': 200}


def test_split_by_duration_and_on_request(tmp_path: Path) -> None:
    bag = tmp_path / 'bag'
    with BagWriter(bag, max_bag_duration=1.0) as writer:
        writer.add_topic('/js', 'sensor_msgs/msg/JointState')
        for i in range(50):                       # 10 Hz for 5 s of log time
            writer.write('/js', joint_state(i), log_time=i * 100_000_000)
        writer.split()
        writer.write('/js', joint_state(50), log_time=50 * 100_000_000)
    info = md.load(bag)
    assert [f['message_count'] for f in info['files']] == [10, 10, 10, 10, 10, 1]
    assert rosbags_counts(bag) == {'/js': 51}


def test_writer_refuses_existing_dir_unknown_topic_and_type_change(tmp_path: Path) -> None:
    (tmp_path / 'old').mkdir()
    with pytest.raises(FileExistsError, match='never overwritten'):
        BagWriter(tmp_path / 'old')
    with pytest.raises(ValueError, match='compression_format'):
        BagWriter(tmp_path / 'x', compression='gzip')
    writer = BagWriter(tmp_path / 'bag')
    writer.add_topic('/a', 'std_msgs/msg/String')
    with pytest.raises(ValueError, match='already recorded as std_msgs/msg/String'):
        writer.add_topic('/a', 'std_msgs/msg/Int32')
    with pytest.raises(KeyError, match='/b'):
        writer.write('/b', b'', 0)
    with pytest.raises(LookupError):
        writer.add_topic('/c', 'nope_msgs/msg/Nothing')
    writer.close()
    assert md.load(tmp_path / 'bag')['message_count'] == 0


# -- accounting / snapshot ----------------------------------------------------------------------

def test_gap_accounting_on_periodic_stamps_only() -> None:
    periodic = TopicStats()
    stamps = [i * 1_000_000 for i in range(1, 200) if not 100 <= i < 105]   # 5 missing
    for s in stamps:
        periodic.observe_stamp(s)
    assert periodic.lost_gaps == 5 and periodic.lost == 5
    lossy = TopicStats()                      # a 30 Hz stream losing every third message
    period = 33_333_333
    for i in range(1, 301):
        if i % 3:
            lossy.observe_stamp(i * period)
    assert 94 <= lossy.lost_gaps <= 100        # the first intervals only learn the period
    irregular = TopicStats()
    t = 1
    for i in range(200):
        t += (1 + (i * 7919) % 13) * 1_000_000
        irregular.observe_stamp(t)
    assert irregular.lost_gaps == 0


def test_no_gap_guessed_from_wake_up_stamps_or_interleaved_publishers() -> None:
    loop = TopicStats()                       # a 500 Hz loop stamping wake-up times (±0.15 ms), overruns
    wake = random.Random(7)
    for i in range(1, 2000):
        tick = i + i // 97                    # every 97th tick skipped: never published, not lost
        loop.observe_stamp(tick * 2_000_000 + int(wake.uniform(0, 150_000)))
    assert loop.lost_gaps == 0
    shared = TopicStats()                     # /diagnostics: 10 Hz and 2 Hz publishers interleaved
    stamps = sorted([i * 100_000_000 for i in range(1, 200)] + [i * 500_000_000 + 7_000_000
                                                               for i in range(1, 40)])
    for stamp in stamps:
        shared.observe_stamp(stamp)
    assert shared.lost_gaps == 0
    late = TopicStats()                       # a 10 Hz timer stamping wall time, once 230 ms late
    for stamp in [i * 100_000_000 for i in range(1, 50)] + [5_130_000_000] + [
            i * 100_000_000 for i in range(52, 80)]:
        late.observe_stamp(stamp)
    assert late.lost_gaps == 0


def test_samples_due_before_the_stop_only_for_a_periodic_stream_on_the_recorder_clock() -> None:
    stop = 1_800_000_000_000_000_000                  # a wall-clock stop time
    periodic = TopicStats()
    for i in range(100):                              # 500 Hz, newest sample 1 s before the stop
        periodic.observe_stamp(stop - 1_000_000_000 - (99 - i) * 2_000_000)
    assert periodic.last_stamp == stop - 1_000_000_000
    assert periodic.due_before(stop) == 500           # 1 s of a 2 ms period not seen yet
    assert periodic.due_before(stop - 999_000_000) == 0   # caught up: nothing due
    assert periodic.due_before(stop + 100 * 10**9) == 0   # stamps not on the stop's clock
    assert periodic.due_before(stop - 2 * 10**9) == 0     # newer than the stop (sim time ahead)
    irregular = TopicStats()
    for i in range(100):
        irregular.observe_stamp(stop - 10**9 - (99 - i) * (1 + i % 7) * 1_000_000)
    assert irregular.due_before(stop) == 0            # no period, no guess
    assert TopicStats().due_before(stop) == 0


def test_close_counts_the_unreceived_tail_of_live_streams_only(tmp_path: Path) -> None:
    rec = Recorder(RecorderConfig(str(tmp_path / 'bag'), min_free_space=0))
    period = 1_000_000
    for topic in ('/alive', '/gone'):
        rec.add_topic(topic, 'sensor_msgs/msg/JointState', [md.qos_dict()])
        for i in range(200):
            rec.on_message(rec.stats(topic), topic, joint_state(i, period))
    last = header_stamp_ns(joint_state(199, period))
    rec.close(stop_ns=last + 50 * period, live_topics=['/alive'])
    counts = json.loads(md.load(tmp_path / 'bag')['custom_data']['data_recorder.accounting'])
    assert (counts['/alive']['written'], counts['/alive']['lost_tail']) == (200, 50)
    assert (counts['/alive']['lost'], counts['/alive']['lost_gaps']) == (50, 0)
    assert (counts['/gone']['written'], counts['/gone']['lost']) == (200, 0)


# -- DDS sequence numbers ----------------------------------------------------------------------

def test_without_sequence_numbers_the_stamps_decide() -> None:
    stats = TopicStats()
    for n in (0, 0, 0):
        stats.seq.observe(n)                                    # rmw without sequence numbers
    for s in [i * 1_000_000 for i in range(1, 200) if not 100 <= i < 105]:
        stats.observe_stamp(s)
    assert not stats.sequenced and stats.lost == stats.lost_gaps == 5
    exact = TopicStats()
    for n in (1, 2, 3):
        exact.seq.observe(n)
    for s in [i * 1_000_000 for i in range(1, 200) if not 100 <= i < 105]:
        exact.observe_stamp(s)
    assert exact.sequenced and exact.lost_gaps == 5 and exact.lost == 0   # second opinion only


def test_not_written_is_never_reported_as_nothing_lost(tmp_path: Path) -> None:
    rec = Recorder(RecorderConfig(str(tmp_path / 'bag'), min_free_space=0))
    rec.add_topic('/js', 'sensor_msgs/msg/JointState', [md.qos_dict()])
    stats = rec.stats('/js')
    for i in range(10):
        rec.on_message_seq(stats, '/js', joint_state(i, 1_000_000), i + 1)
    rec.pause()
    for i in range(10, 14):
        rec.on_message_seq(stats, '/js', joint_state(i, 1_000_000), i + 1)
    rec.close()
    totals = rec.accounting.totals()
    assert (totals['received'], totals['written'], totals['not_written'],
            totals['skipped_paused'], totals['lost']) == (14, 10, 4, 4, 0)
    line = md.load(tmp_path / 'bag')['custom_data']['data_recorder.loss_summary']
    assert line == '14 messages received, 10 written, 4 NOT written (paused 4), 0 lost'


def test_snapshot_mode_counts_what_never_reached_a_snapshot(tmp_path: Path) -> None:
    rec = Recorder(RecorderConfig(str(tmp_path / 'bag'), min_free_space=0, snapshot_mode=True,
                                  snapshot_duration=0.0, snapshot_max_bytes=3000))
    rec.add_topic('/js', 'sensor_msgs/msg/JointState', [md.qos_dict()])
    stats = rec.stats('/js')
    size = len(joint_state(0, 1))
    for i in range(80):                        # more than the ring holds: the oldest go
        rec.on_message(stats, '/js', joint_state(i, 1_000_000))
    wait_until(lambda: rec.queue_length == 0, 10)
    rec.snapshot()
    for i in range(80, 85):                    # buffered, never snapshotted
        rec.on_message(stats, '/js', joint_state(i, 1_000_000))
    rec.close()
    kept = 3000 // size
    assert (stats.received, stats.written, stats.skipped_snapshot) == (85, kept, 85 - kept)
    assert stats.not_written == 85 - kept and stats.lost == 0


def test_snapshot_buffer_keeps_the_last_seconds_and_bytes() -> None:
    buffer = SnapshotBuffer(max_duration=1.0)
    for i in range(300):                                  # 3 s at 100 Hz
        buffer.add('/a', b'x' * 10, i * 10_000_000)
    times = [t for _, _, t in buffer.drain()]
    assert times[0] == 2_000_000_000 and times[-1] == 2_990_000_000 and len(buffer) == 0
    by_size = SnapshotBuffer(max_duration=0, max_bytes=1000)
    for i in range(300):
        by_size.add('/a', b'x' * 10, i)
    assert len(by_size) == 100 and by_size.bytes == 1000
    with pytest.raises(ValueError):
        SnapshotBuffer(0, 0)


def test_queue_overflow_is_counted_as_loss(tmp_path: Path) -> None:
    recorder = Recorder(RecorderConfig(str(tmp_path / 'bag'), queue_size=2, min_free_space=0))
    recorder.add_topic('/js', 'sensor_msgs/msg/JointState', [])
    stats = recorder.stats('/js')
    release = threading.Event()
    blocker = _Command(release.wait)          # holds the writer thread
    recorder._queue.append((None, blocker, 0))
    assert wait_until(lambda: recorder.queue_length == 0, 5)
    for i in range(5):
        recorder.on_message(stats, '/js', joint_state(i))
    release.set()
    recorder.close()
    assert (stats.received, stats.written, stats.lost_queue, stats.lost) == (5, 2, 3, 3)
    custom = md.load(tmp_path / 'bag')['custom_data']
    assert json.loads(custom['data_recorder.accounting'])['/js']['lost_queue'] == 3


def test_queue_overflow_is_not_counted_twice_as_a_stamp_gap(tmp_path: Path) -> None:
    recorder = Recorder(RecorderConfig(str(tmp_path / 'bag'), queue_size=5, min_free_space=0))
    recorder.add_topic('/js', 'sensor_msgs/msg/JointState', [])
    stats = recorder.stats('/js')
    for i in range(20):
        recorder.on_message(stats, '/js', joint_state(i))
        assert wait_until(lambda: recorder.queue_length == 0, 5)
    release = threading.Event()
    recorder._queue.append((None, _Command(release.wait), 0))
    assert wait_until(lambda: recorder.queue_length == 0, 5)
    for i in range(20, 30):                               # 5 fit, 5 overflow
        recorder.on_message(stats, '/js', joint_state(i))
    release.set()
    assert wait_until(lambda: recorder.queue_length == 0, 5)
    for i in range(30, 40):
        recorder.on_message(stats, '/js', joint_state(i))
        assert wait_until(lambda: recorder.queue_length == 0, 5)
    recorder.close()
    assert (stats.written, stats.lost_queue, stats.lost_gaps, stats.lost) == (35, 5, 0, 5)


def test_queue_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    recorder = Recorder(RecorderConfig(str(tmp_path / 'bag'), queue_max_bytes=1024 * 1024,
                                       min_free_space=0))
    recorder.add_topic('/js', 'sensor_msgs/msg/JointState', [])
    stats = recorder.stats('/js')
    big = joint_state(0, extra=50_000)                    # ~400 kB
    release = threading.Event()
    recorder._queue.append((None, _Command(release.wait), 0))
    assert wait_until(lambda: recorder.queue_length == 0, 5)
    for _ in range(3):
        recorder.on_message(stats, '/js', big)
    release.set()
    assert wait_until(lambda: recorder.queue_length == 0, 5)
    recorder.on_message(stats, '/js', big)                # room again once written
    recorder.close()
    assert (stats.received, stats.written, stats.lost_queue) == (4, 3, 1)


# -- disk guard --------------------------------------------------------------------------------

def _record_images_until_stopped(bag: Path, min_free: int) -> Recorder:
    from sensor_msgs.msg import Image
    image = serialize_message(Image(height=100, width=100, encoding='rgb8', step=300,
                                    data=bytes(30000)))
    image = image[:len(image) - (len(image) - 30000) % 4]  # (exact size: see joint_state)
    recorder = Recorder(RecorderConfig(str(bag), min_free_space=min_free, chunk_size=64 * 1024))
    recorder.add_topic('/camera/front/image_raw', 'sensor_msgs/msg/Image', [])
    stats = recorder.stats('/camera/front/image_raw')
    for _ in range(400):                       # 12 MB offered
        recorder.on_message(stats, '/camera/front/image_raw', image)
        time.sleep(0.0005)
        if recorder.state == 'stopped' and stats.skipped_stopped:
            break
    wait_until(lambda: recorder.queue_length == 0, 10)
    recorder.close()
    return recorder


def test_disk_guard_stops_cleanly_on_a_small_filesystem(tmp_path: Path) -> None:
    mount = tmp_path / 'small'
    mount.mkdir()
    result = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f'cannot mount a 2 MB tmpfs here ({result.stderr.strip()}); the threshold '
                    'variant below still tests the guard')
    try:
        recorder = _record_images_until_stopped(mount / 'bag', min_free=512 * 1024)
        assert recorder.state == 'closed' and 'disk guard' in recorder.stop_reason
        stats = recorder.accounting.topics['/camera/front/image_raw']
        assert stats.written > 10 and stats.written + stats.skipped_stopped == stats.received
        assert shutil.disk_usage(mount).free > 256 * 1024
        assert is_complete(mount / 'bag' / 'bag_0.mcap')
        assert rosbags_counts(mount / 'bag') == {'/camera/front/image_raw': stats.written}
        custom = md.load(mount / 'bag')['custom_data']
        assert 'disk guard' in custom['data_recorder.stop_reason']
        # metadata.yaml has the final counts, arrivals after the stop included, under their name
        totals = json.loads(custom['data_recorder.totals'])
        assert totals['skipped_stopped'] == stats.skipped_stopped == totals['not_written'] > 0
        assert 'NOT written (recording stopped' in custom['data_recorder.loss_summary']
    finally:
        subprocess.run(['umount', '-l', str(mount)], check=False)


def test_disk_guard_threshold_trips_and_bag_stays_readable(tmp_path: Path) -> None:
    # a minimum above what the disk has: deterministic on a shared disk (the tmpfs test above
    # covers the guard tripping in the middle of a recording)
    recorder = _record_images_until_stopped(
        tmp_path / 'bag', min_free=shutil.disk_usage(tmp_path).free + 2**40)
    stats = recorder.accounting.topics['/camera/front/image_raw']
    assert 'disk guard' in recorder.stop_reason
    assert stats.written == 0 and stats.skipped_stopped == stats.received > 0
    assert is_complete(tmp_path / 'bag' / 'bag_0.mcap')
    info = md.load(tmp_path / 'bag')
    assert info['message_count'] == 0 and 'disk guard' in info['custom_data'][
        'data_recorder.stop_reason']


def test_records_after_a_disk_guard_stop_are_counted_not_errors(tmp_path: Path) -> None:
    """The soak filled its disk: each episode marker after the stop logged an error with an
    empty reason (the closed writer's assertion), twice a second. Now they are counted."""
    logs: list[tuple[str, str]] = []
    recorder = Recorder(RecorderConfig(str(tmp_path / 'bag'),
                                       min_free_space=shutil.disk_usage(tmp_path).free + 2**40),
                        log=lambda level, msg: logs.append((level, msg)))
    assert recorder.state == 'stopped'
    recorder.add_metadata('episode', {'name': 'stand_up'})
    recorder.add_metadata('mark', {'text': 'slipped'}, wait=False)
    assert wait_until(lambda: recorder.records_not_written == 2, 10)
    assert recorder.status()['records_not_written'] == 2
    recorder.close()
    assert [m for level, m in logs if level == 'error' and 'failed' in m] == []


# -- recover -----------------------------------------------------------------------------------

def test_recover_truncated_file_keeps_every_completed_chunk(tmp_path: Path) -> None:
    bag = tmp_path / 'bag'
    writer = BagWriter(bag, compression='lz4', chunk_size=4096)
    writer.add_topic('/js', 'sensor_msgs/msg/JointState', [md.qos_dict(depth=5)])
    for i in range(300):
        writer.write('/js', joint_state(i), log_time=i)
    writer.flush()
    flushed = 300
    for i in range(300, 320):                    # in the open chunk: lost by the crash
        writer.write('/js', joint_state(i), log_time=i)
    # simulate kill -9: the file as it is on disk now, never finished
    crashed = tmp_path / 'crashed'
    crashed.mkdir()
    shutil.copy(bag / 'bag_0.mcap', crashed / 'crashed_0.mcap')
    writer.close()
    report = recover(crashed)
    assert report.files[0].recovered and report.messages == flushed
    assert (crashed / 'crashed_0.mcap.truncated').exists()
    assert [m.data for _, _, m, _ in read_mcap(crashed / 'crashed_0.mcap')] == \
        [joint_state(i) for i in range(flushed)]
    assert rosbags_counts(crashed) == {'/js': flushed}
    info = md.load(crashed)
    assert info['message_count'] == flushed
    assert info['topics_with_message_count'][0]['topic_metadata']['offered_qos_profiles'][0][
        'depth'] == 5
    again = recover(crashed)                      # idempotent: complete files are left alone
    assert not again.files[0].recovered and again.messages == flushed


@pytest.mark.parametrize('cut', [0.3, 0.77, 0.999])
def test_recover_any_cut_point(tmp_path: Path, cut: float) -> None:
    bag = tmp_path / 'bag'
    with BagWriter(bag, chunk_size=2048) as writer:
        writer.add_topic('/js', 'sensor_msgs/msg/JointState')
        for i in range(400):
            writer.write('/js', joint_state(i), log_time=i)
    data = (bag / 'bag_0.mcap').read_bytes()
    out = tmp_path / 'cut'
    out.mkdir()
    (out / 'cut_0.mcap').write_bytes(data[:int(len(data) * cut)])
    report = recover(out / 'cut_0.mcap')
    kept = [m.data for _, _, m, _ in read_mcap(out / 'cut_0.mcap')]
    assert kept == [joint_state(i) for i in range(len(kept))]   # a prefix, in order, intact
    assert report.messages == len(kept) > 0
    assert rosbags_counts(out).get('/js', 0) == len(kept)


def test_recover_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match='nothing-here'):
        recover(tmp_path / 'nothing-here')
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r'no \.mcap'):
        recover(empty)
    assert not is_complete(Path(os.devnull))


def test_a_restarted_recorder_skips_every_taken_name_and_recovers_only_the_cut_bag(tmp_path: Path) -> None:
    """A recorder restarted after kill -9 with its old command line: the bag it was writing is
    recovered in place, never overwritten, and the new recording goes to the first free name."""
    bag = tmp_path / 'bag'
    assert free_output(bag) == (bag, [])                # nothing there: the name itself
    writer = BagWriter(bag, chunk_size=2048)
    writer.add_topic('/js', 'sensor_msgs/msg/JointState')
    for i in range(200):
        writer.write('/js', joint_state(i), log_time=i)
    writer.flush()                                      # then "killed": no close, no metadata.yaml
    (tmp_path / 'bag_2').mkdir()                        # a clean earlier restart's bag...
    (tmp_path / 'bag_2' / 'metadata.yaml').write_text('x')
    path, cut = free_output(bag)
    assert path == tmp_path / 'bag_3' and cut == [bag]  # ...is left alone; the cut one listed
    reports = recover_cut_bags(cut, log=lambda _line: None)
    assert [r.bag for r in reports] == [bag]
    assert rosbags_counts(bag) == {'/js': reports[0].messages} and reports[0].messages > 0
    assert (tmp_path / 'bag_2' / 'metadata.yaml').read_text() == 'x'
    assert not path.exists()                            # created by the writer, not here
    writer.close()


def test_a_restarted_recorder_finds_its_name_at_once_and_one_process_recovers_the_cut_bag(
        tmp_path: Path) -> None:
    """A restarted recorder records first (``free_output`` touches nothing) and leaves the cut
    bag to a child: ``python -m data_recorder.bag.recover`` rebuilds it, while a second one
    started beside it (a second restart) finds the lock taken and leaves the bag alone."""
    import fcntl
    import subprocess
    import sys
    bag = tmp_path / 'bag'
    writer = BagWriter(bag, chunk_size=2048)
    writer.add_topic('/js', 'sensor_msgs/msg/JointState')
    for i in range(300):
        writer.write('/js', joint_state(i), log_time=i)
    writer.flush()                                      # "killed": no metadata.yaml
    assert free_output(bag) == (tmp_path / 'bag_2', [bag])
    assert not (bag / 'metadata.yaml').exists()         # nothing rebuilt by the look

    lock = (tmp_path / '.bag.recovering').open('a')     # another recoverer holds the bag
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lines: list[str] = []
    assert recover_cut_bags([bag], log=lines.append) == []
    assert lines == [f'{bag}: being recovered by another process'] and not (bag / 'metadata.yaml').exists()
    lock.close()

    out = subprocess.run([sys.executable, '-m', 'data_recorder.bag.recover', str(bag)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert 'recovered' in out and f'{bag}:' in out, out
    assert (bag / 'metadata.yaml').is_file() and not (tmp_path / '.bag.recovering').exists()
    assert rosbags_counts(bag)['/js'] > 0
    assert recover_cut_bags([bag], log=lines.append) == []     # no longer cut: left alone
    assert free_output(bag) == (tmp_path / 'bag_2', [])
    writer.close()


# -- topic selection / QoS ---------------------------------------------------------------------

def test_topic_selection_rules_and_qos_overrides(tmp_path: Path) -> None:
    from data_recorder.capture.selection import Selection, adapt_qos, load_qos_overrides
    everything = Selection(all_topics=True, exclude_regex='^/camera/')
    assert everything.matches('/imu') and not everything.matches('/camera/front/image_raw')
    assert not everything.matches('/_hidden/x')
    assert Selection(all_topics=True, include_hidden=True).matches('/_hidden/x')
    picked = Selection(topics=('/odom',), regex='^/wrench/')
    assert picked.matches('/odom') and picked.matches('/wrench/left_foot')
    assert not picked.matches('/imu')
    with pytest.raises(ValueError, match='nothing to record'):
        Selection()
    with pytest.raises(ValueError, match='exclude_regex'):
        Selection(all_topics=True, exclude_regex='[')
    assert adapt_qos([('reliable', 'transient_local')], 1000)['durability'] == 'transient_local'
    mixed = adapt_qos([('reliable', 'volatile'), ('best_effort', 'transient_local')], 1000)
    assert (mixed['reliability'], mixed['durability']) == ('best_effort', 'volatile')
    assert adapt_qos([], 5)['reliability'] == 'best_effort'
    path = tmp_path / 'qos.yaml'
    path.write_text('/imu: {reliability: best_effort, depth: 10}\n')
    overrides = load_qos_overrides(path)
    assert adapt_qos([('reliable', 'volatile')], 1000, overrides['/imu']) == {
        'history': 'keep_last', 'depth': 10, 'reliability': 'best_effort', 'durability': 'volatile'}
    for text, reason in [('/imu: {reliability: sometimes}', "reliability: 'sometimes'"),
                         ('imu: {depth: 1}', 'must be absolute'),
                         ('/imu: {depth: 0}', 'depth'),
                         ('/imu: {speed: 3}', "unknown QoS key 'speed'")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=reason):
            load_qos_overrides(path)


def test_throttle_keeps_at_most_one_message_per_period_and_counts_the_rest() -> None:
    from data_recorder.capture.accounting import TopicStats
    from data_recorder.capture.recorder import RecorderConfig

    config = RecorderConfig(output='x', throttle=('^/camera/:2', 'imu$:100'))
    assert config.throttle_period_ns('/camera/front/image_raw') == 500_000_000
    assert config.throttle_period_ns('/imu') == 10_000_000
    assert config.throttle_period_ns('/joint_states') == 0
    stats = TopicStats(throttle_ns=500_000_000)
    kept = [t for t in range(0, 3_000_000_000, 33_000_000) if stats.keep_throttled(t)]
    assert kept == [0, 528_000_000, 1_056_000_000, 1_584_000_000, 2_112_000_000, 2_640_000_000]
    assert stats.keep_throttled(10_000_000_000)      # a quiet stream piles up no burst budget
    assert not stats.keep_throttled(10_100_000_000)
    for bad in ('/imu', '/imu:0', '/imu:fast', '([:5'):
        with pytest.raises(ValueError, match='throttle'):
            RecorderConfig(output='x', throttle=(bad,)).validate()
