"""Batched taking of the recorded topics (:mod:`data_recorder.capture.taker`), over real DDS.

What must hold: every sample a history holds is taken once, in order, with its sequence number
(the accounting stays exact); one busy stream cannot starve the others within a pass; a
subscription removed from the taker can be destroyed at once; and the recorder node takes
through it by default (its subscriptions on the unspun ``_data_recorder_writers`` node, taken on its take
timer), through its executor when ``message_lost_events`` needs one.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import rclpy
from rclpy.duration import Duration
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rclpy.subscription import Subscription
from sensor_msgs.msg import JointState

from data_recorder.capture.accounting import TopicStats
from data_recorder.capture.subscriptions import sequenced_callback, writer_drain
from data_recorder.capture.taker import BATCH, Taker, message_drain
from data_recorder.node import DataRecorderNode
from data_recorder.parameters import parameter_overrides
from field_deploy.ros import polled_subscription
from field_deploy.sequence import GidTracker
from field_deploy.testing import wait_until
from field_deploy.writer_take import WriterTake

RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                      reliability=ReliabilityPolicy.RELIABLE)


class _Sink:
    """Stands for the recorder: keeps what the callbacks hand over, per topic."""

    def __init__(self) -> None:
        self.got: dict[str, list[int]] = {}

    def on_message(self, _stats: TopicStats, topic: str, data: bytes) -> None:
        msg = deserialize_message(data, JointState)
        self.got.setdefault(topic, []).append(int(msg.header.frame_id))


def _numbered(i: int) -> JointState:
    msg = JointState(name=['j'], position=[float(i)])
    msg.header.frame_id = str(i)
    return msg


def test_taker_takes_every_sample_once_in_order_and_no_stream_starves_another(ros) -> None:
    node = rclpy.create_node('taker_test')          # never spun: only the taker takes
    pub_node = rclpy.create_node('taker_test_pub')
    sink, taker = _Sink(), Taker()
    stats = {t: TopicStats() for t in ('/busy', '/quiet')}
    subs = {}
    for topic in stats:
        callback = sequenced_callback(sink, stats[topic], topic)
        sub = node.create_subscription(JointState, topic, callback, RELIABLE, raw=True)
        sub._callback_type = Subscription.CallbackType.WithMessageInfo
        taker.add(sub, message_drain(sub, callback))
        subs[topic] = sub
    pubs = {t: pub_node.create_publisher(JointState, t, RELIABLE) for t in stats}
    try:
        assert wait_until(lambda: all(p.get_subscription_count() for p in pubs.values()), 20)
        busy = 2 * BATCH + 100
        for i in range(busy):
            pubs['/busy'].publish(_numbered(i))
        for i in range(10):
            pubs['/quiet'].publish(_numbered(i))
        for pub in pubs.values():
            assert pub.wait_for_all_acked(Duration(seconds=10))
        # all in the reader histories: one pass takes a batch of the busy stream and all of
        # the quiet one, and says there is more
        taken, more = taker.take_pass()
        assert more and taken == BATCH + 10, (taken, sink.got)
        assert sink.got['/quiet'] == list(range(10))
        assert taker.take() == busy - BATCH          # passes again while one had more
        assert sink.got['/busy'] == list(range(busy))
        assert taker.take_pass() == (0, False)
        assert all(s.seq.lost == 0 for s in stats.values())
        # removed, then destroyed at once: the next pass does not touch it
        taker.remove(subs['/busy'])
        node.destroy_subscription(subs['/busy'])
        for i in range(10, 15):
            pubs['/quiet'].publish(_numbered(i))
        assert pubs['/quiet'].wait_for_all_acked(Duration(seconds=10))
        assert taker.take() == 5 and len(taker) == 1
        assert sink.got['/quiet'] == list(range(15))
    finally:
        node.destroy_node()
        pub_node.destroy_node()


def _recorded(tmp_path: Path, spin, **params: object) -> tuple[DataRecorderNode, dict]:
    recorder = DataRecorderNode(parameter_overrides=parameter_overrides({
        'output': str(tmp_path / 'bag'), 'topics': ['/taken'], 'discovery_interval': 0.2,
        'diagnostics_period': 3600.0, **params}))
    assert recorder.recorder is not None, recorder.last_error
    pub_node = rclpy.create_node('taker_node_pub')
    pub = pub_node.create_publisher(JointState, '/taken', RELIABLE)
    spin(pub_node, recorder)
    assert wait_until(lambda: pub.get_subscription_count() >= 1, 20)
    for i in range(300):
        pub.publish(_numbered(i))
        time.sleep(0.001)
    assert wait_until(lambda: recorder.accounting().get('/taken', {}).get('written') == 300, 20), \
        recorder.accounting()
    subscribers = {(i.node_name, i.node_namespace)
                   for i in pub_node.get_subscriptions_info_by_topic('/taken')}
    capture = recorder.capture
    recorder.close_bag()
    return recorder, {'subscribers': subscribers, 'capture': capture,
                      'accounting': recorder.accounting()['/taken']}


def test_recorder_node_takes_its_topics_on_the_take_timer(ros, spin, tmp_path: Path) -> None:
    gc.unfreeze()                    # whatever an earlier test froze: the node must do it itself
    _recorder, seen = _recorded(tmp_path, spin)
    # its start's objects are out of the full collections' scans (they cost the taking thread
    # 25-60 ms each under load, and the histories filled: field_deploy.memory)
    assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()
    assert seen['subscribers'] == {('_data_recorder_writers', '/')}, seen['subscribers']
    assert seen['capture'].taker.taken == 300
    assert seen['accounting']['lost'] == 0 and seen['accounting']['received'] == 300


def test_message_lost_events_keep_the_executor_path(ros, spin, tmp_path: Path) -> None:
    _recorder, seen = _recorded(tmp_path, spin, message_lost_events=True)
    assert seen['subscribers'] == {('data_recorder', '/')}, seen['subscribers']
    assert seen['capture'].taker.taken == 0
    assert seen['accounting']['lost'] == 0 and seen['accounting']['received'] == 300


def test_a_paused_recorder_takes_again_when_it_is_active_again(ros, spin, tmp_path: Path) -> None:
    """deactivate (pause) then activate: the take timer, made with the capture at configure,
    serves the subscriptions again - the samples after the resume are written."""
    recorder = DataRecorderNode(parameter_overrides=parameter_overrides({
        'output': str(tmp_path / 'bag'), 'topics': ['/taken'], 'discovery_interval': 0.2,
        'diagnostics_period': 3600.0}))
    assert recorder.recorder is not None, recorder.last_error
    pub_node = rclpy.create_node('taker_pause_pub')
    pub = pub_node.create_publisher(JointState, '/taken', RELIABLE)
    spin(pub_node, recorder)
    assert wait_until(lambda: pub.get_subscription_count() >= 1, 20)

    def publish_and_see(first: int, written: int) -> None:
        for i in range(first, first + 100):
            pub.publish(_numbered(i))
            time.sleep(0.001)
        assert wait_until(lambda: recorder.accounting().get('/taken', {}).get('written')
                          == written, 20), recorder.accounting()

    publish_and_see(0, 100)
    assert recorder.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert recorder.trigger_activate() == TransitionCallbackReturn.SUCCESS
    publish_and_see(100, 200)
    recorder.close_bag()
    assert recorder.accounting()['/taken']['lost'] == 0


class _History:
    """A subscription's reader history, as the taker sees it (``handle.take_message``)."""

    msg_type, raw = JointState, True

    def __init__(self) -> None:
        self.samples: list[tuple[bytes, dict]] = []
        self.handle = self

    def __enter__(self) -> _History:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def take_message(self, _msg_type: object, _raw: bool) -> tuple[bytes, dict] | None:
        return self.samples.pop(0) if self.samples else None


def test_take_interval_follows_the_fullest_history() -> None:
    from data_recorder.capture import taker as module
    history, got = _History(), []
    taker = Taker()
    taker.add(history, message_drain(history, got.append), depth=1000)
    start = taker.interval
    while taker.interval < module.MAX_INTERVAL:    # idle: fewer wake-ups, up to the bound
        taker.take()
    taker.take()
    assert taker.interval == module.MAX_INTERVAL > start
    history.samples = [(b'x', {})] * 200             # a fifth of the history: twice as often
    taker.take()
    assert taker.interval == module.MAX_INTERVAL / 2 and len(got) == 200
    for _ in range(20):                              # always over 1/8 full: down to the bound
        history.samples = [(b'x', {})] * 130
        taker.take()
    assert taker.interval == module.MIN_INTERVAL
    history.samples = [(b'x', {})] * 60               # between the two marks: kept
    taker.take()
    assert taker.interval == module.MIN_INTERVAL
    keep_all = Taker()                               # never full: only idle counts
    keep_all.add(history, message_drain(history, got.append), depth=0)
    history.samples = [(b'x', {})] * 5000
    keep_all.take()
    assert keep_all.interval == 2 * start and not history.samples


def test_a_backlog_shortens_the_interval_and_a_starved_taker_comes_back_at_once(
        monkeypatch) -> None:
    from data_recorder.capture import taker as module
    history, got = _History(), []
    taker = Taker()
    taker.add(history, message_drain(history, got.append), depth=5000)
    while taker.interval < module.MAX_INTERVAL:
        taker.take()
    # a backlog of a fifth of the history, taken over several passes of a batch each: what the
    # call took counts, not one pass's batch
    history.samples = [(b'x', {})] * 1000
    taker.take()
    assert len(got) == 1000 and taker.interval == module.MAX_INTERVAL / 2
    # behind when the catch-up time is up: back at the shortest interval, not a whole one later
    monkeypatch.setattr(module, 'CATCH_UP_S', 0.0)
    history.samples = [(b'x', {})] * 600
    assert taker.take() == BATCH
    assert taker.interval == module.MIN_INTERVAL and len(history.samples) == 600 - BATCH


def test_a_new_subscription_is_looked_at_soon_not_an_idle_interval_later() -> None:
    """An idle taker waits 50 ms between passes; a stream subscribed then (rate unknown) gets its
    first pass after the shortest interval: at 900 msg/s a keep-last 20 history overflows in
    22 ms, and samples lost before the first one taken are in no sequence hole."""
    from data_recorder.capture import taker as module
    history = _History()
    taker = Taker()
    taker.add(history, message_drain(history, lambda _s: None), depth=20)
    while taker.interval < module.MAX_INTERVAL:
        taker.take()
    fast = _History()
    taker.add(fast, message_drain(fast, lambda _s: None), depth=20)
    assert taker.interval == module.MIN_INTERVAL


def test_a_writers_start_dropped_by_a_full_history_is_counted_and_one_sent_before_it_matched_is_not(
        ros) -> None:
    """Against the publishers' own numbers, over real DDS (depth 20, never spun, drained by
    hand): writer B sent 1-50 before the reader existed (not ours), then 51-55 one by one, each
    taken at once - nothing counted; writer A started after the reader and sent 1-100 before
    the first take: the history kept 81-100, and 1-80 are counted ``lost_start`` - the numbers
    no sequence hole shows (until 2026-12-03 they were reported as nothing)."""
    node = rclpy.create_node('first_samples_test')       # never spun: only the drain takes
    pub_node = rclpy.create_node('first_samples_pub')
    sink, stats = _Sink(), TopicStats(seq=GidTracker())
    keep = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200,
                      reliability=ReliabilityPolicy.RELIABLE)
    pub_b = pub_node.create_publisher(JointState, '/firsts', keep)
    for i in range(1, 51):
        pub_b.publish(_numbered(i))                      # nobody listens yet
    sub = polled_subscription(node, JointState, '/firsts', QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=20, reliability=ReliabilityPolicy.RELIABLE))
    take = WriterTake(sub)
    drain = writer_drain(sink, stats, '/firsts', take, depth=20)
    try:
        assert wait_until(lambda: pub_b.get_subscription_count() == 1, 20)
        for i in range(51, 56):
            pub_b.publish(_numbered(i))
            assert pub_b.wait_for_all_acked(Duration(seconds=10))
            drain(BATCH)
        assert sink.got['/firsts'] == list(range(51, 56))
        assert stats.lost_start == 0 and stats.lost == 0
        pub_a = pub_node.create_publisher(JointState, '/firsts', keep)
        assert wait_until(lambda: pub_a.get_subscription_count() == 1, 20)
        for i in range(1, 101):
            pub_a.publish(_numbered(1000 + i))
            time.sleep(0.001)
        assert pub_a.wait_for_all_acked(Duration(seconds=10))
        while drain(BATCH):
            pass
        got_a = [n - 1000 for n in sink.got['/firsts'] if n > 1000]
        assert got_a == list(range(81, 101)), got_a
        missing = 100 - len(got_a)                           # the publisher's own count
        assert stats.lost_sequence == 0
        assert stats.lost_start == missing == 80, stats
        assert stats.lost == missing
    finally:
        take.close()
        node.destroy_node()
        pub_node.destroy_node()
