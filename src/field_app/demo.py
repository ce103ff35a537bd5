"""``field_deploy demo``: the whole stack on the simulated robot, one mission, one recording.

Brings the stack up exactly as ``field_deploy up`` does (the health monitor's lifecycle manager
configures and activates the nodes), runs the robot kind's reference mission through the skills'
lifecycle services, shows live progress, stops everything cleanly and ends with a summary read
back from the bag itself: skills and outcomes, messages recorded and lost per topic, health
events, and the commands to replay, export and plot the recording.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from field_app.bringup import BringupError, Supervisor
from field_app.operator import (
    Mission,
    Operator,
    OperatorError,
    StepResult,
    load_mission,
    progress_printer,
)
from field_deploy.profile import load_profile
from field_deploy.stack import load_stack

MISSIONS = {'quadruped': 'quadruped_demo', 'humanoid': 'humanoid_demo'}


def _print(line: str) -> None:
    print(f'[demo] {line}', flush=True)


class BagNotClosed(RuntimeError):
    """The demo's bag has no accounting: no summary may say "0 lost" of it."""


def bag_summary(bag_dir: Path) -> dict[str, Any]:
    """Counts and losses per topic, and the episodes, read back from the bag as ``bag info`` does."""
    from data_recorder.bag.info import summary
    from data_recorder.bag.reader import Bag

    info = summary(Bag(bag_dir))
    accounting = info['loss'].get('data_recorder.accounting')
    if accounting is None:    # no metadata.yaml: the recorder was killed before it closed the bag
        raise BagNotClosed(f'{bag_dir}: no loss accounting (the recorder did not close the bag: '
                           f'see its log); `field_deploy bag recover {bag_dir}` makes it readable')
    topics = {t['topic']: {'count': t['count'],
                           'lost': int(accounting.get(t['topic'], {}).get('lost', 0)),
                           'not_written': int(accounting.get(t['topic'], {}).get('not_written', 0))}
              for t in info['topics']}
    return {'topics': topics, 'episodes': info['episodes'], 'files': info['files'],
            'duration_s': info['duration_s'],
            'loss_summary': info['loss'].get('data_recorder.loss_summary', '')}


def run_mission(operator: Operator, mission: Mission) -> list[StepResult]:
    results = []
    progress = progress_printer(_print)
    for step in mission.steps:
        _print(f'skill {step.skill} {step.params or ""}')
        result = operator.run_skill(step, timeout=60.0, on_progress=progress)
        _print(f'  -> {result.outcome} after {result.seconds:.1f} s {result.reason}')
        results.append(result)
    return results


def demo(args: argparse.Namespace) -> int:
    profile = load_profile(args.robot)
    mission = load_mission(args.mission or MISSIONS[profile.kind])
    run_dir = Path(args.out or f'bags/demo-{profile.name}-{time.strftime("%Y%m%d-%H%M%S")}').resolve()
    run_dir.mkdir(parents=True, exist_ok=False)
    bag_dir = run_dir / 'bag'
    stack = load_stack(args.stack, robot=profile.name, sim=True, record=True, bag_dir=str(bag_dir))
    log_path = run_dir / 'stack.log'
    started = time.monotonic()
    _print(f'{profile.name} ({profile.kind}, {profile.dof} joints), mission {mission.name!r}; '
           f'node logs: {log_path}')
    fleet = None
    if args.fleet:
        from field_app.fleet_demo import FleetDemo
        fleet = FleetDemo(run_dir, _print)
        stack = fleet.configure(stack)
    try:
        return _run(args, stack, mission, run_dir, log_path, started, fleet)
    finally:
        if fleet is not None:
            fleet.close()


def _run(args: argparse.Namespace, stack: Any, mission: Mission, run_dir: Path, log_path: Path,
         started: float, fleet: Any) -> int:
    from field_deploy.ros import Spinner, init

    bag_dir = run_dir / 'bag'
    fleet_lines: list[str] = []
    with log_path.open('w') as log:
        supervisor = Supervisor(stack, out=sys.stdout if args.verbose else log, colour=False,
                                extra_env=fleet.env if fleet is not None else None)
        try:
            supervisor.start()
        except BringupError as exc:
            supervisor.stop()
            _print(f'error: {exc}')
            return 1
        init([])
        import rclpy
        from rclpy.node import Node

        node = Node('demo_operator')
        operator = Operator(node, stack.namespace)
        operator.prepare(mission.steps)
        spinner = Spinner([node]).start()
        results: list[StepResult] = []
        try:
            for managed in stack.managed:
                if not operator.wait_state(f'/{managed.name}', 'active', timeout=40.0):
                    raise BringupError(f'{managed.name} did not become active within 40 s '
                                       f'(see {log_path})')
            _print(f'stack active after {time.monotonic() - started:.1f} s: '
                   + ', '.join(n.name for n in stack.nodes))
            if fleet is not None:
                fleet.watch()
            results = run_mission(operator, mission)
            time.sleep(0.5)  # let the last commands and statuses reach the recorder
            if fleet is not None:
                fleet_lines = fleet.metrics() + fleet.live()
                # the monitor first (it would restart the recorder), then the recorder: the bag
                # closes and the stack's uploader, still running, sends it
                fleet_lines += fleet.upload(lambda: [supervisor.stop_node(name) for name in
                                                     ('health_monitor', 'data_recorder')], bag_dir)
        except (BringupError, OperatorError) as exc:
            _print(f'error: {exc}')
            return 1
        finally:
            spinner.stop()
            node.destroy_node()
            rclpy.try_shutdown()
            codes = supervisor.stop()
    _print(f'stack stopped ({", ".join(f"{k}={v}" for k, v in codes.items())})')
    code = summarise(results, operator, bag_dir, started, fleet_lines)
    return code or (0 if fleet is None or fleet.ok else 1)


def summarise(results: list[StepResult], operator: Operator, bag_dir: Path, started: float,
              fleet_lines: list[str] = ()) -> int:
    try:
        summary = bag_summary(bag_dir)
    except BagNotClosed as exc:
        _print(f'error: {exc}')
        return 1
    print('\n================ field_deploy demo summary ================')
    print('skills:')
    for r in results:
        print(f'  {r.skill:36s} {r.outcome:10s} {r.seconds:5.1f} s  {r.reason}')
    print(f'recording: {bag_dir}  ({summary["duration_s"]:.1f} s, {len(summary["files"])} file(s))')
    print(f'  {"topic":40s} {"recorded":>9s} {"lost":>6s} {"not written":>11s}')
    total_lost = total_unwritten = 0
    for name, row in sorted(summary['topics'].items()):
        total_lost += row['lost']
        total_unwritten += row['not_written']
        print(f'  {name:40s} {row["count"]:9d} {row["lost"]:6d} {row["not_written"]:11d}')
    print(f'  messages lost: {total_lost}; received but not written: {total_unwritten}')
    if summary['loss_summary']:
        print(f'  recorder: {summary["loss_summary"]}')
    print(f'episodes: {len(summary["episodes"])} (one per skill run; `bag export` writes one folder each)')
    events = operator.leaf_events()
    kinds = Counter(level for _, _, level, _ in events)
    print(f'health events: {len(events)} level changes of components '
          f'({", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "none"}); last ones:')
    for t, name, level, message in events[-8:]:
        print(f'  {time.strftime("%H:%M:%S", time.localtime(t))} {level:5s} {name}: {message}')
    if fleet_lines:
        print('fleet:')
        for line in fleet_lines:
            print(f'  {line}')
    print('next:')
    print(f'  field_deploy bag info {bag_dir}')
    print(f'  field_deploy bag play {bag_dir}')
    print(f'  field_deploy bag export {bag_dir} -o {bag_dir.parent / "dataset"}')
    print(f'  field_deploy bag plot {bag_dir} -o {bag_dir.parent / "joints.png"}')
    print(f'demo finished in {time.monotonic() - started:.1f} s')
    ok = (all(r.outcome in ('done', 'succeeded', 'success') for r in results)
          and total_lost == 0 == total_unwritten)
    return 0 if ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser('demo', help='the whole stack on the simulated robot, a mission, a bag')
    parser.add_argument('--robot', default='quadruped_12dof', help='robot profile (default: %(default)s)')
    parser.add_argument('--mission', default=None, help='mission name or YAML (default: by robot kind)')
    parser.add_argument('--stack', default='field_stack', help='stack description')
    parser.add_argument('--out', default=None, help='run folder (default: bags/demo-<robot>-<time>)')
    parser.add_argument('--verbose', action='store_true', help='stream the nodes\' logs too')
    parser.add_argument('--fleet', action='store_true',
                        help='also run what a fleet sees, as local processes: an S3 store the '
                             "stack's uploader sends the bag to, Prometheus scraping the metrics, "
                             'a Foxglove-protocol viewer of the live view; each checked at the end')
    parser.set_defaults(func=demo)
