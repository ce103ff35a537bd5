"""Prometheus metrics: the exposition parsed with prometheus_client's own parser, from diagnostics
published by a real sim_robot process; scraped by a real Prometheus server where one is installed."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rclpy.node import Node

from field_deploy.profile import load_profile
from field_deploy.testing import wait_until
from fleet.local import Prometheus
from fleet.metrics import DiagnosticsMetrics, StatusView
from fleet.metrics_node import attach_metrics

pytestmark = pytest.mark.timeout(120)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def exposition(metrics: DiagnosticsMetrics) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return generate_latest(registry).decode()


def test_statuses_become_conventional_metrics_and_skill_runs_are_counted() -> None:
    m = DiagnosticsMetrics('r9')
    m.update([
        StatusView('robot/legs/FL_calf_joint', 1, 'hot', 'FL_calf_joint',
                   {'temperature': '71.5', 'current': '12', 'voltage': '24.1'}),
        StatusView('sensors/imu/stream', 0, 'ok', '', {'topic': '/imu', 'messages': '5000',
                                                      'rate (Hz)': '499.8'}),
        StatusView('lifecycle/data_recorder', 0, 'active', '', {'restarts': '2'}),
        StatusView('host/cpu', 0, '', '', {'percent': '55.0'}),
        StatusView('host/disk', 0, '', '', {'path': '/', 'free (GB)': '12.5'}),
        StatusView('data_recorder', 1, '', '', {'queue': '7', 'lost_sequence': '3', 'lost_gaps': '5',
                                                'received': '40', 'state': 'recording',
                                                '/imu': 'received=10 written=7 lost=1 lost_sequence=1 '
                                                        'lost_gaps=4 skipped_throttled=2 not_written=2'}),
    ])
    m.update([   # the health monitor's own names, and the aggregate's copies of leaves
        StatusView('health_monitor: lifecycle/skill_runtime', 0, '', '', {'restarts': '3'}),
        StatusView('/robot/legs/FL_calf_joint', 1, 'hot', 'FL_calf_joint', {'temperature': '71.5'}),
        StatusView('/lifecycle/skill_runtime', 0, '', '', {'restarts': '3'}),
    ])
    for outcome in ('', 'done', '', 'done', '', 'failed'):   # three runs: done, done, failed
        m.update([StatusView('skills/acme/wave', 0, '', 'acme', {'outcome': outcome})])
    text = exposition(m)
    series = [(x.name, tuple(sorted(x.labels.items())))
              for family in text_string_to_metric_families(text) for x in family.samples]
    assert len(series) == len(set(series)), 'a series twice: a real Prometheus refuses the scrape'
    s = samples(text)

    def value(name: str, **labels: str) -> float:
        return s[(name, tuple(sorted({'robot': 'r9', **labels}.items())))]
    assert value('field_deploy_component_temperature_celsius', component='FL_calf_joint') == 71.5
    assert value('field_deploy_component_voltage_volts', component='FL_calf_joint') == 24.1
    assert value('field_deploy_status_level', component='robot/legs/FL_calf_joint') == 1
    assert value('field_deploy_topic_rate_hertz', topic='/imu') == 499.8
    assert value('field_deploy_topic_messages_total', topic='/imu') == 5000
    assert value('field_deploy_lifecycle_restarts_total', node='data_recorder') == 2
    assert value('field_deploy_lifecycle_restarts_total', node='skill_runtime') == 3
    assert value('field_deploy_status_level', component='/robot/legs/FL_calf_joint') == 1
    assert value('field_deploy_host_cpu_percent') == 55.0
    assert value('field_deploy_disk_free_bytes', path='/') == 12.5e9
    assert value('field_deploy_recorder_queue_messages') == 7
    assert value('field_deploy_recorder_lost_messages_total', cause='sequence_gap', topic='') == 3
    assert value('field_deploy_recorder_lost_messages_total', cause='sequence_gap', topic='/imu') == 1
    assert value('field_deploy_recorder_messages_total', state='written', topic='/imu') == 7
    assert value('field_deploy_recorder_messages_total', state='received', topic='') == 40
    assert value('field_deploy_recorder_not_written_messages_total', cause='throttled', topic='/imu') == 2
    assert not any(k[0].startswith('field_deploy_recorder_lost') and ('cause', 'gaps') in k[1]
                   for k in s), 'the stamp rule is a second opinion, not exported as loss'
    runs = {k[1]: v for k, v in s.items() if k[0] == 'field_deploy_skill_runs_total'}
    assert runs == {(('outcome', 'done'), ('robot', 'r9'), ('skill', 'acme/wave')): 2,
                    (('outcome', 'failed'), ('robot', 'r9'), ('skill', 'acme/wave')): 1}


def test_a_real_robots_diagnostics_are_served(ros, spin, node_process) -> None:
    node_process('sim_robot', ['--ros-args', '-p', 'profile:=quadruped_12dof'])
    node = Node('metrics_host')
    server = attach_metrics(node, 0, 'sim1', address='127.0.0.1')
    spin(node)
    url = f'http://127.0.0.1:{server.port}/metrics'

    joints = set(load_profile('quadruped_12dof').joint_names)

    def temperatures() -> dict[str, float]:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return {dict(k[1])['component']: v for k, v in samples(text).items()
                if k[0] == 'field_deploy_component_temperature_celsius'}
    try:
        assert wait_until(lambda: joints <= set(temperatures()), 30.0, 0.2), temperatures()
        assert all(20.0 < temperatures()[j] < 120.0 for j in joints)
    finally:
        server.close()


@pytest.mark.skipif(not shutil.which('prometheus'), reason="no Prometheus server installed "
                    "(Debian's prometheus package; .ci/run installs it)")
def test_a_real_prometheus_server_scrapes_the_endpoint(ros, spin, node_process, tmp_path) -> None:
    node_process('sim_robot', ['--ros-args', '-p', 'profile:=quadruped_12dof'])
    node = Node('metrics_host_prom')
    server = attach_metrics(node, 0, 'sim1', address='127.0.0.1')
    spin(node)
    try:
        scraped_by_prometheus(server.port, tmp_path)
    finally:
        server.close()


def scraped_by_prometheus(target_port: int, folder: Path) -> None:
    """A real Prometheus server scrapes the endpoint; its query API returns our series."""
    server = Prometheus.start([f'127.0.0.1:{target_port}'], folder)
    assert server is not None
    try:
        assert wait_until(lambda: len(server.query('field_deploy_component_temperature_celsius')) >= 12,
                          60.0, 0.5), 'Prometheus did not scrape the 12 motors'
    finally:
        server.close()
