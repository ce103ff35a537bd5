"""The console's one connection to a running stack: a node spun in the background, an Operator.

Every console command opens a :class:`Session`, which turns the ways a stack can be missing into
the console's exit codes: nothing heard from ``/skill_runtime/status`` within the timeout is "the
stack is not running" (:class:`~field_deploy.cli.StackUnavailable`, exit 3), as is a service that
does not answer; a name that does not exist is a usage error (exit 2) listing the near names.
"""

from __future__ import annotations

import os
import time
from typing import Any

from field_app.console import DEFAULT_TIMEOUT
from field_app.console.params import ParamInfo, from_descriptor, unknown
from field_app.operator import Operator, OperatorError
from field_deploy.cli import StackUnavailable, UsageError

GATE = 'skill_runtime/safety_gate'


class Session:
    """``with Session() as s: s.require_runtime(); s.operator.run_skill(...)``."""

    def __init__(self, namespace: str = '', timeout: float = DEFAULT_TIMEOUT) -> None:
        self.namespace = namespace
        self.timeout = timeout
        self.node: Any = None
        self.operator: Operator | None = None
        self._spinner: Any = None

    def __enter__(self) -> Session:
        import rclpy
        from rclpy.node import Node

        from field_deploy.ros import Spinner, init

        if not rclpy.ok():
            init([])
        self.node = Node(f'field_deploy_console_{os.getpid()}')
        self.operator = Operator(self.node, self.namespace)
        self._spinner = Spinner([self.node]).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        import rclpy

        if self._spinner is not None:
            self._spinner.stop()
        if self.node is not None:
            self.node.destroy_node()
        rclpy.try_shutdown()

    @property
    def ops(self) -> Operator:
        assert self.operator is not None, 'use the session in a with block'
        return self.operator

    @property
    def runtime(self) -> str:
        return f'{self.ops.ns}/skill_runtime'

    def require_runtime(self) -> dict[str, dict[str, str]]:
        """The runtime's status (skills and gate); StackUnavailable when it is not heard."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            with self.ops._lock:
                status = dict(self.ops.skill_status)
            if GATE in status:
                if status[GATE].get('message') == 'not configured':
                    raise StackUnavailable(f'{self.runtime} is not configured yet (the stack is '
                                           'starting, or its lifecycle manager gave up on it)')
                return status
            time.sleep(0.05)
        raise StackUnavailable(f'stack not running: nothing heard from {self.runtime}/status within '
                               f'{self.timeout:g} s (start it with `field_deploy up`; same '
                               f'ROS_DOMAIN_ID={os.environ.get("ROS_DOMAIN_ID", "0")}?)')

    def skills(self) -> list[str]:
        """``<pack>/<skill>`` of every skill the runtime reports."""
        status = self.require_runtime()
        return sorted(name.removeprefix('skills/') for name in status if name.startswith('skills/'))

    def resolve(self, skill: str) -> str:
        names = self.skills()
        if skill not in names:
            raise UsageError(unknown('skill', skill, names))
        return skill

    def parameters(self, skill: str) -> dict[str, ParamInfo]:
        """The skill node's parameter descriptors (``ros2 param describe``)."""
        descriptors = self.call(self.ops.client.describe, f'{self.ops.ns}/skills/{skill}',
                                self.timeout)
        return {name: from_descriptor(d) for name, d in descriptors.items()}

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a service-calling function; a service that does not answer is exit 3."""
        try:
            return fn(*args, **kwargs)
        except (TimeoutError, OperatorError) as exc:
            raise StackUnavailable(str(exc)) from None

    def trigger(self, name: str) -> tuple[bool, str]:
        """``/skill_runtime/<name>`` (std_srvs/Trigger): success and the runtime's message."""
        response = self.call(self.ops.client.trigger, f'{self.runtime}/{name}', self.timeout)
        return bool(response.success), str(response.message)
