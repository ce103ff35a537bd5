"""Run a mission (or one skill) on a running stack: validate, run step by step, Ctrl-C, summary.

Validation comes first and moves nothing: every step's skill must be one the runtime reports and
every parameter must fit the running node's descriptor (name, type, range); the problems are
printed as ``<file>: steps[i] <skill>: <problem>`` (exit 2). Then the steps run in order through
the skills' lifecycle services, with progress as the demo prints it. A step that does not end
``done`` ends the mission (the later steps are ``skipped``: they were planned after a skill that
did its work). Ctrl-C stops the running skill through ``/skill_runtime/stop`` (the gate holds the
pose), waits for its outcome and prints the summary (exit 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from field_app.console.params import check, unknown
from field_app.console.session import Session
from field_app.operator import Mission, MissionStep, StepResult, progress_printer
from field_deploy.cli import StackUnavailable, UsageError, interruptible

Say = Callable[[str], None]


@dataclass
class Outcome:
    """What a run did: one result per step run (with its repetition), and why it ended."""

    results: list[tuple[int, StepResult]]
    skipped: list[tuple[int, str]]
    interrupted: bool
    seconds: float
    error: str = ''
    """The stack stopped answering mid-run (the command then exits 3, after the summary)."""

    @property
    def ok(self) -> bool:
        return (not self.interrupted and not self.skipped
                and all(r.outcome == 'done' for _, r in self.results))


def validate(session: Session, mission: Mission, source: str | Path) -> tuple[MissionStep, ...]:
    """The mission's steps with typed parameters; UsageError listing every problem."""
    names = session.skills()
    problems, steps = [], []
    described: dict[str, dict] = {}
    for i, step in enumerate(mission.steps):
        where = f'{source}: steps[{i}] {step.skill}'
        if step.skill not in names:
            problems.append(f'{where}: {unknown("skill", step.skill, names)}')
            continue
        if step.skill not in described:
            described[step.skill] = session.parameters(step.skill)
        typed, bad = check(step.params, described[step.skill])
        problems += [f'{where}: {p}' for p in bad]
        steps.append(replace(step, params=typed))
    if problems:
        raise UsageError('\n'.join(problems) if len(problems) == 1
                         else f'{len(problems)} problems:\n' + '\n'.join(problems))
    return tuple(steps)


def run_steps(session: Session, steps: Sequence[MissionStep], say: Say, *, repeat: int = 1,
              timeout: float = 60.0) -> Outcome:
    """Run ``steps`` ``repeat`` times; Ctrl-C stops the running skill and ends the run.

    SIGINT and SIGTERM both do (a script or a supervisor stops a mission as a person does), even
    where the shell started this process with SIGINT ignored (``cmd &`` in a script).
    """
    interruptible()
    ops = session.ops
    ops.prepare(steps)
    results: list[tuple[int, StepResult]] = []
    started = time.monotonic()
    current: tuple[int, MissionStep, float] | None = None
    position = (0, 0)
    try:
        for run in range(1, repeat + 1):
            for i, step in enumerate(steps):
                position = (run, i)
                say(f'{"run " + str(run) + "/" + str(repeat) + " " if repeat > 1 else ""}'
                    f'skill {step.skill} {step.params or ""}'.rstrip())
                current = (run, step, time.monotonic())
                result = session.call(ops.start_skill, step)
                if result is None:
                    result = session.call(ops.wait_skill, step.skill, current[2], timeout,
                                          progress_printer(say))
                current = None
                say(f'  -> {result.outcome} after {result.seconds:.1f} s {result.reason}'.rstrip())
                results.append((run, result))
                if result.outcome != 'done':
                    return Outcome(results, _rest(steps, repeat, run, i + 1), False,
                                   time.monotonic() - started)
    except KeyboardInterrupt:
        say('Ctrl-C: stopping the running skill (the gate holds the pose)')
        if current is not None:
            run, step, began = current
            results.append((run, session.call(ops.stop_skill, step.skill, began, session.timeout)))
            position = (run, position[1] + 1)
        else:
            session.trigger('stop')
        return Outcome(results, _rest(steps, repeat, *position), True, time.monotonic() - started)
    except StackUnavailable as exc:   # what ran before is still worth a summary
        if current is not None:
            results.append((current[0], StepResult(current[1].skill, 'unknown', 'no answer',
                                                   time.monotonic() - current[2])))
            position = (current[0], position[1] + 1)
        return Outcome(results, _rest(steps, repeat, *position), False,
                       time.monotonic() - started, error=str(exc))
    return Outcome(results, [], False, time.monotonic() - started)


def _rest(steps: Sequence[MissionStep], repeat: int, run: int, index: int) -> list[tuple[int, str]]:
    """The steps not run after ``steps[index]`` of run ``run``."""
    rest = [(run, s.skill) for s in steps[index:]]
    return rest + [(r, s.skill) for r in range(run + 1, repeat + 1) for s in steps]


def summary(outcome: Outcome, title: str) -> str:
    lines = [f'================ {title} ================',
             f'  {"run":>3s}  {"skill":40s} {"outcome":10s} {"time":>7s}  reason']
    for run, r in outcome.results:
        lines.append(f'  {run:3d}  {r.skill:40s} {r.outcome:10s} {r.seconds:5.1f} s  {r.reason}')
    for run, skill in outcome.skipped:
        lines.append(f'  {run:3d}  {skill:40s} {"skipped":10s}')
    counts: dict[str, int] = {}
    for _, r in outcome.results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    if outcome.skipped:
        counts['skipped'] = len(outcome.skipped)
    how = ('stopped by Ctrl-C' if outcome.interrupted else 'all done' if outcome.ok
           else f'the stack stopped answering ({outcome.error})' if outcome.error else 'ended early')
    lines.append(f'result: {how} after {outcome.seconds:.1f} s ('
                 + ', '.join(f'{n} {k}' for k, n in counts.items()) + ')')
    return '\n'.join(lines)
