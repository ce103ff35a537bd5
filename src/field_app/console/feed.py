"""ROS shell of the console's status board and marks: subscriptions in, a :class:`Board` out.

:class:`StatusFeed` folds ``/skill_runtime/status``, ``/diagnostics_agg`` and ``/diagnostics``
into a :class:`~field_app.console.board.Board` and asks the graph which nodes are there.
:class:`MarkSender` publishes an operator's mark on ``<ns>/data_recorder/mark`` (std_msgs/String,
JSON: :mod:`data_recorder.bag.marks`) and waits for the recorder's ``/diagnostics`` status to list its
id: a mark is reported written only when the recorder says so.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from data_recorder.bag.marks import encode
from field_app.console.board import Board, Diag, level_of
from field_deploy.cli import StackUnavailable

_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def _diags(msg: DiagnosticArray) -> list[Diag]:
    return [Diag(s.name, level_of(s.level), s.message, {kv.key: kv.value for kv in s.values})
            for s in msg.status]


def _bag_bytes(path: str) -> int | None:
    """Size of the bag directory on this host (None when it is not here: a remote robot)."""
    folder = Path(path)
    if not path or not folder.is_dir():
        return None
    total = 0
    for f in folder.iterdir():
        try:
            total += f.stat().st_size
        except OSError:
            continue
    return total


def _disk_free(path: str) -> int | None:
    folder = Path(path)
    while path and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free if path else None
    except OSError:
        return None


class StatusFeed:
    """Subscriptions of ``node`` (spun elsewhere) feeding :attr:`board`; thread-safe to read."""

    def __init__(self, node: Node, namespace: str = '', stale_after: float = 3.5) -> None:
        ns = f'/{namespace.strip("/")}' if namespace.strip('/') else ''
        self.node = node
        self.board = Board(stale_after=stale_after)
        self._lock = threading.Lock()
        node.create_subscription(DiagnosticArray, f'{ns}/skill_runtime/status', self._runtime, _QOS)
        node.create_subscription(DiagnosticArray, '/diagnostics_agg', self._agg, _QOS)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._diagnostics, _QOS)

    def _runtime(self, msg: DiagnosticArray) -> None:
        with self._lock:
            self.board.on_runtime_status(_diags(msg), time.monotonic())

    def _agg(self, msg: DiagnosticArray) -> None:
        with self._lock:
            self.board.on_agg(_diags(msg), time.monotonic())

    def _diagnostics(self, msg: DiagnosticArray) -> None:
        diags = [d for d in _diags(msg) if d.name == 'data_recorder']
        if diags:
            size = _bag_bytes(diags[-1].values.get('path', ''))
            with self._lock:
                self.board.on_diagnostics(diags, time.monotonic(), size)

    def snapshot(self) -> dict[str, Any]:
        names = [name for name, _ns in self.node.get_node_names_and_namespaces()]
        with self._lock:
            self.board.on_graph(names)
            recorder = self.board.recorder
            path = recorder.values.get('path', '') if recorder is not None else ''
            snap = self.board.snapshot(time.monotonic())
        if snap['recorder'] is not None:
            snap['recorder']['disk_free_bytes'] = _disk_free(path)
        return snap


class MarkSender:
    """``MarkSender(node).send('slipped on the wet floor', 'anomaly')`` → the recorder's answer."""

    def __init__(self, node: Node, namespace: str = '') -> None:
        ns = f'/{namespace.strip("/")}' if namespace.strip('/') else ''
        self.topic = f'{ns}/data_recorder/mark'
        self.publisher = node.create_publisher(String, self.topic, 10)
        self._recorder: dict[str, str] = {}
        self._lock = threading.Lock()
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, _QOS)
        self.source = f'{getpass.getuser()}@{socket.gethostname()}'

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name == 'data_recorder':
                with self._lock:
                    self._recorder = {kv.key: kv.value for kv in s.values}

    def send(self, text: str, kind: str, timeout: float) -> dict[str, str]:
        """Publish the mark, stamped now; the recorder's status once it lists the mark.

        StackUnavailable when no recorder listens within ``timeout``, or it does not confirm
        within ``6 × timeout`` (at least 30 s): the recorder's executor takes the mark, and
        publishes its status, behind the messages it has not taken yet, and a recorder on a
        loaded host runs seconds behind (measured here with 20 processes on 2 cores: the mark
        written, its confirmation later than 15 s). The message then says the mark may still be
        written.
        """
        stamp = time.time_ns()
        mark_id = f'{os.getpid()}-{uuid.uuid4().hex[:8]}'
        data = encode(text, kind, stamp, mark_id, self.source)      # ValueError: bad text / kind
        deadline = time.monotonic() + timeout
        while self.publisher.get_subscription_count() == 0:
            if time.monotonic() >= deadline:
                raise StackUnavailable(f'no recorder listens on {self.topic} after {timeout:g} s '
                                       '(is the stack up and recording?)')
            time.sleep(0.05)
        self.publisher.publish(String(data=data))
        wait = max(6 * timeout, 30.0)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self._lock:
                status = dict(self._recorder)
            if mark_id in status.get('marks_recent', '').split(','):
                return status
            time.sleep(0.05)
        raise StackUnavailable(f'mark sent on {self.topic} but the recorder did not confirm it '
                               f'within {wait:g} s (it may be behind; see its log)')
