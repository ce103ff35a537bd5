"""The console's commands: ``mission run``, ``skills run|stop|estop|reset|status``, ``status``,
``bag mark``. One module registers them all; ``skills`` and ``bag`` are the groups their modules
own (:mod:`skill_runtime.cli`, :mod:`data_recorder.cli`), which this adds its sub-commands to.

Exit codes (:mod:`field_deploy.cli`): 0 done; 1 a skill failed, was stopped or refused (a
Trigger answered "no"); 2 usage or validation; 3 stack not running or no answer in time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from field_app.console import DEFAULT_TIMEOUT
from field_deploy.cli import EXIT_FAILED, UsageError

if TYPE_CHECKING:
    from field_app.console.runner import Outcome


def _common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--namespace', default='', help='robot namespace of the stack (default: none)')
    parser.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT, metavar='S',
                        help='seconds to wait for the stack and for each service answer '
                             '(default %(default)g; env FIELD_DEPLOY_TIMEOUT)')
    return parser


def _group(subparsers: argparse._SubParsersAction, name: str) -> argparse._SubParsersAction:
    """The sub-commands action of an already registered group (``skills``, ``bag``)."""
    parser = subparsers.choices[name]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def register(subparsers: argparse._SubParsersAction) -> None:
    mission = subparsers.add_parser('mission', help='run a mission on the running stack')
    msub = mission.add_subparsers(dest='mission_command', required=True)
    run = _common(msub.add_parser(
        'run', help='validate, then run a mission YAML step by step (Ctrl-C stops the skill)',
        description='Validate a mission (config/missions/*.yaml format) against the running '
                    'skills, then run it; Ctrl-C stops the running skill (the gate holds the '
                    'pose) and prints the summary. Exit 0 all done, 1 a skill failed or was '
                    'stopped, 2 the mission does not validate, 3 stack not running.'))
    run.add_argument('mission', help='mission YAML file (or the name of a shipped one)')
    run.add_argument('--repeat', type=int, default=1, metavar='N', help='run it N times')
    run.add_argument('--step-timeout', type=float, default=120.0, metavar='S',
                     help='stop a skill still active after S seconds (default %(default)g)')
    run.set_defaults(func=mission_run)

    status = _common(subparsers.add_parser(
        'status', help='one screen of the robot: skills, gate, health, recorder, lifecycle',
        description='Print what the robot is doing (once, or live with --watch). In --watch: '
                    'm marks the recording, q quits.'))
    status.add_argument('--watch', action='store_true', help='keep the screen up to date')
    status.add_argument('--json', action='store_true',
                        help='JSON (with --watch: one line per refresh)')
    status.add_argument('--interval', type=float, default=1.0, metavar='S',
                        help='refresh period (default %(default)g s)')
    status.add_argument('--listen', type=float, default=2.5, metavar='S',
                        help='without --watch: seconds to listen before printing (default '
                             '%(default)g: rates need two recorder statuses)')
    status.set_defaults(func=status_command)

    skills = _group(subparsers, 'skills')
    srun = _common(skills.add_parser('run', help='run one skill on the running stack',
                                     description='Configure (if needed), set parameters, activate.'))
    srun.add_argument('skill', metavar='PACK/SKILL')
    srun.add_argument('--param', action='append', default=[], metavar='NAME=VALUE',
                      help='a parameter (repeatable), checked against its descriptor first')
    srun.add_argument('--wait', action='store_true',
                      help='wait for the outcome with progress; Ctrl-C stops it')
    srun.add_argument('--step-timeout', type=float, default=120.0, metavar='S',
                      help='with --wait: stop it after S seconds (default %(default)g)')
    srun.set_defaults(func=skills_run)
    for name, text in (('stop', 'stop every skill; the gate holds the pose'),
                       ('estop', 'e-stop: stop every skill, go to the safe pose, latch'),
                       ('reset', 'release a latched e-stop')):
        _common(skills.add_parser(name, help=text)).set_defaults(func=skills_trigger, trigger=name)
    sstat = _common(skills.add_parser('status', help='every skill and the safety gate'))
    sstat.add_argument('--json', action='store_true')
    sstat.set_defaults(func=skills_status)

    bag = _group(subparsers, 'bag')
    mark = _common(bag.add_parser('mark', help='annotate the running recording (anomaly, ...)',
                                  description='A timestamped mark in the bag being recorded: an '
                                              'MCAP "mark" metadata record and metadata.yaml '
                                              'custom data; bag info lists it, bag plot draws it.'))
    mark.add_argument('text')
    mark.add_argument('--kind', default='note', choices=('anomaly', 'disturbance', 'edge_case', 'note'))
    mark.set_defaults(func=bag_mark)


def _session(args: argparse.Namespace):
    from field_app.console.session import Session  # rclpy: only for the commands that need it

    return Session(args.namespace, args.timeout)


def _say(prefix: str):
    def say(line: str) -> None:
        print(f'[{prefix}] {line}', flush=True)
    return say


# ---------------------------------------------------------------------------- mission / skills
def mission_run(args: argparse.Namespace) -> int:
    from field_app.console.runner import run_steps, validate
    from field_app.operator import OperatorError, load_mission

    if args.repeat < 1:
        raise UsageError(f'--repeat {args.repeat}: must be >= 1')
    try:
        mission = load_mission(args.mission)
    except (OperatorError, OSError) as exc:
        raise UsageError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise UsageError(f'{args.mission}: not valid YAML ({exc})'.replace('\n', ' ')) from None
    source = Path(args.mission) if Path(args.mission).exists() else args.mission
    say = _say('mission')
    with _session(args) as session:
        steps = validate(session, mission, source)
        say(f'{mission.name}: {len(steps)} step(s) validated against the running skills'
            + (f', {args.repeat} runs' if args.repeat > 1 else ''))
        outcome = run_steps(session, steps, say, repeat=args.repeat, timeout=args.step_timeout)
    return _report(outcome, f'mission {mission.name}')


def _report(outcome: Outcome, title: str) -> int:
    """The summary; then the exit code (3 when the stack stopped answering mid-run)."""
    from field_app.console.runner import summary
    from field_deploy.cli import StackUnavailable

    print(summary(outcome, title), flush=True)
    if outcome.error:
        raise StackUnavailable(outcome.error)
    return 0 if outcome.ok else EXIT_FAILED


def skills_run(args: argparse.Namespace) -> int:
    from field_app.console.params import check, parse_assignments
    from field_app.console.runner import run_steps
    from field_app.operator import MissionStep

    try:
        values = parse_assignments(args.param)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    say = _say('skills')
    with _session(args) as session:
        skill = session.resolve(args.skill)
        typed, problems = check(values, session.parameters(skill))
        if problems:
            raise UsageError(f'{skill}: ' + '; '.join(problems))
        step = MissionStep(skill, typed)
        if args.wait:
            return _report(run_steps(session, [step], say, timeout=args.step_timeout),
                           f'skill {skill}')
        session.ops.prepare([step])
        refused = session.call(session.ops.start_skill, step)
    if refused is not None:
        say(f'{skill}: refused: {refused.reason}')
        return EXIT_FAILED
    say(f'{skill}: active {json.dumps(typed) if typed else ""}'.rstrip()
        + ' (`field_deploy skills status` follows it, `field_deploy skills stop` stops it)')
    return 0


def skills_trigger(args: argparse.Namespace) -> int:
    with _session(args) as session:
        session.require_runtime()
        ok, message = session.trigger(args.trigger)
    print(f'[skills] {args.trigger}: {message}', flush=True)
    return 0 if ok else EXIT_FAILED


def skills_status(args: argparse.Namespace) -> int:
    from field_app.console.board import Board, Diag

    with _session(args) as session:
        raw = session.require_runtime()
    board = Board()
    board.on_runtime_status([Diag(name, 0, v.get('message', ''), v) for name, v in raw.items()],
                            time.monotonic())
    snap = board.snapshot(time.monotonic())
    if args.json:
        print(json.dumps({'gate': snap['gate'], 'skills': snap['skills']}, sort_keys=True))
        return 0
    gate = snap['gate'] or {}
    print(f'gate: {gate.get("mode", "?")}'
          + (f'  e-stop reason: {gate["estop_reason"]}' if gate.get('estop_reason') else '')
          + (f'  joints held by: {", ".join(gate["owners"])}' if gate.get('owners') else ''))
    print(f'{"skill":40s} {"phase":13s} {"progress":>8s}  {"last outcome":12s} reason')
    for s in snap['skills']:
        print(f'{s["skill"]:40s} {s["phase"]:13s} {100 * s["progress"]:6.0f} %  '
              f'{s["outcome"] or "-":12s} {s["reason"]}')
    return 0


# ---------------------------------------------------------------------------- status / mark
def status_command(args: argparse.Namespace) -> int:
    from field_app.console.watch import print_once, watch

    with _session(args) as session:
        if args.watch:
            return watch(session, interval=args.interval, as_json=args.json)
        return print_once(session, listen=args.listen, as_json=args.json)


def bag_mark(args: argparse.Namespace) -> int:
    from field_app.console.feed import MarkSender

    with _session(args) as session:
        sender = MarkSender(session.node, args.namespace)
        try:
            status = sender.send(args.text, args.kind, args.timeout)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    print(f'[bag] mark [{args.kind}] {args.text!r} written to {status.get("path", "?")} '
          f'({status.get("marks", "?")} mark(s) in this recording)', flush=True)
    return 0


if __name__ == '__main__':
    from field_app.cli import main
    sys.exit(main())
