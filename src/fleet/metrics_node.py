"""The ROS side of :mod:`fleet.metrics`: subscribe the diagnostics topics, serve ``/metrics``.

:func:`attach_metrics` hangs the exporter on a node that already exists (the health monitor's,
``metrics_port`` parameter) rather than adding a process: the statuses arrive at 1–10 Hz, and all
work is done at scrape time. The HTTP server is ``prometheus_client``'s, on its own thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from prometheus_client import CollectorRegistry, start_http_server
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from fleet.metrics import DiagnosticsMetrics, StatusView

TOPICS = ('/diagnostics', '/diagnostics_agg', '/skill_runtime/status')
DEFAULT_PORT = 9464


@dataclass
class MetricsServer:
    metrics: DiagnosticsMetrics
    server: Any
    port: int

    def close(self) -> None:
        self.server.shutdown()


def attach_metrics(node: Node, port: int, robot: str, address: str = '0.0.0.0',
                   topics: tuple[str, ...] = TOPICS) -> MetricsServer:
    """Serve ``http://<address>:<port>/metrics`` with the robot's metrics, fed by ``node``'s
    subscriptions to ``topics``. A node that has the statuses in hand already (the health
    monitor: the ``/diagnostics`` it takes, the arrays it publishes) subscribes to the rest
    only and calls ``metrics.update`` itself: taking its own output back and every
    ``/diagnostics`` array a second time was a tenth of its CPU."""
    metrics = DiagnosticsMetrics(robot)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)

    def feed(msg: DiagnosticArray) -> None:
        metrics.update(StatusView(s.name, int.from_bytes(s.level, 'little') if isinstance(s.level, bytes)
                                  else int(s.level), s.message, s.hardware_id,
                                  {kv.key: kv.value for kv in s.values}) for s in msg.status)
    for topic in topics:
        node.create_subscription(DiagnosticArray, topic, feed, qos)
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return MetricsServer(metrics, server, server.server_port)
