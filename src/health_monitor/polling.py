"""The robot topics, polled: raw subscriptions no executor serves, taken at the check rate.

DDS keeps the newest sample(s) in each reader and :meth:`TopicPoller.drain` takes them when the
monitor checks. The message info of each take gives the middleware's reception time (staleness
and lag without the check period's blur) and the writer's publication sequence number (how many
were published since that writer's previous sample), so a 1 kHz stream costs at most check-rate
takes, not a thousand executor dispatches and Python callbacks. Only 8 stamp bytes are read
from a sample (and, for a JointState watched for frozen joints, the position doubles).

A topic the graph shows with several publishers gets a reader deep enough to take every
sample; each sample is taken with its writer's gid (:mod:`field_deploy.writer_take`: rcl's take,
rclpy's message info has none), so every writer's numbers are counted apart exactly
(:class:`field_deploy.sequence.GidTracker`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from rclpy.node import Node

from field_deploy.ros import message_class, polled_subscription, qos_profile
from field_deploy.sequence import GidTracker
from field_deploy.writer_take import WriterTake
from health_monitor.config_topics import TopicWatch
from health_monitor.topics import FreezeWatch, TopicMonitor, joint_state_positions
from health_monitor.writer_cpu import EPROSIMA, WriterProcesses, local_pid

_STAMP = struct.Struct('<iI')


def own_host(node: Node, topic: str) -> Callable[[], bytes | None]:
    """The DDS host id of ``node``'s process, read from its own writer on ``topic`` once the
    graph lists it (None until then, or when the middleware is not Fast DDS)."""
    found: list[bytes] = []

    def host() -> bytes | None:
        if not found:
            for info in node.get_publishers_info_by_topic(topic):
                gid = bytes(info.endpoint_gid)
                if ((info.node_name, info.node_namespace) == (node.get_name(),
                                                              node.get_namespace())
                        and gid[:2] == EPROSIMA):
                    found.append(gid[2:4])
                    break
        return found[0] if found else None
    return host


@dataclasses.dataclass
class _Polled:
    watch: TopicWatch
    monitor: TopicMonitor
    sub: Any
    take: WriterTake
    depth: int = 1
    freeze: FreezeWatch | None = None
    takes: int = 0


class TopicPoller:
    """Polled subscriptions of the watched topics on ``node`` (a node no executor spins)."""

    REMATCH_S = 1.0
    """Time a re-created reader gets to be matched to the writers before silence counts."""

    def __init__(self, node: Node, watches: list[tuple[TopicWatch, TopicMonitor]],
                 check_hz: float, writer_cpu: WriterProcesses | None = None,
                 own_host: Callable[[], bytes | None] = lambda: None) -> None:
        self.node = node
        self.check_hz = check_hz
        self.writer_cpu = writer_cpu
        """Each topic's publishing processes (by their writers' GUIDs), refreshed with the graph."""
        self.own_host = own_host
        self.written_up_to = -1.0
        """Monotonic time at which the newest sample taken by the latest :meth:`drain` was
        written (its DDS source timestamp; -1: none). The receive path delivers one port's
        samples in order, so every sample written before it had been delivered too."""
        self.entries: list[_Polled] = []
        for watch, mon in watches:
            mon.writer_cpu = writer_cpu
            freeze = (FreezeWatch(watch.limits.freeze_after_s)
                      if watch.limits.freeze_after_s > 0 and watch.type.endswith('/JointState')
                      else None)
            mon.sequence = GidTracker()
            sub = self._subscribe(watch, 1)
            self.entries.append(_Polled(watch, mon, sub, WriterTake(sub), 1, freeze))

    def _subscribe(self, watch: TopicWatch, depth: int) -> Any:
        # Best effort whatever the writer offers: a reliable reader holds every sample behind
        # one it missed until the writer has repaired it (heartbeat, NACK, resend: threads of
        # two processes, seconds on a loaded host), a silence of the stream that is not one.
        # The sequence numbers still count every publication, taken or not.
        qos = dataclasses.replace(watch.qos, depth=depth, reliability='best_effort')
        return polled_subscription(self.node, message_class(watch.type), watch.name,
                                   qos_profile(qos))

    def refresh_writers(self) -> None:
        """Follow the graph's publisher count per topic (call at ~1 Hz).

        With one publisher a depth-1 reader suffices (the sequence number counts what was not
        taken); with several, the reader keeps every sample published between two checks.
        """
        host = self.own_host() if self.writer_cpu is not None else None
        pids = [int(d) for d in os.listdir('/proc') if d.isdigit()] if host else []
        for entry in self.entries:
            infos = self.node.get_publishers_info_by_topic(entry.watch.name)
            if self.writer_cpu is not None:
                self.writer_cpu.set_writers(entry.watch.name, [
                    local_pid(bytes(i.endpoint_gid), host, pids) for i in infos])
            count = max(1, len(infos))
            entry.monitor.sequence.set_writers(count)
            want = 1 if count == 1 else math.ceil(2 * count * entry.watch.limits.rate_hz
                                                  / self.check_hz) + 4
            if want != entry.depth:
                # the new reader is matched to the writers again (discovery): no silence is
                # counted for the time that takes
                new = self._subscribe(entry.watch, want)
                entry.take.close()               # before rcl frees the old subscription
                self.node.destroy_subscription(entry.sub)
                entry.sub, entry.take, entry.depth = new, WriterTake(new), want
                entry.monitor.watch_from = time.monotonic() + self.REMATCH_S

    def drain(self) -> None:
        """Take what waits in every reader and feed the topic monitors."""
        mono, wall = time.monotonic(), time.time_ns()
        mono_minus_wall = mono - wall * 1e-9
        unpack = _STAMP.unpack_from
        newest = 0
        for entry in self.entries:
            mon, stamped, freeze = entry.monitor, entry.watch.stamped, entry.freeze
            # the look: what the reader holds now is all the monitor knows up to now
            mon.looked_at = time.monotonic()
            take = entry.take.take
            while (taken := take()) is not None:
                entry.takes += 1
                data, seq, gid, source, rx = taken
                rx = rx or wall
                rx_mono = rx * 1e-9 + mono_minus_wall
                stamp = None
                if stamped:
                    sec, nanosec = unpack(data, 4)
                    stamp = sec * 1_000_000_000 + nanosec
                if source > newest:
                    newest = source
                mon.on_message(rx_mono, rx, stamp, seq=seq, source_wall_ns=source or None,
                               gid=gid)
                if freeze is not None:
                    try:
                        names, positions_at = joint_state_positions(data)
                    except (ValueError, struct.error, UnicodeDecodeError):
                        continue
                    freeze.observe(names, data, positions_at, rx_mono, mon.frozen)
        self.written_up_to = newest * 1e-9 + mono_minus_wall if newest else -1.0

    def close(self) -> None:
        """Free the takes' buffers (before the node's subscriptions are destroyed)."""
        for entry in self.entries:
            entry.take.close()
