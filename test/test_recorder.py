"""data_recorder over real rclpy and real DDS: every contract type round trip, QoS matching,
services (pause / resume / split / snapshot), snapshot mode, kill -9 + recover, and a bag
recorded from ``sim_robot`` by the command line, read back by ``mcap`` and ``rosbags``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import WrenchStamped
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from nav_msgs.msg import Odometry
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rclpy.signals import SignalHandlerOptions
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import BatteryState, CameraInfo, Image, Imu, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from data_recorder.bag import metadata as md
from data_recorder.bag.recover import recover
from data_recorder.bag.writer import header_stamp_ns
from data_recorder.node import REPAIR_WAIT_S, DataRecorderNode
from data_recorder.parameters import parameter_overrides
from field_deploy.numbered import numbers_in_bag
from field_deploy.testing import RawCollector, wait_until

RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                      reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                         reliability=ReliabilityPolicy.BEST_EFFORT)
LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _stamped(cls: type, i: int):
    msg = cls()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + i // 100, (i % 100) * 10_000_000
    msg.header.frame_id = 'base_link'
    return msg


def _joint_state(i: int) -> JointState:
    msg = _stamped(JointState, i)
    msg.name = [f'joint_{k}' for k in range(29)]
    msg.position = [0.01 * i + k for k in range(29)]
    msg.velocity = [0.5] * 29
    msg.effort = [float(k) for k in range(29)]
    return msg


def _image(i: int) -> Image:
    msg = _stamped(Image, i)
    msg.height, msg.width, msg.encoding, msg.step = 48, 64, 'rgb8', 64 * 3
    msg.data = bytes([i % 256]) * (48 * 64 * 3)
    return msg


def _diagnostics(i: int) -> DiagnosticArray:
    msg = _stamped(DiagnosticArray, i)
    msg.status = [DiagnosticStatus(level=DiagnosticStatus.OK, name='motor/joint_0',
                                   hardware_id='joint_0',
                                   values=[KeyValue(key='temperature', value=str(30 + i))])]
    return msg


#: topic → (type, factory, publisher QoS): every contract stream of DESIGN.md
CONTRACT = {
    'joint_states': (JointState, _joint_state, RELIABLE),
    'joint_commands': (JointState, _joint_state, RELIABLE),
    'imu': (Imu, lambda i: _stamped(Imu, i), BEST_EFFORT),
    'wrench/left_foot': (WrenchStamped, lambda i: _stamped(WrenchStamped, i), RELIABLE),
    'camera/front/image_raw': (Image, _image, RELIABLE),
    'camera/front/camera_info': (CameraInfo, lambda i: _stamped(CameraInfo, i), RELIABLE),
    'odom': (Odometry, lambda i: _stamped(Odometry, i), RELIABLE),
    'battery': (BatteryState, lambda i: _stamped(BatteryState, i), LATCHED),
    '/diagnostics': (DiagnosticArray, _diagnostics, RELIABLE),
}


def _recorder(output: Path, **params: object) -> DataRecorderNode:
    values = {'output': str(output), 'discovery_interval': 0.2, 'diagnostics_period': 3600.0,
              'flush_interval': 0.3, **params}
    node = DataRecorderNode(parameter_overrides=parameter_overrides(values))
    assert node.recorder is not None, node.last_error
    return node


def _bag_messages(bag: Path) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for path in sorted(bag.glob('*.mcap')):
        with path.open('rb') as f:
            for _schema, channel, message in make_reader(f).iter_messages(log_time_order=False):
                out[channel.topic].append(message)
    return out


def _rosbags_counts(bag: Path) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    with AnyReader([bag]) as reader:
        for conn, _t, raw in reader.messages():
            reader.deserialize(raw, conn.msgtype)
            counts[conn.topic] += 1
    return dict(counts)


def _rosbags_newest_stamp(bag: Path, topic: str) -> int:
    """The newest header stamp of ``topic`` in ``bag``, read by ``rosbags``."""
    newest = 0
    with AnyReader([bag]) as reader:
        for conn, _t, raw in reader.messages([c for c in reader.connections if c.topic == topic]):
            stamp = reader.deserialize(raw, conn.msgtype).header.stamp
            newest = max(newest, stamp.sec * 1_000_000_000 + stamp.nanosec)
    return newest


def _readable_in_open_bag(bag: Path, topic: str) -> int:
    """How many messages of ``topic`` another process can read now from the bag being written
    (its files have no summary yet: read as truncated files)."""
    from data_recorder.bag.reader import Bag
    try:
        return sum(1 for path in bag.glob('*.mcap') for _ in Bag(path).messages([topic]))
    except (OSError, ValueError):
        return 0


def _call(node, client, timeout: float = 10.0) -> Trigger.Response:
    assert client.wait_for_service(timeout_sec=timeout), client.srv_name
    future = client.call_async(Trigger.Request())
    assert wait_until(future.done, timeout), f'{client.srv_name} did not answer'
    return future.result()


def test_round_trip_every_contract_type(ros, spin, tmp_path: Path) -> None:
    pub_node = rclpy.create_node('contract_publisher')
    publishers = {t: pub_node.create_publisher(cls, t, qos) for t, (cls, _, qos) in CONTRACT.items()}
    # a topic with two types on the graph: refused with a warning, nothing else disturbed
    # (a second participant: DDS refuses two types for one topic in one participant)
    other = rclpy.Context()
    rclpy.init(context=other, signal_handler_options=SignalHandlerOptions.NO)
    other_node = rclpy.create_node('conflict_publisher', context=other)
    conflict = [pub_node.create_publisher(String, '/conflict', 10),
                other_node.create_publisher(JointState, '/conflict', 10)]
    # the recorder must meet the conflict, not only the first type: wait for the second
    # participant's publisher to be discovered
    assert wait_until(lambda: len(dict(pub_node.get_topic_names_and_types()).get('/conflict', [])) == 2, 20)
    collectors = [RawCollector(pub_node, [(t, CONTRACT[t][0])], CONTRACT[t][2]) for t in CONTRACT]
    # the latched battery state exists before the recorder: transient local must bring it in
    for i in range(3):
        publishers['battery'].publish(CONTRACT['battery'][1](i))
    recorder = _recorder(tmp_path / 'bag', topics=[*CONTRACT, '/conflict'],
                         compression_format='zstd')
    spin(pub_node, recorder)
    assert wait_until(lambda: all(p.get_subscription_count() >= 2 for p in publishers.values()), 20)
    assert '/conflict' not in recorder.capture.types
    n = 40
    for i in range(3, n):
        for topic, (_cls, make, _qos) in CONTRACT.items():
            publishers[topic].publish(make(i))
        for p in conflict:
            p.publish(p.msg_type())
        time.sleep(0.003)
    names = {t: pub_node.resolve_topic_name(t) for t in CONTRACT}
    first = {t: 0 if t == 'battery' else 3 for t in CONTRACT}   # index of the first message

    def all_in() -> bool:
        acc = recorder.accounting()
        return all(acc.get(names[t], {}).get('written', 0) >= n - first[t] and
                   collectors[k].count(t) >= n - first[t] for k, t in enumerate(CONTRACT))
    assert wait_until(all_in, 20), ({t: a['written'] for t, a in recorder.accounting().items()},
                                   {t: collectors[k].count(t) for k, t in enumerate(CONTRACT)})
    accounting = recorder.accounting()
    recorder.close_bag()
    other_node.destroy_node()
    rclpy.shutdown(context=other)

    bag = tmp_path / 'bag'
    recorded = _bag_messages(bag)
    assert '/conflict' not in recorded
    for k, topic in enumerate(CONTRACT):
        name = names[topic]
        published = collectors[k].messages[topic][:n - first[topic]]
        messages = recorded[name]
        assert [m.data for m in messages] == [data for _t, data in published], name
        assert accounting[name]['written'] == len(messages) == n - first[topic]
        assert accounting[name]['lost'] == 0
        for i, (message, (received, data)) in enumerate(zip(messages, published, strict=True),
                                                        start=first[topic]):
            assert message.publish_time == 1000 * 10**9 + i * 10_000_000 == header_stamp_ns(data)
            assert abs(message.log_time - received) < 2 * 10**9
    assert _rosbags_counts(bag) == {names[t]: n - first[t] for t in CONTRACT}
    # the recorder's own status, published on /diagnostics at close, carries the same counts
    own = [deserialize_message(d, DiagnosticArray).status[0]
           for _t, d in collectors[-1].messages['/diagnostics'][n - 3:]]
    assert own and own[-1].name == 'data_recorder'
    assert any(v.key == '/joint_states' and f'written={n - 3} lost=0' in v.value
               for v in own[-1].values)
    info = md.load(bag)
    assert info['compression_format'] == 'zstd'
    assert info['message_count'] == sum(n - first[t] for t in CONTRACT)
    offered = {t['topic_metadata']['name']: t['topic_metadata']['offered_qos_profiles'][0]
               for t in info['topics_with_message_count']}
    assert offered['/imu']['reliability'] == 'best_effort'
    assert offered['/battery']['durability'] == 'transient_local'
    with (bag / 'bag_0.mcap').open('rb') as f:
        decoded = {c.topic: m for _s, c, _m, m in
                   make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages()}
    assert list(decoded['/joint_states'].position) == _joint_state(n - 1).position.tolist()


def test_pause_resume_split_and_flush_services(ros, spin, tmp_path: Path) -> None:
    pub_node = rclpy.create_node('service_test')
    pub = pub_node.create_publisher(JointState, '/chatter', RELIABLE)
    recorder = _recorder(tmp_path / 'bag', topics=['/chatter'])
    clients = {name: pub_node.create_client(Trigger, f'/data_recorder/{name}')
               for name in ('pause', 'resume', 'split', 'snapshot')}
    spin(pub_node, recorder)
    assert wait_until(lambda: pub.get_subscription_count() >= 1, 20)
    stats = recorder.recorder.accounting.topics['/chatter']

    def burst(start: int, count: int) -> None:
        for i in range(start, start + count):
            pub.publish(_joint_state(i))
            time.sleep(0.002)

    burst(0, 20)
    assert wait_until(lambda: stats.written == 20, 10)
    assert _call(pub_node, clients['pause']).success
    burst(20, 20)
    assert wait_until(lambda: stats.received == 40, 10)
    assert _call(pub_node, clients['resume']).success
    burst(40, 20)
    assert wait_until(lambda: stats.written == 40, 10)
    response = _call(pub_node, clients['split'])
    assert response.success and 'new file' in response.message
    burst(60, 10)
    assert wait_until(lambda: stats.written == 50, 10)
    response = _call(pub_node, clients['snapshot'])      # normal mode: a flush to disk
    assert response.success and 'flushed' in response.message
    assert wait_until(lambda: recorder.recorder.queue_length == 0, 10)
    recorder.close_bag()
    info = md.load(tmp_path / 'bag')
    assert [f['message_count'] for f in info['files']] == [40, 10]
    assert stats.skipped_paused == 20 and stats.lost == 0
    stamps = [header_stamp_ns(m.data) for m in _bag_messages(tmp_path / 'bag')['/chatter']]
    expected = [_stamped(JointState, i).header.stamp for i in [*range(20), *range(40, 70)]]
    assert stamps == [s.sec * 10**9 + s.nanosec for s in expected]
    failed = _call(pub_node, clients['pause'])           # after close: refused with a reason
    assert not failed.success and 'no bag is open' in failed.message


def _spin_until(executor, predicate, what: object, deadline: float) -> None:
    """Spin the recorder's own executor only until ``predicate()`` holds, by ``deadline``
    (monotonic; ``what`` on failure): the tests below decide when it takes messages."""
    while not predicate():
        assert time.monotonic() < deadline, what() if callable(what) else what
        executor.spin_once(timeout_sec=0.05)


def _spin_until_subscribed(executor, publishers: list) -> None:
    _spin_until(executor, lambda: all(p.get_subscription_count() >= 1 for p in publishers),
                'the recorder did not subscribe within 20 s', time.monotonic() + 20)


def _wall_stamped(stamp_ns: int) -> JointState:
    msg = JointState(name=['j'], position=[0.0])
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return msg


def test_stop_takes_the_backlog_dds_holds_before_closing(ros, tmp_path: Path) -> None:
    """A recorder behind its publishers (a loaded host) gets SIGINT: what DDS has already
    received for it is taken and written before the bag closes, not dropped unseen."""
    from rclpy.experimental import EventsExecutor

    pub_node = rclpy.create_node('backlog_test')
    pub = pub_node.create_publisher(JointState, '/backlog', RELIABLE)
    recorder = _recorder(tmp_path / 'bag', topics=['/backlog'])
    executor = EventsExecutor()
    executor.add_node(recorder)
    try:
        _spin_until_subscribed(executor, [pub])
        now = time.time_ns() - 1_000_000
        for i in range(800):                 # 1.6 s of a 500 Hz stream the recorder has not taken
            pub.publish(_wall_stamped(now - (800 - i) * 2_000_000))
        assert pub.wait_for_all_acked(Duration(seconds=10))   # all in the recorder's DDS history
        recorder.drain(executor)
        recorder.close_bag()
    finally:
        executor.shutdown()
        recorder.destroy_node()
        pub_node.destroy_node()
    counts = json.loads(md.load(tmp_path / 'bag')['custom_data']['data_recorder.accounting'])
    assert counts['/backlog']['written'] == 800 and counts['/backlog']['lost'] == 0, counts


def test_stop_counts_the_tail_of_a_stream_still_behind(ros, tmp_path: Path) -> None:
    """A stream still flowing but behind the stop when ``drain_timeout`` ends has lost its end:
    counted, per topic. A publisher that has gone silent, or has gone, is not blamed."""
    from rclpy.experimental import EventsExecutor

    pub_node = rclpy.create_node('tail_test')
    behind, silent, gone = (pub_node.create_publisher(JointState, f'/{name}', RELIABLE)
                            for name in ('behind', 'silent', 'gone'))
    recorder = _recorder(tmp_path / 'bag', topics=['/behind', '/silent', '/gone'],
                         drain_timeout=1.0)
    executor = EventsExecutor()
    executor.add_node(recorder)
    stop = threading.Event()

    def publish_late() -> None:              # 500 Hz, each sample published 3 s after its stamp
        t0, i = time.time_ns() - 3 * 10**9, 0
        while not stop.is_set():
            if t0 + i * 2_000_000 > time.time_ns() - 3 * 10**9:
                time.sleep(0.001)
                continue
            behind.publish(_wall_stamped(t0 + i * 2_000_000))
            i += 1
    try:
        _spin_until_subscribed(executor, [behind, silent, gone])
        newest = time.time_ns() - 10**9
        for i in range(300):                 # silent and gone: 300 samples, the newest 1 s old
            silent.publish(_wall_stamped(newest - (299 - i) * 2_000_000))
            gone.publish(_wall_stamped(newest - (299 - i) * 2_000_000))
        thread = threading.Thread(target=publish_late)
        thread.start()
        stats = recorder.recorder.accounting.topics
        deadline = time.monotonic() + 20
        _spin_until(executor, lambda: (stats['/silent'].written == stats['/gone'].written == 300
                                       and stats['/behind'].written > 100),
                    lambda: {t: s.written for t, s in stats.items()}, deadline)
        pub_node.destroy_publisher(gone)
        _spin_until(executor, lambda: not recorder.count_publishers('/gone'),
                    '/gone publisher still on the graph', deadline)
        # silent longer than a held-back reliable stream can be (REPAIR_WAIT_S): not waited for
        silent_since = time.monotonic()
        _spin_until(executor, lambda: time.monotonic() - silent_since > REPAIR_WAIT_S + 1.0,
                    'spinning', deadline + 10)
        stop_ns = recorder.drain(executor)
        recorder.close_bag()
    finally:
        stop.set()
        thread.join()
        executor.shutdown()
        recorder.destroy_node()
        pub_node.destroy_node()
    counts = json.loads(md.load(tmp_path / 'bag')['custom_data']['data_recorder.accounting'])
    # 3 s behind, 1 s of drain: the last ~2 s (about 1,000 samples at 500 Hz) never came. How
    # many is the host's scheduling; the count is checked against the bag (read by rosbags):
    # the samples due between the newest /behind stamp written and the stop.
    newest = _rosbags_newest_stamp(tmp_path / 'bag', '/behind')
    due = (stop_ns - newest) // 2_000_000
    assert due > 0 and counts['/behind']['lost_tail'] == pytest.approx(due, rel=0.01, abs=1), \
        (due, counts['/behind'])
    assert counts['/behind']['lost'] == counts['/behind']['lost_tail'], counts['/behind']
    assert counts['/silent']['written'] == 300 and counts['/silent']['lost'] == 0, counts
    # ... but what it owed the stop on its clock is reported apart, never hidden
    assert counts['/silent']['silent_tail'] > 0, counts['/silent']
    assert counts['/gone']['silent_tail'] == 0, counts['/gone']
    assert counts['/gone']['written'] == 300 and counts['/gone']['lost'] == 0, counts


def test_late_best_effort_publisher_is_recorded_too(ros, spin, tmp_path: Path) -> None:
    pub_node = rclpy.create_node('late_qos_test')
    reliable = pub_node.create_publisher(JointState, '/mixed', RELIABLE)
    recorder = _recorder(tmp_path / 'bag', topics=['/mixed'])
    spin(pub_node, recorder)
    assert wait_until(lambda: recorder.capture.settings.get('/mixed', {}).get('reliability')
                      == 'reliable', 20)
    best_effort = pub_node.create_publisher(JointState, '/mixed', BEST_EFFORT)
    # a reliable reader never matches a best-effort writer: the recorder must re-subscribe
    assert wait_until(lambda: recorder.capture.settings['/mixed']['reliability'] == 'best_effort', 20)
    assert wait_until(lambda: best_effort.get_subscription_count() >= 1, 20)
    time.sleep(0.3)
    for i in range(10):
        reliable.publish(_joint_state(i))
        best_effort.publish(_joint_state(100 + i))
        time.sleep(0.005)
    stats = recorder.recorder.accounting.topics['/mixed']
    assert wait_until(lambda: stats.written == 20, 10), stats
    recorder.close_bag()
    assert len(_bag_messages(tmp_path / 'bag')['/mixed']) == 20


def test_snapshot_mode_writes_only_the_last_seconds_on_request(ros, spin, tmp_path: Path) -> None:
    pub_node = rclpy.create_node('snapshot_test')
    pub = pub_node.create_publisher(JointState, '/chatter', RELIABLE)
    collector = RawCollector(pub_node, [('/chatter', JointState)])
    recorder = _recorder(tmp_path / 'bag', topics=['/chatter'], snapshot_mode=True,
                         snapshot_duration=1.0)
    client = pub_node.create_client(Trigger, '/data_recorder/snapshot')
    spin(pub_node, recorder)
    assert wait_until(lambda: pub.get_subscription_count() >= 2, 20)
    for i in range(120):                                  # ~2.4 s at 50 Hz
        pub.publish(_joint_state(i))
        time.sleep(0.02)
    stats = recorder.recorder.accounting.topics['/chatter']
    assert wait_until(lambda: stats.received == 120 and recorder.recorder.queue_length == 0, 10)
    assert recorder.recorder.writer.message_count == 0    # nothing on disk before the request
    response = _call(pub_node, client)
    assert response.success and 'snapshot queued' in response.message
    assert wait_until(lambda: recorder.recorder.writer.message_count > 0, 10)
    recorder.close_bag()
    messages = _bag_messages(tmp_path / 'bag')['/chatter']
    # the last second only (~50 of the 50 Hz stream on a quiet host; how many arrived in that
    # second is a loaded host's scheduling: 8 once at load 42)
    assert messages and messages[-1].log_time - messages[0].log_time < 10**9
    received = [t for t, _ in collector.messages['/chatter']]
    if received[-1] - received[0] > 2 * 10**9:            # they arrived over more than 2 s
        assert len(messages) < 120, 'the snapshot kept more than its last second'
    tail = [data for _t, data in collector.messages['/chatter'][-len(messages):]]
    assert [m.data for m in messages] == tail             # the latest ones, in order


def test_kill_9_then_recover_keeps_everything_up_to_the_last_flush(ros, spin, node_process,
                                                                   tmp_path: Path) -> None:
    pub_node = rclpy.create_node('crash_test')
    pub = pub_node.create_publisher(JointState, '/chatter', RELIABLE)
    collector = RawCollector(pub_node, [('/chatter', JointState)])
    spin(pub_node)
    bag = tmp_path / 'crash'
    proc = node_process('data_recorder', ['--ros-args', '-p', f'output:={bag}',
                                          '-p', "topics:=['/chatter']",
                                          '-p', 'flush_interval:=0.3'])
    assert wait_until(lambda: pub.get_subscription_count() >= 2, 30), proc.log()
    for i in range(300):
        pub.publish(_joint_state(i))
        time.sleep(0.002)
    assert wait_until(lambda: collector.count('/chatter') == 300, 10)
    # Flushed = readable by another process from the unfinished file (kill -9 loses only what
    # the process still holds). How soon after the 0.3 s flush interval: the host's load.
    assert wait_until(lambda: _readable_in_open_bag(bag, '/chatter') == 300, 30), \
        (_readable_in_open_bag(bag, '/chatter'), proc.log())
    proc.kill()
    assert not (bag / 'metadata.yaml').exists()           # really cut: never closed
    report = recover(bag)
    assert report.files[0].recovered and report.messages == 300, report
    recorded = _bag_messages(bag)['/chatter']
    assert [m.data for m in recorded] == [d for _t, d in collector.messages['/chatter']]
    assert _rosbags_counts(bag) == {'/chatter': 300}
    assert md.load(bag)['message_count'] == 300


def test_bag_recorded_from_sim_robot_by_the_cli(ros, node_process, tmp_path: Path) -> None:
    """The sim's streams and a numbered publisher beside them, recorded by ``bag record``: counts
    agree between mcap, rosbags and metadata, and the loss the recorder reports for the numbered
    stream is what is really missing from the bag (read by rosbags)."""
    sim = node_process('sim_robot', ['--ros-args', '-p', 'profile:=quadruped_12dof'])
    bag = tmp_path / 'sim'
    log = (tmp_path / 'record.log').open('wb')
    record = subprocess.Popen(
        [sys.executable, '-m', 'data_recorder.record_cli', 'record', '-o', str(bag), '-a',
         '-x', '^/(rosout|parameter_events)$|transition_event', '--compression-format', 'lz4'],
        stdout=log, stderr=subprocess.STDOUT)
    numbered = subprocess.Popen(
        [sys.executable, '-m', 'field_deploy.numbered', '--topic', '/numbered', '--rate', '200',
         '--count', '600', '--aperiodic', '--out', str(tmp_path / 'numbered.json')],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        # the CLI's start (imports, discovery): 30 s did not suffice once at load 42
        assert wait_until(lambda: (bag / 'sim_0.mcap').exists(), 90), \
            (tmp_path / 'record.log').read_text()[-2000:]
        assert numbered.wait(60) == 0
        assert sim.alive(), sim.log()
        record.send_signal(signal.SIGTERM)
        assert record.wait(30) == 0
    finally:
        for proc in (record, numbered):
            if proc.poll() is None:
                proc.kill()
        log.close()
    output = (tmp_path / 'record.log').read_text()
    info = md.load(bag)
    counts = {t['topic_metadata']['name']: t['message_count'] for t in info['topics_with_message_count']}
    assert {'/joint_states', '/imu', '/odom', '/diagnostics', '/wrench/FL_foot'} <= set(counts), output
    # how many the sim got out on a loaded host is its scheduling (it skips samples when its
    # timers fall behind); every stream recorded agrees below
    assert counts['/joint_states'] > 0, output
    recorded = _bag_messages(bag)
    assert {t: len(m) for t, m in recorded.items() if m} == {t: c for t, c in counts.items() if c}
    assert _rosbags_counts(bag) == {t: c for t, c in counts.items() if c}
    accounting = json.loads(info['custom_data']['data_recorder.accounting'])
    for topic, count in counts.items():
        assert accounting[topic]['written'] == count, topic
        # exact: DDS sequence numbers (a topic that got nothing, as the sim's 5 Hz battery when
        # the sim ran 60 s behind, has none to count by)
        assert accounting[topic]['sequenced'] or count == 0, (topic, accounting[topic])
    published = json.loads((tmp_path / 'numbered.json').read_text())['published']
    missing = published - len(numbers_in_bag(bag, '/numbered')['w0'])
    assert accounting['/numbered']['lost'] == missing, (accounting['/numbered'], missing)
    # the close line is the bag's own summary, word for word
    assert f'{bag}: {info["custom_data"]["data_recorder.loss_summary"]}' in output, output[-2000:]


@pytest.mark.parametrize('bad', [
    ['-a', '--max-bag-size', '-5'],
    ['-a', '-e', '('],
    [],
])
def test_cli_refuses_bad_input_with_one_line(tmp_path: Path, bad: list[str]) -> None:
    result = subprocess.run([sys.executable, '-m', 'data_recorder.record_cli', 'record', '-o',
                             str(tmp_path / 'b'), *bad], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count('\n') == 1 and 'error:' in result.stderr
    assert not (tmp_path / 'b').exists()
    existing = subprocess.run([sys.executable, '-m', 'data_recorder.record_cli', 'record', '-o',
                               str(tmp_path), '-a'], capture_output=True, text=True, timeout=60)
    assert existing.returncode == 1 and 'already exists' in existing.stderr
