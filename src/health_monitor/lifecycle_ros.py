"""The lifecycle manager's ROS side: lifecycle_msgs / std_srvs clients, and the stack it manages.

:class:`RosLifecycleClient` implements :class:`~health_monitor.manager.LifecycleClient` over the
managed nodes' ``get_state`` / ``change_state`` services (and calls the policies' Trigger
services); :func:`managed_from_stack` reads the stack description the bring-up used, so the
manager restarts a dead node with the very same command line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_srvs.srv import Trigger

from health_monitor.config import HealthConfig, ManagedNode


class RosLifecycleClient:
    """:class:`~health_monitor.manager.LifecycleClient` over lifecycle_msgs services."""

    def __init__(self, node: Node, executor: SingleThreadedExecutor) -> None:
        self.node = node
        self.executor = executor
        self._get: dict[str, Any] = {}
        self._change: dict[str, Any] = {}

    def _clients(self, name: str) -> tuple[Any, Any]:
        if name not in self._get:
            self._get[name] = self.node.create_client(GetState, f'{name}/get_state')
            self._change[name] = self.node.create_client(ChangeState, f'{name}/change_state')
        return self._get[name], self._change[name]

    def _call(self, client: Any, request: Any, timeout: float) -> Any:
        if not client.service_is_ready() and not client.wait_for_service(timeout_sec=timeout):
            return None
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=timeout)
        if not future.done():
            client.remove_pending_request(future)
            return None
        return future.result()

    def available(self, node: str) -> bool:
        self.executor.spin_once(timeout_sec=0)
        return self._clients(node)[0].service_is_ready()

    def get_state(self, node: str, timeout: float) -> str | None:
        response = self._call(self._clients(node)[0], GetState.Request(), timeout)
        return None if response is None else response.current_state.label

    def change_state(self, node: str, transition: int, timeout: float) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition))
        response = self._call(self._clients(node)[1], request, timeout)
        return bool(response is not None and response.success)

    def trigger(self, service: str, timeout: float = 2.0) -> tuple[bool, str]:
        client = self._get.get(service)
        if client is None:
            client = self._get[service] = self.node.create_client(Trigger, service)
        response = self._call(client, Trigger.Request(), timeout)
        if response is None:
            return False, f'{service} not available or no answer within {timeout:g} s'
        return bool(response.success), response.message


def managed_from_stack(cfg: HealthConfig, stack: str, stack_args: list[str]) -> HealthConfig:
    """Manage the stack description's managed nodes, each with the command the bring-up used.

    One description for both: ``field_deploy up`` starts the processes, this manager configures
    and activates them in the description's order and restarts one that dies with the very same
    command line. The bring-up has just started them, so they get time to appear
    (``spawn_timeout_s``) before the manager would start a second copy.
    """
    from field_deploy.stack import load_stack, node_argv, stack_arguments

    described = load_stack(stack, **stack_arguments(stack_args))
    nodes = tuple(ManagedNode(n.name, tuple(node_argv(n, described.namespace, autostart=False)))
                  for n in described.managed)
    lifecycle = dataclasses.replace(cfg.lifecycle, nodes=nodes,
                                    discover_timeout_s=max(cfg.lifecycle.discover_timeout_s,
                                                           cfg.lifecycle.spawn_timeout_s))
    return dataclasses.replace(cfg, lifecycle=lifecycle)
