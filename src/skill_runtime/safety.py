"""Stop, e-stop and reset of the skill runtime: services and topic, never waiting for a worker.

A mixin of :class:`skill_runtime.node.SkillRuntimeNode` (its gate, lock, runs and publisher).
E-stop is served by the runtime's own e-stop node and executor thread: it touches only the gate,
under its lock, and publishes the first safe command from the callback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from skill_runtime.gate import MODE_ESTOP

if TYPE_CHECKING:
    import threading

    from skill_runtime.gate import SafetyGate, SkillRun


class SafetyServices:
    gate: SafetyGate | None
    runs: dict[str, SkillRun]
    _lock: threading.RLock
    _estop_pending: str | None

    if TYPE_CHECKING:
        def get_logger(self) -> Any: ...
        def stop_all(self, reason: str) -> None: ...
        def _publish(self, cmd: Any) -> None: ...
        def publish_status(self) -> None: ...

    def _srv_stop(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        n = len(self.runs)
        self.stop_all('stop requested')
        self.get_logger().info(f'stop: {n} skill(s) stopped, holding pose')
        resp.success, resp.message = True, f'stopped {n} skill(s); holding pose'
        return resp

    def estop(self, reason: str) -> None:
        """Latch e-stop and publish the first safe command now (any thread).

        Only the gate is touched here, under its lock: it drops every claim and ignores skills from
        this instant. The skills' lifecycle transitions (and their vendor ``stop()``) follow in the
        main executor's housekeeping, within 10 ms unless that executor is busy.
        """
        with self._lock:
            if self.gate is not None:
                self.gate.estop(reason)
                self._publish(self.gate.compute({}))
        self._estop_pending = reason

    def _srv_estop(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        self.estop('estop service')
        resp.success = self.gate is not None
        resp.message = 'e-stop latched: moving to the safe pose' if resp.success else \
            'skill_runtime not configured: no gate to stop'
        return resp

    def _on_estop_topic(self, msg: Bool) -> None:
        if msg.data:
            self.estop('estop topic')

    def _srv_reset(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        if self.gate is None:
            resp.success, resp.message = False, 'skill_runtime not configured'
            return resp
        was = self.gate.mode == MODE_ESTOP
        with self._lock:
            self.gate.reset()
        self.get_logger().info('reset: e-stop released' if was else 'reset: nothing latched')
        resp.success = True
        resp.message = 'e-stop released' if was else 'no e-stop was latched'
        self.publish_status()
        return resp
