"""The recorded topics' subscriptions of the ``data_recorder`` node: QoS matching, re-subscription
when a weaker publisher joins, and the wiring of each sample's DDS sequence number into the
accounting (:mod:`field_deploy.sequence`).

Every recorded topic is taken with its writer's gid (:mod:`field_deploy.writer_take`) and
counted per gid (:class:`field_deploy.sequence.GidTracker`): exact for any number of writers, a
writer that restarts (a new gid) or one that joins late, where sequence numbers alone had to guess
which writer a sample came from (the demo's six ``/diagnostics`` writers, one matched late, showed
holes nobody lost). The subscriptions are on a node no executor spins, and the recorder node's
take timer empties them in batches (:mod:`data_recorder.capture.taker`: at 3x the reference load
one executor event per sample lost messages). Topics whose messages name their writer
(``/parameter_events``) are counted per name instead.

With ``message_lost_events`` the topics stay on the recorder node and its executor (their event
handlers need one) and are counted by sequence numbers
(:class:`field_deploy.sequence.SequenceTracker`), except the types that usually have several
writers (:data:`SHARED_TYPES`) and ``per_writer_topics``, which are taken with their gid still.

Taking the message info costs at most ~2 µs per message more than taking the bytes alone (measured with
``bench/recorder/take_cost.py``), and keeps the EventsExecutor: that executor hands a
``WithMessageInfo`` subscription's ``(bytes, info)`` to the callback as *one* tuple (rclpy 7.1,
``events_executor.cpp``), the other executors as two arguments. A callback that declares two
parameters is refused by the EventsExecutor (it calls it with one), so the callback takes one
and an optional second, and the subscription is marked ``WithMessageInfo`` after its creation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rclpy.subscription import Subscription

from data_recorder.bag import metadata as md
from data_recorder.capture.accounting import TopicStats
from data_recorder.capture.first_samples import FirstSamples
from data_recorder.capture.recorder import Recorder
from data_recorder.capture.selection import adapt_qos
from data_recorder.capture.taker import Drain, Taker, message_drain
from field_deploy.ros import message_class, polled_subscription
from field_deploy.sequence import GidTracker, NamedWriters
from field_deploy.writer_take import WriterTake

_RELIABILITY = {ReliabilityPolicy.RELIABLE: 'reliable', ReliabilityPolicy.BEST_EFFORT: 'best_effort'}
_DURABILITY = {DurabilityPolicy.TRANSIENT_LOCAL: 'transient_local',
               DurabilityPolicy.VOLATILE: 'volatile'}


def qos(settings: dict[str, Any]) -> QoSProfile:
    return QoSProfile(
        history=(HistoryPolicy.KEEP_ALL if settings['history'] == 'keep_all'
                 else HistoryPolicy.KEEP_LAST),
        depth=settings['depth'],
        reliability=(ReliabilityPolicy.RELIABLE if settings['reliability'] == 'reliable'
                     else ReliabilityPolicy.BEST_EFFORT),
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if settings['durability'] == 'transient_local'
                    else DurabilityPolicy.VOLATILE))


def sequenced_callback(recorder: Recorder, stats: TopicStats, topic: str) -> Callable[..., None]:
    """The subscription callback: sequence accounting inlined (the hot path), then the hand-off."""
    on_message = recorder.on_message
    tracker = stats.seq
    other = tracker.other

    def callback(sample: Any, info: dict[str, Any] | None = None) -> None:
        if info is None:                 # EventsExecutor: one (bytes, info) tuple
            sample, info = sample
        seq = info['publication_sequence_number']
        if seq == tracker.last + 1:
            tracker.last = seq
        else:
            other(seq)
        on_message(stats, topic, sample)
    return callback


#: Types whose messages name their writer, and the field that does: each name's numbers are
#: one writer's (:class:`field_deploy.sequence.NamedWriters`).
WRITER_NAME_FIELDS = {'rcl_interfaces/msg/ParameterEvent': 'node'}
#: Types that usually have several writers: taken with their writer gid even when the graph
#: lists one publisher at subscription (the others may not be discovered yet).
SHARED_TYPES = frozenset({'diagnostic_msgs/msg/DiagnosticArray', 'rcl_interfaces/msg/Log',
                          'tf2_msgs/msg/TFMessage'})


def writer_drain(recorder: Recorder, stats: TopicStats, topic: str, take: WriterTake,
                 depth: int = 0) -> Drain:
    """The drain of a topic taken with its writers' gids: each sample counted for its writer,
    then handed to the recorder. ``depth``: the history's keep-last depth (0: keep all), for
    what it may drop before a writer's first sample (:mod:`data_recorder.capture.first_samples`,
    ``lost_start``)."""
    on_message = recorder.on_message
    writers = stats.seq
    assert isinstance(writers, GidTracker)
    observe, take_one = writers.observe_gid, take.take
    starts = FirstSamples(depth, time.time_ns())
    open_starts, follow = starts.open, starts.follow

    def drain(limit: int) -> int:
        n, emptied = 0, False
        while n < limit:
            sample = take_one()
            if sample is None:
                emptied = True
                break
            known = writers.new_writers
            observe(sample.gid, sample.seq)
            if writers.new_writers != known:
                starts.first(sample.gid, sample.seq, sample.source_ns)
            elif open_starts:
                follow(sample.gid, sample.seq, sample.source_ns)
            on_message(stats, topic, sample.data)
            n += 1
        if starts.depth:
            starts.taken(n)
            if emptied:
                stats.lost_start += starts.emptied(time.time_ns())
        return n
    return drain


def named_callback(recorder: Recorder, stats: TopicStats, topic: str,
                   msg_type: Any, name_field: str) -> Callable[..., None]:
    """The callback of a topic whose messages name their writer (low rate: each is
    deserialised for its name)."""
    on_message = recorder.on_message
    writers = stats.seq
    assert isinstance(writers, NamedWriters)

    def callback(sample: Any, info: dict[str, Any] | None = None) -> None:
        if info is None:                 # EventsExecutor: one (bytes, info) tuple
            sample, info = sample
        try:
            name = str(getattr(deserialize_message(sample, msg_type), name_field))
        except Exception:                # a sample we cannot read is still counted
            name = '?'
        writers.observe_named(name, info['publication_sequence_number'])
        on_message(stats, topic, sample)
    return callback


class Capture:
    """Subscriptions of one recording, owned by the node (``node.create_subscription``)."""

    def __init__(self, node: LifecycleNode, recorder: Recorder, *, depth: int,
                 overrides: dict[str, dict[str, Any]], message_lost_events: bool,
                 per_writer_topics: set[str] | frozenset[str] = frozenset()) -> None:
        self.node = node
        self.recorder = recorder
        self.depth = depth
        self.overrides = overrides
        self.message_lost_events = message_lost_events
        self.per_writer_topics = per_writer_topics
        self.subs: dict[str, Subscription] = {}
        self.types: dict[str, str] = {}
        self.settings: dict[str, dict[str, Any]] = {}
        self.writer_takes: dict[str, WriterTake] = {}
        """Topics taken with their writer gid (closed before their subscription is destroyed)."""
        self._unspun_node: Node | None = None
        self.batched = not message_lost_events
        """Every topic is taken by :attr:`taker` (the node's take timer), none by the executor;
        else only the :data:`SHARED_TYPES` and ``per_writer_topics`` are."""
        self.taker = Taker()

    def take(self) -> int:
        """Take what the taker's subscriptions hold (the node's take timer, and the stop's drain)."""
        return self.taker.take()

    def _unspun(self) -> Node:
        """The node of the subscriptions no executor serves (the taker's)."""
        if self._unspun_node is None:
            self._unspun_node = Node('_data_recorder_writers',
                                     namespace=self.node.get_namespace(),
                                     context=self.node.context)
        return self._unspun_node

    # -- graph ----------------------------------------------------------------------------------

    def publisher_infos(self, topic: str) -> list[Any]:
        """The topic's publishers, our own left out when there are others (this node's
        ``/diagnostics`` must not decide the QoS the robot's ``/diagnostics`` is recorded with)."""
        node = self.node
        publishers = node.get_publishers_info_by_topic(topic)
        others = [p for p in publishers if (p.node_name, p.node_namespace)
                  != (node.get_name(), node.get_namespace())]
        return others or publishers

    @staticmethod
    def offered(publishers: list[Any]) -> list[tuple[str, str]]:
        return [(_RELIABILITY.get(p.qos_profile.reliability, 'best_effort'),
                 _DURABILITY.get(p.qos_profile.durability, 'volatile')) for p in publishers]

    def poll(self, topic: str) -> None:
        """Discovery tick for a recorded topic: the graph's writer count bounds the sequence
        runs (:meth:`SequenceTracker.set_writers`), and a weaker publisher re-subscribes."""
        self.recorder.stats(topic).seq.set_writers(self.node.count_publishers(topic))
        self.requalify(topic)

    def requalify(self, topic: str) -> None:
        """Re-subscribe with a weaker QoS when a publisher that the current subscription cannot
        match (best effort, volatile) joined later; a reliable reader never receives from a
        best-effort writer, so without this its messages would be silently missing."""
        current = self.settings[topic]
        # A publisher that is going away (its process shutting down) is listed for a moment with
        # an UNKNOWN QoS: no reason to weaken what we record with.
        known = [p for p in self.publisher_infos(topic)
                 if p.qos_profile.reliability in _RELIABILITY
                 and p.qos_profile.durability in _DURABILITY]
        if not known:
            return
        settings = adapt_qos(self.offered(known), self.depth, self.overrides.get(topic))
        weaker = ((current['reliability'] == 'reliable' and settings['reliability'] != 'reliable')
                  or (current['durability'] == 'transient_local'
                      and settings['durability'] != 'transient_local'))
        if weaker:
            self.node.get_logger().warning(
                f'topic {topic}: a publisher offers {settings["reliability"]} '
                f'{settings["durability"]}: re-subscribing with that QoS')
            self._destroy(topic)
            self.create(topic, self.types[topic], settings)

    # -- subscriptions --------------------------------------------------------------------------

    def subscribe(self, topic: str, type_name: str, warn_once: Callable[[str, str], None]) -> None:
        publishers = self.publisher_infos(topic)
        if not publishers:
            return                          # only subscribers so far: offered QoS unknown
        try:
            message_class(type_name)
        except LookupError as exc:
            warn_once(f'type:{topic}:{type_name}', f'topic {topic}: {exc}: skipped')
            return
        offered = self.offered(publishers)
        settings = adapt_qos(offered, self.depth, self.overrides.get(topic))
        profiles = [md.qos_dict(r, d, p.qos_profile.depth)
                    for (r, d), p in zip(offered, publishers, strict=True)]
        try:
            self.recorder.add_topic(topic, type_name, profiles)
        except RuntimeError:
            return                          # closing
        except (LookupError, ValueError) as exc:
            warn_once(f'add:{topic}:{type_name}', f'topic {topic}: {exc}: skipped')
            return
        self.create(topic, type_name, settings)

    def create(self, topic: str, type_name: str, settings: dict[str, Any]) -> None:
        recorder = self.recorder
        stats = recorder.stats(topic)

        def lost(info: Any) -> None:
            recorder.on_message_lost(stats, info.total_count_change)

        # The rmw message-lost event is opt-in: with rmw_fastrtps of Jazzy, taking it while the
        # DDS thread reports a lost sample deadlocks the process (AB-BA lock order between the
        # rmw event and the DataReader, ros2/rmw_implementation#278) - measured here: the
        # recorder hung after ~10 s of the reference load. Sequence gaps are counted in any case.
        events = (SubscriptionEventCallbacks(message_lost=lost) if self.message_lost_events
                  else SubscriptionEventCallbacks())
        msg_type = message_class(type_name)
        name_field = WRITER_NAME_FIELDS.get(type_name)
        if name_field is None and (self.batched or type_name in SHARED_TYPES
                                   or topic in self.per_writer_topics
                                   or self.node.count_publishers(topic) >= 2):
            self._create_writer_taken(topic, msg_type, settings)
        else:
            self._create_sequenced(topic, msg_type, settings, events, name_field)
        stats.seq.set_writers(self.node.count_publishers(topic))
        self.types[topic] = type_name
        self.settings[topic] = settings
        counted = ', per writer gid' if topic in self.writer_takes else ''
        self.node.get_logger().info(f'recording {topic} [{type_name}] {settings["reliability"]} '
                                    f'{settings["durability"]} depth {settings["depth"]}{counted}')

    def _create_sequenced(self, topic: str, msg_type: Any, settings: dict[str, Any],
                          events: SubscriptionEventCallbacks, name_field: str | None) -> None:
        """A subscription counted by sequence numbers (or writer names): on the executor with
        ``message_lost_events``, else taken by :attr:`taker`."""
        recorder = self.recorder
        stats = recorder.stats(topic)
        if name_field is None:
            callback = sequenced_callback(recorder, stats, topic)
        else:
            if not isinstance(stats.seq, NamedWriters):
                stats.seq = NamedWriters()
            callback = named_callback(recorder, stats, topic, msg_type, name_field)
        owner = self._unspun() if self.batched else self.node
        sub = owner.create_subscription(msg_type, topic, callback, qos(settings), raw=True,
                                        event_callbacks=events)
        if not hasattr(sub, '_callback_type'):
            raise RuntimeError('this rclpy has no Subscription._callback_type: the recorder '
                               'cannot take the message info (DDS sequence numbers)')
        sub._callback_type = Subscription.CallbackType.WithMessageInfo
        if self.batched:
            self.taker.add(sub, message_drain(sub, callback), _history_depth(settings))
        self.subs[topic] = sub

    def _create_writer_taken(self, topic: str, msg_type: Any, settings: dict[str, Any]) -> None:
        """A subscription taken by :attr:`taker`, each sample with its writer gid."""
        stats = self.recorder.stats(topic)
        if not isinstance(stats.seq, GidTracker):
            stats.seq = GidTracker()
        sub = polled_subscription(self._unspun(), msg_type, topic, qos(settings))
        take = self.writer_takes[topic] = WriterTake(sub)
        depth = _history_depth(settings)
        self.taker.add(sub, writer_drain(self.recorder, stats, topic, take, depth), depth)
        self.subs[topic] = sub

    def _destroy(self, topic: str) -> None:
        sub = self.subs.pop(topic)
        if sub in self.node.subscriptions:
            self.node.destroy_subscription(sub)   # an executor's (message_lost_events)
            return
        self.taker.remove(sub)                    # after any pass taking it
        take = self.writer_takes.pop(topic, None)
        if take is not None:
            take.close()                          # before rcl frees the subscription
        assert self._unspun_node is not None
        self._unspun_node.destroy_subscription(sub)

    def close(self) -> None:
        self.take()                               # what arrived since the last pass
        for topic in list(self.subs):
            self._destroy(topic)
        if self._unspun_node is not None:
            self._unspun_node.destroy_node()
            self._unspun_node = None
        self.types.clear()


def _history_depth(settings: dict[str, Any]) -> int:
    """The reader history's depth, 0 for keep-all (never full: the taker's fill ignores it)."""
    return 0 if settings['history'] == 'keep_all' else settings['depth']
