"""bag_player over real rclpy and real DDS: bytes, order, timing, rate, loop, filter, remap, /clock,
pause/resume, unknown types, truncated bags, the console script, and a bag from our own recorder.

Fixture bags are written by the independent ``rosbags`` writer (see data_recorder.synthetic).
Timing assertions are tolerant (2 shared cores): they check behaviour, the bench measures speed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from std_srvs.srv import Trigger

from data_recorder.player import PlaybackClock, PlayOptions, parse_remaps, select_topics
from data_recorder.player_node import make_player_node
from data_recorder.reader import Bag
from data_recorder.synthetic import Stream, write_bag
from field_deploy.ros import message_class
from field_deploy.testing import RawCollector, wait_until

pytestmark = pytest.mark.timeout(120)

STREAMS = [Stream('/joint_states', 'sensor_msgs/msg/JointState', 200.0),
           Stream('/imu', 'sensor_msgs/msg/Imu', 100.0),
           Stream('/wrench/left_foot', 'geometry_msgs/msg/WrenchStamped', 100.0),
           Stream('/odom', 'nav_msgs/msg/Odometry', 50.0),
           Stream('/camera/head/image_raw', 'sensor_msgs/msg/Image', 10.0)]
UNKNOWN = ('/vendor/blob', 'vendor_msgs/msg/Blob')


@pytest.fixture(scope='module')
def bag_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('player') / 'fixture'
    extra = [(UNKNOWN[0], UNKNOWN[1], 1_700_000_000_000_000_000 + k * 100_000_000,
              b'\x00\x01\x00\x00' + k.to_bytes(4, 'little')) for k in range(10)]
    return write_bag(path, STREAMS, 1.5, extra=extra, image_size=(320, 240))


def _collector(node, bag: Bag, topics, remap=None):
    remap = remap or {}
    return RawCollector(node, [(remap.get(t, t), message_class(bag.topics[t].type)) for t in topics])


def _play(ros_node_factory, bag: Bag, options: PlayOptions, spin):
    node, player = make_player_node(bag, options, node_name=f'bag_player_{id(options)}',
                                    record_timing=True)
    spin(node)
    return node, player


def _run(player, timeout: float = 30.0):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault('stats', player.run()), daemon=True)
    thread.start()
    return thread, result


def _wait_matched(node, topics, n=1, timeout=10.0):
    assert wait_until(lambda: all(node.count_publishers(t) >= n for t in topics), timeout), \
        f'no publisher matched on {topics}'


@pytest.fixture
def sub_node(ros, spin):
    import rclpy
    node = rclpy.create_node(f'player_test_sub_{time.monotonic_ns()}')
    spin(node)
    return node


def test_core_clock_and_selection() -> None:
    now = [0]
    clock = PlaybackClock(2.0, now_ns=lambda: now[0])
    clock.start(1000)
    now[0] = 500
    assert clock.bag_now() == 2000 and clock.wall_for(3000) == 1000
    clock.pause()
    now[0] = 10_000
    assert clock.bag_now() == 2000
    clock.resume()
    now[0] = 10_100
    assert clock.bag_now() == 2200
    clock.jump(5000)
    assert clock.bag_now() == 5000
    assert parse_remaps(['imu:=/replay/imu']) == {'/imu': '/replay/imu'}
    with pytest.raises(ValueError, match='old:=new'):
        parse_remaps(['imu'])
    assert select_topics(['/a', '/b/image_raw', '/c'], exclude='image') == ['/a', '/c']
    with pytest.raises(ValueError, match='/nope'):
        select_topics(['/a'], ['/nope'])
    with pytest.raises(ValueError, match='rate'):
        PlayOptions(rate=0).validate()


def test_replay_bytes_order_and_timing(bag_path: Path, sub_node, spin) -> None:
    bag = Bag(bag_path)
    topics = [s.topic for s in STREAMS]
    col = _collector(sub_node, bag, topics)
    _node, player = _play(None, bag, PlayOptions(delay_s=0.3), spin)
    _wait_matched(sub_node, topics)
    stats = player.run()
    expected = {t: [m for m in bag.messages([t])] for t in topics}
    assert wait_until(lambda: all(col.count(t) == len(expected[t]) for t in topics), 10.0), \
        {t: (col.count(t), len(expected[t])) for t in topics}
    assert stats.published == sum(len(v) for v in expected.values())
    for t in topics:
        assert [d for _, d in col.messages[t]] == [m.data for m in expected[t]], t
    # timing: each message went out at its recorded relative time (publish − schedule; generous
    # bounds because the 2 CI cores are shared), and the subscriber saw the recorded span
    errors = np.abs(np.asarray(stats.errors_ns)) / 1e6
    assert len(errors) == stats.published
    assert np.median(errors) < 2.0 and np.percentile(errors, 90) < 20.0, np.percentile(errors, [50, 90])
    recv = np.array([r for r, _ in col.messages['/joint_states']], dtype=np.int64)
    span = (recv[-1] - recv[0]) / 1e9
    rec_span = (expected['/joint_states'][-1].log_time_ns - expected['/joint_states'][0].log_time_ns) / 1e9
    assert abs(span - rec_span) < 0.3, (span, rec_span)
    # the unknown type was skipped, the rest played
    assert UNKNOWN[0] not in player.topics


@pytest.mark.parametrize('rate', [2.0, 0.5])
def test_rate_scaling(bag_path: Path, sub_node, spin, rate: float) -> None:
    bag = Bag(bag_path)
    col = _collector(sub_node, bag, ['/imu'])
    _node, player = _play(None, bag, PlayOptions(rate=rate, topics=('/imu',), duration_s=0.8,
                                                delay_s=0.3), spin)
    _wait_matched(sub_node, ['/imu'])
    player.run()
    assert wait_until(lambda: col.count('/imu') == 80, 5.0), col.count('/imu')
    recv = [r for r, _ in col.messages['/imu']]
    span = (recv[-1] - recv[0]) / 1e9
    expected = 0.79 / rate
    assert expected * 0.8 < span < expected * 1.25 + 0.05, (span, expected)


def test_loop_filter_remap_and_clock(bag_path: Path, sub_node, spin) -> None:
    bag = Bag(bag_path)
    remap = {'/odom': '/replay/odom'}
    col = _collector(sub_node, bag, ['/odom'], remap)
    other = _collector(sub_node, bag, ['/imu'])
    clocks: list[int] = []
    sub_node.create_subscription(Clock, '/clock', lambda m: clocks.append(
        m.clock.sec * 10**9 + m.clock.nanosec), QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    options = PlayOptions(topics=('/odom',), remap=remap, loop=True, duration_s=0.2, clock_hz=50.0,
                          delay_s=0.3, start_offset_s=0.5)
    _node, player = _play(None, bag, options, spin)
    _wait_matched(sub_node, ['/replay/odom', '/clock'])
    thread, _ = _run(player)
    assert wait_until(lambda: player.stats.loops >= 2, 10.0)
    player.stop()
    thread.join(5.0)
    window = [m.data for m in bag.messages(['/odom'], bag.start_ns + 500_000_000,
                                           bag.start_ns + 700_000_000)]
    got = [d for _, d in col.messages['/replay/odom']]
    assert len(window) == 10 and got[:2 * len(window)] == window * 2
    assert other.count('/imu') == 0, 'topic filter let /imu through'
    assert len(clocks) >= 5
    assert all(bag.start_ns + 500_000_000 - 1 <= c <= bag.start_ns + 700_000_000 for c in clocks)


def test_pause_resume_step_services(bag_path: Path, sub_node, spin) -> None:
    bag = Bag(bag_path)
    col = _collector(sub_node, bag, ['/imu'])
    node, player = _play(None, bag, PlayOptions(topics=('/imu',), start_paused=True), spin)
    name = node.get_fully_qualified_name()
    clients = {s: sub_node.create_client(Trigger, f'{name}/{s}') for s in ('resume', 'pause', 'step')}
    for c in clients.values():
        assert c.wait_for_service(timeout_sec=10.0)
    _wait_matched(sub_node, ['/imu'])
    thread, _ = _run(player)
    time.sleep(0.4)
    assert col.count('/imu') == 0, 'played while paused'
    assert clients['step'].call(Trigger.Request(), timeout_sec=5.0).success
    assert wait_until(lambda: col.count('/imu') == 1, 5.0)
    assert clients['resume'].call(Trigger.Request(), timeout_sec=5.0).success
    assert wait_until(lambda: col.count('/imu') >= 20, 5.0)
    assert clients['pause'].call(Trigger.Request(), timeout_sec=5.0).success
    time.sleep(0.1)
    n = col.count('/imu')
    time.sleep(0.4)
    assert col.count('/imu') == n, 'kept playing after pause'
    assert n < 150
    clients['resume'].call(Trigger.Request(), timeout_sec=5.0)
    thread.join(10.0)
    assert wait_until(lambda: col.count('/imu') == 150, 5.0)
    assert [d for _, d in col.messages['/imu']] == [m.data for m in bag.messages(['/imu'])]


def test_truncated_bag_plays_what_is_readable(bag_path: Path, tmp_path: Path, sub_node, spin) -> None:
    cut = tmp_path / 'cut.mcap'
    src = next(bag_path.glob('*.mcap'))
    data = src.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    bag = Bag(cut)
    assert bag.truncated == [cut]
    full = [m.data for m in Bag(bag_path).messages(['/joint_states'])]
    readable = [m.data for m in bag.messages(['/joint_states'])]
    assert 0 < len(readable) < len(full) and readable == full[:len(readable)]
    col = _collector(sub_node, bag, ['/joint_states'])
    _node, player = _play(None, bag, PlayOptions(topics=('/joint_states',), rate=4.0, delay_s=0.3), spin)
    _wait_matched(sub_node, ['/joint_states'])
    player.run()
    assert wait_until(lambda: col.count('/joint_states') == len(readable), 5.0)


def test_bag_player_console_script(bag_path: Path, tmp_path: Path, sub_node, node_process) -> None:
    bag = Bag(bag_path)
    col = _collector(sub_node, bag, ['/wrench/left_foot'])
    proc = node_process('bag_player', [str(bag_path), '--topics', '/wrench/left_foot',
                                       '--wait-for-subscribers', '20', '--delay', '0.2',
                                       '--ros-args', '-p', 'rate:=3.0'])
    assert wait_until(lambda: not proc.alive(), 30.0), proc.log()
    assert proc.proc.returncode == 0, proc.log()
    assert wait_until(lambda: col.count('/wrench/left_foot') == 150, 5.0), \
        (col.count('/wrench/left_foot'), proc.log())
    recv = [r for r, _ in col.messages['/wrench/left_foot']]
    span = (recv[-1] - recv[0]) / 1e9
    assert span < 1.0, f'span {span:.2f} s: -p rate:=3.0 (0.5 s) not applied? (1.0x is 1.49 s)'
    missing = node_process('bag_player', [str(tmp_path / 'nope')])
    assert wait_until(lambda: not missing.alive(), 20.0)
    assert missing.proc.returncode == 1 and 'no such bag' in missing.log()


def test_a_running_subscriber_gets_the_first_messages(tmp_path: Path, sub_node, node_process) -> None:
    """``bag play`` with no delay and no --wait-for-subscribers: the player waits until its
    publisher matched the subscriber the graph already shows, so none of the first messages is
    lost (without the wait, ``--match-timeout 0``, this subscriber got 269 and 1,847 of the 2,000
    on a loaded host). The bag: 2,000 messages at 1 kHz, written by rosbags."""
    path = write_bag(tmp_path / 'start', [Stream('/start', 'sensor_msgs/msg/JointState', 1000.0)],
                     2.0)
    bag = Bag(path)
    expected = bag.topics['/start'].count
    col = _collector(sub_node, bag, ['/start'])
    proc = node_process('bag_player', [str(path)])
    assert wait_until(lambda: not proc.alive(), 60.0), proc.log()
    assert proc.proc.returncode == 0, proc.log()
    assert wait_until(lambda: col.count('/start') == expected == 2000, 5.0), \
        (col.count('/start'), expected, proc.log())
    assert 'matched 1 subscriber(s)' in proc.log(), proc.log()
    # the bytes in order: nothing missing at the start, nothing reordered
    from rosbags.highlevel import AnyReader
    with AnyReader([path]) as reader:
        recorded = [raw for _c, _t, raw in reader.messages()]
    assert [d for _t, d in col.messages['/start']] == recorded


def test_replay_of_bag_recorded_from_sim_robot(tmp_path: Path, sub_node, spin, node_process) -> None:
    """End to end with the project's own recorder: sim_robot → data_recorder → bag_player."""
    out = tmp_path / 'sim_bag'
    sim = node_process('sim_robot', ['--ros-args', '-p', 'profile:=quadruped_12dof'])
    rec = node_process('data_recorder', ['--ros-args', '-p', f'output:={out}',
                                         '-p', 'topics:=[/joint_states, /imu]'])
    assert wait_until(lambda: 'recording /joint_states' in rec.log(), 30.0), rec.log()
    time.sleep(1.5)
    assert rec.stop() == 0, rec.log()
    sim.stop()
    bag = Bag(out)
    assert bag.topics['/joint_states'].count > 50, bag.topics
    col = _collector(sub_node, bag, ['/joint_states'])
    _node, player = _play(None, bag, PlayOptions(topics=('/joint_states',), delay_s=0.3), spin)
    _wait_matched(sub_node, ['/joint_states'])
    player.run()
    n = bag.topics['/joint_states'].count
    assert wait_until(lambda: col.count('/joint_states') == n, 10.0), (col.count('/joint_states'), n)
    assert [d for _, d in col.messages['/joint_states']] == [m.data for m in bag.messages(['/joint_states'])]


def test_core_seek_and_live_rate_change(bag_path: Path) -> None:
    """Pure core, no DDS: seek while paused, then a live rate change; exactly the rest plays."""
    from data_recorder.player import Player
    bag = Bag(bag_path)
    got: list[tuple[str, bytes]] = []
    player = Player(bag, ['/imu'], PlayOptions(start_paused=True, rate=1.0, read_ahead_messages=10,
                                               realtime_priority=0),
                    lambda t, d: got.append((t, d)))
    thread, _ = _run(player)
    time.sleep(0.2)
    assert got == []
    player.seek(1.0)                                  # 1.0 s after the bag start
    player.set_rate(4.0)
    player.resume()
    thread.join(10.0)
    expected = [m.data for m in bag.messages(['/imu'], bag.start_ns + 1_000_000_000)]
    assert [d for _, d in got] == expected and len(expected) == 50


def test_recorded_qos_and_overrides_file(tmp_path: Path) -> None:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy

    from data_recorder.player_node import load_qos_overrides, recorded_qos
    v8 = [{'reliability': 1, 'durability': 1, 'depth': 500}, {'reliability': 1, 'durability': 1, 'depth': 5}]
    q = recorded_qos(v8)
    assert (q.reliability, q.durability, q.depth) == (ReliabilityPolicy.RELIABLE,
                                                      DurabilityPolicy.TRANSIENT_LOCAL, 500)
    mixed = [{'reliability': 'reliable', 'durability': 'volatile', 'depth': 1},
             {'reliability': 'best_effort', 'durability': 'transient_local', 'depth': 1}]
    q = recorded_qos(mixed)
    assert (q.reliability, q.durability, q.depth) == (ReliabilityPolicy.BEST_EFFORT,
                                                      DurabilityPolicy.VOLATILE, 100)
    path = tmp_path / 'qos.yaml'
    path.write_text('imu:\n  reliability: best_effort\n  history: keep_all\n  depth: 3\n')
    overrides = load_qos_overrides(path)
    q = recorded_qos(v8, overrides['/imu'])
    assert (q.reliability, q.history) == (ReliabilityPolicy.BEST_EFFORT, HistoryPolicy.KEEP_ALL)
    path.write_text('- not a mapping\n')
    with pytest.raises(ValueError, match=r'qos\.yaml'):
        load_qos_overrides(path)
    with pytest.raises(FileNotFoundError, match=r'missing\.yaml'):
        load_qos_overrides(tmp_path / 'missing.yaml')
