"""The ``data_recorder`` node's parameters: names, defaults, and the CLI's way onto them.

One table for the node (it declares each one), ``bag record`` (its flags map onto the same
names) and the stack's params files. It imports only rclpy's :class:`Parameter`, not the node.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rclpy.parameter import Parameter

ALLOCATOR = 'reuse'
"""The recorder process's allocator policy (:func:`field_deploy.memory.set_allocator`; the
environment's ``FIELD_DEPLOY_ALLOCATOR`` wins): every image it takes reuses the heap's pages.
With every node's ``fixed`` a page fault per 4 KiB of each image was a third of its CPU at 2x
the reference load, and 2x lost 44-60 % on this host (docs/data_recorder.md, "The field's
allocator")."""

#: parameter name → default (the CLI flags map onto the same names).
STRING_ARRAYS = ('topics', 'throttle', 'per_writer_topics')
PARAMETERS: dict[str, Any] = {
    'output': '',
    'if_output_exists': 'fail',
    'topics': [],
    'all_topics': False,
    'regex': '',
    'exclude_regex': '',
    'include_hidden_topics': False,
    'compression_format': 'none',
    'chunk_size': 1024 * 1024,
    'flush_interval': 1.0,
    'max_bag_size': 0,
    'max_bag_duration': 0.0,
    'snapshot_mode': False,
    'snapshot_duration': 30.0,
    'snapshot_max_bytes': 0,
    'min_free_space': 64 * 1024 * 1024,
    'queue_size': 100_000,
    'queue_max_bytes': 256 * 1024 * 1024,
    'queue_reserve_bytes': 256 * 1024 * 1024,   # resident from the start (field_deploy.heap_reserve)
    'qos_depth': 1000,
    'qos_profile_overrides_path': '',
    'discovery_interval': 1.0,
    'diagnostics_period': 1.0,
    'fsync': True,
    'writer_process': False,  # true: the bag written by a process of its own (bag.writer_process)
    'ring_bytes': 128 * 1024 * 1024,   # its shared-memory ring
    'message_lost_events': False,
    'episodes': True,
    'split_per_episode': False,
    'autostart': True,
    'drain_timeout': 10.0,
    'throttle': [],           # TOPIC_REGEX:HZ entries: at most HZ messages a second kept (throttled)
    'per_writer_topics': [],  # topics taken with each sample's writer gid (capture.subscriptions)
    'hardware_profile': '',   # robot profile: its RoHS table (installed parts) goes into the bag
}

def default_output() -> str:
    return datetime.now().strftime('rosbag2_%Y_%m_%d-%H_%M_%S')


def parameter_overrides(values: dict[str, Any]) -> list[Parameter]:
    """rclpy parameters for :class:`DataRecorderNode` from a ``{name: value}`` dict (the CLI)."""
    unknown = sorted(set(values) - set(PARAMETERS))
    if unknown:
        raise ValueError(f'unknown data_recorder parameter(s): {", ".join(unknown)}')
    # (an empty list cannot be typed as a string array by rclpy: leave the default instead)
    return [Parameter(k, Parameter.Type.STRING_ARRAY, list(v)) if k in STRING_ARRAYS
            else Parameter(k, value=v) for k, v in values.items() if not (k in STRING_ARRAYS and not v)]
