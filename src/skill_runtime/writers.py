"""Who else writes ``joint_commands``: the decision behind the runtime's foreign-writer alarm.

Pure (no rclpy). The gate is the only writer the design allows; any other publisher on the
topic — a vendor's own rclpy node, a stray teleop, a second runtime — is reported as ERROR on
``/diagnostics`` (status ``skill_runtime/foreign_writer``) while it exists, and the shipped
health policy e-stops the robot on it. Writers are told apart by their endpoint gid, not by
node name: a pack can name its node ``skill_runtime`` too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

OK, ERROR = 0, 2
STATUS_NAME = 'skill_runtime/foreign_writer'
UNKNOWN = '_NODE_NAME_UNKNOWN_'
"""rmw's node name for an endpoint discovered before its node's ROS discovery info."""


@dataclass(frozen=True)
class Writer:
    """One publisher endpoint on the watched topic, as the ROS graph reports it."""

    node: str
    namespace: str
    gid: str
    """The endpoint gid in hex (unique per publisher)."""

    @property
    def known(self) -> bool:
        """False for an endpoint whose ROS node DDS has not told us yet (or a bare DDS writer)."""
        return not self.node.startswith(UNKNOWN)

    @property
    def fqn(self) -> str:
        ns = self.namespace.rstrip('/')
        return f'{ns}/{self.node}' if ns.startswith('/') else f'/{self.node}'

    def describe(self) -> str:
        if not self.known:
            return f'a DDS writer with no ROS node known (yet), gid {self.gid}'
        return f'{self.fqn} (node {self.node}, namespace {self.namespace})'


@dataclass(frozen=True)
class WriterStatus:
    """What to publish: a DiagnosticStatus's level, message and key-values."""

    level: int
    message: str
    values: dict[str, str]


def foreign_writers(writers: Iterable[Writer], own_gids: Iterable[str]) -> list[Writer]:
    """Every writer that is not one of ours, ordered by node name (stable messages). A writer
    whose node is not known yet counts at once (the alarm must not wait for DDS's node info); the
    status names it when its node is known (a change, so published at once)."""
    own = set(own_gids)
    return sorted((w for w in writers if w.gid not in own), key=lambda w: (w.fqn, w.gid))


class WriterWatch:
    """Turns graph samples into statuses: at once on a change, else every ``repeat_s``.

    The repeat keeps the status fresh for the health monitor's aggregator (which marks a leaf
    STALE after 5 s without an update) and lets a late subscriber see the alarm.
    """

    def __init__(self, topic: str, own_gids: Iterable[str], repeat_s: float = 1.0) -> None:
        self.topic = topic
        self.own_gids = frozenset(own_gids)
        self.repeat_s = repeat_s
        self.foreign: tuple[Writer, ...] = ()
        self._last_sent = -1e18
        self._sent_any = False

    def update(self, writers: Iterable[Writer], now: float) -> WriterStatus | None:
        """The status to publish now, or None when nothing changed and it is not yet due."""
        foreign = tuple(foreign_writers(writers, self.own_gids))
        changed = foreign != self.foreign or not self._sent_any
        self.foreign = foreign
        if not changed and now - self._last_sent < self.repeat_s:
            return None
        self._last_sent = now
        self._sent_any = True
        return self.status()

    def status(self) -> WriterStatus:
        values = {'topic': self.topic, 'own_writers': str(len(self.own_gids)),
                  'foreign_writers': str(len(self.foreign))}
        if not self.foreign:
            return WriterStatus(OK, f'the safety gate is the only writer on {self.topic}', values)
        for i, w in enumerate(self.foreign):
            values[f'writer_{i}'] = f'node {w.node} namespace {w.namespace} gid {w.gid}'
        names = ', '.join(w.describe() for w in self.foreign)
        count = len(self.foreign)
        return WriterStatus(ERROR, f'{count} foreign writer{"s" if count > 1 else ""} on {self.topic}: '
                                   f'{names}', values)
