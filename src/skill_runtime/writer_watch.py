"""ROS shell of the foreign-writer alarm (:mod:`skill_runtime.writers`): polls the graph, publishes
``/diagnostics``.

Runs in the runtime process on its own small node and thread, not on a timer of the runtime's
main executor: that executor can be held up to ``vendor_call_timeout`` by a transition, and the
alarm must come within 1 s. A graph query is one C call on the local graph cache (no network
round trip); 5 per second cost nothing measurable.
"""

from __future__ import annotations

import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from field_deploy.ros import set_stamp
from skill_runtime.writers import STATUS_NAME, Writer, WriterStatus, WriterWatch

POLL_S = 0.2


def gid_hex(gid: object) -> str:
    return bytes(gid).hex()  # type: ignore[call-overload]


def publishers(node: Node, topic: str) -> list[Writer]:
    """The publishers on ``topic`` (resolved against ``node``'s namespace) in the graph now."""
    return [Writer(i.node_name, i.node_namespace, gid_hex(i.endpoint_gid))
            for i in node.get_publishers_info_by_topic(topic)]


class ForeignWriterWatch:
    """Watches ``topic`` for publishers other than the runtime's own.

    ``exclude``: gids present before the runtime created its publisher. The runtime's own
    writers are those of the runtime node that appeared since (rmw adds a local endpoint to the
    graph cache when it is created), so a foreign node named like the runtime is still foreign.
    """

    def __init__(self, runtime: Node, topic: str, exclude: set[str], poll_s: float = POLL_S) -> None:
        self.topic = runtime.resolve_topic_name(topic)
        own = {w.gid for w in publishers(runtime, self.topic)
               if w.gid not in exclude and w.node == runtime.get_name()
               and w.namespace == runtime.get_namespace()}
        self.hardware_id = runtime.get_fully_qualified_name()
        self.watch = WriterWatch(self.topic, own)
        self.node = Node(f'{runtime.get_name()}_writer_watch', namespace=runtime.get_namespace(),
                         context=runtime.context)
        self.pub = self.node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        if not own:
            runtime.get_logger().warning(f'writer watch: the runtime\'s own publisher on {self.topic} '
                                         'is not in the graph; every writer will be reported')
        self._stop = threading.Event()
        self._poll_s = poll_s
        self._thread = threading.Thread(target=self._run, name='writer-watch', daemon=True)
        self._thread.start()

    def check(self) -> WriterStatus | None:
        """One poll: publish the status when it changed or is due; return what was published."""
        status = self.watch.update(publishers(self.node, self.topic), time.monotonic())
        if status is not None:
            self._publish(status)
        return status

    def _publish(self, status: WriterStatus) -> None:
        msg = DiagnosticArray()
        set_stamp(msg.header.stamp, self.node.get_clock().now().nanoseconds)
        msg.status = [DiagnosticStatus(
            level=bytes([status.level]), name=STATUS_NAME, message=status.message,
            hardware_id=self.hardware_id,
            values=[KeyValue(key=k, value=v) for k, v in status.values.items()])]
        self.pub.publish(msg)
        if status.level != 0:
            self.node.get_logger().error(status.message, throttle_duration_sec=5.0)

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.check()
            except Exception as exc:
                if self._stop.is_set() or not self.node.context.ok():
                    return   # the runtime is exiting: its context went down under us
                self.node.get_logger().warning(f'writer watch: {exc}')

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.node.destroy_node()
