"""``live_view``: the robot's topics, as they are, to the Foxglove app over WebSocket.

The app connects to ``ws://<robot>:8765`` with no ROS on the viewer's machine. Messages go out as
the CDR bytes DDS delivered, on channels with the ``ros2msg`` schema the recorder also writes into
its MCAP (:func:`data_recorder.bag.msgdefs.full_definition`), so the app decodes them exactly as it
decodes our bags. The topics on the graph that the allow-list names are advertised (checked every
second); a ROS subscription exists only while a client subscribes to that channel, so an unwatched
view costs nothing. Subscriptions are best effort, depth 1: a slow view never holds a writer's
history, and the Foxglove server drops what a slow client cannot take (``message_backlog_size``).

Parameters: ``port`` (8765, or ``$FIELD_DEPLOY_LIVE_PORT``), ``address`` (127.0.0.1), ``allow``
(topic globs), ``token_file`` (or ``$FIELD_DEPLOY_LIVE_TOKEN``; required beyond localhost),
``image_rate`` (Hz per image topic to the view, 0 = all), ``backlog`` (messages per client),
``localhost_without_token`` (true: clients on this machine need no token).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy

from field_deploy.ros import init, message_class, polled_subscription, run_nodes, take_latest
from fleet.liveview import LiveViewError, TokenGate, check_config, topic_allowed

PORT_ENV = 'FIELD_DEPLOY_LIVE_PORT'
DEFAULT_PORT = 8765    # the Foxglove app's default connection
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')


class LiveViewNode(Node):
    def __init__(self) -> None:
        super().__init__('live_view')
        self.declare_parameter('port', int(os.environ.get(PORT_ENV, DEFAULT_PORT)))
        self.declare_parameter('address', '127.0.0.1')
        self.declare_parameter('allow', Parameter.Type.STRING_ARRAY)
        self.declare_parameter('token_file', '')
        self.declare_parameter('image_rate', 5.0)
        self.declare_parameter('backlog', 64)
        self.declare_parameter('localhost_without_token', True)
        import foxglove

        self._foxglove = foxglove
        try:
            self.allow = [a for a in (self.get_parameter('allow').value or []) if a]
        except Exception:   # an unset string array reads as uninitialised
            self.allow = []
        address = str(self.get_parameter('address').value)
        token = self._token()
        check_config(address, token)
        self.context_fg = foxglove.Context()
        # image readers a timer samples: on a node of their own that no executor serves
        self.sampler = Node('live_view_sampler', context=self.context)
        self.channels: dict[str, Any] = {}      # topic -> foxglove Channel
        self.types: dict[str, str] = {}
        self.subs: dict[str, Any] = {}          # topic -> ROS subscription while watched
        self.watchers: dict[str, set[int]] = {}
        image_rate = float(self.get_parameter('image_rate').value)
        self.image_period = 1.0 / image_rate if image_rate > 0 else 0.0
        self._lock = threading.Lock()
        self.server = foxglove.start_server(
            name='field_deploy live view', host='127.0.0.1', port=0, capabilities=[],
            server_listener=self, supported_encodings=['cdr'], context=self.context_fg,
            message_backlog_size=int(self.get_parameter('backlog').value))
        self.gate = TokenGate(address, int(self.get_parameter('port').value), self.server.port,
                              token, self.get_logger().warning,
                              trust_loopback=bool(self.get_parameter('localhost_without_token').value)
                              ).start()
        self.get_logger().info(f'live view on ws://{address}:{self.gate.port} (read-only; '
                               f'{"token required beyond localhost" if token else "localhost only"}; '
                               f'allow {self.allow or "nothing"})')
        self.create_timer(1.0, self._advertise)
        self._advertise()

    def _token(self) -> str:
        path = str(self.get_parameter('token_file').value)
        if path:
            try:
                return Path(path).expanduser().read_text().strip()
            except OSError as exc:
                raise LiveViewError(f'token_file {path}: {exc.strerror}') from None
        return os.environ.get('FIELD_DEPLOY_LIVE_TOKEN', '')

    # ------------------------------------------------------------------ channels
    def _advertise(self) -> None:
        from data_recorder.bag.msgdefs import full_definition

        for topic, types in self.get_topic_names_and_types():
            if topic in self.channels or len(types) != 1 or not topic_allowed(topic, self.allow):
                continue
            try:
                schema = self._foxglove.Schema(name=types[0], encoding='ros2msg',
                                               data=full_definition(types[0]).encode())
            except LookupError:
                continue      # a type whose definition is not installed: not served
            self.types[topic] = types[0]
            self.channels[topic] = self._foxglove.Channel(topic, schema=schema, message_encoding='cdr',
                                                          context=self.context_fg)

    # ------------------------------------------------------------------ foxglove ServerListener
    def on_subscribe(self, client: Any, channel: Any) -> None:
        with self._lock:
            watchers = self.watchers.setdefault(channel.topic, set())
            watchers.add(client.id)
            if channel.topic not in self.subs and channel.topic in self.types:
                self.subs[channel.topic] = self._subscribe(channel.topic)

    def on_unsubscribe(self, client: Any, channel: Any) -> None:
        with self._lock:
            watchers = self.watchers.get(channel.topic, set())
            watchers.discard(client.id)
            sub = self.subs.pop(channel.topic, None) if not watchers else None
        if sub is not None:
            self._unsubscribe(sub)

    def _subscribe(self, topic: str) -> Any:
        channel = self.channels[topic]
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        if self.types[topic] in IMAGE_TYPES and self.image_period > 0:
            return _Sampled(self, topic, channel, qos, self.image_period)
        return self.create_subscription(message_class(self.types[topic]), topic, channel.log, qos,
                                        raw=True)

    def _unsubscribe(self, sub: Any) -> None:
        if isinstance(sub, _Sampled):
            sub.destroy()
        else:
            self.destroy_subscription(sub)

    def destroy_node(self) -> None:
        self.gate.stop()
        self.server.stop()
        self.sampler.destroy_node()
        super().destroy_node()


class _Sampled:
    """An image topic sent to the view at ``period``: a depth-1 reader on a node no executor
    serves (:func:`field_deploy.ros.polled_subscription`), whose newest frame a timer takes. Not a
    subscription filtered in its callback: that took every 921 KB frame into Python (30 Hz a
    camera) to send one in six, and the view cost 25 % of a core with one client on the
    reference load."""

    def __init__(self, node: LiveViewNode, topic: str, channel: Any, qos: QoSProfile,
                 period: float) -> None:
        self.node, self.channel = node, channel
        self.sub = polled_subscription(node.sampler, message_class(node.types[topic]), topic, qos)
        self.timer = node.create_timer(period, self._take)

    def _take(self) -> None:
        frame = take_latest(self.sub)
        if frame is not None:
            self.channel.log(frame)

    def destroy(self) -> None:
        self.node.destroy_timer(self.timer)
        self.node.sampler.destroy_subscription(self.sub)


def main(args: list[str] | None = None) -> None:
    init(args, small_segment=True)   # it only reads
    try:
        node = LiveViewNode()
    except LiveViewError as exc:
        import sys
        print(f'live_view: error: {exc}', file=sys.stderr)
        raise SystemExit(2) from None
    run_nodes([node])


if __name__ == '__main__':
    main()
