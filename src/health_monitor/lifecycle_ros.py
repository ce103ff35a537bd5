"""The lifecycle manager's ROS side: lifecycle_msgs / std_srvs clients, and the stack it manages.

:class:`RosLifecycleClient` implements :class:`~health_monitor.manager.LifecycleClient` over the
managed nodes' ``get_state`` / ``change_state`` services (and calls the policies' Trigger
services); :func:`managed_from_stack` reads the stack description the bring-up used, so the
manager restarts a dead node with the very same command line.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_srvs.srv import Trigger

from field_deploy.ros import Spinner
from health_monitor.config import HealthConfig, ManagedNode


class RosLifecycleClient:
    """:class:`~health_monitor.manager.LifecycleClient` over lifecycle_msgs services.

    The answers are taken by an executor spun in a thread of its own; the caller (the health
    monitor's worker) waits on each call's future with an event. Why not
    ``executor.spin_until_future_complete`` from the caller, as before: measured on rclpy 7.1.6
    (Jazzy), every call left two tasks in the executor's task list that no later spin ran or
    removed (the wake callbacks it hangs on the future, scheduled as tasks when the answer
    comes; the spin loop stops the moment the future is done) - ~3.5 kB per call, and each spin
    walks the whole list, so the calls slowed too (issue 19, docs/soak.md). A continuously spun
    executor runs and drops its tasks.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.executor = SingleThreadedExecutor(context=node.context)
        # a new client (Node.create_client) and an answer wake the executor: a longer step
        # only spares idle wake-ups (and makes close() wait up to it)
        self.spinner = Spinner([node], executor=self.executor, step_s=0.25).start()
        self._get: dict[str, Any] = {}
        self._change: dict[str, Any] = {}

    def close(self) -> None:
        """Stop the spinning thread (the node stays the owner's to destroy)."""
        self.spinner.stop()

    def _clients(self, name: str) -> tuple[Any, Any]:
        if name not in self._get:
            self._get[name] = self.node.create_client(GetState, f'{name}/get_state')
            self._change[name] = self.node.create_client(ChangeState, f'{name}/change_state')
        return self._get[name], self._change[name]

    def _call(self, client: Any, request: Any, timeout: float, *,
              resend_every: float | None = None) -> Any:
        """The service's answer within ``timeout``, or None.

        ``resend_every``: for a request that may be repeated (``get_state``), send it again
        each time so long passes without an answer, until ``timeout``. Why: a service that
        has just appeared can lose its first answers. ``service_is_ready`` only says the
        client matched the server; the server may not have matched the client's response
        reader yet, and Fast DDS then drops the response ("failed to send response (timeout)"
        in the node's log). A clean-clone suite run saw that take a newly started node's
        first ``get_state``, and the monitor judged a healthy node down.
        """
        if not client.service_is_ready() and not client.wait_for_service(timeout_sec=timeout):
            return None
        answered = threading.Event()
        deadline = time.monotonic() + timeout
        futures = []
        while True:
            future = client.call_async(request)
            future.add_done_callback(lambda _future: answered.set())
            futures.append(future)
            left = deadline - time.monotonic()
            wait = left if resend_every is None else min(left, resend_every)
            if answered.wait(max(0.0, wait)) or time.monotonic() >= deadline:
                break
        done = [f for f in futures if f.done()]
        for f in futures:
            if not f.done():
                client.remove_pending_request(f)
        return done[0].result() if done else None

    def available(self, node: str) -> bool:
        return self._clients(node)[0].service_is_ready()

    def get_state(self, node: str, timeout: float) -> str | None:
        response = self._call(self._clients(node)[0], GetState.Request(), timeout,
                              resend_every=min(1.0, timeout / 3))
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
    nodes = tuple(ManagedNode(n.name, tuple(node_argv(n, described.namespace, autostart=False)),
                              n.stop_timeout)
                  for n in described.managed)
    lifecycle = dataclasses.replace(cfg.lifecycle, nodes=nodes,
                                    discover_timeout_s=max(cfg.lifecycle.discover_timeout_s,
                                                           cfg.lifecycle.spawn_timeout_s))
    return dataclasses.replace(cfg, lifecycle=lifecycle)
