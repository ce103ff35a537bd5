"""The runtime's one thread for its worker processes: spawns, reads, reaps and polices them.

The kernel ties ``PR_SET_PDEATHSIG`` to the *thread* that spawned a child, so the spawner must live
as long as the runtime: every worker is started from this thread. It also reads the workers'
control lines (replies, log lines), reaps every worker that ends (woken by its pidfd, then
``waitpid``: no zombies) and checks the caps (log file size, stop grace). No rclpy here.

Its scheduling: the runtime's (SCHED_FIFO where permitted) with ``SCHED_RESET_ON_FORK``, so the
interpreters it starts run SCHED_OTHER from their first instruction. Until 2026-12-03 it dropped
itself to SCHED_OTHER for that, and was then the one normal-priority thread of a realtime
process: on a loaded host the kernel preempted it while it held the GIL (a chatty pack's log
lines wake it 50 times a second) and the control thread waited for the GIL behind it - up to
84 ms, the gate at 366-442 Hz of 500 during ``chatty_thread`` (test_pack_containment; 498-499 Hz
with this).
"""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any

from skill_runtime.proxy import CHECK_INTERVAL_S, WorkerError, WorkerProcess, WorkerSpec


def children_start_normal() -> str:
    """Keep the calling thread's realtime policy, and have the processes it forks start
    SCHED_OTHER (``SCHED_RESET_ON_FORK``); returns the thread's scheduling, said for the log."""
    policy = os.sched_getscheduler(0)
    if policy not in (os.SCHED_FIFO, os.SCHED_RR):
        return 'SCHED_OTHER'            # children inherit normal scheduling anyway
    priority = os.sched_getparam(0).sched_priority
    name = 'SCHED_FIFO' if policy == os.SCHED_FIFO else 'SCHED_RR'
    try:
        os.sched_setscheduler(0, policy | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError as exc:      # cannot happen to a thread already realtime; never fork realtime
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        return f'SCHED_OTHER ({name} with SCHED_RESET_ON_FORK refused: {exc.strerror})'
    return f'{name} {priority}, children SCHED_OTHER'


class Supervisor:
    """The runtime's one thread for spawning, reading, reaping and policing its workers."""

    def __init__(self, log: Callable[[str, str, str], None]) -> None:
        self._log = log
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self.workers: set[WorkerProcess] = set()
        self._stop = threading.Event()
        self.scheduling = ''
        """The thread's scheduling once started (:func:`children_start_normal`)."""
        self._thread = threading.Thread(target=self._run, name='skill-workers', daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn`` in the supervisor thread (children it starts run SCHED_OTHER, and their
        death signal follows this long-lived thread); its result."""
        box: list[Any] = [threading.Event(), None]
        self._calls.put((fn, box))
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b'.')
        if not box[0].wait(timeout):
            raise WorkerError(f'child not started within {timeout:g} s')
        if isinstance(box[1], BaseException):
            raise WorkerError(f'cannot start a child process: {box[1]}')
        return box[1]

    def spawn(self, spec: WorkerSpec, timeout: float = 5.0) -> WorkerProcess:
        """Start a worker from the supervisor thread, which then reads, reaps and polices it."""
        return self.call(lambda: self._spawn_now(spec), timeout)

    def _spawn_now(self, spec: WorkerSpec) -> WorkerProcess:
        worker = WorkerProcess(spec, lambda level, text: None)
        worker._log = lambda level, text, w=worker: self._log(w.key, level, text)
        self.workers.add(worker)
        self._sel.register(worker.events_r, selectors.EVENT_READ, ('events', worker))
        self._sel.register(worker.pidfd, selectors.EVENT_READ, ('exit', worker))
        return worker

    def _run(self) -> None:
        self.scheduling = children_start_normal()
        self._log('supervisor', 'info', f'worker supervisor thread: {self.scheduling}')
        last_check = 0.0
        while not self._stop.is_set():
            try:
                self._once()
                now = time.monotonic()
                if now - last_check > CHECK_INTERVAL_S:
                    last_check = now
                    for worker in list(self.workers):
                        worker._check(now)
            except Exception as exc:  # the supervisor must outlive any one worker's mess
                self._log('supervisor', 'error', f'{type(exc).__name__}: {exc}')

    def _once(self) -> None:
        for key, _mask in self._sel.select(CHECK_INTERVAL_S):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 64)
                while True:
                    try:
                        fn, box = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    try:
                        box[1] = fn()
                    except Exception as exc:
                        box[1] = exc
                    box[0].set()
                continue
            kind, worker = key.data
            if kind == 'events' and not worker._on_readable():
                self._sel.unregister(worker.events_r)
                if not worker.exit_reason() and not worker.retired:
                    # An exiting process closes its pipes just before its pidfd says so: wait a
                    # moment for the exit (then reaped and named) before calling it a fault.
                    worker.channel_closed = True
                    worker.kill_at = time.monotonic() + 0.5
            elif kind == 'exit':
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(worker.events_r)
                self._sel.unregister(worker.pidfd)
                if not worker._reap():   # pidfd readable before waitpid can see it: rare, retry
                    worker.proc.wait(1.0)
                    worker._reap()
                self.workers.discard(worker)

    def stop(self, timeout: float = 2.0) -> None:
        """Kill every worker, reap them, end the thread."""
        for worker in list(self.workers):
            worker.kill('runtime shutting down')
        deadline = time.monotonic() + timeout
        while self.workers and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b'.')
        self._thread.join(timeout)
