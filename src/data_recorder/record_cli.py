"""``field_deploy bag record`` and ``field_deploy bag recover``: the flags ``ros2 bag record`` users know.

``record`` runs the ``data_recorder`` node in this process with the flags as its parameters and
records until Ctrl-C / SIGTERM, then closes the bag cleanly. Everything that can be checked
before ROS starts is (existing or unwritable output, bad regex, bad numbers, unreadable QoS
overrides) so a mistake costs one line, not a half-made bag.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from data_recorder.bag.writer import check_output_dir
from data_recorder.capture.recorder import RecorderConfig
from data_recorder.capture.selection import Selection, load_qos_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    rec = subparsers.add_parser('record', help='record live topics to a rosbag2 MCAP bag',
                                description=__doc__.splitlines()[0])
    rec.add_argument('topics', nargs='*', metavar='TOPIC', help='topics to record')
    rec.add_argument('-o', '--output', required=True, help='bag directory to create (must not exist)')
    rec.add_argument('-a', '--all', action='store_true', help='record all topics')
    rec.add_argument('-e', '--regex', default='', help='record topics matching this regex')
    rec.add_argument('-x', '--exclude', default='', help='do not record topics matching this regex')
    rec.add_argument('--include-hidden-topics', action='store_true')
    rec.add_argument('--compression-format', choices=('none', 'zstd', 'lz4'), default='none',
                     help='MCAP chunk compression')
    rec.add_argument('--max-bag-size', type=int, default=0, metavar='BYTES',
                     help='split into a new file at this size (0: never)')
    rec.add_argument('--max-bag-duration', type=float, default=0.0, metavar='SECONDS',
                     help='split into a new file after this duration (0: never)')
    rec.add_argument('--snapshot-mode', action='store_true',
                     help='keep the last --snapshot-duration s in memory; write on ~/snapshot')
    rec.add_argument('--snapshot-duration', type=float, default=30.0, metavar='SECONDS')
    rec.add_argument('--snapshot-max-bytes', type=int, default=0, metavar='BYTES')
    rec.add_argument('--qos-profile-overrides-path', default='', metavar='FILE',
                     help='YAML {topic: {reliability, durability, history, depth}}')
    rec.add_argument('--chunk-size', type=int, default=1024 * 1024, metavar='BYTES')
    rec.add_argument('--flush-interval', type=float, default=1.0, metavar='SECONDS',
                     help='most data a crash can lose (chunk closed and fsync\'d this often)')
    rec.add_argument('--min-free-space', type=int, default=64 * 1024 * 1024, metavar='BYTES',
                     help='stop cleanly before free disk space falls under this')
    rec.add_argument('--queue-size', type=int, default=100_000, metavar='MESSAGES')
    rec.add_argument('--queue-max-bytes', type=int, default=256 * 1024 * 1024, metavar='BYTES',
                     help='memory bound of the hand-off queue (overflow is counted as loss)')
    rec.add_argument('--queue-reserve-bytes', type=int, default=256 * 1024 * 1024,
                     metavar='BYTES',
                     help='heap kept resident for the queue from the start, at most '
                          '--queue-max-bytes (0: none); a backlog then takes no page faults')
    rec.add_argument('--writer-process', action='store_true',
                     help='write the bag in a process of its own, fed through shared memory '
                          '(capture and writing on two cores; see docs/data_recorder.md, Headroom)')
    rec.add_argument('--ring-bytes', type=int, default=128 * 1024 * 1024, metavar='BYTES',
                     help='shared-memory ring between the recorder and its writer process')
    rec.add_argument('--throttle', action='append', default=[], metavar='TOPIC_REGEX:HZ',
                     help='keep at most HZ messages a second of the matching topics (repeatable); '
                          'the others are counted as throttled, never as lost')
    rec.add_argument('--per-writer', action='append', default=[], metavar='TOPIC',
                     help='take TOPIC with each sample\'s writer gid: every writer counted apart, '
                          'exactly (automatic for /diagnostics, /rosout, /tf and topics with '
                          'several publishers when subscribed; repeatable)')
    rec.add_argument('--qos-depth', type=int, default=1000, metavar='N',
                     help='history depth of the recorder\'s subscriptions')
    rec.set_defaults(func=run_record)

    rc = subparsers.add_parser('recover', help='rebuild a readable bag from a cut or damaged '
                               'recording (every intact chunk kept, the original kept beside)')
    rc.add_argument('bag', metavar='BAG_OR_FILE', help='bag directory or .mcap file')
    rc.set_defaults(func=run_recover)


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Node parameters from the flags, validated (ValueError / FileExistsError / PermissionError)."""
    output = str(check_output_dir(args.output))
    if args.qos_depth < 1:
        raise ValueError(f'--qos-depth: {args.qos_depth} must be >= 1')
    values: dict[str, Any] = {
        'output': output, 'topics': list(args.topics), 'all_topics': args.all,
        'regex': args.regex, 'exclude_regex': args.exclude,
        'include_hidden_topics': args.include_hidden_topics,
        'compression_format': args.compression_format, 'max_bag_size': args.max_bag_size,
        'max_bag_duration': float(args.max_bag_duration), 'snapshot_mode': args.snapshot_mode,
        'snapshot_duration': float(args.snapshot_duration),
        'snapshot_max_bytes': args.snapshot_max_bytes,
        'qos_profile_overrides_path': args.qos_profile_overrides_path,
        'chunk_size': args.chunk_size, 'flush_interval': float(args.flush_interval),
        'min_free_space': args.min_free_space, 'queue_size': args.queue_size,
        'queue_max_bytes': args.queue_max_bytes,
        'queue_reserve_bytes': args.queue_reserve_bytes, 'qos_depth': args.qos_depth, 'autostart': True,
        'throttle': list(args.throttle), 'writer_process': args.writer_process,
        'per_writer_topics': list(args.per_writer),
        'ring_bytes': args.ring_bytes,
    }
    RecorderConfig(output=output, compression_format=args.compression_format,
                   chunk_size=args.chunk_size, flush_interval=args.flush_interval,
                   max_bag_size=args.max_bag_size, max_bag_duration=args.max_bag_duration,
                   snapshot_mode=args.snapshot_mode, snapshot_duration=args.snapshot_duration,
                   snapshot_max_bytes=args.snapshot_max_bytes, min_free_space=args.min_free_space,
                   queue_size=args.queue_size, queue_max_bytes=args.queue_max_bytes,
                   queue_reserve_bytes=args.queue_reserve_bytes,
                   throttle=tuple(args.throttle)).validate()
    Selection(topics=tuple(args.topics), all_topics=args.all, regex=args.regex,
              exclude_regex=args.exclude)
    if args.qos_profile_overrides_path:
        load_qos_overrides(args.qos_profile_overrides_path)
    return values


def run_record(args: argparse.Namespace) -> int:
    from field_deploy.cli import CliError

    values = parameters(args)
    from data_recorder.capture.accounting import COUNTERS, summary_line
    from data_recorder.node import DataRecorderNode
    from data_recorder.parameters import ALLOCATOR, parameter_overrides
    from field_deploy.ros import init, run_nodes

    init([], allocator=ALLOCATOR)
    node = DataRecorderNode(parameter_overrides=parameter_overrides(values))
    if node.recorder is None:
        error = node.last_error or 'the recorder did not start'
        node.destroy_node()
        import rclpy
        rclpy.try_shutdown()
        raise CliError(error)
    run_nodes([node], drain=node.drain, on_shutdown=node.close_bag)
    totals = dict.fromkeys(COUNTERS, 0)
    for counts in node.accounting().values():
        for key in totals:
            totals[key] += int(counts[key])
    print(f'{values["output"]}: {summary_line(totals)}')
    return 0


def run_recover(args: argparse.Namespace) -> int:
    from data_recorder.tools_cli import run_recover as report_recover
    return report_recover(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m data_recorder.record_cli record …``): ``field_deploy bag …``."""
    from field_deploy.cli import run

    return run(('data_recorder.cli',), ['bag', *(sys.argv[1:] if argv is None else argv)])


def accounting_json(bag_metadata: dict[str, Any]) -> dict[str, Any]:
    """The recorder's accounting stored in a bag's metadata (``custom_data``), parsed."""
    custom = bag_metadata.get('custom_data') or {}
    return json.loads(custom.get('data_recorder.accounting', '{}'))


if __name__ == '__main__':
    sys.exit(main())
