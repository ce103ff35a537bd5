"""The operator's console end to end: every command as a real ``field_deploy`` process against a
real stack (sim_robot, skill_runtime, data_recorder, health_monitor as processes, real DDS).

One stack for the module (it takes tens of seconds to start on a loaded host). The test watches
the robot from its own node, not through the console: ``/joint_commands`` (the gate's mode in
``frame_id``) and ``/skill_runtime/status``; the marks are read back with ``rosbags`` and foxglove's
``mcap``. The health monitor runs unmanaged (``autostart:=false``): it aggregates, but does not
restart the recorder this module stops and starts itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import JointState

from field_deploy.rosenv import config_dir
from field_deploy.testing import NodeProcess, executable, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TROT = 'reference_quadruped/trot_in_place'
STAND = 'reference_quadruped/stand_up'


#: The CLI's answers wait this long here (its default 5 s: a service of the stack did not answer
#: within it at load 37); a test of the timeout itself passes --timeout.
SLOW_HOST = {'FIELD_DEPLOY_TIMEOUT': '30'}


def cli(*args: str, timeout: float = 180.0, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([executable('field_deploy'), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **SLOW_HOST, **(env or {})})


def spawn(*args: str, stderr: Path | None = None) -> subprocess.Popen[str]:
    """A console command left running; its stdout is the test's to read, its stderr a pipe for
    ``communicate`` or, for a command that runs while the test reads only stdout, a file (a
    pipe nobody reads fills and blocks the writer)."""
    return subprocess.Popen([executable('field_deploy'), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if stderr is None else stderr.open('w'),
                            text=True, env={**os.environ, **SLOW_HOST})


class Robot:
    """What the test sees of the robot with its own subscriptions."""

    def __init__(self, node: Node) -> None:
        self.lock = threading.Lock()
        self.skills: dict[str, dict[str, str]] = {}
        self.gate: dict[str, str] = {}
        self.commands: list[tuple[float, str, tuple[float, ...]]] = []
        self.recorder: dict[str, str] = {}
        node.create_subscription(DiagnosticArray, '/skill_runtime/status', self._status, 10)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._diagnostics, 50)
        node.create_subscription(JointState, '/joint_commands', self._command, 100)

    def _status(self, msg: DiagnosticArray) -> None:
        with self.lock:
            for s in msg.status:
                values = {kv.key: kv.value for kv in s.values}
                if s.name.startswith('skills/'):
                    self.skills[s.name.removeprefix('skills/')] = values
                elif s.name.endswith('safety_gate'):
                    self.gate = values

    def _diagnostics(self, msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name == 'data_recorder':
                with self.lock:
                    self.recorder = {kv.key: kv.value for kv in s.values}

    def _command(self, msg: JointState) -> None:
        with self.lock:
            self.commands.append((time.monotonic(), msg.header.frame_id, tuple(msg.position)))
            del self.commands[:-2000]

    def skill(self, name: str) -> dict[str, str]:
        with self.lock:
            return dict(self.skills.get(name, {}))

    def last_command(self) -> tuple[float, str, tuple[float, ...]] | None:
        with self.lock:
            return self.commands[-1] if self.commands else None


@pytest.fixture(scope='module')
def stack(tmp_path_factory: pytest.TempPathFactory, ros) -> Iterator[dict]:
    from field_deploy.ros import Spinner

    tmp = tmp_path_factory.mktemp('console')
    bag = tmp / 'bag'
    # The health monitor aggregates and reports lifecycle states, but acts on nothing: its policies
    # would stop the skills this module drives (the sim's motors reach the over-temperature limit
    # after minutes of trotting on a loaded host: seen here, FL_hip_joint at 95 °C).
    health = tmp / 'health.yaml'
    doc = yaml.safe_load((config_dir() / 'health' / 'default.yaml').read_text())
    health.write_text(yaml.safe_dump({**doc, 'policies': []}))
    recorder_args = ['--ros-args', '--params-file', str(config_dir() / 'params' / 'data_recorder.yaml'),
                     '-p', f'output:={bag}']
    procs = {
        'sim_robot': NodeProcess('sim_robot', ['--ros-args', '-p', 'profile:=quadruped_12dof'],
                                 log_dir=tmp),
        'skill_runtime': NodeProcess('skill_runtime', [
            '--ros-args', '-p', 'profile:=quadruped_12dof', '-p', 'executor_rt_priority:=0',
            '-p', 'step_budget_ms:=100.0'], log_dir=tmp),
        'data_recorder': NodeProcess('data_recorder', recorder_args, log_dir=tmp),
        'health_monitor': NodeProcess('health_monitor', [
            '--ros-args', '-p', 'profile:=quadruped_12dof', '-p', 'autostart:=false',
            '-p', f'config:={health}'], log_dir=tmp, env={'HOME': str(tmp)}),
    }
    node = Node(f'console_test_{os.getpid()}')
    robot = Robot(node)
    spinner = Spinner([node]).start()
    state = {'procs': procs, 'robot': robot, 'bag': bag, 'tmp': tmp, 'recorder_args': recorder_args}
    try:
        assert wait_until(lambda: len(robot.skills) == 3 and robot.gate.get('mode') == 'run'
                          and robot.recorder.get('state') == 'recording', 120.0), \
            {name: p.log()[-2000:] for name, p in procs.items()}
        yield state
    finally:
        spinner.stop()
        node.destroy_node()
        for proc in reversed(list(state['procs'].values())):
            proc.stop(timeout=30.0)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_watch_stops_on_sigint_and_sigterm_even_started_with_sigint_ignored() -> None:
    """A script's ``field_deploy status --watch --json > log &`` starts it with SIGINT ignored
    (a non-interactive shell's background job; CI runners too). It must still stop on SIGINT
    and SIGTERM: before, it ran on, printing, until killed."""
    empty = {'ROS_DOMAIN_ID': str((int(os.environ['ROS_DOMAIN_ID']) + 100) % 200 + 1)}
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen(
            [executable('field_deploy'), 'status', '--watch', '--json', '--interval', '0.2'],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **empty},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith('{')          # watching
            proc.send_signal(sig)
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode in (0, 130), (sig, proc.returncode, out[-2000:])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_no_stack_every_command_says_so_in_one_line_and_exits_3() -> None:
    """In a ROS domain where nothing runs: one line naming what is missing, exit 3, no hang."""
    empty = {'ROS_DOMAIN_ID': str((int(os.environ['ROS_DOMAIN_ID']) + 100) % 200 + 1)}
    commands = [['skills', 'status'], ['skills', 'stop'], ['skills', 'run', STAND],
                ['mission', 'run', 'quadruped_demo'], ['status'], ['bag', 'mark', 'hello']]
    started = time.monotonic()
    procs = [subprocess.Popen([executable('field_deploy'), *c, '--timeout', '2'], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, **empty}) for c in commands]
    for command, proc in zip(commands, procs, strict=True):
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, (command, err)
        line = _one_line(err)
        assert 'not running' in line or 'no recorder listens' in line, line
    # the bound is the behaviour (no hang): 2 s of waiting each, plus interpreter start-up on a
    # shared host, all six at once
    assert time.monotonic() - started < 90.0


def test_unknown_names_and_bad_missions_are_refused_before_anything_moves(stack, tmp_path: Path) -> None:
    robot = stack['robot']
    before = {name: robot.skill(name).get('phase') for name in robot.skills}

    r = cli('skills', 'run', 'reference_quadruped/stand_upp')
    assert r.returncode == 2, r
    assert 'did you mean: reference_quadruped/stand_up' in _one_line(r.stderr)

    r = cli('skills', 'run', TROT, '--param', 'duration=abc', '--param', 'lif=0.2')
    assert r.returncode == 2, r
    assert "'abc' is not a double" in r.stderr and 'did you mean: lift' in r.stderr, r.stderr

    mission = tmp_path / 'bad.yaml'
    mission.write_text(f'name: bad\nsteps:\n  - skill: {STAND}\n  - skill: reference_quadruped/trott\n'
                       f'  - skill: {TROT}\n    params: {{duration: 400.0, frequency: fast}}\n')
    r = cli('mission', 'run', str(mission))
    assert r.returncode == 2, r
    problems = [line for line in r.stderr.splitlines() if line.startswith(f'{mission}: ')]
    assert len(problems) == 3, r.stderr
    assert problems[0].startswith(f'{mission}: steps[1] reference_quadruped/trott: unknown skill')
    assert any('out of range [0.5, 60]' in p and 'steps[2]' in p for p in problems)
    assert any("'fast' is not a double" in p for p in problems)
    time.sleep(0.5)
    assert {name: robot.skill(name).get('phase') for name in robot.skills} == before  # nothing ran


def test_mission_runs_every_step_with_progress_and_a_summary(stack) -> None:
    r = cli('mission', 'run', str(config_dir() / 'missions' / 'quadruped_demo.yaml'))
    assert r.returncode == 0, r.stdout + r.stderr
    assert '[mission] skill reference_quadruped/stand_up' in r.stdout
    assert f'[mission]   {TROT}:' in r.stdout and ' %' in r.stdout        # progress lines
    summary = r.stdout.split('================ mission quadruped_demo')[1]
    rows = [line.split() for line in summary.splitlines() if line.startswith('    1  ')]
    assert [row[2] for row in rows] == ['done'] * 3 and 'result: all done' in summary, r.stdout


def test_ctrl_c_stops_the_running_skill_holds_the_pose_and_prints_the_summary(
        stack, tmp_path: Path) -> None:
    robot = stack['robot']
    mission = tmp_path / 'long.yaml'
    mission.write_text(f'name: long\nsteps:\n  - skill: {STAND}\n  - skill: {TROT}\n'
                       '    params: {duration: 40}\n  - skill: reference_quadruped/lie_down\n')
    proc = spawn('mission', 'run', str(mission))
    assert wait_until(lambda: robot.skill(TROT).get('phase') == 'active', 120.0)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    summary = out.split('================ mission long')[1]
    rows = {line.split()[1]: line.split()[2] for line in summary.splitlines()
            if line.startswith('    1  ')}
    assert rows == {STAND: 'done', TROT: 'stopped', 'reference_quadruped/lie_down': 'skipped'}, out
    assert 'result: stopped by Ctrl-C' in summary
    # seen from outside: the runtime says the skill was stopped, and the gate holds the pose
    assert wait_until(lambda: robot.skill(TROT).get('outcome') == 'stopped', 10.0), robot.skill(TROT)
    time.sleep(0.5)
    first = robot.last_command()
    assert first is not None
    # later commands (0.5 s of the 500 Hz gate; however late a loaded host delivers them) hold it
    time.sleep(0.5)
    assert wait_until(lambda: robot.last_command()[0] > first[0], 10.0)
    last = robot.last_command()
    assert first[1] == last[1] == 'run'
    assert max(abs(a - b) for a, b in zip(first[2], last[2], strict=True)) < 1e-6


def test_skills_run_stop_estop_and_reset(stack) -> None:
    robot = stack['robot']
    r = cli('skills', 'run', TROT, '--param', 'duration=60')    # the stop ends it, even on a slow host
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait_until(lambda: robot.skill(TROT).get('phase') == 'active', 30.0)
    status = cli('skills', 'status')
    row = next(line for line in status.stdout.splitlines() if line.startswith(TROT))
    assert status.returncode == 0 and row.split()[1] == 'active', status.stdout

    r = cli('skills', 'stop')
    assert r.returncode == 0 and 'holding pose' in r.stdout, r
    assert wait_until(lambda: robot.skill(TROT).get('outcome') == 'stopped', 30.0)

    r = cli('skills', 'estop')
    assert r.returncode == 0, r
    assert wait_until(lambda: (robot.last_command() or (0, ''))[1] == 'estop', 10.0)
    gate = json.loads(cli('skills', 'status', '--json').stdout)['gate']
    assert gate['mode'] == 'estop' and gate['estop_reason'] == 'estop service', gate

    r = cli('skills', 'run', STAND)              # refused while latched: exit 1 with the reason
    assert r.returncode == 1 and 'e-stop' in r.stdout, r

    r = cli('skills', 'reset')
    assert r.returncode == 0 and 'released' in r.stdout, r
    assert wait_until(lambda: (robot.last_command() or (0, ''))[1] == 'run', 10.0)
    r = cli('skills', 'run', STAND, '--wait')
    assert r.returncode == 0 and 'result: all done' in r.stdout, r.stdout + r.stderr


def _watch_lines(proc: subprocess.Popen[str], lines: list[dict]) -> threading.Thread:
    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith('{'):
                lines.append(json.loads(line))
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_status_marks_and_a_recorder_that_goes_and_comes_back(stack, tmp_path: Path) -> None:
    robot, procs = stack['robot'], stack['procs']
    lines: list[dict] = []
    watch_log = tmp_path / 'watch.stderr'
    watch = spawn('status', '--watch', '--json', '--interval', '0.5', stderr=watch_log)
    _watch_lines(watch, lines)
    try:
        def recorder_up() -> bool:
            return bool(lines) and lines[-1]['nodes']['data_recorder']['presence'] == 'up' \
                and (lines[-1]['recorder'] or {}).get('state') == 'recording'
        assert wait_until(lambda: recorder_up() and lines[-1]['gate'] is not None
                          and lines[-1]['health'] is not None, 120.0), lines[-1:]
        snap = lines[-1]
        assert {s['skill'] for s in snap['skills']} >= {STAND, TROT}
        assert snap['health']['subsystems'] and snap['lifecycle'], snap

        once = cli('status')                      # the one-shot screen, as text
        assert once.returncode == 0 and 'recorder' in once.stdout and 'gate' in once.stdout, once

        # marks: one while a skill runs (inside its episode), one between episodes
        assert cli('skills', 'run', TROT, '--param', 'duration=60').returncode == 0
        assert wait_until(lambda: robot.skill(TROT).get('phase') == 'active', 30.0)
        r = cli('bag', 'mark', 'left foot slipped on the wet floor', '--kind', 'anomaly')
        assert r.returncode == 0 and 'written to' in r.stdout, r.stdout + r.stderr
        cli('skills', 'stop')                 # (the mark is stamped before its confirmation wait)
        assert wait_until(lambda: robot.skill(TROT).get('phase') == 'inactive', 60.0)
        r = cli('bag', 'mark', 'a person walked through the cell', '--kind', 'disturbance')
        assert r.returncode == 0, r.stdout + r.stderr
        screen = _mark_through_the_watch_screen('robot hesitated at the door', 'ed')
        assert "mark [edge_case] 'robot hesitated at the door' written" in screen, screen[-3000:]
        assert wait_until(lambda: (lines[-1]['recorder'] or {}).get('marks') == 3, 30.0)

        # the recorder stops: shown as gone, its values not shown as if current
        procs['data_recorder'].stop(signal.SIGINT, timeout=60.0)
        assert wait_until(lambda: lines[-1]['nodes']['data_recorder']['presence'] == 'gone'
                          and lines[-1]['recorder'] is None, 30.0), lines[-1]
        assert lines[-1]['nodes']['skill_runtime']['presence'] == 'up'

        # ... and comes back with its first status (a new bag: <bag>_2)
        procs['data_recorder'] = NodeProcess('data_recorder', stack['recorder_args'],
                                             log_dir=stack['tmp'])
        assert wait_until(recorder_up, 120.0), lines[-1]
        assert lines[-1]['recorder']['bag'].endswith('bag_2')
    finally:
        watch.send_signal(signal.SIGINT)
        code = watch.wait(30)
    assert code == 0, watch_log.read_text()[-3000:]

    _check_marks_in_the_bag(stack['bag'], tmp_path)


def _mark_through_the_watch_screen(text: str, kind: str) -> str:
    """``status --watch`` on a terminal (a pty): ``m``, the text, the kind, then ``q``; the screen."""
    import pty
    import re
    import select

    pid, fd = pty.fork()
    if pid == 0:                                          # the child: the console on a terminal
        os.execv(executable('field_deploy'), ['field_deploy', 'status', '--watch', '--interval', '0.5'])
    out = b''

    def read_until(pattern: bytes, timeout: float) -> bool:
        nonlocal out
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, re.sub(rb'\x1b\[[0-9;?]*[A-Za-z]', b'', out)):
                return True
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    return False
        return False

    try:
        assert read_until(rb'keys: m mark', 120.0), out[-2000:]
        os.write(fd, b'm')
        assert read_until(rb'mark text', 30.0), out[-2000:]
        os.write(fd, text.encode() + b'\r')
        assert read_until(rb'kind anomaly', 30.0), out[-2000:]
        os.write(fd, kind.encode() + b'\r')
        read_until(rb'mark \[\w+\] .* written|mark NOT written', 60.0)
        os.write(fd, b'q')
        read_until(rb'\Z.', 5.0)                          # let it draw its last screen and exit
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    return re.sub(r'\x1b\[[0-9;?]*[A-Za-z]', '', out.decode(errors='replace'))


def _check_marks_in_the_bag(bag: Path, tmp_path: Path) -> None:
    texts = {'left foot slipped on the wet floor': 'anomaly',
             'a person walked through the cell': 'disturbance',
             'robot hesitated at the door': 'edge_case'}
    # metadata.yaml custom data as rosbag2 keeps it (plain YAML; rosbags 0.11 does not expose it)
    info = yaml.safe_load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    listed = json.loads(info['custom_data']['field_deploy.marks'])
    assert {m['text']: m['kind'] for m in listed} == texts
    # rosbags: the mark messages, recorded as any topic. Only a copy: the recorder subscribes the
    # topic once it has discovered a publisher, so a first mark can be written before that
    # (rosbags 0.11 reads neither MCAP Metadata records nor custom_data, the mark's real places).
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic == '/data_recorder/mark']
        # (an empty list would mean every connection to rosbags)
        sent = [json.loads(reader.deserialize(raw, c.msgtype).data)
                for c, _t, raw in reader.messages(connections=conns)] if conns else []
    assert {(m['text'], m['kind']) for m in sent} <= set(texts.items())
    assert {m['stamp_ns'] for m in sent} <= {m['stamp_ns'] for m in listed}

    # mcap: the Metadata records named "mark", in the files themselves (a cut bag keeps them)
    from mcap.reader import make_reader

    records = []
    for file in sorted(bag.glob('*.mcap')):
        with file.open('rb') as stream:
            records += [dict(m.metadata) for m in make_reader(stream).iter_metadata()
                        if m.name == 'mark']
    assert {r['text']: r['kind'] for r in records} == texts

    info = cli('bag', 'info', str(bag))
    assert 'Marks:             3' in info.stdout and '[anomaly] left foot slipped' in info.stdout, \
        info.stdout
    png = tmp_path / 'plot.png'
    # (the 5 Hz battery: the tools read what they plot / export, and the host is shared)
    r = cli('bag', 'plot', str(bag), '-o', str(png), '--signals', '/battery.voltage', timeout=600)
    assert r.returncode == 0 and png.stat().st_size > 0, r.stderr

    out = tmp_path / 'dataset'
    r = cli('bag', 'export', str(bag), '-o', str(out), '--format', 'parquet', '--images', 'none',
            '--topics', '/battery', timeout=600)
    assert r.returncode == 0, r.stderr
    exported = [m for f in out.glob('*/manifest.json') for m in json.loads(f.read_text())['marks']]
    assert [m['text'] for m in exported] == ['left foot slipped on the wet floor']  # in its episode
