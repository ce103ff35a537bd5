"""bag_player over real rclpy and real DDS: bytes, order, timing, rate, loop, filter, remap, /clock,
pause/resume, unknown types, truncated bags, the console script, and a bag from our own recorder.

Fixture bags are written by the independent ``rosbags`` writer (see data_recorder.synthetic) and
the expected streams are read back with ``rosbags`` too, never with the reader the player uses.
Timing is checked as behaviour a loaded host cannot break: no message is received before its
recorded time (scaled by the rate) after the play began; how close to it they arrive is a figure
of ``bench/player/run.py``. The one upper bound (a rate above 1 plays in under half the recorded
span) is the behaviour itself, which a 1x play cannot pass.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from std_srvs.srv import Trigger

from data_recorder.bag.reader import Bag
from data_recorder.replay.node import make_player_node
from data_recorder.replay.player import PlaybackClock, PlayOptions, parse_remaps, select_topics
from data_recorder.synthetic import Stream, write_bag
from field_deploy.ros import message_class
from field_deploy.testing import RawCollector, quiet_for, wait_until

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


def rosbags_messages(path: Path, topics, start_ns: int = 0,
                     end_ns: int = 2**63) -> dict[str, list[tuple[int, bytes]]]:
    """``{topic: [(log_time_ns, raw), …]}`` with ``start_ns <= log_time < end_ns``, read with
    ``rosbags`` (an independent reader: the expected stream never comes from the player's)."""
    from rosbags.rosbag2 import Reader  # raw: the fixture's unknown type has no real hash
    out: dict[str, list[tuple[int, bytes]]] = {t: [] for t in topics}
    with Reader(Path(path)) as reader:
        conns = [c for c in reader.connections if c.topic in out]
        for conn, t, raw in reader.messages(connections=conns):
            if start_ns <= t < end_ns:
                out[conn.topic].append((t, bytes(raw)))
    return out


def _data(stream: list[tuple[int, bytes]]) -> list[bytes]:
    return [d for _, d in stream]


def assert_never_early(col: RawCollector, expected: dict[str, list[tuple[int, bytes]]],
                       began_ns: int, rate: float = 1.0) -> None:
    """Every message was received no earlier than its recorded offset (scaled by ``rate``) after
    ``began_ns`` (wall time taken before the play began, delay included): what pacing means, and a
    bound load can only move further away. 2 ms of slack: the collector stamps with the wall
    clock, the player schedules on the monotonic one (an NTP slew is <= 0.05 %)."""
    first = min(s[0][0] for s in expected.values() if s)
    for topic, stream in expected.items():
        recv = [r for r, _ in col.messages[topic]]
        early = [(k, (t - first) / rate / 1e9, (r - began_ns) / 1e9)
                 for k, ((t, _), r) in enumerate(zip(stream, recv, strict=True))
                 if r - began_ns < (t - first) / rate - 2_000_000]
        assert not early, f'{topic}: received before due (index, due s, received s): {early[:5]}'


def assert_faster_than_recorded(received: list[tuple[int, bytes]],
                                expected: list[tuple[int, bytes]]) -> None:
    """A rate above 1 was applied: the received span is under half the recorded one. A 1x play
    cannot pass; a 10x play fails only if stalled for over 0.6 s of its 0.15 s."""
    span = received[-1][0] - received[0][0]
    recorded = expected[-1][0] - expected[0][0]
    assert span < recorded / 2, \
        f'span {span / 1e9:.2f} s, recorded {recorded / 1e9:.2f} s: rate not applied?'


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
    expected = rosbags_messages(bag_path, topics)
    col = _collector(sub_node, bag, topics)
    _node, player = _play(None, bag, PlayOptions(delay_s=0.3), spin)
    _wait_matched(sub_node, topics)
    began = time.time_ns()
    stats = player.run()
    assert wait_until(lambda: all(col.count(t) == len(expected[t]) for t in topics), 10.0), \
        {t: (col.count(t), len(expected[t])) for t in topics}
    assert stats.published == sum(len(v) for v in expected.values()) == 690
    for t in topics:
        assert [d for _, d in col.messages[t]] == _data(expected[t]), t
    # paced, not a burst: nothing arrived before its recorded time (the last one 1.5 s in)
    assert_never_early(col, expected, began + int(0.3e9))
    # the unknown type was skipped, the rest played
    assert UNKNOWN[0] not in player.topics


@pytest.mark.parametrize('rate', [10.0, 0.5])
def test_rate_scaling(bag_path: Path, sub_node, spin, rate: float) -> None:
    """The rate scales the schedule: never before ``offset / rate``. Above 1 the play is also
    at least twice as fast as the recording: an upper bound, but one that is the behaviour (a 1x
    play spans the recorded 1.49 s; 10x is due in 0.15 s and may take 0.75 s). How close to
    ``offset / rate`` it is: bench/player/run.py."""
    bag = Bag(bag_path)
    expected = rosbags_messages(bag_path, ['/imu'])
    assert len(expected['/imu']) == 150
    col = _collector(sub_node, bag, ['/imu'])
    _node, player = _play(None, bag, PlayOptions(rate=rate, topics=('/imu',), delay_s=0.3), spin)
    _wait_matched(sub_node, ['/imu'])
    began = time.time_ns()
    player.run()
    assert wait_until(lambda: col.count('/imu') == 150, 5.0), col.count('/imu')
    assert [d for _, d in col.messages['/imu']] == _data(expected['/imu'])
    assert_never_early(col, expected, began + int(0.3e9), rate)
    if rate > 1.0:
        assert_faster_than_recorded(col.messages['/imu'], expected['/imu'])


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
    window = _data(rosbags_messages(bag_path, ['/odom'], bag.start_ns + 500_000_000,
                                    bag.start_ns + 700_000_000)['/odom'])
    assert len(window) == 10
    # two loops were played: the first 20 received are the window twice (in flight ones awaited)
    assert wait_until(lambda: col.count('/replay/odom') >= 2 * len(window), 5.0), \
        col.count('/replay/odom')
    got = [d for _, d in col.messages['/replay/odom']]
    assert got[:2 * len(window)] == window * 2
    assert other.count('/imu') == 0, 'topic filter let /imu through'
    assert wait_until(lambda: len(clocks) >= 5, 5.0), len(clocks)
    assert all(bag.start_ns + 500_000_000 - 1 <= c <= bag.start_ns + 700_000_000 for c in clocks)


def test_pause_resume_step_services(bag_path: Path, sub_node, spin) -> None:
    """Step, resume and pause over the services. Played at 0.25x so that the pause surely lands
    before the end (6 s of play) on a loaded host; the rest is sped up with the live ``rate``
    parameter."""
    from rclpy.parameter import Parameter
    bag = Bag(bag_path)
    expected = _data(rosbags_messages(bag_path, ['/imu'])['/imu'])
    col = _collector(sub_node, bag, ['/imu'])
    node, player = _play(None, bag, PlayOptions(topics=('/imu',), start_paused=True, rate=0.25),
                         spin)
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
    # what was in flight at the pause arrives; then nothing more (25 messages a second if it
    # kept playing)
    assert wait_until(quiet_for(lambda: col.count('/imu'), 0.5), 10.0), 'never went quiet'
    n = col.count('/imu')
    time.sleep(1.0)
    assert col.count('/imu') == n, 'kept playing after pause'
    assert n < len(expected) == 150
    assert node.set_parameters([Parameter('rate', value=4.0)])[0].successful
    assert clients['resume'].call(Trigger.Request(), timeout_sec=5.0).success
    thread.join(10.0)
    assert wait_until(lambda: col.count('/imu') == 150, 5.0)
    assert [d for _, d in col.messages['/imu']] == expected


def test_truncated_bag_plays_what_is_readable(bag_path: Path, tmp_path: Path, sub_node, spin) -> None:
    cut = tmp_path / 'cut.mcap'
    src = next(bag_path.glob('*.mcap'))
    data = src.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    bag = Bag(cut)
    assert bag.truncated == [cut]
    full = _data(rosbags_messages(bag_path, ['/joint_states'])['/joint_states'])
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
                                       '--ros-args', '-p', 'rate:=10.0'])
    assert wait_until(lambda: not proc.alive(), 30.0), proc.log()
    assert proc.proc.returncode == 0, proc.log()
    assert wait_until(lambda: col.count('/wrench/left_foot') == 150, 5.0), \
        (col.count('/wrench/left_foot'), proc.log())
    expected = rosbags_messages(bag_path, ['/wrench/left_foot'])['/wrench/left_foot']
    assert [d for _, d in col.messages['/wrench/left_foot']] == _data(expected)
    assert_faster_than_recorded(col.messages['/wrench/left_foot'], expected)   # -p rate:=10.0
    missing = node_process('bag_player', [str(tmp_path / 'nope')])
    assert wait_until(lambda: not missing.alive(), 20.0)
    assert missing.proc.returncode == 1 and 'no such bag' in missing.log()


def test_a_running_subscriber_gets_the_first_messages(tmp_path: Path, sub_node, node_process) -> None:
    """``bag play`` with no delay and no --wait-for-subscribers: the player waits until its
    publisher matched the subscriber the graph already shows, so none of the first messages is
    lost (without the wait, ``--match-timeout 0``, this subscriber got 269 and 1,847 of the 2,000
    on a loaded host). The bag: 2,000 messages at 1 kHz, written by rosbags.

    Both histories hold the whole play (writer depth 2,000 by a QoS override, reader 4,000): a
    starved receiver loses nothing later on either (at load 46 the recorded depth 10 lost 101 of
    2,000 somewhere), while a message published before the match is still never delivered to
    this volatile reader: what the test is about."""
    path = write_bag(tmp_path / 'start', [Stream('/start', 'sensor_msgs/msg/JointState', 1000.0)],
                     2.0)
    bag = Bag(path)
    expected = bag.topics['/start'].count
    col = RawCollector(sub_node, [('/start', message_class(bag.topics['/start'].type))],
                       QoSProfile(depth=4000, reliability=ReliabilityPolicy.RELIABLE))
    overrides = tmp_path / 'qos.yaml'
    overrides.write_text('/start:\n  reliability: reliable\n  history: keep_last\n  depth: 2000\n')
    proc = node_process('bag_player', [str(path), '--qos-profile-overrides-path', str(overrides)])
    assert wait_until(lambda: not proc.alive(), 60.0), proc.log()
    assert proc.proc.returncode == 0, proc.log()
    recorded = _data(rosbags_messages(path, ['/start'])['/start'])
    if not wait_until(lambda: col.count('/start') == expected == 2000, 5.0):
        got = {d for _t, d in col.messages['/start']}
        missing = [i for i, d in enumerate(recorded) if d not in got]
        pytest.fail(f'{col.count("/start")} of {expected} received; missing indices '
                    f'{missing[:3]}..{missing[-3:]} ({len(missing)})\n{proc.log()}')
    assert 'matched 1 subscriber(s)' in proc.log(), proc.log()
    # the bytes in order: nothing missing at the start, nothing reordered
    assert [d for _t, d in col.messages['/start']] == recorded


STOPPED_SUBSCRIBER = r'''
import sys, time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from field_deploy.ros import Spinner
rclpy.init()
node = rclpy.create_node('stopped_subscriber')
got = []
node.create_subscription(JointState, '/tail', got.append,
                         QoSProfile(depth=4000, reliability=ReliabilityPolicy.RELIABLE), raw=True)
with Spinner([node]):
    print('ready', flush=True)
    sys.stdin.readline()
    time.sleep(2.0)
    print(len(got), flush=True)
'''


def test_the_player_waits_for_a_late_subscriber_to_acknowledge_the_end(
        tmp_path: Path, node_process) -> None:
    """A subscriber process stopped (SIGSTOP) 0.2 s into a 2 s play and continued after it: the
    player waits for its acknowledgements before it exits, so all 2,000 arrive (a player that
    exits at once drops what is unacknowledged: this subscriber got 200)."""
    import os
    import signal
    import subprocess
    import sys
    path = write_bag(tmp_path / 'tail', [Stream('/tail', 'sensor_msgs/msg/JointState', 1000.0)], 2.0)
    (tmp_path / 'qos.yaml').write_text('/tail:\n  reliability: reliable\n  depth: 2000\n')
    sub = subprocess.Popen([sys.executable, '-c', STOPPED_SUBSCRIBER], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout.readline().strip() == 'ready'
        proc = node_process('bag_player', [str(path), '--qos-profile-overrides-path',
                                           str(tmp_path / 'qos.yaml')])
        assert wait_until(lambda: 'matched 1 subscriber' in proc.log(), 60.0), proc.log()
        time.sleep(0.2)
        os.kill(sub.pid, signal.SIGSTOP)
        time.sleep(3.0)          # the 2 s play ends: the player exits now unless it waits for acks
        os.kill(sub.pid, signal.SIGCONT)
        assert wait_until(lambda: not proc.alive(), 30.0), proc.log()
        sub.stdin.write('count\n')
        sub.stdin.flush()
        assert sub.stdout.readline().strip() == '2000', proc.log()
    finally:
        os.kill(sub.pid, signal.SIGCONT)
        sub.kill()
        sub.wait()


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
    expected = _data(rosbags_messages(out, ['/joint_states'])['/joint_states'])
    assert len(expected) > 50, bag.topics
    col = _collector(sub_node, bag, ['/joint_states'])
    _node, player = _play(None, bag, PlayOptions(topics=('/joint_states',), delay_s=0.3), spin)
    _wait_matched(sub_node, ['/joint_states'])
    player.run()
    n = len(expected)
    assert wait_until(lambda: col.count('/joint_states') == n, 10.0), (col.count('/joint_states'), n)
    assert [d for _, d in col.messages['/joint_states']] == expected


def test_core_seek_and_live_rate_change(bag_path: Path) -> None:
    """Pure core, no DDS: seek while paused, then a live rate change; exactly the rest plays."""
    from data_recorder.replay.player import Player
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
    expected = _data(rosbags_messages(bag_path, ['/imu'], bag.start_ns + 1_000_000_000)['/imu'])
    assert [d for _, d in got] == expected and len(expected) == 50


def test_recorded_qos_and_overrides_file(tmp_path: Path) -> None:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy

    from data_recorder.replay.node import load_qos_overrides, recorded_qos
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
