"""What an operator does to a running stack, over standard interfaces only.

Lifecycle transitions (``lifecycle_msgs``), Trigger services (``std_srvs``), parameters
(``rcl_interfaces``) and the diagnostics topics: exactly what ``ros2 lifecycle set`` /
``ros2 service call`` would do, so the demo and the end-to-end tests drive the stack the way a
person or a fleet service does. Missions are data: ``config/missions/<name>.yaml``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from field_deploy.rosenv import config_dir
from skill_runtime.client import SkillClient

LEVELS = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}


class OperatorError(RuntimeError):
    """A step the stack refused or did not answer; says which node and what."""


@dataclass(frozen=True)
class MissionStep:
    skill: str
    """``<pack>/<skill>``: the lifecycle node ``/skills/<pack>/<skill>``."""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Mission:
    name: str
    robot_kind: str
    steps: tuple[MissionStep, ...]


def load_mission(name_or_path: str | Path) -> Mission:
    path = Path(name_or_path)
    if path.suffix not in ('.yaml', '.yml') and not path.exists():
        path = config_dir() / 'missions' / f'{name_or_path}.yaml'
    if not path.is_file():
        raise OperatorError(f'{path}: no such mission file')
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get('steps'), list) or not doc['steps']:
        raise OperatorError(f'{path}: steps: expected a non-empty list')
    steps = []
    for i, raw in enumerate(doc['steps']):
        if not isinstance(raw, dict) or not isinstance(raw.get('skill'), str) or '/' not in raw['skill']:
            raise OperatorError(f'{path}: steps[{i}].skill: expected "<pack>/<skill>"')
        params = raw.get('params', {}) or {}
        if not isinstance(params, dict):
            raise OperatorError(f'{path}: steps[{i}].params: expected a mapping')
        steps.append(MissionStep(raw['skill'], dict(params)))
    return Mission(name=str(doc.get('name', path.stem)), robot_kind=str(doc.get('robot_kind', '')),
                   steps=tuple(steps))


def progress_printer(say: Callable[[str], None], every_s: float = 1.0
                     ) -> Callable[[str, dict[str, str]], None]:
    """A progress line per skill at most every ``every_s`` while it is active (as the demo)."""
    last = [0.0]

    def progress(skill: str, status: dict[str, str]) -> None:
        if time.monotonic() - last[0] >= every_s and status.get('phase') == 'active':
            last[0] = time.monotonic()
            try:
                percent = f'{100 * float(status.get("progress", 0)):3.0f} %'
            except ValueError:
                percent = status.get('progress', '')
            say(f'  {skill}: {percent}')
    return progress


@dataclass
class StepResult:
    skill: str
    outcome: str
    reason: str
    seconds: float


class Operator:
    """A client node; needs a spinning executor (``field_deploy.ros.Spinner``)."""

    def __init__(self, node: Node, namespace: str = '') -> None:
        self.node = node
        self.ns = f'/{namespace.strip("/")}' if namespace.strip('/') else ''
        self._lock = threading.Lock()
        self.skill_status: dict[str, dict[str, str]] = {}
        self.health: dict[str, int] = {}
        self.health_events: list[tuple[float, str, str, str]] = []
        self.client = SkillClient(node, f'{self.ns}/skill_runtime')
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(DiagnosticArray, f'{self.ns}/skill_runtime/status', self._on_status, qos)
        node.create_subscription(DiagnosticArray, '/diagnostics_agg', self._on_agg, qos)

    # ------------------------------------------------------------------ topics
    def _on_status(self, msg: DiagnosticArray) -> None:
        with self._lock:
            for status in msg.status:
                self.skill_status[status.name] = {kv.key: kv.value for kv in status.values} | {
                    'message': status.message}

    def _on_agg(self, msg: DiagnosticArray) -> None:
        with self._lock:
            for status in msg.status:
                level = int.from_bytes(status.level, 'little') if isinstance(status.level, bytes) \
                    else int(status.level)
                previous = self.health.get(status.name, DiagnosticStatus.OK)
                if level != previous and (level != DiagnosticStatus.OK or previous != DiagnosticStatus.OK):
                    self.health_events.append((time.time(), status.name, LEVELS.get(level, str(level)),
                                               status.message))
                self.health[status.name] = level

    def leaf_events(self) -> list[tuple[float, str, str, str]]:
        """Health events of the leaves only: a group's level repeats the worst of its leaves."""
        with self._lock:
            names = set(self.health)
            groups = {n for n in names if any(o.startswith(n + '/') for o in names)}
            return [e for e in self.health_events if e[1] not in groups]

    def status_of(self, skill: str) -> dict[str, str]:
        with self._lock:
            for name, values in self.skill_status.items():
                if name.endswith(skill) or (values.get('skill') == skill.split('/')[-1] and \
                        values.get('pack') == skill.split('/')[0]):
                    return dict(values)
        return {}

    # ------------------------------------------------------------------ services
    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except TimeoutError as exc:
            raise OperatorError(str(exc)) from None

    def trigger(self, service: str, timeout: float = 5.0) -> tuple[bool, str]:
        response = self._call(self.client.trigger, service, timeout)
        return response.success, response.message

    def get_state(self, node: str, timeout: float = 2.0) -> str:
        return self._call(self.client.state, node, timeout)

    def change_state(self, node: str, transition: str, timeout: float = 5.0) -> bool:
        return self._call(self.client.transition, node, transition, timeout)

    def set_parameters(self, node: str, params: dict[str, Any]) -> None:
        results = self._call(self.client.set_params, node, **params)
        for key, result in zip(params, results, strict=True):
            if not result.successful:
                raise OperatorError(f'{node}: parameter {key!r} refused: {result.reason}')

    def wait_state(self, node: str, state: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.get_state(node, timeout=1.0) == state:
                    return True
            except OperatorError:
                pass
            time.sleep(0.1)
        return False

    # ------------------------------------------------------------------ skills
    def _final_status(self, skill: str, timeout: float = 3.0) -> dict[str, str]:
        """The runtime's status once it reports the run's outcome (it publishes at 10 Hz, so the
        lifecycle state can say "inactive" a moment before the status says why)."""
        deadline = time.monotonic() + timeout
        status = self.status_of(skill)
        while time.monotonic() < deadline and not (status.get('outcome')
                                                   and status.get('phase') != 'active'):
            time.sleep(0.05)
            status = self.status_of(skill)
        return status

    def prepare(self, steps: Sequence[MissionStep]) -> None:
        """Create the service clients of every step's skill up front (matched by the time each
        runs)."""
        for step in steps:
            self.client.prepare(f'{self.ns}/skills/{step.skill}')

    def start_skill(self, step: MissionStep) -> StepResult | None:
        """Configure (if needed), set the step's parameters and activate its skill.

        None when the skill runs; a ``refused`` result with the runtime's reason otherwise.
        """
        node = f'{self.ns}/skills/{step.skill}'
        started = time.monotonic()
        state = self.get_state(node, timeout=5.0)
        with self._lock:  # the outcome read after this run must be this run's, not the last one's
            self.skill_status.pop(f'skills/{step.skill}', None)
        if state == 'unconfigured':
            if step.params:
                self.set_parameters(node, step.params)
            if not self.change_state(node, 'configure'):
                reason = self._final_status(step.skill, 1.0).get('reason') or 'configure refused'
                return StepResult(step.skill, 'refused', reason, 0.0)
        elif state == 'active':
            return StepResult(step.skill, 'refused', 'already active', 0.0)
        elif step.params:
            self.set_parameters(node, step.params)
        if not self.change_state(node, 'activate'):
            reason = self._final_status(step.skill, 1.0).get('reason') or 'activate refused'
            return StepResult(step.skill, 'refused', reason, time.monotonic() - started)
        return None

    def wait_skill(self, skill: str, started: float, timeout: float = 60.0,
                   on_progress: Any = None) -> StepResult:
        """Wait until the skill leaves ``active``; its outcome (stopped through the runtime after
        ``timeout`` s)."""
        node = f'{self.ns}/skills/{skill}'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if on_progress is not None:
                on_progress(skill, self.status_of(skill))
            try:
                state = self.get_state(node, timeout=2.0)
            except OperatorError:  # a busy host: ask again rather than give the skill up
                continue
            if state != 'active':
                seconds = time.monotonic() - started
                status = self._final_status(skill)
                return StepResult(skill, status.get('outcome') or state, status.get('reason', ''),
                                  seconds)
        self.trigger(f'{self.ns}/skill_runtime/stop')
        return StepResult(skill, 'timeout', f'still active after {timeout:g} s',
                          time.monotonic() - started)

    def stop_skill(self, skill: str, started: float, timeout: float = 10.0) -> StepResult:
        """Stop every skill through ``/skill_runtime/stop`` (the gate holds the pose) and wait for
        ``skill``'s outcome: what Ctrl-C does to a running mission."""
        node = f'{self.ns}/skills/{skill}'
        self.trigger(f'{self.ns}/skill_runtime/stop', timeout)
        deadline = time.monotonic() + timeout
        state = 'active'
        while time.monotonic() < deadline:
            try:
                state = self.get_state(node, timeout=2.0)
            except OperatorError:
                continue
            if state != 'active':
                break
            time.sleep(0.1)
        if state == 'active':  # activated while the stop was on its way: stop once more
            self.trigger(f'{self.ns}/skill_runtime/stop', timeout)
        status = self._final_status(skill)
        return StepResult(skill, status.get('outcome') or 'stopped',
                          status.get('reason') or 'stop requested', time.monotonic() - started)

    def run_skill(self, step: MissionStep, timeout: float = 60.0,
                  on_progress: Any = None) -> StepResult:
        """Configure and activate one skill, wait until it leaves ``active``; its outcome."""
        started = time.monotonic()
        refused = self.start_skill(step)
        if refused is not None:
            return refused
        return self.wait_skill(step.skill, started, timeout, on_progress)
