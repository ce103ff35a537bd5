"""``<ns>/skills/<pack>/<skill>``: one skill as a lifecycle node, its code in a worker process.

configure: starts a worker for the skill (a fresh one if it has none or its last one died), which
imports the pack, builds the skill with the current parameters and runs its ``configure()`` (it
may refuse); activate: rebuilds it if parameters changed since, asks the runtime for its joints
and sends ``start``; the runtime deactivates it when it is done (→ inactive) or failed
(→ ErrorProcessing → unconfigured, the worker retired). Parameters cannot change while active.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter

from skill_runtime.gate import SkillRun
from skill_runtime.manifest import Manifest, ParamSpec, SkillSpec
from skill_runtime.proxy import WorkerError, WorkerProcess

if TYPE_CHECKING:
    from skill_runtime.node import SkillRuntimeNode

_PTYPE = {'double': ParameterType.PARAMETER_DOUBLE, 'int': ParameterType.PARAMETER_INTEGER,
          'bool': ParameterType.PARAMETER_BOOL, 'string': ParameterType.PARAMETER_STRING}
RETIRE_GRACE_S = 1.0   # a retired worker that does not exit by itself is killed after this


def _descriptor(p: ParamSpec) -> ParameterDescriptor:
    unit = f' [{p.unit}]' if p.unit else ''
    d = ParameterDescriptor(type=_PTYPE[p.type], description=f'{p.description}{unit}'.strip(),
                            dynamic_typing=False)
    if p.type == 'double':
        d.floating_point_range = [FloatingPointRange(from_value=float(p.min), to_value=float(p.max),
                                                     step=0.0)]
    elif p.type == 'int':
        d.integer_range = [IntegerRange(from_value=int(p.min), to_value=int(p.max), step=0)]
    return d


class SkillNode(LifecycleNode):
    """A skill as a lifecycle node with typed, ranged parameters; its code runs in :attr:`worker`."""

    def __init__(self, runtime: SkillRuntimeNode, manifest: Manifest, spec: SkillSpec) -> None:
        ns = runtime.get_namespace().rstrip('/')
        super().__init__(spec.name, namespace=f'{ns}/skills/{manifest.name}')
        self.runtime = runtime
        self.manifest = manifest
        self.spec = spec
        self.key = f'{manifest.name}/{spec.name}'
        self.worker: WorkerProcess | None = None
        self.built_with: dict[str, Any] | None = None
        """The parameters the worker's skill instance was built with (None: nothing built)."""
        self.run: SkillRun | None = None
        self.outcome = ''
        self.reason = ''
        for p in spec.params:
            self.declare_parameter(p.name, p.default, _descriptor(p))
        self.add_on_set_parameters_callback(self._on_set_parameters)

    @property
    def phase(self) -> str:
        return self._state_machine.current_state[1]

    def params(self) -> dict[str, Any]:
        return {p.name: self.get_parameter(p.name).value for p in self.spec.params}

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        if self.phase == 'active':
            return SetParametersResult(successful=False,
                                       reason=f'skill {self.key} is active: deactivate it first')
        return SetParametersResult(successful=True)

    def _set_result(self, outcome: str, reason: str) -> None:
        self.outcome, self.reason = outcome, reason
        self.runtime.publish_status()

    def retire_worker(self) -> None:
        """The skill instance is dropped: its worker exits (killed after a short grace)."""
        worker, self.worker, self.built_with = self.worker, None, None
        if worker is not None:
            worker.retire(RETIRE_GRACE_S)

    def ready(self) -> bool:
        w = self.worker
        return self.built_with == self.params() and w is not None and not w.dead and not w.closed

    def _build(self) -> str | None:
        """Build the skill in its worker with the current parameters; a reason to refuse, or None."""
        params = self.params()
        self.built_with = None
        try:
            rt = self.runtime
            assert rt.profile is not None and rt.robot is not None
            if self.worker is None or self.worker.dead or self.worker.closed:
                self.worker = rt.pool.spawn(self.key, self.manifest, self.spec)
            request = rt.pool.configure_request(
                self.manifest, self.spec, profile=rt.profile.path, params=params,
                indices=rt.claim_indices(self.spec), rate_hz=self.spec.control_rate or rt.rate_hz,
                sites=rt.robot.sites)
            reply = self.worker.request('configure', rt.vendor_call_timeout(), **request)
            problem = reply.get('problem') if reply.get('ok') else str(reply.get('error'))
        except WorkerError as exc:
            problem = str(exc)
            if self.worker is not None:
                self.worker.kill(problem)  # hung or broken: no grace
        if problem:
            self.retire_worker()  # a worker that refused, hung or broke is not reused
            self.get_logger().error(f'skill {self.key}: configure refused: {problem}')
            self._set_result('refused', f'configure: {problem}')
            return str(problem)
        self.built_with = params
        return None

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.runtime.profile is None:
            self._set_result('refused', 'skill_runtime is not configured')
            return TransitionCallbackReturn.FAILURE
        if self._build() is not None:
            return TransitionCallbackReturn.FAILURE
        self._set_result('', 'configured')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Parameters set while inactive apply now: the skill is rebuilt and re-checked with them;
        # a worker that died since is replaced by a fresh one.
        if not self.ready() and self._build() is not None:
            return TransitionCallbackReturn.FAILURE
        reason = self.runtime.start_skill(self)
        if reason is not None:
            self.get_logger().warning(f'skill {self.key}: activation refused: {reason}')
            self._set_result('refused', reason)
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f'skill {self.key}: started with {json.dumps(self.built_with)}')
        self._set_result('', 'running')
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        run = self.runtime.end_skill(self, 'stopped', 'deactivated')
        outcome, reason = (run.outcome, run.reason) if run is not None else ('stopped', 'deactivated')
        log = self.get_logger().error if outcome == 'failed' else self.get_logger().info
        log(f'skill {self.key}: {outcome}: {reason}')
        self._set_result(outcome, reason)
        return TransitionCallbackReturn.ERROR if outcome == 'failed' else TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.runtime.end_skill(self, 'failed', self.reason or 'error')
        self.retire_worker()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.retire_worker()
        self._set_result('', 'cleaned up')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.runtime.end_skill(self, 'stopped', 'shutdown')
        self.retire_worker()
        return TransitionCallbackReturn.SUCCESS
