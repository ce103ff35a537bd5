"""What an operator does to a running stack, over standard interfaces only.

Lifecycle transitions (``lifecycle_msgs``), Trigger services (``std_srvs``), parameters
(``rcl_interfaces``) and the diagnostics topics: exactly what ``ros2 lifecycle set`` /
``ros2 service call`` would do, so the demo and the end-to-end tests drive the stack the way a
person or a fleet service does. Missions are data: ``config/missions/<name>.yaml``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_srvs.srv import Trigger

from field_deploy.rosenv import config_dir

LEVELS = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}
STATE_NAMES = {State.PRIMARY_STATE_UNCONFIGURED: 'unconfigured', State.PRIMARY_STATE_INACTIVE: 'inactive',
               State.PRIMARY_STATE_ACTIVE: 'active', State.PRIMARY_STATE_FINALIZED: 'finalized'}


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


def _parameter(name: str, value: Any) -> Parameter:
    v = ParameterValue()
    if isinstance(value, bool):
        v.type, v.bool_value = ParameterType.PARAMETER_BOOL, value
    elif isinstance(value, int):
        v.type, v.integer_value = ParameterType.PARAMETER_INTEGER, value
    elif isinstance(value, float):
        v.type, v.double_value = ParameterType.PARAMETER_DOUBLE, value
    else:
        v.type, v.string_value = ParameterType.PARAMETER_STRING, str(value)
    return Parameter(name=name, value=v)


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
        self._clients: dict[str, Any] = {}
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
                if status.name.count('/') < 2:  # leaves only: a group's level repeats its worst leaf
                    continue
                previous = self.health.get(status.name, DiagnosticStatus.OK)
                if level != previous and (level != DiagnosticStatus.OK or previous != DiagnosticStatus.OK):
                    self.health_events.append((time.time(), status.name, LEVELS.get(level, str(level)),
                                               status.message))
                self.health[status.name] = level

    def status_of(self, skill: str) -> dict[str, str]:
        with self._lock:
            for name, values in self.skill_status.items():
                if name.endswith(skill) or (values.get('skill') == skill.split('/')[-1] and \
                        values.get('pack') == skill.split('/')[0]):
                    return dict(values)
        return {}

    # ------------------------------------------------------------------ services
    def _call(self, srv_type: type, name: str, request: Any, timeout: float) -> Any:
        """One service call; clients are kept (discovering a new client each call is slow)."""
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                client = self._clients[name] = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise OperatorError(f'{name}: service not available after {timeout:g} s')
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                client.remove_pending_request(future)
                raise OperatorError(f'{name}: no answer within {timeout:g} s')
            time.sleep(0.005)
        return future.result()

    def trigger(self, service: str, timeout: float = 5.0) -> tuple[bool, str]:
        response = self._call(Trigger, service, Trigger.Request(), timeout)
        return response.success, response.message

    def get_state(self, node: str, timeout: float = 2.0) -> str:
        response = self._call(GetState, f'{node}/get_state', GetState.Request(), timeout)
        return STATE_NAMES.get(response.current_state.id, response.current_state.label)

    def change_state(self, node: str, transition: int, timeout: float = 5.0) -> bool:
        request = ChangeState.Request()
        request.transition.id = transition
        return bool(self._call(ChangeState, f'{node}/change_state', request, timeout).success)

    def set_parameters(self, node: str, params: dict[str, Any], timeout: float = 5.0) -> None:
        request = SetParameters.Request(parameters=[_parameter(k, v) for k, v in params.items()])
        response = self._call(SetParameters, f'{node}/set_parameters', request, timeout)
        for (key, _), result in zip(params.items(), response.results, strict=True):
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
    def run_skill(self, step: MissionStep, timeout: float = 60.0,
                  on_progress: Any = None) -> StepResult:
        """Configure and activate one skill, wait until it leaves ``active``; its outcome."""
        node = f'{self.ns}/skills/{step.skill}'
        started = time.monotonic()
        state = self.get_state(node, timeout=5.0)
        if state == 'unconfigured':
            if step.params:
                self.set_parameters(node, step.params)
            if not self.change_state(node, Transition.TRANSITION_CONFIGURE):
                return StepResult(step.skill, 'refused', 'configure refused', 0.0)
        elif step.params:
            self.set_parameters(node, step.params)
        if not self.change_state(node, Transition.TRANSITION_ACTIVATE):
            reason = self.status_of(step.skill).get('reason', 'activate refused')
            return StepResult(step.skill, 'refused', reason, time.monotonic() - started)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if on_progress is not None:
                on_progress(step.skill, self.status_of(step.skill))
            try:
                state = self.get_state(node, timeout=2.0)
            except OperatorError:  # a busy host: ask again rather than give the skill up
                continue
            if state != 'active':
                status = self.status_of(step.skill)
                return StepResult(step.skill, status.get('outcome', state), status.get('reason', ''),
                                  time.monotonic() - started)
        self.trigger(f'{self.ns}/skill_runtime/stop')
        return StepResult(step.skill, 'timeout', f'still active after {timeout:g} s',
                          time.monotonic() - started)
