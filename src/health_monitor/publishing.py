"""What the health monitor publishes: its statuses and the aggregated tree as DiagnosticArrays,
and the same statuses to the robot's Prometheus endpoint (:mod:`fleet.metrics`).

The metrics are fed here, from the statuses in hand, rather than by subscribing to the arrays
this process publishes (and to every ``/diagnostics`` array a second time): that round trip was
a tenth of the monitor's CPU (bench/health, 2026-11-30).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from field_deploy.ros import set_stamp
from fleet.metrics import StatusView
from health_monitor.core import STALE, Status

#: The diagnostics topics whose statuses the monitor does not have in hand: the metrics
#: subscribe to these only.
METRICS_TOPICS = ('/skill_runtime/status',)


def to_msg(s: Status, name: str, hardware_id: str) -> DiagnosticStatus:
    return DiagnosticStatus(level=bytes([min(s.level, STALE)]), name=name, message=s.message,
                            hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in s.values.items()])


def status_arrays(own: Sequence[Status], agg: Sequence[Status], stamp_ns: int, prefix: str,
                  node_name: str) -> tuple[DiagnosticArray, DiagnosticArray]:
    """The monitor's own statuses (named ``<prefix><name>``, its node as hardware id) and the
    aggregated tree."""
    mine, out = DiagnosticArray(), DiagnosticArray()
    set_stamp(mine.header.stamp, stamp_ns)
    set_stamp(out.header.stamp, stamp_ns)
    mine.status = [to_msg(s, prefix + s.name, node_name) for s in own]
    out.status = [to_msg(s, s.name, s.hardware_id) for s in agg]
    return mine, out


def published_views(own: Sequence[Status], agg: Sequence[Status], prefix: str,
                    node_name: str) -> list[StatusView]:
    """What :func:`status_arrays` says, as a subscriber of the two arrays reads it."""
    return ([StatusView(prefix + s.name, min(s.level, STALE), s.message, node_name, s.values)
             for s in own]
            + [StatusView(s.name, min(s.level, STALE), s.message, s.hardware_id, s.values)
               for s in agg])


def serve_metrics(node: Node, port: int, address: str,
                  warn: Callable[[str], Any], info: Callable[[str], Any]) -> Any:
    """The robot's Prometheus endpoint (fleet.metrics) on ``node``; None when off or the port
    is taken (said once, the monitor runs on)."""
    if port <= 0:
        return None
    from fleet.metrics_node import attach_metrics
    from fleet.upload import default_robot_id
    try:
        server = attach_metrics(node, port, default_robot_id(), address, topics=METRICS_TOPICS)
    except OSError as exc:
        warn(f'metrics not served on {address}:{port}: {exc.strerror}')
        return None
    info(f'metrics on http://{address}:{server.port}/metrics')
    return server
