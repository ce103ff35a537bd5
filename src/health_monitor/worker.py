"""The health monitor's worker: one thread for everything that waits on another node.

Lifecycle transitions, heartbeats and policy service calls wait for other processes' answers
(seconds, on a loaded host). Run on the executor, they would stall the monitors' checks; run
on threads of their own, two could drive one node at once. So they queue here, one at a time,
between heartbeats. Pure (no rclpy): the jobs bring their own clients.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from health_monitor.core import Status
from health_monitor.manager import LifecycleManager

Job = Callable[[], Any]


class ManagerWorker:
    """Runs queued jobs and the manager's heartbeat (``heartbeat_hz``) on one thread."""

    def __init__(self, manager: LifecycleManager, heartbeat_hz: float, stop: threading.Event,
                 log_error: Callable[[str], None]) -> None:
        self.manager = manager
        self.period = 1.0 / heartbeat_hz
        self._stop = stop
        """Shared with the manager (its ``stopping``): set, its waits end and nothing starts."""
        self.log_error = log_error
        self.statuses: list[Status] = manager.statuses()
        """The manager's statuses after the latest job or heartbeat (replaced whole: readable
        from other threads)."""
        self._jobs: queue.Queue[tuple[Job, threading.Event, list[Any]]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name='health-worker', daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Run ``job`` after the ones queued before it; its result is dropped."""
        self._jobs.put((job, threading.Event(), []))

    def call(self, job: Job, timeout: float) -> tuple[bool, Any]:
        """Run ``job`` and wait for its result: ``(True, result)``, or ``(False, None)`` when it
        had not finished after ``timeout`` s (it still runs)."""
        done, result = threading.Event(), []
        self._jobs.put((job, done, result))
        if not done.wait(timeout):
            return False, None
        return True, result[0]

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        next_beat = time.monotonic() + self.period
        while not self._stop.is_set():
            try:
                job, done, result = self._jobs.get(timeout=max(0.0, next_beat - time.monotonic()))
            except queue.Empty:
                job = None
            if job is not None:
                try:
                    result.append(job())
                except Exception as exc:  # a job must never kill the worker
                    self.log_error(f'health worker: {type(exc).__name__}: {exc}')
                    result.append((False, str(exc)))
                done.set()
            if time.monotonic() >= next_beat and not self._stop.is_set():
                next_beat = time.monotonic() + self.period
                try:
                    self.manager.heartbeat()
                except Exception as exc:
                    self.log_error(f'heartbeat: {type(exc).__name__}: {exc}')
            self.statuses = self.manager.statuses()
