"""A fixed-rate control loop on its own thread, with period statistics. Pure (no rclpy).

The thread asks for SCHED_FIFO (``rt_priority`` > 0) and falls back to normal scheduling when
the process may not have it (see :attr:`ControlLoop.realtime`).

Why not an rclpy timer: a timer callback waits behind every other callback of the executor
(parameter services, 500 Hz joint_states, status) and the EventsExecutor cannot be spun off the
main thread; a dedicated thread that sleeps to absolute deadlines keeps the period independent of
the executor's load. Missed deadlines are not caught up in a burst (that would send several
commands at once): the loop skips to the next future deadline and counts the overrun.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np


def set_thread_realtime(priority: int) -> str:
    """SCHED_FIFO ``priority`` for the calling thread; returns what was set or why not."""
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_FIFO, os.sched_param(priority))
        return f'SCHED_FIFO {priority}'
    except (OSError, AttributeError) as exc:
        return f'not realtime ({exc})'


def set_process_realtime(priority: int) -> str:
    """SCHED_FIFO ``priority`` for every thread the process has now - the calling one, and the
    native threads libraries started at import (OpenBLAS's server, LTTng's listeners) - so that
    every thread started later inherits it and none at normal priority is left in the process.
    (OpenBLAS's thread would spin realtime after a threaded BLAS call; the runtime makes none:
    its arrays are a robot's joints, far below OpenBLAS's threading sizes; pack code runs in
    the workers.) Returns what was set or why not."""
    done = set_thread_realtime(priority)
    if done.startswith('SCHED_FIFO'):
        for task in os.listdir('/proc/self/task'):
            try:
                os.sched_setscheduler(int(task), os.SCHED_FIFO, os.sched_param(priority))
            except OSError:      # ended meanwhile
                continue
    return done


def can_realtime() -> bool:
    """Whether this process may set SCHED_FIFO (root / CAP_SYS_NICE, or an rtprio limit)."""
    import resource
    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] > 0


class ControlLoop:
    """Call ``tick()`` every ``1/rate_hz`` seconds until :meth:`stop`; keeps the last periods."""

    def __init__(self, rate_hz: float, tick: Callable[[], None], *, name: str = 'control-loop',
                 history: int = 20000, on_error: Callable[[BaseException], None] | None = None,
                 rt_priority: int = 0) -> None:
        self.period_ns = round(1e9 / rate_hz)
        self.rate_hz = rate_hz
        self._tick = tick
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.periods_ns: deque[int] = deque(maxlen=history)
        self.overruns = 0
        self.ticks = 0
        self.last_tick_ns = 0
        self.rt_priority = rt_priority
        self.realtime = ''
        """'' before start; then 'SCHED_FIFO <prio>', 'off' or why it could not be set."""
        self._started = threading.Event()

    def start(self) -> ControlLoop:
        self._thread.start()
        self._started.wait(1.0)
        return self

    def _set_realtime(self) -> None:
        """SCHED_FIFO for this thread only; measured here it cuts p99 jitter under load from
        ~2 ms to ~0.1 ms. Needs CAP_SYS_NICE (or an rtprio limit); without it, say so and go on."""
        self.realtime = set_thread_realtime(self.rt_priority) if self.rt_priority > 0 else 'off'

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        self._set_realtime()
        self._started.set()
        next_ns = time.monotonic_ns() + self.period_ns
        last = 0
        while not self._stop.is_set():
            delay = next_ns - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            now = time.monotonic_ns()
            if last:
                self.periods_ns.append(now - last)
            last = now
            self.last_tick_ns = now
            self.ticks += 1
            try:
                self._tick()
            except BaseException as exc:  # the loop must outlive a bug in one tick
                if self._on_error is not None:
                    self._on_error(exc)
            next_ns += self.period_ns
            now = time.monotonic_ns()
            if now > next_ns:
                missed = (now - next_ns) // self.period_ns + 1
                self.overruns += int(missed)
                next_ns += missed * self.period_ns

    def jitter_stats(self) -> dict[str, float]:
        """|period − nominal| in ms: p50, p99, max; plus the mean period and sample count."""
        periods = np.array(self.periods_ns, dtype=np.float64)
        if periods.size == 0:
            return {'n': 0, 'p50_ms': 0.0, 'p99_ms': 0.0, 'max_ms': 0.0, 'mean_period_ms': 0.0}
        dev = np.abs(periods - self.period_ns) / 1e6
        return {'n': int(periods.size), 'p50_ms': float(np.percentile(dev, 50)),
                'p99_ms': float(np.percentile(dev, 99)), 'max_ms': float(dev.max()),
                'mean_period_ms': float(periods.mean() / 1e6), 'overruns': self.overruns}

    def reset_stats(self) -> None:
        self.periods_ns.clear()
        self.overruns = 0
