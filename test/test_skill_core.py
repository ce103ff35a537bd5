"""skill_runtime pure core: manifest, digests, discovery refusals, gate, runner, helpers (no rclpy)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from field_app.cli import main as cli_main
from field_deploy.profile import load_profile
from field_deploy.testing import wait_until
from skill_runtime.api import (
    Done,
    GaitGenerator,
    GaitPattern,
    PoseInterpolator,
    RobotState,
    SkillContext,
    Targets,
)
from skill_runtime.gate import MODE_ESTOP, MODE_RUN, SafetyGate, SkillRun
from skill_runtime.loader import api_compatible, check_pack, discover, import_skills
from skill_runtime.loop import can_realtime, set_thread_realtime
from skill_runtime.manifest import PackError, read_manifest, verify_digests, write_digests
from skill_runtime.proxy import FD_SETSIZE, WorkerProcess, WorkerSpec, tick_workers, wait_replies
from skill_runtime.supervisor import Supervisor
from skill_runtime.worker import sandbox_policy

FIXTURES = Path(__file__).parent / 'fixtures' / 'packs'
QUAD = load_profile('quadruped_12dof')
HUMANOID = load_profile('humanoid_29dof')


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    """A writable copy of the acme test pack (valid, digests current)."""
    dst = tmp_path / 'acme_test'
    shutil.copytree(FIXTURES / 'acme_test', dst, ignore=shutil.ignore_patterns('__pycache__'))
    return dst


def edit_manifest(pack: Path, **changes: object) -> None:
    path = pack / 'skillpack.yaml'
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# --------------------------------------------------------------------------- manifest + refusals

def test_fixture_and_reference_packs_are_accepted() -> None:
    assert check_pack(FIXTURES / 'acme_test', QUAD, ['acme/*']).name == 'acme_test'
    from skill_runtime.packs import humanoid_pack_dir, quadruped_pack_dir
    assert check_pack(quadruped_pack_dir(), QUAD, ['field_deploy/*']).version == '1.0.0'
    assert check_pack(humanoid_pack_dir(), HUMANOID, ['field_deploy/*']).name == 'reference_humanoid'


@pytest.mark.parametrize(('change', 'field', 'words'), [
    ({'colour': 'red'}, 'colour', 'unknown key'),
    ({'api_version': 1}, 'api_version', 'MAJOR.MINOR'),
    ({'robot_kinds': ['hexapod']}, 'robot_kinds[0]', 'not one of'),
    ({'skills': {'reach': {'entry': 'skills:Reach', 'claims': ['arms'], 'timeout': 1.0}}},
     'skills.reach.claims[0]', "not in the pack's joint_groups"),
    ({'skills': {'reach': {'entry': 'skills:Reach', 'claims': ['FL_leg'], 'timeout': 1.0,
                           'params': {'offset': {'type': 'double', 'default': 9.0, 'min': 0.0,
                                                 'max': 1.0}}}}},
     'skills.reach.params.offset.default', 'outside'),
    ({'skills': {'reach': {'entry': 'skills:Reach', 'claims': ['FL_leg'], 'timeout': 1.0,
                           'params': {'offset': {'type': 'double', 'default': 0.0}}}}},
     'skills.reach.params.offset.min', 'needs both min and max'),
    ({'skills': {'reach': {'entry': 'not an entry', 'claims': ['FL_leg'], 'timeout': 1.0}}},
     'skills.reach.entry', 'module:Class'),
])
def test_bad_manifest_is_refused_naming_pack_file_field(pack: Path, change: dict, field: str,
                                                        words: str) -> None:
    edit_manifest(pack, **change)
    with pytest.raises(PackError) as err:
        check_pack(pack, QUAD, ['*'])
    assert err.value.field == field
    assert words in err.value.problem
    assert err.value.pack == 'acme_test'
    assert str(pack / 'skillpack.yaml') in str(err.value)


def test_bad_digest_refused_before_import(pack: Path) -> None:
    # A tampered file that would raise if imported: the digest check must stop it first.
    (pack / 'skills.py').write_text((pack / 'skills.py').read_text() + '\nraise SystemExit(3)\n')
    with pytest.raises(PackError) as err:
        check_pack(pack, QUAD, ['*'])
    assert err.value.field == 'digests.skills.py' and 'sha256 mismatch' in err.value.problem
    assert err.value.file.endswith('skills.py')


def test_unlisted_and_missing_files_refused(pack: Path) -> None:
    (pack / 'extra.py').write_text('x = 1\n')
    with pytest.raises(PackError, match='not covered by a digest'):
        check_pack(pack, QUAD, ['*'])
    (pack / 'extra.py').unlink()
    (pack / 'skills.py').unlink()
    with pytest.raises(PackError, match='missing'):
        check_pack(pack, QUAD, ['*'])


def test_digest_command_refreshes_only_the_digest_block(pack: Path) -> None:
    (pack / 'skills.py').write_text((pack / 'skills.py').read_text() + '\n# patched\n')
    header = (pack / 'skillpack.yaml').read_text().splitlines()[0]
    write_digests(pack)
    assert (pack / 'skillpack.yaml').read_text().splitlines()[0] == header  # comment kept
    verify_digests(read_manifest(pack))


def test_wrong_robot_kind_refused(pack: Path) -> None:
    with pytest.raises(PackError) as err:
        check_pack(pack, HUMANOID, ['*'])
    assert err.value.field == 'robot_kinds' and 'humanoid' in err.value.problem


def test_missing_joint_group_refused(pack: Path) -> None:
    edit_manifest(pack, joint_groups=['legs', 'FL_leg', 'RR_leg', 'tail'])
    with pytest.raises(PackError) as err:
        check_pack(pack, QUAD, ['*'])
    assert err.value.field == 'joint_groups[3]' and "no joint group 'tail'" in err.value.problem


def test_api_too_new_refused(pack: Path) -> None:
    edit_manifest(pack, api_version='1.7')
    with pytest.raises(PackError) as err:
        check_pack(pack, QUAD, ['*'])
    assert err.value.field == 'api_version' and 'provides 1.0' in err.value.problem
    assert api_compatible('1.0', '1.3') and not api_compatible('2.0', '1.3')
    assert not api_compatible('1.4', '1.3')


def test_not_allowed_refused(pack: Path) -> None:
    with pytest.raises(PackError) as err:
        check_pack(pack, QUAD, ['field_deploy/*', 'acme/other'])
    assert err.value.field == 'vendor' and 'acme/acme_test' in err.value.problem
    assert check_pack(pack, QUAD, ['acme/acme_*']).name == 'acme_test'


def test_discovery_from_folder_and_entry_points_refuses_only_bad_packs() -> None:
    records = {r.name: r for r in discover(QUAD, pack_path=[FIXTURES],
                                           allow=['field_deploy/*', 'acme/*'])}
    assert records['reference_quadruped'].accepted
    assert records['reference_quadruped'].candidate.source == 'entry_point:reference_quadruped'
    assert set(records['reference_quadruped'].classes) == {'stand_up', 'lie_down', 'trot_in_place'}
    assert not records['reference_humanoid'].accepted  # wrong robot kind
    assert records['acme_test'].accepted and records['acme_test'].candidate.source.startswith('path:')
    boom = records['acme_import_raiser']
    assert not boom.accepted
    assert boom.error is not None and boom.error.file.endswith('boom.py')
    assert 'ImportError' in boom.reason


def test_import_uses_private_package_name() -> None:
    classes = import_skills(read_manifest(FIXTURES / 'acme_test'))
    assert classes['reach'].__module__ == '_skillpack_acme_test.skills'


# --------------------------------------------------------------------------- gate

def test_gate_clamps_limits_and_rate() -> None:
    gate = SafetyGate(QUAD, 500.0)
    gate.seed(QUAD.array('default'))
    idx = np.array([0, 1, 2])
    assert gate.claim('a', idx) is None
    upper = QUAD.array('upper')
    vmax = QUAD.array('velocity')
    q = QUAD.array('default')
    for _ in range(400):
        cmd = gate.compute({'a': (idx, Targets(q=upper[idx] + 1.0, dq=np.full(3, 1e3),
                                                tau=np.full(3, -1e4)))})
        assert cmd is not None
        assert np.all(cmd.q <= upper + 1e-12)
        assert np.all(np.abs(cmd.q - q) <= vmax / 500.0 + 1e-12)  # change per tick bounded
        assert np.all(np.abs(cmd.dq) <= vmax) and np.all(np.abs(cmd.tau) <= QUAD.array('effort'))
        q = cmd.q
    assert np.allclose(q[idx], upper[idx]) and cmd.clamped == 3
    assert np.allclose(q[3:], QUAD.array('default')[3:])  # unclaimed joints hold


def test_gate_arbitrates_joint_groups() -> None:
    gate = SafetyGate(QUAD, 500.0)
    assert 'no joint_states' in (gate.claim('a', np.array([0])) or '')
    gate.seed(QUAD.array('default'))
    legs = np.array([QUAD.joint_index(j) for j in QUAD.group_joints('legs')])
    assert gate.claim('pack/hold', legs) is None
    reason = gate.claim('pack/reach', np.array([0, 1, 2]))
    assert reason is not None and 'pack/hold' in reason and 'FL_hip_joint' in reason
    gate.release('pack/hold')
    assert gate.claim('pack/reach', np.array([0, 1, 2])) is None


def test_gate_estop_walks_to_safe_pose_and_latches() -> None:
    gate = SafetyGate(QUAD, 500.0, safe_velocity=0.5)
    gate.seed(QUAD.array('default'))
    assert gate.claim('a', np.array([0])) is None
    gate.estop('test')
    assert gate.mode == MODE_ESTOP and not gate.owners()
    assert 'e-stop' in (gate.claim('a', np.array([0])) or '')
    prev = gate.command.copy()
    for _ in range(3000):
        cmd = gate.compute({'a': (np.array([0]), Targets(q=np.array([0.9])))})  # ignored
        assert cmd is not None and cmd.mode == MODE_ESTOP
        assert np.all(np.abs(cmd.q - prev) <= 0.5 / 500 + 1e-12)
        prev = cmd.q
    assert np.allclose(prev, QUAD.array('safe'))
    gate.reset()
    assert gate.mode == MODE_RUN and gate.claim('a', np.array([0])) is None


# --------------------------------------------------------------------------- runner

@pytest.fixture(scope='module')
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor(lambda key, level, text: None)
    yield sup
    sup.stop()


_POLICY_OF_A_CHILD = [sys.executable, '-c', 'import os; print(os.sched_getscheduler(0))']


@pytest.mark.skipif(not can_realtime(), reason='needs SCHED_FIFO (root or an rtprio limit)')
def test_a_realtime_supervisor_stays_realtime_and_starts_its_children_normal() -> None:
    """The runtime is SCHED_FIFO; its supervisor thread must be too (a normal thread holding the
    GIL, preempted on a loaded host, stalled the control thread for up to 84 ms), yet the
    interpreters it starts must not run realtime, not even their start-up: SCHED_RESET_ON_FORK.
    The control: a plain SCHED_FIFO thread's child is SCHED_FIFO."""
    def fifo(fn):
        out: list = []

        def body() -> None:
            set_thread_realtime(5)
            out.append(fn())
        thread = threading.Thread(target=body)
        thread.start()
        thread.join(30)
        return out[0]

    def child_policy() -> int:
        return int(subprocess.run(_POLICY_OF_A_CHILD, capture_output=True, text=True, check=True,
                                  timeout=20).stdout)
    assert fifo(child_policy) == os.SCHED_FIFO                  # what a plain fork does

    sup = fifo(lambda: Supervisor(lambda key, level, text: None))
    try:
        assert wait_until(lambda: sup.scheduling, 5)
        assert sup.scheduling == 'SCHED_FIFO 5, children SCHED_OTHER', sup.scheduling
        assert os.sched_getscheduler(sup._thread.native_id) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO
        assert sup.call(child_policy, 30) == os.SCHED_OTHER
    finally:
        sup.stop()


def make_run(sup: Supervisor, tmp: Path, skill: str, params: dict | None = None,
             budget: float = 0.02, timeout: float = 5.0) -> tuple[SkillRun, WorkerProcess, RobotState]:
    """A fixture skill started in a real worker process, as the runtime does it."""
    manifest = read_manifest(FIXTURES / 'acme_test')
    spec = next(s for s in manifest.skills if s.name == skill)
    idx = np.array([0, 1, 2])
    worker = sup.spawn(WorkerSpec(key=f'acme_test/{skill}',
                                  log_path=tmp / f'{skill}.log', cwd=tmp))
    worker.wait_ready(20)
    reply = worker.request('configure', 20, pack_dir=str(FIXTURES / 'acme_test'), pack='acme_test',
                           skill=skill, entry=spec.entry, profile=str(QUAD.path),
                           params={p.name: p.default for p in spec.params} | (params or {}),
                           indices=idx.tolist(), rate_hz=500.0, sites=[],
                           policy=sandbox_policy(scratch_dir=str(tmp), pack_dir=str(FIXTURES),
                                                 memory_mb=1024, max_files=64))
    assert reply['ok'] and reply['problem'] is None, reply
    run = SkillRun(key=f'acme_test/{skill}', indices=idx, every=1, budget=budget, timeout=timeout,
                   on_finish=lambda r: worker.stop_skill(1.0))
    state = RobotState(q=QUAD.array('default'), dq=np.zeros(12), tau=np.zeros(12))
    worker.set_layout(QUAD.dof, len(idx), ())
    worker.write_state(0.0, state.q, state.dq, state.tau, state.imu, {}, 0, new_request=False)
    run.begin(state.q)
    assert worker.request('start', 20)['ok']
    worker.set_realtime(20, budget)   # as the runtime does while the skill runs
    return run, worker, state


def tick_until(run: SkillRun, worker: WorkerProcess, state: RobotState, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not run.outcome and time.monotonic() < end:
        tick_workers([(run, worker)], lambda: state, time.monotonic_ns() + 1_000_000)
        time.sleep(0.002)


def test_runner_stops_nan_raise_sleep_and_timeout(supervisor: Supervisor, tmp_path: Path) -> None:
    """Each outcome reaches the runtime's SkillRun from a real worker process."""
    run, worker, state = make_run(supervisor, tmp_path, 'not_a_number')
    tick_until(run, worker, state, 5.0)
    assert run.outcome == 'failed' and 'NaN' in run.reason
    run, worker, state = make_run(supervisor, tmp_path, 'raiser')
    tick_until(run, worker, state, 5.0)
    assert run.outcome == 'failed' and 'RuntimeError: vendor bug in step' in run.reason
    run, worker, state = make_run(supervisor, tmp_path, 'sleeper', {'sleep': 0.5}, budget=0.1)
    tick_until(run, worker, state, 5.0)
    assert run.outcome == 'failed' and run.reason == 'watchdog: step running for more than 100 ms', run.reason
    assert wait_until(lambda: worker.closed, 5) and 'SIGKILL' in worker.exit_status  # killed, reaped
    run, worker, state = make_run(supervisor, tmp_path, 'slow', timeout=0.3, budget=0.25)
    tick_until(run, worker, state, 5.0)
    assert run.outcome == 'failed' and run.reason.startswith('timeout')


def test_runner_rate_divider_and_done(supervisor: Supervisor, tmp_path: Path) -> None:
    run, worker, state = make_run(supervisor, tmp_path, 'reach', {'offset': 0.1, 'max_velocity': 3.0},
                                  budget=0.25)
    run.every = 5
    for _ in range(10):
        tick_workers([(run, worker)], lambda: state, time.monotonic_ns() + 50_000_000)
    assert run.steps == 2
    tick_until(run, worker, state, 5.0)
    assert run.outcome == 'done' and run.progress == 1.0


# --------------------------------------------------------------------------- helpers

def test_pose_interpolator_respects_velocity_bound() -> None:
    start, goal = np.array([0.0, 1.0]), np.array([2.0, 1.5])
    interp = PoseInterpolator(start, goal, max_velocity=1.0)
    ts = np.linspace(0, interp.duration, 2001)
    qs = np.array([interp.sample(t) for t in ts])
    speed = np.abs(np.diff(qs, axis=0)) / np.diff(ts)[:, None]
    assert speed.max() <= 1.0 + 1e-3
    assert np.allclose(qs[0], start) and np.allclose(qs[-1], goal) and interp.done(interp.duration)


def test_trot_gait_alternates_diagonal_pairs() -> None:
    legs = {leg: (3 * i, 3 * i + 1, 3 * i + 2) for i, leg in enumerate(('FL', 'FR', 'RL', 'RR'))}
    gait = GaitGenerator(legs, GaitPattern.trot(), frequency=2.0, lift=0.3, ramp=0.0)
    lifted = {leg: [gait.swing_height(leg, t) > 0.5 for t in np.linspace(0, 1, 200)] for leg in legs}
    assert lifted['FL'] == lifted['RR'] and lifted['FR'] == lifted['RL']
    assert not any(a and b for a, b in zip(lifted['FL'], lifted['FR'], strict=True))
    out = gait.sample(0.375)  # phase 0.75: FL/RR mid-swing, FR/RL in stance
    assert out[2] == pytest.approx(-0.3) and out[1] == pytest.approx(0.15) and out[5] == 0.0


def test_reference_skills_reach_their_pose_on_a_tracking_model() -> None:
    """Pure check of the reference pack logic: a first-order joint model follows the gate."""
    from skill_runtime.packs import quadruped_pack_dir
    classes = import_skills(read_manifest(quadruped_pack_dir()))
    legs = np.arange(12)
    q = QUAD.array('safe')
    for name, goal in (('stand_up', QUAD.array('default')), ('lie_down', QUAD.array('safe'))):
        ctx = SkillContext(profile=QUAD, params={'max_velocity': 1.5, 'min_duration': 0.2},
                           logger=logging.getLogger('t'), clock=time.monotonic,
                           joints=tuple(QUAD.joint_names), indices=legs)
        skill = classes[name](ctx)
        state = RobotState(q=q.copy(), dq=np.zeros(12), tau=np.zeros(12))
        skill.start(state)
        t = 0.0
        while not isinstance(result := skill.step(state, t), Done):
            q = result.q
            state.q = q.copy()
            t += 0.002
            assert t < 10
        assert np.allclose(q, goal, atol=1e-3)


def test_cli_check_list_digest(pack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(['skills', 'check', str(pack), '--profile', 'quadruped_12dof']) == 0
    assert 'OK acme_test 0.3.1' in capsys.readouterr().out
    (pack / 'skills.py').write_text((pack / 'skills.py').read_text() + '\n# v2\n')
    assert cli_main(['skills', 'check', str(pack)]) == 1
    assert 'sha256 mismatch' in capsys.readouterr().err
    assert cli_main(['skills', 'digest', str(pack)]) == 0
    assert '* ' in capsys.readouterr().out  # the changed file is marked
    assert cli_main(['skills', 'check', str(pack)]) == 0
    assert cli_main(['skills', 'list', '--pack-path', str(pack.parent), '--allow', 'acme/*']) == 0
    out = capsys.readouterr().out
    assert 'ACCEPTED acme_test' in out and 'REFUSED  reference_quadruped' in out  # not allowed


@pytest.mark.parametrize('high_fd', [False, True], ids=['select', 'poll past FD_SETSIZE'])
def test_wait_replies_returns_on_the_answers_or_at_the_deadline(high_fd: bool) -> None:
    """Both paths of the control thread's wait: it ends when every outstanding worker has
    signalled, long before its deadline, and with an answer missing, not before the deadline.
    A descriptor numbered FD_SETSIZE or above (a runtime with many workers and sockets) cannot
    go to select(): that wait must still work, on poll."""
    pipes = [os.pipe() for _ in range(2)]
    moved = []
    try:
        if high_fd:
            for i, (r, _w) in enumerate(pipes):
                moved.append(os.dup2(r, FD_SETSIZE + 100 + i))
            pipes = [(m, w) for m, (_r, w) in zip(moved, pipes, strict=True)]
        workers = [SimpleNamespace(outstanding=True, closed=False, done_r=r) for r, _w in pipes]
        idle = SimpleNamespace(outstanding=False, closed=False, done_r=-1)   # never waited for

        def answer() -> None:
            time.sleep(0.05)
            for _r, w in pipes:
                os.write(w, b'.')
        threading.Thread(target=answer).start()
        t0 = time.monotonic_ns()
        wait_replies([*workers, idle], t0 + 20_000_000_000)
        assert time.monotonic_ns() - t0 < 10_000_000_000, 'waited on after every worker answered'

        os.read(pipes[1][0], 64)   # the second worker's answer taken: it is outstanding again
        t0 = time.monotonic_ns()
        deadline = t0 + 30_000_000
        wait_replies(workers, deadline)
        assert time.monotonic_ns() >= deadline, 'returned before the deadline with an answer missing'
    finally:
        for fd in [fd for pair in pipes for fd in pair] + moved:
            with contextlib.suppress(OSError):
                os.close(fd)
