"""Prometheus metrics of one robot, made from the diagnostics the stack already publishes. Pure.

Every node of the stack already says how it is on standard topics: the health monitor's statuses
(topic rates, components, host, lifecycle) and the recorder's on ``/diagnostics``, the aggregate on
``/diagnostics_agg``, the skill runtime's on ``/skill_runtime/status``. :class:`DiagnosticsMetrics`
keeps the latest status of each name (a bounded map: one entry per status name) and turns it into
metric families only when Prometheus scrapes — nothing is computed per message.

Names follow Prometheus conventions: ``field_deploy_`` prefix, base units in the name, ``_total``
for counters, labels ``robot``, ``topic``, ``component``, ``cause``, ``outcome``, ``node``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

#: Component key-values with a unit: key -> (metric name, help).
COMPONENT_VALUES = {
    'temperature': ('field_deploy_component_temperature_celsius', 'component temperature (motor, '
                    'battery, …)'),
    'current': ('field_deploy_component_current_amperes', 'component current'),
    'voltage': ('field_deploy_component_voltage_volts', 'component supply voltage'),
}
_PAIR = re.compile(r'(\w+)=(\d+)')
#: The recorder's counters (data_recorder.capture.accounting) -> the ``cause`` label.
LOST_CAUSES = {'lost_sequence': 'sequence_gap', 'lost_start': 'writer_start', 'lost_tail': 'tail',
               'lost_queue': 'queue_overflow'}
NOT_WRITTEN_CAUSES = {'lost_queue': 'queue_overflow', 'skipped_paused': 'paused',
                      'skipped_stopped': 'stopped', 'skipped_snapshot': 'snapshot',
                      'skipped_throttled': 'throttled'}


@dataclass
class StatusView:
    """The parts of a diagnostic_msgs/DiagnosticStatus the metrics use (no ROS types here)."""

    name: str
    level: int
    message: str = ''
    hardware_id: str = ''
    values: dict[str, str] = field(default_factory=dict)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, '') else None
    except ValueError:
        return None


class DiagnosticsMetrics:
    """Latest statuses by name -> Prometheus metric families (a ``prometheus_client`` collector)."""

    def __init__(self, robot: str) -> None:
        self.robot = robot
        self._lock = threading.Lock()
        self._latest: dict[str, StatusView] = {}
        self._skill_outcome: dict[str, str] = {}
        self._skill_runs: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------ input
    def update(self, statuses: Iterable[StatusView]) -> None:
        with self._lock:
            for st in statuses:
                # diagnostic_updater's "<node>: <name>" (the health monitor's own statuses)
                if ': ' in st.name and not st.name.startswith('/'):
                    st = StatusView(st.name.split(': ', 1)[1], st.level, st.message, st.hardware_id,
                                    st.values)
                self._latest[st.name] = st
                if st.name.startswith('skills/'):
                    self._count_skill_run(st)

    def _count_skill_run(self, st: StatusView) -> None:
        """A run ends when a skill's outcome goes from '' (running or configured) to a value."""
        outcome = st.values.get('outcome', '')
        before = self._skill_outcome.get(st.name)
        self._skill_outcome[st.name] = outcome
        if outcome and before == '':
            key = (st.name[len('skills/'):], outcome)
            self._skill_runs[key] = self._skill_runs.get(key, 0) + 1

    # ------------------------------------------------------------------ output
    def describe(self) -> list[Metric]:
        return []   # unchecked collector: families depend on what the robot publishes

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            latest = list(self._latest.values())
            runs = dict(self._skill_runs)
        robot = self.robot
        level = GaugeMetricFamily('field_deploy_status_level', 'diagnostic level: 0 OK, 1 WARN, '
                                  '2 ERROR, 3 STALE', labels=['robot', 'component'])
        rate = GaugeMetricFamily('field_deploy_topic_rate_hertz', 'measured message rate',
                                 labels=['robot', 'topic'])
        seen = CounterMetricFamily('field_deploy_topic_messages', 'messages seen by the health monitor',
                                   labels=['robot', 'topic'])
        values = {key: GaugeMetricFamily(name, text, labels=['robot', 'component'])
                  for key, (name, text) in COMPONENT_VALUES.items()}
        restarts = CounterMetricFamily('field_deploy_lifecycle_restarts', 'restarts of a managed node',
                                       labels=['robot', 'node'])
        host = {'host/cpu': GaugeMetricFamily('field_deploy_host_cpu_percent', 'host CPU use',
                                              labels=['robot']),
                'host/memory': GaugeMetricFamily('field_deploy_host_memory_percent', 'host memory use',
                                                 labels=['robot'])}
        disk = GaugeMetricFamily('field_deploy_disk_free_bytes', 'free space on the recording volume',
                                 labels=['robot', 'path'])
        battery = GaugeMetricFamily('field_deploy_battery_fraction', 'battery charge 0..1',
                                    labels=['robot', 'component'])
        recorder = self._recorder_families(latest)
        for st in latest:
            level.add_metric([robot, st.name], st.level)
            if st.name.startswith('/'):
                continue   # an aggregate's copy (/diagnostics_agg): its values are the leaf's own
            v = st.values
            if 'topic' in v and _float(v.get('rate (Hz)')) is not None:
                rate.add_metric([robot, v['topic']], _float(v['rate (Hz)']))
            if 'topic' in v and _float(v.get('messages')) is not None:
                seen.add_metric([robot, v['topic']], _float(v['messages']))
            for key, family in values.items():
                if _float(v.get(key)) is not None:
                    family.add_metric([robot, st.hardware_id or st.name], _float(v[key]))
            if st.name.startswith('lifecycle/') and _float(v.get('restarts')) is not None:
                restarts.add_metric([robot, st.name.split('/', 1)[1]], _float(v['restarts']))
            if st.name in host and _float(v.get('percent')) is not None:
                host[st.name].add_metric([robot], _float(v['percent']))
            if _float(v.get('free (GB)')) is not None:
                disk.add_metric([robot, v.get('path', '')], _float(v['free (GB)']) * 1e9)
            if _float(v.get('fraction')) is not None:
                battery.add_metric([robot, st.name], _float(v['fraction']))
        skill_runs = CounterMetricFamily('field_deploy_skill_runs', 'skill runs by outcome',
                                         labels=['robot', 'skill', 'outcome'])
        for (skill, outcome), n in sorted(runs.items()):
            skill_runs.add_metric([robot, skill, outcome], n)
        yield from (level, rate, seen, *values.values(), restarts, *host.values(), disk, battery,
                    skill_runs, *recorder)

    def _recorder_families(self, latest: list[StatusView]) -> list[Metric]:
        """The recorder's counts (its ``/diagnostics`` status, name ``data_recorder``): totals as
        key-values, and per topic a value ``received=N written=N lost=N lost_sequence=N …``
        (:func:`data_recorder.capture.accounting.topic_line`). Lost is by cause (DDS sequence gaps, a
        stream's tail, queue overflow); received-but-not-written by its own cause (paused,
        stopped, snapshot, throttled). The stamp rule and the rmw event are second opinions: not
        exported as loss."""
        robot = self.robot
        messages = CounterMetricFamily('field_deploy_recorder_messages', 'messages by what became of '
                                       'them', labels=['robot', 'topic', 'state'])
        lost = CounterMetricFamily('field_deploy_recorder_lost_messages', 'messages lost, by cause',
                                   labels=['robot', 'topic', 'cause'])
        skipped = CounterMetricFamily('field_deploy_recorder_not_written_messages', 'messages '
                                      'received and not written, by cause', labels=['robot', 'topic',
                                                                                    'cause'])
        queue = GaugeMetricFamily('field_deploy_recorder_queue_messages', 'messages waiting for the '
                                  'writer', labels=['robot'])
        for st in latest:
            if st.name != 'data_recorder':
                continue
            for key, text in st.values.items():
                if key.startswith('/'):
                    self._recorder_counts(key, dict(_PAIR.findall(text)), messages, lost, skipped)
                elif key == 'queue' and _float(text) is not None:
                    queue.add_metric([robot], _float(text))
            totals = {k: v for k, v in st.values.items() if not k.startswith('/') and v.isdigit()}
            self._recorder_counts('', totals, messages, lost, skipped)
        return [messages, lost, skipped, queue]

    def _recorder_counts(self, topic: str, counts: dict[str, str], messages: Metric, lost: Metric,
                         skipped: Metric) -> None:
        robot = self.robot
        for state in ('received', 'written', 'not_written'):
            if state in counts:
                messages.add_metric([robot, topic, state], float(counts[state]))
        for key, cause in LOST_CAUSES.items():
            if key in counts:
                lost.add_metric([robot, topic, cause], float(counts[key]))
        for key, cause in NOT_WRITTEN_CAUSES.items():
            if key in counts:
                skipped.add_metric([robot, topic, cause], float(counts[key]))
