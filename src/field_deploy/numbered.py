"""Numbered publisher: the independent count a loss figure is checked against.

A separate process (``python -m field_deploy.numbered --topic /t --count 2000 --out w.json``)
publishes ``sensor_msgs/JointState`` messages whose ``header.frame_id`` is ``<writer>:<n>``,
n = 0, 1, 2, … over the whole run (a restart continues the numbering), and writes what it
published to ``--out`` (JSON) when done. A bag is then read with ``rosbags`` (not the project's
reader: :func:`numbers_in_bag`), and ``published - found`` is the loss nobody can argue with.

Streams: periodic (``--rate``; the header stamp is the sample clock, so the recorder's stamp rule
sees them too) or aperiodic (``--aperiodic``: exponential intervals of mean 1/rate, stamped with
the send time). QoS: ``--reliability``, ``--depth`` (keep-last). ``--restart-every N``: destroy
the publisher every N messages and create a new one (a new DDS writer: new gid, its sequence
numbers start at 1 again). ``--size`` pads each message to about that many bytes.
Before the first message and after each restart it waits until ``--subscribers`` readers have
matched (bounded by ``--match-timeout``): a writer's messages before it matched a reader were
never meant for that reader, and no accounting can count them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

TYPE = 'sensor_msgs/msg/JointState'
SETTLE_S = 0.3
"""Seconds a new writer waits after its side of the match before its first sample."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='numbered', description=__doc__.split('\n\n')[0])
    p.add_argument('--topic', required=True)
    p.add_argument('--writer', default='w0', help='writer id written into every message')
    p.add_argument('--count', type=int, default=1000, help='messages to publish in all')
    p.add_argument('--rate', type=float, default=100.0, help='Hz (mean rate if --aperiodic)')
    p.add_argument('--aperiodic', action='store_true', help='random (exponential) intervals')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--reliability', choices=('reliable', 'best_effort'), default='reliable')
    p.add_argument('--depth', type=int, default=10, help='keep-last history of the writer')
    p.add_argument('--restart-every', type=int, default=0, metavar='N',
                   help='new DDS writer (new gid) every N messages (0: never)')
    p.add_argument('--size', type=int, default=0, help='pad messages to about SIZE bytes')
    p.add_argument('--subscribers', type=int, default=1,
                   help='readers to wait for before publishing (0: do not wait)')
    p.add_argument('--match-timeout', type=float, default=20.0)
    p.add_argument('--linger', type=float, default=1.0,
                   help='at the end, seconds to wait at most for every reader to acknowledge '
                        '(reliable: returns once they have), or to stay (best effort)')
    p.add_argument('--out', type=Path, default=None, help='JSON report of what was published')
    p.add_argument('--default-dds-profile', action='store_true',
                   help="Fast DDS defaults, not the project's config/fastdds.xml (a third-party "
                        'driver as shipped)')
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import os
    if args.default_dds_profile:
        os.environ['FASTRTPS_DEFAULT_PROFILES_FILE'] = ''   # set: the project's is not loaded
    import rclpy
    from rclpy.duration import Duration
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    from field_deploy.ros import init, set_stamp

    init([])
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=args.depth,
                     reliability=(ReliabilityPolicy.RELIABLE if args.reliability == 'reliable'
                                  else ReliabilityPolicy.BEST_EFFORT))
    node = rclpy.create_node(f'numbered_{args.writer}')
    rng = random.Random(args.seed)
    msg = JointState()
    if args.size > 0:
        msg.position = [0.0] * max(0, args.size // 8)
    # acked: every reliable writer's last samples were acknowledged within --linger. False says
    # the readers never confirmed the tail: samples after the last one a reader received may
    # never have reached it, and no later number reveals them (a reader cannot count what it
    # never heard of).
    report = {'writer': args.writer, 'topic': args.topic, 'published': 0, 'writers': 0,
              'unmatched_waits': 0, 'acked': True}

    def new_publisher():
        pub = node.create_publisher(JointState, args.topic, qos)
        report['writers'] += 1
        deadline = time.monotonic() + args.match_timeout
        while pub.get_subscription_count() < args.subscribers and time.monotonic() < deadline:
            time.sleep(0.01)
        if pub.get_subscription_count() < args.subscribers:
            report['unmatched_waits'] += 1
        # The count is the writer's side of the match; the reader matches the writer when the
        # writer's announcement reaches it, which a loaded host delays: samples sent before that
        # are evicted from a shallow history unseen (a CI run lost a writer's first 12 of a
        # depth-10 history this way, and no accounting can tell). Let the reader's side settle.
        time.sleep(SETTLE_S)
        return pub

    def finish(pub) -> None:
        if args.reliability == 'reliable' and not pub.wait_for_all_acked(Duration(seconds=args.linger)):
            report['acked'] = False

    pub = new_publisher()
    print(f'publishing {args.writer}', flush=True)
    period = 1.0 / args.rate
    start_ns = time.time_ns()
    next_t = time.monotonic()
    try:
        for n in range(args.count):
            if args.restart_every and n and n % args.restart_every == 0:
                finish(pub)                 # a clean restart: its last samples delivered
                node.destroy_publisher(pub)
                pub = new_publisher()
                next_t = time.monotonic()
            next_t += rng.expovariate(args.rate) if args.aperiodic else period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            set_stamp(msg.header.stamp, time.time_ns() if args.aperiodic
                      else start_ns + int(n * period * 1e9))
            msg.header.frame_id = f'{args.writer}:{n}'
            pub.publish(msg)
            report['published'] = n + 1
        finish(pub)
        # reliable: acknowledged (or given up after --linger) - a short grace for the graph;
        # best effort: nothing to wait for but the readers' own pace
        time.sleep(0.2 if args.reliability == 'reliable' else args.linger)
    finally:
        if args.out is not None:
            args.out.write_text(json.dumps(report))
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def numbers_in_bag(bag: Path, topic: str) -> dict[str, set[int]]:
    """``{writer: {n, …}}`` of the numbered messages of ``topic`` in ``bag``, read with ``rosbags``
    (an independent reader: deserialised from the MCAP, not from our metadata)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    found: dict[str, set[int]] = {}
    with AnyReader([Path(bag)], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        for connection, _t, raw in reader.messages(connections=connections):
            frame = reader.deserialize(raw, connection.msgtype).header.frame_id
            writer, _, n = frame.rpartition(':')
            found.setdefault(writer, set()).add(int(n))
    return found


if __name__ == '__main__':
    sys.exit(main())
