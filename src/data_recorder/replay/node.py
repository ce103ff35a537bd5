"""``bag_player``: the ROS shell of :mod:`data_recorder.replay.player` (``ros2 bag play`` without rosbag2).

Publishes the recorded CDR bytes unchanged (``publisher.publish(raw_bytes)``) on the recorded
topics with the recorded QoS; ``/clock`` when asked. Services (std_srvs/Trigger): ``~/pause``,
``~/resume``, ``~/toggle_paused``, ``~/step`` (publish the next message while paused).
Parameters: ``rate`` (double, changeable while playing), ``seek`` (double, seconds after the bag
start: setting it jumps there), plus read-only mirrors of the command-line options.

The timing loop runs in the main thread; the executor (services, parameters) in a
:class:`field_deploy.ros.Spinner` thread. The interpreter's GIL switch interval is lowered to
100 µs in this process: with CPython's default 5 ms the read-ahead thread could hold the GIL for
up to 5 ms just when a message is due.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

import data_recorder  # noqa: F401  (AMENT_PREFIX_PATH before rclpy)
from data_recorder.bag.reader import Bag
from data_recorder.replay.player import (
    Player,
    PlayOptions,
    PlayStats,
    parse_remaps,
    select_topics,
    set_realtime,
)

GIL_SWITCH_INTERVAL_S = 0.0001
#: Smallest publisher history depth: a 1 kHz reliable stream to a Python subscriber needs room.
MIN_DEPTH = 100
DEFAULT_CLOCK_HZ = 40.0   # ros2 bag play's default


def add_play_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The player's flags (shared by ``bag_player`` and ``field_deploy bag play``)."""
    parser.add_argument('bag', help='rosbag2 directory (metadata.yaml + MCAP files) or a .mcap file')
    parser.add_argument('-r', '--rate', type=float, default=1.0, help='playback rate (default 1.0)')
    parser.add_argument('--start-offset', type=float, default=0.0, metavar='SEC',
                        help='start SEC seconds after the beginning of the bag')
    parser.add_argument('--duration', type=float, default=None, metavar='SEC',
                        help='play only SEC seconds of the bag (from the start offset)')
    parser.add_argument('-l', '--loop', action='store_true', help='replay forever')
    parser.add_argument('--topics', nargs='+', default=[], metavar='TOPIC',
                        help='play only these topics (default: all)')
    parser.add_argument('-x', '--exclude', default='', metavar='REGEX',
                        help='do not play topics matching this regular expression')
    parser.add_argument('-m', '--remap', nargs='+', default=[], metavar='OLD:=NEW',
                        help='publish topic OLD under the name NEW')
    parser.add_argument('--clock', nargs='?', type=float, const=DEFAULT_CLOCK_HZ, default=0.0,
                        metavar='HZ', help=f'publish /clock at HZ (default {DEFAULT_CLOCK_HZ:g} Hz '
                                           'when given without a value)')
    parser.add_argument('-p', '--start-paused', action='store_true',
                        help='start paused (resume with the ~/resume service)')
    parser.add_argument('-d', '--delay', type=float, default=0.0, metavar='SEC',
                        help='wait SEC seconds after the publishers are created before playing')
    parser.add_argument('--qos-profile-overrides-path', default=None, metavar='YAML',
                        help='YAML of per-topic QoS overrides, as ros2 bag play reads')
    parser.add_argument('--read-ahead-queue-size', type=int, default=10_000, metavar='N',
                        help='read-ahead buffer, messages (also bounded to 64 MB)')
    parser.add_argument('--realtime-priority', type=int, default=10, metavar='PRIO',
                        help='SCHED_FIFO priority of the player threads when permitted '
                             '(0: normal scheduling; default 10)')
    parser.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='SEC',
                        help='before playing, wait up to SEC seconds until every played topic has '
                             'a subscriber (then the --delay)')
    parser.add_argument('--match-timeout', type=float, default=5.0, metavar='SEC',
                        help='before playing, wait up to SEC seconds until each played topic has '
                             'matched the subscribers the graph shows, so none misses the first '
                             'messages (0: do not wait; default %(default)s)')
    return parser


def options_from_args(args: argparse.Namespace) -> PlayOptions:
    return PlayOptions(rate=args.rate, start_offset_s=args.start_offset, duration_s=args.duration,
                       loop=args.loop, topics=tuple(args.topics), exclude=args.exclude,
                       remap=parse_remaps(args.remap), clock_hz=args.clock or 0.0,
                       start_paused=args.start_paused, delay_s=args.delay,
                       read_ahead_messages=args.read_ahead_queue_size,
                       realtime_priority=args.realtime_priority,
                       wait_for_subscribers_s=args.wait_for_subscribers,
                       match_timeout_s=args.match_timeout).validate()


def load_qos_overrides(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """``{topic: {reliability, durability, history, depth}}`` from a ros2-bag-style YAML file."""
    if not path:
        return {}
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f'{path}: QoS overrides file not found') from None
    except yaml.YAMLError as exc:
        raise ValueError(f'{path}: not valid YAML ({exc.__class__.__name__})') from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise ValueError(f'{path}: expected a mapping of topic -> QoS mapping')
    return {'/' + str(k).lstrip('/'): v for k, v in doc.items()}


_REL = {'1': 'reliable', '2': 'best_effort', 'reliable': 'reliable', 'best_effort': 'best_effort'}
_DUR = {'1': 'transient_local', '2': 'volatile', 'transient_local': 'transient_local',
        'volatile': 'volatile'}


def recorded_qos(profiles: Sequence[dict[str, Any]], override: dict[str, Any] | None = None):
    """The publisher QoS for recorded offered profiles, adapted as rosbag2 does: reliable only if
    every recorded publisher was reliable, transient_local only if every one was; depth the
    largest recorded (at least :data:`MIN_DEPTH`). ``override`` keys win."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    rels = {_REL.get(str(p.get('reliability', '')).lower(), 'reliable') for p in profiles}
    durs = {_DUR.get(str(p.get('durability', '')).lower(), 'volatile') for p in profiles}
    depths = [int(p.get('depth') or 0) for p in profiles]
    reliability = 'best_effort' if 'best_effort' in rels else 'reliable'
    durability = 'transient_local' if durs == {'transient_local'} else 'volatile'
    depth = max([MIN_DEPTH, *depths])
    history = 'keep_last'
    if override:
        reliability = _REL.get(str(override.get('reliability', reliability)).lower(), reliability)
        durability = _DUR.get(str(override.get('durability', durability)).lower(), durability)
        depth = int(override.get('depth', depth))
        history = str(override.get('history', history)).lower()
    return QoSProfile(
        history=HistoryPolicy.KEEP_ALL if history == 'keep_all' else HistoryPolicy.KEEP_LAST,
        depth=max(1, depth),
        reliability=(ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort'
                     else ReliabilityPolicy.RELIABLE),
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if durability == 'transient_local'
                    else DurabilityPolicy.VOLATILE))


def make_player_node(bag: Bag, options: PlayOptions, overrides: dict[str, dict[str, Any]] | None = None,
                     *, node_name: str = 'bag_player', context=None, record_timing: bool = False):
    """Create the ``bag_player`` node and its :class:`Player`; returns ``(node, player)``.

    Topics whose type is not installed are skipped with a warning naming topic and type.
    """
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from std_srvs.srv import Trigger

    from field_deploy.ros import message_class, set_stamp

    node = Node(node_name, context=context)
    log = node.get_logger()
    for path in bag.truncated:
        log.warning(f'{path} is truncated (no summary/footer): playing what is readable')
    chosen = select_topics(bag.topics, options.topics, options.exclude)
    overrides = overrides or {}
    publishers = {}
    for topic in chosen:
        info = bag.topics[topic]
        try:
            cls = message_class(info.type)
        except LookupError as exc:
            log.warning(f'skipping topic {topic}: {exc}')
            continue
        out = options.remap.get(topic, topic)
        publishers[topic] = node.create_publisher(
            cls, out, recorded_qos(info.qos, overrides.get(topic) or overrides.get(out)))
    if not publishers:
        log.warning(f'{bag.path}: nothing to play (no selected topic with an installed type)')

    clock_pub = None
    if options.clock_hz > 0:
        clock_pub = node.create_publisher(Clock, '/clock', QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE))
    clock_msg = Clock()

    def publish(topic: str, data: bytes) -> None:
        publishers[topic].publish(data)

    def publish_clock(bag_ns: int) -> None:
        set_stamp(clock_msg.clock, bag_ns)
        clock_pub.publish(clock_msg)

    player = Player(bag, list(publishers), options, publish, publish_clock if clock_pub else None,
                    record_timing=record_timing)
    player.publishers = publishers

    def trigger(action, message):
        def callback(_request, response):
            result = action()
            response.success = result is not False
            response.message = message() if callable(message) else message
            return response
        return callback

    node.create_service(Trigger, '~/pause', trigger(player.pause, 'paused'))
    node.create_service(Trigger, '~/resume', trigger(player.resume, 'playing'))
    node.create_service(Trigger, '~/toggle_paused', trigger(
        player.toggle_paused, lambda: 'paused' if player.paused else 'playing'))
    node.create_service(Trigger, '~/step', trigger(
        player.step, lambda: 'stepped one message' if player.paused else 'step needs pause'))

    node.declare_parameter('bag', str(bag.path))
    node.declare_parameter('rate', float(options.rate))
    node.declare_parameter('seek', -1.0)
    node.declare_parameter('loop', bool(options.loop))
    node.declare_parameter('start_offset', float(options.start_offset_s))
    node.declare_parameter('clock', float(options.clock_hz))
    node.declare_parameter('topics', list(publishers) or [''])

    def on_set(params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name == 'rate':
                if not float(p.value) > 0:
                    return SetParametersResult(successful=False, reason='rate must be > 0')
                player.set_rate(float(p.value))
            elif p.name == 'seek' and float(p.value) >= 0:
                player.seek(float(p.value))
            elif p.name in ('bag', 'loop', 'start_offset', 'clock', 'topics'):
                return SetParametersResult(successful=False, reason=f'{p.name} is read-only')
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    return node, player


def wait_for_subscribers(node, publishers: dict, timeout_s: float) -> bool:
    """Wait until every publisher has a matched subscription (or ``timeout_s``); logs the rest."""
    if timeout_s <= 0 or not publishers:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        waiting = [t for t, p in publishers.items() if p.get_subscription_count() == 0]
        if not waiting:
            return True
        time.sleep(0.02)
    node.get_logger().warning(f'no subscriber after {timeout_s:g} s on: {", ".join(waiting)}')
    return False


#: The graph must stay the same this long before the wait trusts it (a subscriber not discovered
#: yet cannot be waited for) ...
GRAPH_SETTLE_S = 0.25
#: ... and a new participant first has to discover the others at all: measured here (load 20-26
#: on 2 cores), the subscriber and its node showed 0-0.5 s after the node was created, and in
#: one test run not within 1.5 s. Until another node shows, the wait lasts at least this long
#: (bounded by the match timeout; an empty graph costs this once at the start).
DISCOVERY_S = 3.0


#: At the end of the play, how long reliable publishers wait for their subscribers to acknowledge
#: the last messages before the node goes: a writer destroyed with samples still unacknowledged
#: drops them (at load 43-46 a subscriber got 1,899 and 1,560 of 2,000, the player having
#: published all 2,000 and exited at once).
ACK_TIMEOUT_S = 10.0


def wait_for_acks(node, publishers: dict, timeout_s: float = ACK_TIMEOUT_S) -> bool:
    """Wait (bounded) until every reliable publisher's messages are acknowledged; log the
    topics that were not."""
    from rclpy.duration import Duration

    deadline = time.monotonic() + timeout_s
    late = [topic for topic, pub in publishers.items()
            if not pub.wait_for_all_acked(Duration(seconds=max(0.0, deadline - time.monotonic())))]
    if late:
        node.get_logger().warning(f'not acknowledged after {timeout_s:g} s (their last messages '
                                  f'may not have arrived): {", ".join(sorted(late))}')
    return not late


def unmatched(node, publishers: dict) -> dict[str, tuple[int, int]]:
    """``{topic: (matched, expected)}`` of the played topics whose publisher has matched fewer
    subscriptions than the graph lists with a QoS it can match (an incompatible one never will)."""
    from rclpy.qos import QoSCompatibility, qos_check_compatible

    missing = {}
    for pub in publishers.values():
        subs = node.get_subscriptions_info_by_topic(pub.topic_name)
        expected = sum(1 for info in subs if qos_check_compatible(
            pub.qos_profile, info.qos_profile)[0] != QoSCompatibility.ERROR)
        matched = pub.get_subscription_count()
        if matched < expected:
            missing[pub.topic_name] = (matched, expected)
    return missing


def wait_for_matched(node, publishers: dict, timeout_s: float) -> bool:
    """Wait until each publisher has matched the subscribers the graph shows (the graph unchanged
    for :data:`GRAPH_SETTLE_S`), at most ``timeout_s``; logs what it waited for, or what is
    still unmatched. The graph lists a subscriber as soon as its participant is discovered, the
    publisher matches it a little later: messages sent in between are lost to it."""
    if timeout_s <= 0 or not publishers:
        return True
    log = node.get_logger()
    start = time.monotonic()
    deadline = start + timeout_s
    graph, stable_since = None, start
    while True:
        now = time.monotonic()
        current = tuple(node.count_subscribers(p.topic_name) for p in publishers.values())
        if current != graph:
            graph, stable_since = current, now
        missing = unmatched(node, publishers)
        discovered = now - start >= DISCOVERY_S or len(node.get_node_names_and_namespaces()) > 1
        if not missing and discovered and now - stable_since >= GRAPH_SETTLE_S:
            log.info(f'matched {sum(graph)} subscriber(s) of {len(publishers)} played topic(s) '
                     f'in {now - start:.2f} s')
            return True
        if now >= deadline:
            log.warning(f'playing without every subscriber matched after {timeout_s:g} s: '
                        + ', '.join(f'{t} ({m} of {e})' for t, (m, e) in sorted(missing.items())))
            return False
        time.sleep(0.01)


def play(options: PlayOptions, bag_path: str | Path, *, qos_overrides_path: str | None = None,
         ros_args: Sequence[str] | None = None) -> PlayStats:
    """Open the bag, play it to the end (or SIGINT/SIGTERM), shut ROS down; returns the stats."""
    import rclpy

    from field_deploy.ros import Spinner, init

    bag = Bag(bag_path)                       # fails before ROS starts: clear, one line
    overrides = load_qos_overrides(qos_overrides_path)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    init(list(ros_args) if ros_args is not None else None)
    node, player = make_player_node(bag, options, overrides)
    rate = node.get_parameter('rate').value   # --ros-args -p rate:=… wins over the flag
    if rate != options.rate:
        player.set_rate(float(rate))

    def on_signal(_signum: int, _frame: object) -> None:
        player.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    set_realtime(options.realtime_priority)    # before the executor thread: it inherits
    spinner = Spinner([node]).start()
    try:
        if bag.truncated:
            print(f'bag_player: {", ".join(map(str, bag.truncated))} truncated: playing what is '
                  'readable', file=sys.stderr)
        wait_for_subscribers(node, player.publishers, options.wait_for_subscribers_s)
        wait_for_matched(node, player.publishers, options.match_timeout_s)
        stats = player.run()
        wait_for_acks(node, player.publishers)
        return stats
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``bag_player BAG [flags] [--ros-args …]``."""
    import rclpy.utilities

    argv = list(sys.argv[1:] if argv is None else argv)
    cli_args = rclpy.utilities.remove_ros_args(['bag_player', *argv])[1:]
    parser = add_play_arguments(argparse.ArgumentParser(
        prog='bag_player', description='Play a rosbag2 MCAP bag with faithful timing.'))
    args = parser.parse_args(cli_args)
    try:
        options = options_from_args(args)
        stats = play(options, args.bag, qos_overrides_path=args.qos_profile_overrides_path,
                     ros_args=['bag_player', *argv])
    except (OSError, ValueError, LookupError) as exc:
        print(f'bag_player: error: {exc}', file=sys.stderr)
        return 1
    print(f'bag_player: published {stats.published} messages'
          + (f', {stats.loops} loops' if stats.loops else ''), file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
