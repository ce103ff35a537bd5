"""``health_monitor`` node: thin ROS shell around the monitor cores, lifecycle manager and ledger.

Threads: the main executor runs /diagnostics, the timers (the check timer takes the robot
topics' raw samples in batches and reads an 8-byte stamp from each) and the services; a worker
thread (health_monitor.worker) does everything that waits on another node (lifecycle
transitions, heartbeats, policy service calls) through a private client node, whose answers an
executor takes on a thread of its own (health_monitor.lifecycle_ros), so a slow managed node
never stalls the monitors and a service handler can wait for the worker without deadlocking the
main executor.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_srvs.srv import Trigger

import health_monitor  # noqa: F401  (AMENT_PREFIX_PATH before rclpy)
from field_deploy.history import History
from field_deploy.ros import init, message_class, qos_profile, run_nodes
from fleet.metrics import StatusView
from health_monitor.config import HealthConfig, HealthConfigError, load_config
from health_monitor.core import (
    ERROR,
    LEVEL_NAMES,
    OK,
    STALE,
    Aggregator,
    ComponentHealth,
    HostMonitor,
    Status,
    ThresholdRule,
)
from health_monitor.evidence import CpuPressure, DeliveryGaps, Punctuality, monitor_status
from health_monitor.ledger import Ledger, LedgerError, load_components
from health_monitor.lifecycle_ros import RosLifecycleClient, managed_from_stack
from health_monitor.manager import LifecycleManager, PolicyEngine, Spawner
from health_monitor.polling import TopicPoller, own_host
from health_monitor.publishing import published_views, serve_metrics, status_arrays
from health_monitor.receiving import PressureFile, ReceiveThreads
from health_monitor.spawner import PopenSpawner
from health_monitor.topics import TopicMonitor
from health_monitor.worker import ManagerWorker
from health_monitor.writer_cpu import WriterProcesses

METRICS_PORT_ENV = 'FIELD_DEPLOY_METRICS_PORT'
DEFAULT_METRICS_PORT = 9464   # the Prometheus exporter port conventionally left to this kind of agent
POLICY_LOG_MAX = 200  # HealthNode.policy_log: the newest policy lines kept in memory
_DIAG_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


class HealthMonitor(Node):
    """The ``health_monitor`` node (a plain node: it is the one that manages the others)."""

    COALESCE_S = 2.0
    """One call of a service (snapshot, stop) serves every policy that fires within this time:
    four feet going silent together make one snapshot, not four."""
    SNAPSHOT_TIMEOUT_S = 20.0
    """A snapshot is evidence: worth waiting for a recorder that is behind (on its own thread)."""

    def __init__(self, *, spawner: Spawner | None = None, **kwargs: Any) -> None:
        super().__init__('health_monitor', **kwargs)
        profile = self.declare_parameter('profile', 'quadruped_12dof').value
        config = self.declare_parameter('config', '').value
        ledger_path = self.declare_parameter('ledger', '').value
        self.cfg: HealthConfig = load_config(config or None, profile)
        stack = self.declare_parameter('stack', '').value
        stack_args = self.declare_parameter('stack_args', Parameter.Type.STRING_ARRAY).value
        if stack:
            self.cfg = managed_from_stack(self.cfg, stack, list(stack_args or []))
        manage = self.declare_parameter('autostart', self.cfg.lifecycle.autostart).value
        adopt = self.declare_parameter('adopt', False).value
        self.prefix = f'{self.get_name()}: '
        cfg = self.cfg
        self._lock = threading.Lock()
        self.aggregator = Aggregator(cfg.stale_after_s, cfg.expected)
        self.monitors: dict[str, TopicMonitor] = {}
        self.components: dict[str, ComponentHealth] = {}
        self.levels: dict[str, int] = {}
        self._failing: dict[str, dict[str, int]] = {}
        self._last_call: dict[str, float] = {}
        self.own: dict[str, Status] = {}
        self._dirty = False
        self._last_immediate = 0.0

        self.ledger: Ledger | None = None
        lp = Path(ledger_path) if ledger_path else cfg.ledger_path
        if lp:
            self.ledger = Ledger(lp, cfg.flush_interval_s)
            if cfg.components_path is not None:
                self.ledger.load(load_components(cfg.components_path, cfg.joint_paths))
        self._ledger_paths: dict[str, str | None] = {}
        self._warn_temp = cfg.profile.motor_temperature.warn

        # The robot topics are polled (health_monitor.polling) on a node no executor spins.
        self._topics_node = Node('_health_monitor_topics', namespace=self.get_namespace(),
                                 context=self.context)
        polled = []
        self.delivery_gaps = DeliveryGaps()
        self.pressure, self._pressure_file = CpuPressure(), PressureFile()
        for watch in cfg.topics:
            mon = TopicMonitor(watch.name, watch.path, watch.limits, self.delivery_gaps,
                               self.pressure)
            self.monitors[watch.name] = mon
            if watch.name != '/diagnostics':  # fed by the deserialising callback below
                polled.append((watch, mon))
        self.writer_cpu = WriterProcesses()
        self.poller = TopicPoller(self._topics_node, polled, cfg.check_hz, self.writer_cpu,
                                  own_host(self, '/diagnostics'))
        self._checks = 0
        self.punctuality = Punctuality(1.0 / cfg.check_hz, cfg.check_late_s)
        self._last_check_start = -1.0
        self.receiving = ReceiveThreads()
        self._probed = False
        self._diag_monitor = self.monitors.get('/diagnostics')
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, _DIAG_QOS)
        for rule in cfg.topic_rules:
            comp = self.components.setdefault(rule.path, ComponentHealth(rule.path, []))
            comp.rules[rule.spec.name] = ThresholdRule(rule.spec, rule.path)
            self.create_subscription(message_class(rule.type), rule.topic,
                                     self._topic_rule_callback(rule, comp),
                                     qos_profile(cfg.profile.topic(rule.topic).qos))

        self.host = HostMonitor(cfg.host)
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', _DIAG_QOS)
        self.agg_pub = self.create_publisher(DiagnosticArray, '/diagnostics_agg', _DIAG_QOS)
        self.create_timer(1.0 / cfg.check_hz, self._check_stale)
        self.create_timer(0.2, self._evaluate_topics)
        self.create_timer(1.0 / cfg.publish_hz, self._publish)
        self.create_timer(1.0 / cfg.host_hz, self._sample_host)
        self.create_timer(1.0, self.poller.refresh_writers)
        port = int(os.environ.get(METRICS_PORT_ENV, DEFAULT_METRICS_PORT))
        self.metrics = serve_metrics(
            self, int(self.declare_parameter('metrics_port', port).value),
            str(self.declare_parameter('metrics_address', '0.0.0.0').value),
            self.get_logger().warning, self.get_logger().info)

        self.policies = PolicyEngine(cfg.policies)
        # the newest POLICY_LOG_MAX lines (each is also in the node's log) and the count of all
        self.policy_log: History[str] = History(POLICY_LOG_MAX)
        self._stop = threading.Event()
        self.spawner = spawner or PopenSpawner()
        self._client_node = Node('_health_monitor_client', namespace=self.get_namespace(),
                                 context=self.context)
        self.lifecycle = RosLifecycleClient(self._client_node)
        self.manager = LifecycleManager(cfg.lifecycle, self.lifecycle, self.spawner,
                                        log=self._log, stopping=self._stop.is_set)
        self.worker = ManagerWorker(self.manager, cfg.lifecycle.heartbeat_hz, self._stop,
                                    self.get_logger().error)
        for name in ('startup', 'shutdown', 'reset'):
            self.create_service(Trigger, f'~/{name}', self._manual(name))
        if adopt and cfg.lifecycle.nodes:   # restarted by the supervisor: the stack is running
            self.worker.submit(self.manager.adopt)
        elif manage and cfg.lifecycle.nodes:
            self.worker.submit(self.manager.startup)
        self.get_logger().info(
            f'watching {len(self.monitors)} topics of {cfg.profile.name}, {len(cfg.rules)} '
            f'/diagnostics rules, {len(cfg.policies)} policies; managing '
            f'{[n.name for n in cfg.lifecycle.nodes]}; ledger {lp}')

    # ------------------------------------------------------------------ hot path

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        external = [s for s in msg.status if not s.name.startswith(self.prefix)]
        if not external:
            return
        # The ledger integrates over sample time (header stamp), not arrival time: a publisher
        # that was starved and catches up in a burst still ran for the whole interval.
        stamp_s = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        sample_t = stamp_s if stamp_s > 0 else now
        if self._diag_monitor is not None:
            self._diag_monitor.on_message(now, time.time_ns(),
                                          msg.header.stamp.sec * 1_000_000_000
                                          + msg.header.stamp.nanosec)
        views = []
        for s in external:
            values = {kv.key: kv.value for kv in s.values}
            status = Status(s.name, int.from_bytes(s.level, 'little') if isinstance(
                s.level, bytes) else int(s.level), s.message, s.hardware_id, values)
            views.append(StatusView(s.name, status.level, s.message, s.hardware_id, values))
            joint_path = self.cfg.joint_path(s.name)
            if joint_path is None:
                path = self.cfg.status_path(s.name)
                status.name = path
                self._leaf(Status(path, status.level, status.message, status.hardware_id,
                                  values), now)
                continue
            comp = self.components.get(joint_path)
            if comp is None:
                rules = [r for r in self.cfg.rules if r.matches(s.name)]
                comp = self.components[joint_path] = ComponentHealth(joint_path, rules)
            comp.update(status, now)
            self._component_changed(comp, now)
            if self.ledger is not None:
                floats = {}
                for k in ('temperature', 'current', 'voltage', 'velocity', 'cycles'):
                    if k in values:
                        with contextlib.suppress(ValueError):
                            floats[k] = float(values[k])
                cid = self._ledger_component(joint_path)
                if cid:
                    self.ledger.observe(cid, sample_t, floats, self._warn_temp)
        if self.metrics is not None:
            self.metrics.metrics.update(views)
        self._maybe_publish_now()

    def _topic_rule_callback(self, rule: Any, comp: ComponentHealth) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            now = time.monotonic()
            value = float(getattr(msg, rule.field)) * rule.scale
            comp.update_value(rule.spec.name, value, now)
            self._component_changed(comp, now)
            if self.ledger is not None:
                cid = self._ledger_component(comp.path)
                if cid:
                    values = {}
                    for k in ('voltage', 'current', 'temperature'):
                        v = getattr(msg, k, None)
                        if isinstance(v, float) and v == v:
                            values[k] = abs(v) if k == 'current' else v
                    self.ledger.observe(cid, now, values)
            self._maybe_publish_now()
        return callback

    # ------------------------------------------------------------------ evaluation

    def _ledger_component(self, path: str) -> str | None:
        if self.ledger is None:
            return None
        if path not in self._ledger_paths:
            parts = path.strip('/').split('/')
            found = None
            for depth in range(len(parts), 0, -1):
                found = self.ledger.component_for_path('/'.join(parts[:depth]))
                if found:
                    break
            self._ledger_paths[path] = found
        return self._ledger_paths[path]

    def _component_changed(self, comp: ComponentHealth, now: float) -> None:
        before = dict(getattr(comp, '_recorded', {}))
        failing = comp.failing
        if self.ledger is not None and failing != before:
            cid = self._ledger_component(comp.path)
            if cid:
                for rule, level in failing.items():
                    if before.get(rule, 0) < level:
                        self.ledger.fault(cid, LEVEL_NAMES[level], rule,
                                          comp.rules[rule].status().message)
                for rule in before:
                    if rule not in failing:
                        self.ledger.clear_fault(cid, rule)
        comp._recorded = failing  # type: ignore[attr-defined]
        self._leaf(comp.status(), now, failing)

    def _leaf(self, status: Status, now: float, failing: dict[str, int] | None = None) -> None:
        """Record one of our leaves; on a level change run the policies and publish at once."""
        failing = failing or {}
        with self._lock:
            self.own[status.name] = status
            self.aggregator.update(status, now)
            old = self.levels.get(status.name)
            self.levels[status.name] = status.level
            old_failing = self._failing.get(status.name, {})
            self._failing[status.name] = failing
        if old != status.level or old_failing != failing:
            # (a rule reaching ERROR under a leaf the driver already put at ERROR is news too)
            if old != status.level and (old is not None or status.level != OK):
                self._dirty = True
            # A stream never seen is not a stream lost: STALE-from-start fires no policy.
            level = OK if (old is None and status.level == STALE) else status.level
            for policy, path in self.policies.evaluate(status.name, level, failing, now):
                self._fire(policy, path, status)

    def _check_stale(self) -> None:
        """Fast path at ``check_rate``: take the waiting messages, then the silence test only.

        Each topic's silence is known up to its take (``TopicMonitor.looked_at``), not up to
        whenever a status is computed; the check measures its own lateness once it has taken:
        the time a late check (a starved process) was not looking is left out of every silence
        (health_monitor.topics.Punctuality), and so is the time this process's receive threads
        had samples in hand (health_monitor.receiving). The host's CPU pressure is sampled at
        every check: the time tasks waited for a CPU during a silence stretches its hold
        (health_monitor.evidence.CpuPressure).
        """
        start = time.monotonic()
        if self._diag_monitor is not None:
            # fed by the executor's callbacks, which it has served since the previous check
            self._diag_monitor.looked_at = self._last_check_start
        self._last_check_start = start
        self.poller.drain()
        now = time.monotonic()
        stalled = self._pressure_file.total_s()
        if stalled is not None:
            self.pressure.record(now, stalled)
        # the check's lateness is measured once it has looked: a check starved in the middle of
        # its takes was as blind as one whose timer fired late
        previous = self.punctuality.last
        self.punctuality.check(now)
        blind = self.punctuality.blind_since
        # While a stream is half-way to STALE, the receive threads are probed at every check:
        # busy (samples in hand, or starved) or waiting for a CPU since the previous check =
        # not looking either; and its publishers' CPU waits are sampled, so the decision reads
        # them up to now (all publishers every 10th check: the waits before a silence).
        half_way = [mon.topic for mon in self.monitors.values() if mon.flowing
                    and mon.silence(now, blind) > 0.5 * mon.limits.stale_raise_s]
        self._checks += 1
        self.writer_cpu.sample(now, None if self._checks % 10 == 0 else half_way)
        probing = previous >= 0 and bool(half_way)
        if probing:
            stretch = self.receiving.blind(previous, now, consecutive=self._probed)
            if stretch is not None:
                # what was written before the newest sample just taken had been delivered
                # (one port, in order): blind from then on only
                self.punctuality.add_blind(max(stretch[0], self.poller.written_up_to), stretch[1])
        self._probed = probing
        for mon in self.monitors.values():
            stale = mon.stale(now, blind)
            known = self.levels.get(mon.path)
            if (stale and known != STALE and (mon.flowing or known is None)) or (
                    not stale and known == STALE):
                self._leaf(mon.status(now, blind), now)
        for policy, path in self.policies.tick(now):
            with self._lock:
                status = self.own.get(path)
            if status is not None:
                self._fire(policy, path, status)
        self._maybe_publish_now()
        if self.ledger is not None:
            self.ledger.maybe_flush(now)

    def _evaluate_topics(self) -> None:
        now = time.monotonic()
        for mon in self.monitors.values():
            status = mon.status(now, self.punctuality.blind_since)
            self._leaf(status, now)
            if status.level < STALE and self.ledger is not None:
                cid = self._ledger_component(mon.path)
                if cid and not cid.endswith('_joint'):
                    self.ledger.observe(cid, now, {})
        for status in self.worker.statuses:
            self._leaf(status, now)
        self._leaf(monitor_status(now, self.punctuality, self.delivery_gaps, self.pressure,
                                  self.receiving.busy_checks), now)
        self._maybe_publish_now()

    def _sample_host(self) -> None:
        now = time.monotonic()
        for status in self.host.sample(now):
            self._leaf(status, now)
        if self.ledger is not None:
            cid = self._ledger_component('host')
            if cid:
                self.ledger.observe(cid, now, {})

    # ------------------------------------------------------------------ policies

    def _fire(self, policy: Any, path: str, status: Status) -> None:
        text = (f'policy {policy.name}: {path} is {LEVEL_NAMES[status.level]} '
                f'({status.message}) -> {", ".join(policy.actions)}')
        self.get_logger().warning(text)
        self.policy_log.append(text)
        for action in policy.actions:
            if action == 'mark_degraded':
                comp = self.components.get(path)
                if comp is not None:
                    comp.degraded = policy.name
                if self.ledger is not None:
                    cid = self._ledger_component(path)
                    if cid:
                        self.ledger.mark_degraded(cid, f'{policy.name} at {time.strftime("%FT%T")}')
            elif action in ('stop_skills', 'estop', 'snapshot'):
                service = self.cfg.services[action]
                now = time.monotonic()
                if now - self._last_call.get(service, -1e9) < self.COALESCE_S:
                    self.policy_log.append(f'policy {policy.name}: {service} already called '
                                           f'within {self.COALESCE_S:g} s, not repeated')
                    continue
                self._last_call[service] = now
                if action == 'snapshot':
                    # evidence may wait for a busy recorder (it answered after 6-9 s at load 16-20),
                    # but never in the job queue: a stop or e-stop queued behind it must not wait
                    threading.Thread(target=self._call_trigger, name='policy-snapshot', daemon=True,
                                     args=(service, policy.name, self.SNAPSHOT_TIMEOUT_S)).start()
                    continue
                self.worker.submit(lambda s=service, p=policy.name: self._call_trigger(s, p))
            elif action == 'restart':
                self.worker.submit(lambda n=policy.restart: self.manager.restart(n))

    def _call_trigger(self, service: str, policy: str, timeout: float = 2.0) -> None:
        ok, message = self.lifecycle.trigger(service, timeout)
        text = f'policy {policy}: {service} -> {"ok" if ok else "FAILED"}: {message}'
        self.policy_log.append(text)
        self._log('info' if ok else 'error', text)
        now = time.monotonic()
        self._leaf(Status('health/policies', OK if ok else ERROR, text,
                          values={'last': text, 'fired': str(self.policy_log.total)}), now)

    # ------------------------------------------------------------------ worker / manager

    def _log(self, level: str, message: str) -> None:
        # rclpy refuses one call site logging at several severities: one call per level
        if level == 'error':
            self.get_logger().error(message)
        elif level == 'warn':
            self.get_logger().warning(message)
        else:
            self.get_logger().info(message)

    def _manual(self, name: str) -> Callable[[Any, Any], Any]:
        job = {'startup': self.manager.startup, 'shutdown': self.manager.shutdown,
               'reset': self._reset}[name]

        def handler(_request: Any, response: Any) -> Any:
            finished, result = self.worker.call(job, 120.0)
            if not finished:
                response.success, response.message = False, f'{name} still running after 120 s'
                return response
            ok, message = result
            response.success, response.message = bool(ok), f'{name}: {message}'
            return response
        return handler

    def _reset(self) -> tuple[bool, str]:
        self.policies.reset()
        for comp in self.components.values():
            comp.degraded = ''
        if self.ledger is not None:
            self.ledger.clear_degraded()
        return self.manager.reset()

    # ------------------------------------------------------------------ output

    def _maybe_publish_now(self) -> None:
        if self._dirty and time.monotonic() - self._last_immediate > 0.02:
            self._last_immediate = time.monotonic()
            self._publish()

    def _publish(self) -> None:
        self._dirty = False
        now = time.monotonic()
        with self._lock:
            own = [s for s in self.own.values() if not s.name.startswith('robot/other/')]
            agg = self.aggregator.aggregate(now)
        mine, out = status_arrays(own, agg, self.get_clock().now().nanoseconds, self.prefix,
                                  self.get_name())
        self.diag_pub.publish(mine)
        self.agg_pub.publish(out)
        if self.metrics is not None:
            self.metrics.metrics.update(published_views(own, agg, self.prefix, self.get_name()))

    def close(self) -> None:
        """Stop the worker, the processes we started, and flush the ledger."""
        self.worker.stop(10.0)
        if isinstance(self.spawner, PopenSpawner):
            # the nodes we (re)started, last started first, each with its stack's stop_timeout
            for spec in reversed(self.manager.cfg.nodes):
                self.spawner.stop(spec.name, spec.stop_timeout)
            self.spawner.stop_all()
        if self.ledger is not None:
            self.ledger.close()
        self.lifecycle.close()
        self._client_node.destroy_node()
        self.poller.close()
        self._topics_node.destroy_node()
        self._pressure_file.close()
        if self.metrics is not None:
            self.metrics.close()


def main(args: list[str] | None = None) -> int:
    init(args if args is not None else sys.argv, small_segment=True)   # diagnostics and events
    try:
        node = HealthMonitor()
    except (HealthConfigError, LedgerError, ValueError, KeyError) as exc:
        print(f'health_monitor: error: {exc}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    run_nodes([node], on_shutdown=node.close)
    return 0



if __name__ == '__main__':
    sys.exit(main())
