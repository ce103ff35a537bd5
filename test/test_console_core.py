"""The console's pure parts: parameter checks, near names, the status board, operator marks."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from data_recorder.bag.marks import MarkLog, encode, marks_between, parse_marks
from field_app.console.board import Board, Diag, level_of
from field_app.console.params import ParamInfo, check, from_descriptor, near, parse_assignments
from field_app.console.runner import Outcome, _rest, summary
from field_app.operator import MissionStep, StepResult

DURATION = ParamInfo('duration', 'double', 0.5, 60.0)
INFOS = {'duration': DURATION, 'steps': ParamInfo('steps', 'int', 1, 10),
         'label': ParamInfo('label', 'string'), 'fast': ParamInfo('fast', 'bool'),
         'use_sim_time': ParamInfo('use_sim_time', 'bool')}


def test_check_types_values_as_the_node_expects_and_names_every_problem() -> None:
    typed, problems = check({'duration': 4, 'steps': 3, 'label': 12, 'fast': True}, INFOS)
    assert typed == {'duration': 4.0, 'steps': 3, 'label': '12', 'fast': True}
    assert isinstance(typed['duration'], float) and problems == []
    _, problems = check({'duration': 400.0, 'steps': 2.5, 'fast': 'yes', 'durration': 1,
                         'use_sim_time': True}, INFOS)
    assert problems == [
        "parameter 'duration': 400 is out of range [0.5, 60]",
        "parameter 'steps': 2.5 is not a int",
        "parameter 'fast': 'yes' is not a bool",
        "unknown parameter 'durration' (did you mean: duration?)",
        "unknown parameter 'use_sim_time' (known: duration, fast, label, steps)"]  # not the skill's


def test_descriptors_and_assignments() -> None:
    rng = SimpleNamespace(from_value=0.5, to_value=60.0)
    d = SimpleNamespace(name='duration', type=3, floating_point_range=[rng], integer_range=[],
                        read_only=False, description='s')
    assert from_descriptor(d) == ParamInfo('duration', 'double', 0.5, 60.0, False, 's')
    assert parse_assignments(['duration=4', 'fast=true', 'label=left foot']) == {
        'duration': 4, 'fast': True, 'label': 'left foot'}
    with pytest.raises(ValueError, match='expected NAME=VALUE'):
        parse_assignments(['duration'])


def test_near_names_match_the_whole_name_or_the_skill_alone() -> None:
    names = ['reference_quadruped/stand_up', 'reference_quadruped/trot_in_place',
             'reference_quadruped/lie_down']
    assert near('reference_quadruped/stand_upp', names) == ['reference_quadruped/stand_up']
    assert near('lie_dwn', names) == ['reference_quadruped/lie_down']
    assert near('dance', names) == []


def _runtime(phase: str = 'active') -> list[Diag]:
    return [Diag('skills/p/walk', 0, phase, {'phase': phase, 'progress': '0.5', 'outcome': '',
                                             'reason': 'running'}),
            Diag('skill_runtime/safety_gate', 0, 'run', {'mode': 'run', 'owners': 'p/walk'})]


def test_board_shows_a_silent_node_as_gone_not_its_last_values_and_brings_it_back() -> None:
    board = Board(stale_after=3.0)
    board.on_runtime_status(_runtime(), now=10.0)
    board.on_diagnostics([Diag('data_recorder', 0, 'recording', {
        'state': 'recording', 'path': '/b', 'written': '100', 'queue': '3', 'lost_gaps': '2',
        'lost': '2', 'marks': '1'})], now=10.0, bag_bytes=1_000_000)
    board.on_diagnostics([Diag('data_recorder', 0, 'recording', {
        'state': 'recording', 'path': '/b', 'written': '600', 'queue': '3'})], now=11.0,
        bag_bytes=3_000_000)
    snap = board.snapshot(now=11.5)
    assert snap['nodes']['skill_runtime']['presence'] == 'up'
    assert snap['skills'][0]['progress'] == 0.5 and snap['gate']['owners'] == ['p/walk']
    assert snap['recorder']['rate_msgs_s'] == 500.0 and snap['recorder']['mb_s'] == 2.0
    assert snap['nodes']['health_monitor'] == {'presence': 'gone', 'why': 'never heard',
                                               'last_heard_s': None}
    later = board.snapshot(now=14.5)             # runtime silent 4.5 s, recorder 3.5 s
    assert later['nodes']['skill_runtime']['presence'] == 'gone'
    assert later['skills'] == [] and later['gate'] is None and later['recorder'] is None
    board.on_graph(['skill_runtime'])            # the recorder left the graph: gone sooner
    board.on_diagnostics([Diag('data_recorder', 0, 'recording', {'path': '/b'})], now=20.0)
    assert board.snapshot(now=21.0)['nodes']['data_recorder']['presence'] == 'up'
    assert board.snapshot(now=22.5)['nodes']['data_recorder']['why'].startswith('not on the ROS graph')
    board.on_runtime_status(_runtime('inactive'), now=30.0)
    assert board.snapshot(now=30.1)['skills'][0]['phase'] == 'inactive'


def test_board_health_rolls_up_per_subsystem_with_the_worst_leaves() -> None:
    board = Board(worst=2)
    board.on_agg([Diag('/robot', 2, '1 OK, 1 WARN, 1 ERROR'), Diag('/robot/legs', 2, ''),
                  Diag('/robot/legs/FL', 2, 'hot'), Diag('/robot/legs/FR', 1, 'warm'),
                  Diag('/robot/legs/RL', 0, 'ok'), Diag('/host', 0, '1 OK'), Diag('/host/cpu', 0, 'ok'),
                  Diag('/lifecycle', 1, ''), Diag('/lifecycle/data_recorder', 1, 'down', {
                      'state': 'unknown', 'phase': 'down', 'restarts': '2', 'retries': '1'})],
                 now=1.0)
    snap = board.snapshot(now=1.5)
    robot = next(s for s in snap['health']['subsystems'] if s['name'] == 'robot')
    assert [w['path'] for w in robot['worst']] == ['robot/legs/FL', 'robot/legs/FR']
    assert robot['leaves'] == 3 and snap['health']['level'] == 'ERROR'
    assert snap['lifecycle'] == [{'node': 'data_recorder', 'state': 'unknown', 'phase': 'down',
                                  'restarts': 2, 'retries': 1, 'level': 'WARN', 'message': 'down',
                                  'on_graph': None}]
    assert level_of(b'\x02') == 2 and level_of(1) == 1


def test_marks_round_trip_through_records_and_custom_data() -> None:
    log = MarkLog()
    m0 = log.add(encode('slipped', 'anomaly', 1_000, 'id-0', 'op@robot'), received_ns=2_000)
    m1 = log.add('plain text from ros2 topic pub', received_ns=5_000)
    assert (m0.stamp_ns, m0.kind, m0.id) == (1_000, 'anomaly', 'id-0')
    assert (m1.index, m1.stamp_ns, m1.kind) == (1, 5_000, 'note')
    assert log.diagnostics() == {'marks': '2', 'marks_recent': 'id-0'}
    with pytest.raises(ValueError, match='kind'):
        log.add(json.dumps({'text': 'x', 'kind': 'bogus'}), 1)
    with pytest.raises(ValueError, match='needs a text'):
        encode('  ', 'note', 1)
    far = log.add(json.dumps({'text': 'sim time', 'stamp_ns': 5}), received_ns=10**18)
    assert far.stamp_ns == 10**18                           # not the recorder's clock: arrival
    records = [('mark', m.record()) for m in log.marks] + [('episode', {'index': '0'})]
    from_records = parse_marks(records, {})
    from_custom = parse_marks([], log.custom_data())
    assert from_records == from_custom == sorted(log.marks, key=lambda m: m.stamp_ns)
    assert [m['text'] for m in marks_between(log.marks, 900, 6_000)] == ['slipped', 'plain text '
                                                                         'from ros2 topic pub']
    assert marks_between(log.marks, 900, 6_000)[0]['t'] == pytest.approx(1e-7)


def test_summary_counts_and_skipped_steps() -> None:
    steps = [MissionStep('p/a'), MissionStep('p/b'), MissionStep('p/c')]
    assert _rest(steps, 2, 1, 2) == [(1, 'p/c'), (2, 'p/a'), (2, 'p/b'), (2, 'p/c')]
    outcome = Outcome([(1, StepResult('p/a', 'done', '', 1.0)),
                       (1, StepResult('p/b', 'stopped', 'stop requested', 2.0))],
                      [(1, 'p/c')], True, 3.2)
    text = summary(outcome, 'mission m')
    assert not outcome.ok
    assert 'result: stopped by Ctrl-C after 3.2 s (1 done, 1 stopped, 1 skipped)' in text
    lost = Outcome([(1, StepResult('p/a', 'unknown', 'no answer', 5.0))], [(1, 'p/b')], False, 5.0,
                   error='service /skills/p/a/get_state not available after 5 s')
    assert 'result: the stack stopped answering (service /skills/p/a/get_state' in summary(lost, 'm')


def test_marks_reach_the_lerobot_episode_metadata(tmp_path) -> None:
    """A bag's marks (as the recorder leaves them in metadata.yaml) land in the meta/episodes row
    of the episode they fall in, as JSON in ``field_deploy/operator_marks``."""
    import pandas as pd
    import yaml

    from data_recorder.export.lerobot.dataset import export_lerobot
    from test_export_lerobot import EPISODES, MS, T0, write_bag

    bag = write_bag(tmp_path / 'bag', episodes=EPISODES)
    log = MarkLog()
    log.add(encode('slipped', 'anomaly', T0 + 500 * MS), T0 + 500 * MS)     # inside episode 0
    log.add(encode('cart in the way', 'disturbance', T0 + 1250 * MS), T0 + 1250 * MS)  # between
    meta = yaml.safe_load((bag / 'metadata.yaml').read_text())
    meta['rosbag2_bagfile_information']['custom_data'].update(log.custom_data())
    (bag / 'metadata.yaml').write_text(yaml.safe_dump(meta))
    export_lerobot([bag], tmp_path / 'ds')
    eps = pd.read_parquet(tmp_path / 'ds/meta/episodes/chunk-000/file-000.parquet')
    marks = [json.loads(v) for v in eps['field_deploy/operator_marks']]
    assert [[(m['kind'], m['text']) for m in ms] for ms in marks] == [[('anomaly', 'slipped')], []]
    assert marks[0][0]['t'] == pytest.approx(0.3)
