"""End to end: the whole stack as real processes over real DDS, driven like an operator would.

`field_deploy up` starts sim_robot, data_recorder, skill_runtime and health_monitor as separate
processes; the health monitor's lifecycle manager configures and activates them; the test drives
skills through their lifecycle services, kills a node, injects a fault and stops the stack with
SIGTERM — then reads the bag back with this project's reader and with `rosbags`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from rclpy.node import Node

from field_app.operator import MissionStep, Operator
from field_deploy.profile import load_profile
from field_deploy.testing import NodeProcess, executable, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]


def child_pid(up: NodeProcess, name: str) -> int | None:
    for proc in psutil.Process(up.pid).children(recursive=True):
        try:
            if any(part.endswith(f'/{name}') for part in proc.cmdline()[:2]):
                return proc.pid
        except psutil.NoSuchProcess:
            continue
    return None


def read_bag(bag_dir: Path) -> dict[str, int]:
    from rosbags.highlevel import AnyReader

    from data_recorder.bag.reader import Bag

    ours = {name: topic.count for name, topic in Bag(bag_dir).topics.items()}
    # rosbags' msgcount comes from our own metadata.yaml: count what it reads and decodes instead.
    with AnyReader([bag_dir]) as reader:
        theirs = {c.topic: 0 for c in reader.connections}
        for connection, _stamp, raw in reader.messages():
            reader.deserialize(raw, connection.msgtype)
            theirs[connection.topic] += 1
    assert ours == theirs
    return ours


@pytest.fixture
def stack(tmp_path: Path, node_process, ros) -> tuple[NodeProcess, Operator, Path]:
    bag_dir = tmp_path / 'bag'
    # HOME: the component ledger's default place is per user; keep the test's to itself.
    up = node_process('field_deploy', ['up', '--robot', 'quadruped_12dof', '--bag-dir', str(bag_dir)],
                      env={'HOME': str(tmp_path)})
    from field_deploy.ros import Spinner

    node = Node(f'e2e_operator_{int(time.time() * 1000) % 100000}')
    operator = Operator(node)
    spinner = Spinner([node]).start()
    try:
        for name in ('sim_robot', 'data_recorder', 'skill_runtime'):
            assert operator.wait_state(f'/{name}', 'active', timeout=90.0), \
                f'{name} not active:\n{up.log()[-3000:]}'
        yield up, operator, bag_dir
    finally:
        spinner.stop()
        node.destroy_node()


def scrape_metrics(up: NodeProcess) -> dict[tuple[str, str], float]:
    """(metric, main label) -> value from the stack's metrics endpoint (its port from the log)."""
    import re
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    found = re.search(r'metrics on http://[\d.]+:(\d+)/metrics', up.log())
    assert found, 'the health monitor serves no metrics:\n' + up.log()[-2000:]
    text = urllib.request.urlopen(f'http://127.0.0.1:{found.group(1)}/metrics', timeout=10).read()
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = sample.labels
            key = labels.get('node') or labels.get('component') or labels.get('topic') or ''
            if 'skill' in labels:
                key = f'{labels["skill"]} {labels["outcome"]}'
            out[(sample.name, key)] = sample.value
    return out


def kill_and_see_it_back(up: NodeProcess, operator: Operator, name: str) -> None:
    """kill -9 one node of the stack; the lifecycle manager must start it again and activate it."""
    victim = child_pid(up, name)
    assert victim is not None, up.log()[-2000:]
    psutil.Process(victim).kill()
    assert wait_until(lambda: child_pid(up, name) not in (None, victim), 60.0), up.log()[-3000:]
    assert operator.wait_state(f'/{name}', 'active', timeout=90.0), up.log()[-3000:]


def test_bringup_mission_restarts_and_sigterm_leave_readable_bags(stack) -> None:
    up, operator, bag_dir = stack
    result = operator.run_skill(MissionStep('reference_quadruped/stand_up'), timeout=60.0)
    assert result.outcome == 'done', result

    # A managed node killed like an OOM kill is brought back by the lifecycle manager.
    kill_and_see_it_back(up, operator, 'skill_runtime')
    # ... and the fleet sees it: the health monitor's Prometheus endpoint, parsed by its own parser.
    restarts = ('field_deploy_lifecycle_restarts_total', 'skill_runtime')
    assert wait_until(lambda: scrape_metrics(up).get(restarts, 0) >= 1, 15.0), scrape_metrics(up)
    metrics = scrape_metrics(up)
    assert metrics[('field_deploy_skill_runs_total', 'reference_quadruped/stand_up done')] >= 1, metrics
    hot = {key for name, key in metrics if name == 'field_deploy_component_temperature_celsius'}
    assert set(load_profile('quadruped_12dof').joint_names) <= hot, hot   # every motor (and more)

    # The recorder killed mid-recording: its cut bag is recovered in place and the restarted
    # recorder goes on in <bag>_2 (a bag is never overwritten).
    time.sleep(1.5)                                      # past the 1 s flush: chunks on disk
    kill_and_see_it_back(up, operator, 'data_recorder')
    # rebuilt by the restarted recorder's child process, while the new recording runs
    assert wait_until(lambda: (bag_dir / 'metadata.yaml').is_file(), 60.0), up.log()[-3000:]
    cut = read_bag(bag_dir)                              # recovered: every reader opens it
    assert cut['/joint_states'] > 500, cut
    assert wait_until(lambda: 'recovered' in up.log(), 10.0), up.log()[-3000:]   # the child's line
    assert f'recording into {bag_dir}_2' in up.log(), up.log()[-3000:]

    result = operator.run_skill(MissionStep('reference_quadruped/lie_down'), timeout=60.0)
    assert result.outcome == 'done', result

    assert up.stop(signal.SIGTERM, timeout=60.0) == 0, up.log()[-3000:]
    counts = read_bag(bag_dir.with_name(f'{bag_dir.name}_2'))
    assert counts['/joint_states'] > 500 and counts['/joint_commands'] > 100
    info = yaml.safe_load((bag_dir.with_name(f'{bag_dir.name}_2') / 'metadata.yaml').read_text())[
        'rosbag2_bagfile_information']
    assert info['message_count'] == sum(counts.values())
    log = up.log()
    for name in ('sim_robot', 'data_recorder', 'skill_runtime', 'health_monitor', 'bag_uploader',
                 'live_view'):
        assert f'[{name}' in log  # every node's output streamed with its name in front


def test_fault_to_evidence_overheat_stops_the_skill_keeps_the_bag_and_writes_the_ledger(
        stack, tmp_path: Path) -> None:
    """Motor over-temperature injected in sim_robot → health policy → skill stopped, recorder
    snapshot (the full recording holds the seconds before the fault), component ledger entry."""
    up, operator, bag_dir = stack
    assert operator.run_skill(MissionStep('reference_quadruped/stand_up'), timeout=60.0).outcome == 'done'
    trot = 'reference_quadruped/trot_in_place'
    operator.set_parameters(f'/skills/{trot}', {'duration': 40.0})
    assert operator.change_state(f'/skills/{trot}', 'configure')
    assert operator.change_state(f'/skills/{trot}', 'activate')
    time.sleep(2.0)                                  # seconds of normal work before the fault
    fault_ns = time.time_ns()
    operator.set_parameters('/sim_robot', {'fault_overheat_rate': 40.0,
                                           'fault_overheat': 'FL_calf_joint'})
    assert wait_until(lambda: operator.get_state(f'/skills/{trot}', timeout=10.0) != 'active', 30.0), \
        up.log()[-3000:]
    status = operator._final_status(trot)
    assert status.get('outcome') == 'stopped', status
    assert wait_until(lambda: any(level == 'ERROR' and 'FL_calf_joint' in name
                                  for _, name, level, _ in operator.leaf_events()), 10.0)
    # The policy's actions run in order: stop the skills, then the recorder's snapshot.
    assert wait_until(lambda: '/data_recorder/snapshot -> ok' in up.log(), 20.0), up.log()[-3000:]
    assert 'policy motor_over_temperature' in up.log()
    assert up.stop(signal.SIGTERM, timeout=60.0) == 0, up.log()[-3000:]

    from data_recorder.bag.reader import Bag

    bag = Bag(bag_dir)
    before = [m.log_time_ns for m in bag.messages(['/joint_states'], end_ns=fault_ns)]
    assert before and (fault_ns - before[0]) / 1e9 > 2.0    # the evidence before the fault is kept
    hot = [m for m in bag.messages(['/diagnostics'], start_ns=fault_ns) if b'FL_calf_joint' in m.data]
    assert hot, 'the over-temperature statuses are in the bag'

    import sqlite3

    (ledger,) = (tmp_path / '.field_deploy' / 'health').glob('*')
    with sqlite3.connect(ledger) as db:
        faults = db.execute('SELECT component, level, rule FROM faults').fetchall()
    assert any('FL_calf' in component and level == 'ERROR' for component, level, _ in faults), faults


def test_bringup_fails_with_the_reason_when_a_node_cannot_start(tmp_path: Path) -> None:
    stack = tmp_path / 'bad_stack.yaml'
    stack.write_text(yaml.safe_dump({'name': 'bad', 'nodes': [
        {'name': 'sim_robot', 'executable': 'sim_robot', 'parameters': {'profile': 'no_such_robot'}}]}))
    done = subprocess.run([executable('field_deploy'), 'up', '--stack', str(stack), '--no-record'],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert 'sim_robot exited with code' in done.stderr
    assert 'no_such_robot' in done.stderr


def test_demo_runs_the_mission_records_episodes_and_loses_nothing(tmp_path: Path) -> None:
    """The README's first command: the mission's skills all done, one episode per skill in the
    bag, and zero messages lost - the figure the operator reads being the bag's own accounting."""
    import json
    import re

    out = tmp_path / 'run'
    done = subprocess.run([executable('field_deploy'), 'demo', '--out', str(out)],
                          capture_output=True, text=True, timeout=300)
    text = done.stdout + done.stderr
    assert 'field_deploy demo summary' in text, text[-4000:]
    for skill in ('stand_up', 'trot_in_place', 'lie_down'):
        assert re.search(rf'reference_quadruped/{skill} +done ', text), text[-4000:]
    from data_recorder.bag.reader import Bag

    bag = Bag(out / 'bag')
    assert [e.name.split('/')[-1] for e in bag.episodes][:3] == ['stand_up', 'trot_in_place', 'lie_down'], \
        bag.episodes
    assert [e.fields.get('outcome') for e in bag.episodes][:3] == ['done', 'done', 'done']
    totals = json.loads(bag.custom_data['data_recorder.totals'])
    assert int(re.search(r'messages lost: (\d+)', text).group(1)) == totals['lost'] == 0, text[-4000:]
    assert totals['received'] == totals['written'] > 30_000, totals
    assert done.returncode == 0, text[-4000:]
    log = (out / 'stack.log').read_text()
    assert 're-subscribing' not in log, log[-3000:]   # no QoS flapping, not even at shutdown


if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-v']))
