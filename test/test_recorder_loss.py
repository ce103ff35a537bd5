"""The recorder's loss figures against an independent count, over real DDS.

Separate publisher processes (``field_deploy.numbered``) number every message; the recorder
(``bag record``, its own process) is stalled with SIGSTOP for longer than the writers' history,
so samples are really lost on the way. The bag is read with ``rosbags``; ``published - found``
is the loss nobody can argue with, and the recorder's reported ``lost`` (metadata.yaml and its
close line) must match it within 1 % - and be exactly 0 when nothing is missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from data_recorder.bag import metadata as md
from field_deploy.numbered import numbers_in_bag
from field_deploy.testing import wait_until

TOPIC = f'/numbered_{os.getpid()}'
"""One topic name per test run: a writer of another run that shares the DDS domain cannot join."""


def _start_recorder(bag: Path, depth: int, log: Path, extra: Sequence[str] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, '-m', 'data_recorder.record_cli', 'record', '-o', str(bag), TOPIC,
         '--qos-depth', str(depth), *extra],
        stdout=log.open('wb'), stderr=subprocess.STDOUT, start_new_session=True)


def _start_writer(tmp: Path, writer: str, args: list[str]) -> tuple[subprocess.Popen, Path]:
    out = tmp / f'{writer}.json'
    if 'best_effort' not in args and '--linger' not in args:
        # a reliable writer stays until the recorder acknowledged its last samples: a writer gone
        # with its tail unacknowledged (a recorder still catching up after the stall, at load 38)
        # leaves a hole no later number reveals - the documented limit, not what is tested here
        args = [*args, '--linger', '30']
    proc = subprocess.Popen(
        [sys.executable, '-m', 'field_deploy.numbered', '--topic', TOPIC, '--writer', writer,
         '--out', str(out), *args],
        stdout=(tmp / f'{writer}.log').open('wb'), stderr=subprocess.STDOUT)
    return proc, out


def record_numbered(tmp: Path, writers: dict[str, list[str]], *, stall_s: float = 0.0,
                    stall_after_s: float = 0.5, depth: int = 1000,
                    recorder_args: Sequence[str] = ()) -> dict:
    """Record ``writers`` (id -> numbered-publisher flags); optionally SIGSTOP the recorder for
    ``stall_s`` once every writer published for ``stall_after_s``. Returns the figures."""
    bag, log = tmp / 'bag', tmp / 'record.log'
    recorder = _start_recorder(bag, depth, log, recorder_args)
    procs = {}
    try:
        procs = {w: _start_writer(tmp, w, args) for w, args in writers.items()}
        if stall_s:       # once every writer matched the recorder and published a while
            assert wait_until(lambda: all(
                f'publishing {w}' in (tmp / f'{w}.log').read_text(errors='replace')
                for w in writers), 60), log.read_text()
            time.sleep(stall_after_s)
            os.kill(recorder.pid, signal.SIGSTOP)
            time.sleep(stall_s)
            os.kill(recorder.pid, signal.SIGCONT)
        for w, (proc, _out) in procs.items():
            assert proc.wait(120) == 0, (tmp / f'{w}.log').read_text()
        recorder.send_signal(signal.SIGINT)
        assert recorder.wait(60) == 0, log.read_text()
    finally:
        os.kill(recorder.pid, signal.SIGCONT) if recorder.poll() is None else None
        for proc, _out in procs.values():
            if proc.poll() is None:
                proc.kill()
        if recorder.poll() is None:
            recorder.kill()
    reports = {w: json.loads(out.read_text()) for w, (_proc, out) in procs.items()}
    assert all(r['unmatched_waits'] == 0 for r in reports.values()), reports
    found = numbers_in_bag(bag, TOPIC)
    published = sum(r['published'] for r in reports.values())
    # A reliable writer whose tail the recorder never acknowledged, though the writer lingered
    # 30 s for it: the transport stopped delivering that writer's samples to the recorder after
    # the stall (Fast DDS 2.14 after a stopped reader's shared-memory port was regenerated: about
    # 1 run in 24 here, docs/data_recorder.md). What came after its last received sample is a
    # hole no later number reveals - the documented limit; it is reported, and left out of the
    # comparison. Every hole before that sample still counts.
    unheard = {w: set(range(max(found.get(w, {-1}), default=-1) + 1, r['published']))
               for w, r in reports.items() if not r['acked']}
    missing = sum(len(set(range(r['published'])) - found.get(w, set()) - unheard.get(w, set()))
                  for w, r in reports.items())
    if unheard:
        print(f'writers whose tail was never acknowledged: '
              f'{ {w: len(tail) for w, tail in unheard.items()} } samples left out')
    custom = md.load(bag)['custom_data']
    accounting = json.loads(custom['data_recorder.accounting'])[TOPIC]
    output = log.read_text(errors='replace')
    close = re.search(rf'{re.escape(str(bag))}: (\d+) messages received, (\d+) written.*?, '
                      r'(\d+) lost', output)
    assert close, output[-3000:]
    return {'published': published - sum(map(len, unheard.values())), 'missing': missing,
            'unheard': {w: len(tail) for w, tail in unheard.items()},
            'accounting': accounting, 'found': found,
            'close_lost': int(close.group(3)), 'summary': custom['data_recorder.loss_summary'],
            'output': output, 'reports': reports}


def assert_loss_matches(fig: dict) -> None:
    acc, missing = fig['accounting'], fig['missing']
    detail = {k: acc[k] for k in ('received', 'written', 'lost', 'lost_sequence', 'lost_start', 'lost_queue',
                                  'lost_tail', 'lost_gaps', 'not_written')}
    detail.update(published=fig['published'], missing=missing, writers=acc['writers'])
    assert fig['close_lost'] == acc['lost'], (fig['summary'], fig['output'][-2000:])
    assert acc['written'] == fig['published'] - missing, detail
    if missing == 0:
        assert acc['lost'] == 0, detail
    else:
        assert abs(acc['lost'] - missing) <= 0.01 * missing, detail


def test_nothing_missing_reports_exactly_zero_periodic_and_aperiodic(tmp_path: Path) -> None:
    # reliable, deep histories on both sides (5 s): nothing is lost unless the host stalls longer
    fig = record_numbered(tmp_path, {
        'periodic': ['--rate', '400', '--count', '1200', '--depth', '2000'],
        'aperiodic': ['--rate', '150', '--count', '450', '--aperiodic', '--seed', '3',
                      '--depth', '2000'],
    }, depth=2000)
    assert fig['missing'] == 0 and not fig['unheard'], {**fig, 'output': fig['output'][-2000:]}
    assert fig['accounting']['lost'] == 0 == fig['close_lost'], (
        json.dumps(fig['accounting'], sort_keys=True), fig['output'][-3000:])
    assert fig['accounting']['received'] == fig['published'] == 1650
    assert len(fig['accounting']['writers']) == 2                 # two runs of numbers found
    assert fig['summary'] == '1650 messages received, 1650 written, 0 lost'


@pytest.mark.parametrize('reliability', ['reliable', 'best_effort'])
def test_stalled_reader_loses_and_counts_exactly_periodic(tmp_path: Path, reliability: str) -> None:
    # writer history 10 samples (25 ms at 400 Hz), reader history 20, the recorder stopped 1.5 s
    fig = record_numbered(tmp_path, {
        'w': ['--rate', '400', '--count', '1600', '--depth', '10', '--reliability', reliability]},
        stall_s=1.5, depth=20)
    assert fig['missing'] > 50, fig['accounting']                 # the stall really lost samples
    assert_loss_matches(fig)


def test_stalled_reader_aperiodic_best_effort_counted_from_sequence_only(tmp_path: Path) -> None:
    fig = record_numbered(tmp_path, {
        'w': ['--rate', '300', '--count', '1200', '--aperiodic', '--seed', '5', '--depth', '10',
              '--reliability', 'best_effort']}, stall_s=1.5, depth=20)
    assert fig['missing'] > 50, fig['accounting']
    assert_loss_matches(fig)
    assert fig['accounting']['lost_gaps'] == 0          # no period: stamps could not have told


def test_restarting_writer_is_a_new_writer_not_a_loss(tmp_path: Path) -> None:
    # a new DDS writer every 600 messages (2 s): the recorder stalls inside the first one's life
    # (a writer that starts while the recorder is stopped is a documented limit: its numbers
    # before the first one received are not counted - see docs/data_recorder.md)
    fig = record_numbered(tmp_path, {
        'restarts': ['--rate', '300', '--count', '1800', '--depth', '10', '--restart-every', '600'],
    }, stall_s=0.8, stall_after_s=0.2, depth=20)
    assert fig['reports']['restarts']['writers'] == 3             # 3 DDS writers (new gids)
    assert fig['missing'] > 50, fig['accounting']
    assert_loss_matches(fig)
    assert [w['first'] for w in fig['accounting']['writers']] == [1, 1, 1]


def test_two_writers_on_one_topic_counted_apart(tmp_path: Path) -> None:
    fig = record_numbered(tmp_path, {
        'a': ['--rate', '300', '--count', '1200', '--depth', '10'],
        'b': ['--rate', '200', '--count', '800', '--depth', '10', '--aperiodic', '--seed', '9'],
    }, stall_s=1.5, stall_after_s=0.5, depth=20)
    assert fig['missing'] > 50, fig['accounting']
    assert_loss_matches(fig)
    assert len(fig['accounting']['writers']) == 2


def test_writers_taken_with_their_gid_are_each_counted_exactly(tmp_path: Path) -> None:
    """``--per-writer``: every sample comes with its writer's gid (rcl's take, not rclpy's), so
    each writer's run is its own - what it received and lost, per writer, equals what that
    writer's numbers in the bag say. Three writers on close numbers (started together), two
    of them periodic, one aperiodic, all losing samples in one stall: by sequence numbers alone
    a post-stall sample can join the other writer's run (the totals stay, the split not)."""
    fig = record_numbered(tmp_path, {
        'a': ['--rate', '300', '--count', '1200', '--depth', '10'],
        'b': ['--rate', '300', '--count', '1200', '--depth', '10'],
        'c': ['--rate', '200', '--count', '800', '--depth', '10', '--aperiodic', '--seed', '4'],
    }, stall_s=1.5, stall_after_s=0.5, depth=20, recorder_args=['--per-writer', TOPIC])
    assert 'per writer gid' in fig['output'], fig['output'][-2000:]
    assert fig['missing'] > 50, fig['accounting']
    assert_loss_matches(fig)
    writers = fig['accounting']['writers']
    assert len({w['name'] for w in writers}) == 3, writers          # three gids
    # per writer: (received, lost after its first received) from the bag's own numbers
    expected = []
    for w, report in fig['reports'].items():
        numbers = fig['found'][w]
        first = min(numbers)
        unheard = fig['unheard'].get(w, 0)
        expected.append((len(numbers), report['published'] - unheard - first - len(numbers)))
    got = [(w['received'], w['lost']) for w in writers]
    assert sorted(got) == sorted(expected), (got, expected)


def test_throttled_messages_are_counted_as_throttled_never_as_lost(tmp_path: Path) -> None:
    fig = record_numbered(tmp_path, {'w0': ['--count', '600', '--rate', '200', '--depth', '1000']},
                          recorder_args=['--throttle', f'{TOPIC}:20'])
    acc = fig['accounting']
    assert acc['lost'] == 0 and fig['close_lost'] == 0, fig['summary']
    assert acc['skipped_throttled'] == acc['received'] - acc['written'] > acc['written'], acc
    assert acc['not_written'] == acc['skipped_throttled']
    assert len(fig['found'].get('w0', set())) == acc['written']       # what the bag holds
    assert f'throttled {acc["skipped_throttled"]}' in fig['summary'], fig['summary']



_EVENTS = '''
import sys, time
import rclpy
from rclpy.parameter import Parameter
rclpy.init()
node = rclpy.create_node(sys.argv[1])
node.declare_parameter('x', 0)              # (an event the recorder may not have matched yet)
end = time.time() + 30
while node.count_subscribers('/parameter_events') < 1 and time.time() < end:
    time.sleep(0.05)                       # the recorder's reader is on the graph
time.sleep(float(sys.argv[2]))             # staggered
for i in range(1, 6):
    node.set_parameters([Parameter('x', value=i)])
    time.sleep(0.1)
time.sleep(3.0)                            # the recorder acknowledges the last events
node.destroy_node()
rclpy.shutdown()
'''


def test_parameter_events_are_counted_per_node_the_message_names(tmp_path: Path) -> None:
    """``/parameter_events``: one writer per node, each numbering its few events from 1. The
    recorder keys them by the node each event names (issue 20: false holes by number alone);
    each node's events in the bag (read by rosbags) are its run's, and none is lost."""
    from rosbags.highlevel import AnyReader

    bag, log = tmp_path / 'bag', tmp_path / 'record.log'
    recorder = subprocess.Popen(
        [sys.executable, '-m', 'data_recorder.record_cli', 'record', '-o', str(bag),
         '/parameter_events'], stdout=log.open('wb'), stderr=subprocess.STDOUT,
        start_new_session=True)
    names = [f'pe_{os.getpid()}_{i}' for i in range(4)]
    try:
        assert wait_until(lambda: 'recording /parameter_events' in log.read_text(), 60), \
            log.read_text()
        nodes = [subprocess.Popen([sys.executable, '-c', _EVENTS, name, str(0.2 * i)])
                 for i, name in enumerate(names)]
        assert all(p.wait(60) == 0 for p in nodes)
        recorder.send_signal(signal.SIGINT)
        assert recorder.wait(60) == 0, log.read_text()
    finally:
        if recorder.poll() is None:
            recorder.kill()
    in_bag: dict[str, int] = {}
    with AnyReader([bag]) as reader:
        for conn, _t, raw in reader.messages():
            node = reader.deserialize(raw, conn.msgtype).node.lstrip('/')
            in_bag[node] = in_bag.get(node, 0) + 1
    acc = json.loads(md.load(bag)['custom_data']['data_recorder.accounting'])['/parameter_events']
    assert acc['lost'] == 0, acc
    runs: dict[str, int] = {}
    for run in acc['writers']:
        runs[run['name'].lstrip('/')] = runs.get(run['name'].lstrip('/'), 0) + run['received']
    assert set(names) <= set(runs), acc['writers']
    # each node's events in the bag are its run's (how many were sent after the match is the
    # host's timing: not checked)
    assert all(in_bag[n] == runs[n] >= 1 for n in names), (in_bag, acc['writers'])
