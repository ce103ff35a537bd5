"""Lifecycle manager and policy engine: pure logic behind small interfaces (no rclpy import).

The manager talks to the managed nodes through a :class:`LifecycleClient` (the node shell
implements it with lifecycle_msgs services) and starts dead processes through a
:class:`Spawner` (default :class:`health_monitor.spawner.PopenSpawner`), so the bring-up
order, the heartbeat, the back-off and the retry limit are tested with fakes. Processes the
bring-up started are found by their command line (:meth:`PopenSpawner.running`) and adopted
(:meth:`LifecycleManager.adopt`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from field_deploy.history import History
from health_monitor.config import LifecycleConfig, ManagedNode, PolicySpec
from health_monitor.core import ERROR, OK, WARN, Status

# lifecycle_msgs/msg/Transition ids and State labels (kept here: no rclpy import in the core).
CONFIGURE, CLEANUP, ACTIVATE, DEACTIVATE = 1, 2, 3, 4
EVENTS_MAX = 500  # LifecycleManager.events: the newest transitions and recoveries kept
TRANSITION_NAMES = {CONFIGURE: 'configure', CLEANUP: 'cleanup', ACTIVATE: 'activate',
                    DEACTIVATE: 'deactivate'}
TRANSITION_GOALS = {CONFIGURE: 'inactive', CLEANUP: 'unconfigured', ACTIVATE: 'active',
                    DEACTIVATE: 'inactive'}
"""The state each transition leaves a node in when it succeeds."""


class LifecycleClient(Protocol):
    def available(self, node: str) -> bool:
        """The node's ``get_state`` service is in the graph."""

    def get_state(self, node: str, timeout: float) -> str | None:
        """The state label (``unconfigured``, ``inactive``, ``active``, ``finalized`` …), or None."""

    def change_state(self, node: str, transition: int, timeout: float) -> bool:
        """Request a transition; True when the node reports success."""


class Spawner(Protocol):
    def start(self, name: str, argv: Sequence[str]) -> None: ...

    def alive(self, name: str) -> bool | None:
        """True/False for a process this spawner owns, None when it does not own one."""

    def stop(self, name: str, timeout: float = 5.0) -> None: ...

    def running(self, name: str, argv: Sequence[str]) -> list[int]:
        """PIDs of the live processes on this host running ``argv``: ours, or started elsewhere
        (the bring-up), which only the command line tells apart from other nodes."""

    def terminate(self, pid: int, timeout: float = 5.0) -> None:
        """Stop process ``pid`` (SIGINT, SIGKILL after ``timeout``), ours or not."""


@dataclass
class NodeRecord:
    """What the manager knows of one managed node."""

    spec: ManagedNode
    phase: str = 'unmanaged'   # unmanaged | active | down | failed | stopped
    state: str = 'unknown'
    retries: int = 0
    next_attempt: float = 0.0
    active_since: float = 0.0
    missed: int = 0
    answered_at: float = 0.0   # last heartbeat the node answered
    message: str = 'not started'
    restarts: int = 0
    spawned_at: float = -1e9


def backoff_delay(cfg: LifecycleConfig, attempt: int) -> float:
    """Delay before recovery attempt ``attempt`` (1-based): initial × factor^(n-1), capped."""
    return min(cfg.backoff_initial_s * cfg.backoff_factor ** max(0, attempt - 1),
               cfg.backoff_max_s)


class LifecycleManager:
    """Ordered bring-up, heartbeat and recovery of the managed nodes (call from one thread)."""

    def __init__(self, cfg: LifecycleConfig, client: LifecycleClient, spawner: Spawner, *,
                 log: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.cfg = cfg
        self.stopping = stopping
        """True once the monitor shuts down: a wait for a node ends and nothing more is started."""
        self.client = client
        self.spawner = spawner
        self.clock = clock
        self.sleep = sleep
        self.log = log or (lambda level, msg: print(f'[{level}] {msg}', file=sys.stderr))
        self.nodes = {n.name: NodeRecord(n) for n in cfg.nodes}
        self.events: History[tuple[float, str, str]] = History(EVENTS_MAX)
        """(time, node, what): the newest transitions and recoveries (all are in the log)."""

    # ------------------------------------------------------------------ primitives

    def _event(self, node: str, what: str) -> None:
        self.events.append((self.clock(), node, what))

    def _wait_available(self, rec: NodeRecord, timeout: float) -> bool:
        deadline = self.clock() + timeout
        while True:
            if self.client.available(rec.spec.name):
                return True
            if self.clock() >= deadline or self.stopping():
                return False
            self.sleep(0.05)

    def _wait_left_graph(self, rec: NodeRecord) -> bool:
        """Before a replacement starts, the node it replaces must be gone from the graph.

        A killed process's participant stays on every peer's graph until its lease runs out
        (20 s), and until then the peers' writers keep sending to its shared-memory ports:
        Fast DDS 2.14 then creates and deletes each such port (segment, lock files and the
        port's named mutex) on every sample. The new process takes the lowest free participant
        index, the dead one's, so it opens exactly those ports while that goes on; the deleted
        mutex no longer keeps the two apart, and the new process failed to lock its port
        (``Failed init_port … open_and_lock_file failed``) or was left deaf. Waiting here until
        the peers have dropped the dead participant (the manager's own view of the graph is one
        of them) means the new process finds its ports quiet. Bounded by ``leave_timeout_s``: a
        copy elsewhere that is not ours to stop must not keep the node down for ever. False when
        the monitor is shutting down meanwhile: then nothing is started."""
        name = rec.spec.name
        if not self.client.available(name):
            return not self.stopping()
        self.log('info', f'waiting for the old {name} to leave the graph (its DDS lease) '
                         f'before starting a new one')
        deadline = self.clock() + self.cfg.leave_timeout_s
        while self.client.available(name):
            if self.stopping():
                return False
            if self.clock() >= deadline:
                self.log('warn', f'/{name} still on the graph after {self.cfg.leave_timeout_s:g} s:'
                                 f' starting a new {name} anyway')
                return True
            self.sleep(0.2)
        self._event(name, 'left the graph')
        return not self.stopping()

    def _ensure_process(self, rec: NodeRecord, *, respawn: bool) -> bool:
        """The node is in the graph, starting (or restarting) its process when we can."""
        name = rec.spec.name
        if not respawn and self._wait_available(rec, self.cfg.discover_timeout_s):
            return True
        if not rec.spec.command:
            rec.message = (f'{name} is not running and has no command to start it '
                           f'(waited {self.cfg.discover_timeout_s:g} s for /{name}/get_state)')
            return False
        # Never a second copy of a node: a process already running its command (the bring-up's,
        # still importing on a loaded host, or hung) is waited for, then replaced.
        holders = self.spawner.running(name, rec.spec.command)
        if holders and not respawn and self._wait_available(rec, self.cfg.spawn_timeout_s):
            return True
        for pid in holders:
            self.log('warn', f'stopping {name} (pid {pid}) to replace it: {rec.message}')
            self.spawner.terminate(pid, rec.spec.stop_timeout)
            self._event(name, f'stopped pid {pid}')
        if not self._wait_left_graph(rec):
            rec.message = f'{name} not started: the monitor is shutting down'
            return False
        self.log('info', f'starting {name}: {" ".join(rec.spec.command)}')
        self.spawner.start(name, rec.spec.command)
        rec.spawned_at = self.clock()
        self._event(name, 'spawn')
        if not self._wait_available(rec, self.cfg.spawn_timeout_s):
            rec.message = (f'{name} started but /{name}/get_state did not appear within '
                           f'{self.cfg.spawn_timeout_s:g} s')
            return False
        return True

    def _transition(self, rec: NodeRecord, transition: int) -> bool:
        name = rec.spec.name
        ok = self.client.change_state(name, transition, self.cfg.transition_timeout_s)
        if not ok and self.client.get_state(name, 1.0) == TRANSITION_GOALS[transition]:
            # The transition was made but its answer was lost (a just-started node's response
            # writer had not matched our client yet): the node's state is the truth.
            self.log('info', f'{TRANSITION_NAMES[transition]} of {name}: no answer, but '
                             f'{name} is {TRANSITION_GOALS[transition]}')
            ok = True
        self._event(name, TRANSITION_NAMES[transition] + ('' if ok else ' FAILED'))
        if not ok:
            rec.message = f'{TRANSITION_NAMES[transition]} of {name} failed or timed out'
        return ok

    def _bring_to(self, rec: NodeRecord, target: str) -> bool:
        """Drive a reachable node from its current state to ``inactive`` or ``active``."""
        name = rec.spec.name
        state = self.client.get_state(name, self.cfg.transition_timeout_s)
        if state is None:
            rec.message = f'/{name}/get_state did not answer'
            return False
        rec.state = state
        if state == 'unconfigured':
            if not self._transition(rec, CONFIGURE):
                return False
            state = 'inactive'
        if state == 'inactive' and target == 'active':
            if not self._transition(rec, ACTIVATE):
                return False
            state = 'active'
        if state not in (target, 'active'):
            rec.message = f'{name} is {state}, cannot bring it to {target}'
            return False
        rec.state = state
        return True

    # ------------------------------------------------------------------ manual transitions

    def startup(self) -> tuple[bool, str]:
        """Configure every node in order, then activate every node in order (as nav2 does)."""
        ok = True
        for rec in self.nodes.values():
            if rec.phase == 'failed':
                continue
            if not (self._ensure_process(rec, respawn=False) and self._bring_to(rec, 'inactive')):
                self._down(rec, rec.message)
                ok = False
        for rec in self.nodes.values():
            if rec.phase in ('failed', 'down'):
                continue
            if self._bring_to(rec, 'active'):
                self._up(rec)
            else:
                self._down(rec, rec.message)
                ok = False
        return ok, self.summary()

    def adopt(self) -> tuple[bool, str]:
        """Take over nodes another manager brought up: record each one's state, change nothing.

        A health monitor restarted by the supervisor finds the stack running; re-configuring,
        re-activating or restarting the nodes would interrupt a skill or a recording for the
        monitor's own crash. An active node is watched from now on (heartbeat, recovery), and so
        is one on the graph that does not answer yet (busy, as the heartbeat sees it: hung only
        after ``unresponsive_timeout``); a node in another state is left in it (``~/startup``
        brings it up); a node that is not there at all is down and recovered with the usual
        back-off.
        """
        ok = True
        for rec in self.nodes.values():
            name = rec.spec.name
            if not self._wait_available(rec, self.cfg.discover_timeout_s):
                self._down(rec, f'{name} not found when adopting the stack')
                ok = False
                continue
            state = self.client.get_state(name, self.cfg.transition_timeout_s)
            if state is None:
                # On the graph but not answering: busy (a recorder behind its queue), as the
                # heartbeat treats it; it is hung only after unresponsive_timeout of silence.
                self._up(rec)
                rec.state = 'unknown'
                rec.message = 'active (adopted; not answering yet)'
                self._event(name, 'adopted busy')
                continue
            rec.state = state
            self._event(name, f'adopted {state}')
            if state == 'active':
                self._up(rec)
                rec.message = 'active (adopted)'
            else:
                rec.phase = 'stopped'
                rec.message = f'adopted in state {state}, left as it is (~/startup brings it up)'
        self.log('info', 'adopted the running stack: ' + self.summary())
        return ok, self.summary()

    def shutdown(self) -> tuple[bool, str]:
        """Deactivate then clean up every node in reverse order; heartbeats stop acting."""
        ok = True
        for rec in reversed(list(self.nodes.values())):
            rec.phase = 'stopped'
            state = self.client.get_state(rec.spec.name, self.cfg.transition_timeout_s)
            if state == 'active':
                ok &= self._transition(rec, DEACTIVATE)
                state = 'inactive'
            if state == 'inactive':
                ok &= self._transition(rec, CLEANUP)
            rec.state = self.client.get_state(rec.spec.name, 1.0) or 'unknown'
            rec.message = f'stopped by shutdown ({rec.state})'
        return ok, self.summary()

    def reset(self) -> tuple[bool, str]:
        """Forget given-up nodes and retry counts, then bring everything up again."""
        for rec in self.nodes.values():
            rec.retries = 0
            rec.phase = 'unmanaged'
        return self.startup()

    def restart(self, name: str) -> None:
        """Policy action: treat ``name`` as failed now (recovery with back-off follows)."""
        rec = self.nodes[name]
        self.spawner.stop(name, rec.spec.stop_timeout)
        self._down(rec, 'restart requested by a policy')

    # ------------------------------------------------------------------ heartbeat

    def _up(self, rec: NodeRecord) -> None:
        if rec.phase == 'down':
            rec.restarts += 1
            self.log('info', f'{rec.spec.name} is back (active) after {rec.retries} attempt(s)')
            self._event(rec.spec.name, 'recovered')
        rec.phase = 'active'
        rec.state = 'active'
        rec.missed = 0
        rec.active_since = rec.answered_at = self.clock()
        rec.message = 'active'

    def _down(self, rec: NodeRecord, why: str) -> None:
        if rec.phase != 'down':
            self.log('warn', f'{rec.spec.name} is down: {why}')
            self._event(rec.spec.name, 'down')
        rec.phase = 'down'
        rec.message = why
        rec.next_attempt = self.clock() + backoff_delay(self.cfg, rec.retries + 1)

    def heartbeat(self) -> None:
        """Poll each active node; recover the down ones whose back-off has run out."""
        now = self.clock()
        for rec in self.nodes.values():
            name = rec.spec.name
            if rec.phase == 'active':
                if self.spawner.alive(name) is False:
                    self._down(rec, f'process of {name} exited')
                    continue
                available = self.client.available(name)
                state = (self.client.get_state(name, min(1.0, self.cfg.transition_timeout_s))
                         if available else None)
                if state is None:
                    silent = now - rec.answered_at
                    if available and silent < self.cfg.unresponsive_timeout_s:
                        # On the graph but late: its executor is behind its queue (a recorder on
                        # a loaded host takes the request after seconds of messages). Busy, not
                        # gone: restarting it would lose what it is still catching up on.
                        continue
                    rec.missed += 1
                    if rec.missed >= self.cfg.missed_heartbeats:
                        why = (f'no answer for {silent:.1f} s' if available else 'gone from graph')
                        self._down(rec, f'{name} missed {rec.missed} heartbeats ({why})')
                    continue
                rec.missed = 0
                rec.answered_at = now
                rec.state = state
                if state != 'active':
                    self._down(rec, f'{name} fell to {state}')
                elif rec.retries and now - rec.active_since >= self.cfg.stable_after_s:
                    rec.retries = 0
            elif rec.phase == 'down' and now >= rec.next_attempt:
                self._recover(rec)

    def _recover(self, rec: NodeRecord) -> None:
        name = rec.spec.name
        if rec.retries >= self.cfg.max_retries:
            rec.phase = 'failed'
            rec.message = (f'gave up on {name} after {rec.retries} recovery attempts '
                           f'(last: {rec.message})')
            self.log('error', rec.message)
            self._event(name, 'gave up')
            return
        rec.retries += 1
        self._event(name, f'attempt {rec.retries}')
        available = self.client.available(name)
        state = self.client.get_state(name, 1.0) if available else None
        respawn = state is None or state == 'finalized'
        if respawn and self.spawner.alive(name):
            starting = self.clock() - rec.spawned_at
            if state is None and starting < self.cfg.spawn_timeout_s:
                # our process is still importing: wait for it rather than kill it half-started
                respawn = not self._wait_available(rec, self.cfg.spawn_timeout_s - starting)
            if respawn:
                self.spawner.stop(name, rec.spec.stop_timeout)
        if respawn and not self._ensure_process(rec, respawn=True):
            self._down(rec, rec.message)
            return
        if self._bring_to(rec, 'active'):
            self._up(rec)
        else:
            self._down(rec, rec.message)

    # ------------------------------------------------------------------ status

    def statuses(self) -> list[Status]:
        out = []
        for rec in self.nodes.values():
            level = {'active': OK, 'unmanaged': WARN, 'stopped': WARN, 'down': ERROR,
                     'failed': ERROR}[rec.phase]
            out.append(Status(f'lifecycle/{rec.spec.name}', level,
                              f'{rec.phase}: {rec.message}' if rec.phase != 'active' else 'active',
                              values={'state': rec.state, 'phase': rec.phase,
                                      'retries': str(rec.retries),
                                      'restarts': str(rec.restarts)}))
        return out

    def summary(self) -> str:
        return ', '.join(f'{r.spec.name}: {r.phase} ({r.state})' for r in self.nodes.values())


class PolicyEngine:
    """Edge-triggered policies: each (policy, path) fires once when it starts matching.

    It fires again only after the path has stopped matching (cleared), so a hot motor that
    stays hot stops the skills once, not at every status tick. A policy with a hold (``for:``)
    fires only when the match has lasted that long (:meth:`tick` checks the pending ones).
    """

    def __init__(self, policies: Sequence[PolicySpec]) -> None:
        self.policies = tuple(policies)
        self._active: set[tuple[str, str]] = set()
        self._pending: dict[tuple[str, str], tuple[float, PolicySpec]] = {}

    def evaluate(self, path: str, level: int, failing: dict[str, int], now: float = 0.0
                 ) -> list[tuple[PolicySpec, str]]:
        fired: list[tuple[PolicySpec, str]] = []
        for policy in self.policies:
            key = (policy.name, path)
            if policy.matches(path, level, failing):
                if key in self._active or key in self._pending:
                    continue
                if policy.hold_s > 0:
                    self._pending[key] = (now, policy)
                else:
                    self._active.add(key)
                    fired.append((policy, path))
            else:
                self._active.discard(key)
                self._pending.pop(key, None)
        return fired

    def tick(self, now: float) -> list[tuple[PolicySpec, str]]:
        fired = []
        for key, (since, policy) in list(self._pending.items()):
            if now - since >= policy.hold_s:
                del self._pending[key]
                self._active.add(key)
                fired.append((policy, key[1]))
        return fired

    def reset(self) -> None:
        self._active.clear()
        self._pending.clear()
