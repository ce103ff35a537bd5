"""Blocking client of the skill runtime over its standard interfaces (for tests, bench, tools).

Everything goes through what ``ros2 lifecycle`` / ``ros2 param`` / ``ros2 service`` would use:
``<skill>/change_state`` and ``get_state`` (lifecycle_msgs), ``<skill>/set_parameters``,
``list_parameters`` and ``describe_parameters`` (rcl_interfaces), ``/skill_runtime/stop|estop|reset``
(std_srvs/Trigger). The node given must be
spun by someone else (e.g. :class:`field_deploy.ros.Spinner`); calls wait on their futures.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rcl_interfaces.srv import DescribeParameters, ListParameters, SetParameters
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

TRANSITIONS = {'configure': Transition.TRANSITION_CONFIGURE,
               'activate': Transition.TRANSITION_ACTIVATE,
               'deactivate': Transition.TRANSITION_DEACTIVATE,
               'cleanup': Transition.TRANSITION_CLEANUP}
GOAL_STATES = {'configure': 'inactive', 'activate': 'active', 'deactivate': 'inactive',
               'cleanup': 'unconfigured'}


class SkillClient:
    """``SkillClient(node).transition('/skills/reference_quadruped/stand_up', 'configure')``."""

    def __init__(self, node: Node, runtime: str = '/skill_runtime') -> None:
        self.node = node
        self.runtime = runtime.rstrip('/')
        self._clients: dict[tuple[type, str], Any] = {}

    def _client(self, srv_type: type, name: str):
        key = (srv_type, name)
        if key not in self._clients:
            self._clients[key] = self.node.create_client(srv_type, name)
        return self._clients[key]

    def prepare(self, skill: str) -> None:
        """Create the clients of a skill's services now, so that DDS has matched them both ways
        by the time they are called (a mission prepares all its skills before the first runs)."""
        for srv_type, service in ((GetState, 'get_state'), (ChangeState, 'change_state'),
                                  (SetParameters, 'set_parameters')):
            self._client(srv_type, f'{skill}/{service}')

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 10.0) -> Any:
        client = self._client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f'service {name} not available after {timeout:g} s')
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        # The done callback reaches us as a task of the node's executor; the future itself is
        # looked at too, so an answer is never missed whatever that executor does with tasks.
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() >= deadline:
                raise TimeoutError(f'service {name} did not answer within {timeout:g} s')
            done.wait(0.01)
        return future.result()

    def transition(self, skill: str, name: str, timeout: float = 10.0) -> bool:
        """Request a lifecycle transition; True when the node made it.

        An answer can be lost while a new client is still being matched: a Fast DDS service drops
        its answer to a client whose reader it has not discovered within 100 ms
        (ros2/rmw_fastrtps#390), which a loaded host overruns. So on a timeout the node's state
        says whether the transition was made. It is never requested a second time: a request that
        is only late would then run twice (a skill activated twice).
        """
        req = ChangeState.Request()
        req.transition.id = TRANSITIONS[name]
        try:
            return bool(self.call(ChangeState, f'{skill}/change_state', req, timeout).success)
        except TimeoutError:
            if self.state(skill, timeout) == GOAL_STATES[name]:
                return True
            raise

    def state(self, skill: str, timeout: float = 10.0) -> str:
        """The node's lifecycle state label; asked twice if the first answer is lost (see
        :meth:`transition`)."""
        name = f'{skill}/get_state'
        try:
            reply = self.call(GetState, name, GetState.Request(), timeout)
        except TimeoutError:
            reply = self.call(GetState, name, GetState.Request(), timeout)
        return str(reply.current_state.label)

    def set_params(self, skill: str, **values: Any) -> list[SetParametersResult]:
        req = SetParameters.Request()
        req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        return list(self.call(SetParameters, f'{skill}/set_parameters', req).results)

    def describe(self, node: str, timeout: float = 10.0) -> dict[str, ParameterDescriptor]:
        """Every parameter of ``node`` with its descriptor (type, range, read-only), as
        ``ros2 param describe`` shows it: what a value must be before it is set."""
        names = self.call(ListParameters, f'{node}/list_parameters', ListParameters.Request(),
                          timeout).result.names
        req = DescribeParameters.Request(names=list(names))
        reply = self.call(DescribeParameters, f'{node}/describe_parameters', req, timeout)
        return {d.name: d for d in reply.descriptors}

    def trigger(self, service: str, timeout: float = 10.0) -> Trigger.Response:
        """``stop``, ``estop`` or ``reset`` of the runtime (or any Trigger by absolute name)."""
        name = service if service.startswith('/') else f'{self.runtime}/{service}'
        return self.call(Trigger, name, Trigger.Request(), timeout)

    def run(self, skill: str) -> bool:
        """Configure (if needed) and activate a skill; True when it became active."""
        if self.state(skill) == 'unconfigured' and not self.transition(skill, 'configure'):
            return False
        return self.transition(skill, 'activate')
