"""The runtime's side of the process boundary: one skill worker process, as the runtime sees it.

:class:`WorkerProcess`: control requests with a bounded wait (:meth:`WorkerProcess.request`), the
control tick through the shared tick block (:meth:`~WorkerProcess.write_state` /
:meth:`~WorkerProcess.take_reply`, never blocking; :func:`tick_workers` for a whole tick), the
reading side of its control lines (bounded, rate-limited, JSON only), its reaping and the name of
its end ("worker exited with code 3", "worker killed by SIGSEGV"), and a kill that cannot hit a
recycled pid (pidfd). Spawned, read and reaped by :class:`skill_runtime.supervisor.Supervisor`.
No rclpy here.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skill_runtime import ipc
from skill_runtime.api import RobotState
from skill_runtime.gate import SkillRun

WORKER_ENV_DROP = ('ROS_', 'RMW_', 'FASTRTPS_', 'FASTDDS_', 'CYCLONEDDS_', 'ZENOH_', 'RCL_',
                   'RCUTILS_')
"""Environment a worker does not get: it must not find, nor need, the ROS graph."""
LOG_RATE, LOG_BURST = 20.0, 50          # worker log lines per second forwarded to the runtime log
CHANNEL_BYTES_PER_S = 1 << 20           # more than this on the control channel: the worker is killed
RTT_HISTORY = 2500                      # 5 s of answers at 500 Hz
ANSWER_TIMEOUT_S = 0.25                 # a step not even begun by then is an overrun
FD_SETSIZE = 1024                       # select()'s limit on descriptor numbers
CHECK_INTERVAL_S = 0.05                 # how often the supervisor checks log sizes and graces


class WorkerError(Exception):
    """A request to a worker did not get an answer: it died, hung or was killed (``str`` says which)."""


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(WORKER_ENV_DROP)}
    # One BLAS thread: a skill's small arrays do not need more, and each thread is CPU the
    # gate's host shares. No .pyc writes into the (sealed) pack folder.
    env.update(OPENBLAS_NUM_THREADS='1', OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONDONTWRITEBYTECODE='1')
    return env


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f'signal {-returncode}'
        return f'worker killed by {name}'
    return f'worker exited with code {returncode}'


def _tail(path: Path, limit: int = 4096) -> str:
    """What a worker's output says about its death: faulthandler's innermost frame after a native
    crash, else the last non-empty line."""
    try:
        with path.open('rb') as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            lines = [ln.strip() for ln in f.read().decode('utf-8', 'replace').splitlines() if ln.strip()]
    except OSError:
        return ''
    fatal = [i for i, ln in enumerate(lines) if ln.startswith('Fatal Python error')]
    if fatal:
        frame = next((ln for ln in lines[fatal[-1]:] if ln.startswith('File "')), '')
        return f'{lines[fatal[-1]]}; {frame}'[:300]
    return lines[-1][:200] if lines else ''


@dataclass
class WorkerSpec:
    """What a worker is started with (the skill itself comes with the ``configure`` request)."""

    key: str                # pack/skill, for log lines and reasons (a spare's is set when it is taken)
    log_path: Path          # the worker's stdout + stderr
    cwd: Path               # its scratch folder
    nice: int = 0
    log_cap_bytes: int = 8 << 20


class WorkerProcess:
    """One running worker, as the runtime sees it. Thread-safe; never blocks the control thread."""

    def __init__(self, spec: WorkerSpec, log: Callable[[str, str], None]) -> None:
        """Spawn it (call from the :class:`Supervisor` thread only)."""
        self.spec = spec
        self.key = spec.key
        self._log = log
        self.size = ipc.TickBlock.size(ipc.MAX_DOF, ipc.MAX_DOF, ipc.MAX_SITES)
        ctrl_r, self.ctrl_w = os.pipe()
        self.events_r, events_w = os.pipe()
        tick_r, self.tick_w = os.pipe()
        self.done_r, done_w = os.pipe()
        block_fd = ipc.new_block_file(self.size)
        self.map = mmap.mmap(block_fd, self.size)
        self.block: ipc.TickBlock | None = None
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = spec.log_path
        child = (ctrl_r, events_w, tick_r, done_w, block_fd)
        with spec.log_path.open('wb') as out:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', 'skill_runtime.worker', 'serve',
                 '--fds', ','.join(map(str, child)), '--size', str(self.size),
                 '--parent', str(os.getpid()), '--nice', str(spec.nice)],
                pass_fds=child, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=worker_env(), cwd=spec.cwd, close_fds=True, start_new_session=True)
        for fd in child:
            os.close(fd)
        for fd in (self.ctrl_w, self.tick_w, self.done_r, self.events_r):
            os.set_blocking(fd, False)
        self.pid = self.proc.pid
        self.pidfd = os.pidfd_open(self.pid)
        self.started = time.monotonic()
        self.ready = threading.Event()
        self.dead = ''
        """Why it ended ('' while alive): the first named reason wins over the exit status."""
        self.exit_status = ''
        self.retired = False
        self.closed = False
        self.channel_closed = False
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, list[Any]] = {}
        self._reader = ipc.LineReader()
        self._window = (0.0, 0)
        self._tokens, self._last_log = float(LOG_BURST), time.monotonic()
        self._dropped = 0
        self.kill_at = 0.0
        self.seq = 0
        self.outstanding = False
        self.sent_ns = 0
        self.rtts_ns: deque[int] = deque(maxlen=RTT_HISTORY)
        """Round trips (request sent → answer taken) of the last answers, for the status."""

    # ------------------------------------------------------------------ control requests
    def request(self, op: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """Send a control request and wait at most ``timeout`` s for its answer.

        Raises :class:`WorkerError` when the worker is or goes dead, or does not answer in time
        (the caller decides whether to kill it). The answer is a JSON object, never unpickled.
        """
        box: list[Any] = [threading.Event(), None]
        with self._lock:
            if self.dead or self.closed:
                raise WorkerError(self.dead or 'worker closed')
            rid = next(self._ids)
            self._pending[rid] = box
            try:
                os.write(self.ctrl_w, ipc.encode_line({'op': op, 'id': rid, **fields}))
            except BlockingIOError:
                del self._pending[rid]
                raise WorkerError('worker does not read its requests') from None
            except OSError as exc:
                del self._pending[rid]
                raise WorkerError(self.dead or f'worker channel: {exc}') from None
        deadline = time.monotonic() + timeout
        while not box[0].wait(min(0.02, max(0.0, deadline - time.monotonic()))):
            if self.dead:
                raise WorkerError(self.dead)
            if time.monotonic() >= deadline:
                with self._lock:
                    self._pending.pop(rid, None)
                raise WorkerError(f'{op} did not return within {timeout:g} s')
        return box[1]

    def send(self, op: str, **fields: Any) -> bool:
        """A request whose answer nobody waits for (stop); False if it could not be sent."""
        with self._lock:
            if self.dead or self.closed:
                return False
            try:
                os.write(self.ctrl_w, ipc.encode_line({'op': op, 'id': 0, **fields}))
            except OSError:
                return False
            return True

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(min(0.02, max(0.0, deadline - time.monotonic()))):
            if self.dead:
                raise WorkerError(f'{self.dead} while starting')
            if time.monotonic() >= deadline:
                age = time.monotonic() - self.started
                raise WorkerError(f'worker did not start within {timeout:g} s (pid {self.pid}, '
                                  f'started {age:.1f} s ago)')

    def set_layout(self, dof: int, n: int, sites: tuple[str, ...]) -> None:
        """The block's layout for this skill (the worker builds the same from its configure)."""
        self.block = ipc.TickBlock(self.map, dof, n, len(sites))
        self.sites = sites

    # ------------------------------------------------------------------ control tick (control thread)
    def write_state(self, t: float, q: np.ndarray, dq: np.ndarray, tau: np.ndarray, imu: np.ndarray,
                    wrenches: dict[str, np.ndarray], stamp_ns: int, *, new_request: bool) -> bool:
        """Put the state in the block; ``new_request``: and wake the worker to step on it.
        False (and nothing sent) while the previous request is unanswered or the worker is gone."""
        with self._lock:
            if self.dead or self.closed or self.block is None or (new_request and self.outstanding):
                return False
            seq = self.seq + 1 if new_request else self.seq
            self.block.write_state(seq, t, q, dq, tau, imu, wrenches, self.sites, stamp_ns)
            if not new_request:
                return True
            self.seq = seq
            self.outstanding = True
            self.sent_ns = time.monotonic_ns()
            try:
                os.write(self.tick_w, b'.')
            except BlockingIOError:
                pass  # a byte is already waiting: the worker wakes anyway
            except OSError:
                return False
            return True

    def take_reply(self) -> ipc.StepReply | None:
        """The answer to the outstanding request if it has come (a wake byte was read), else None."""
        with self._lock:
            if not self.outstanding or self.closed or self.block is None:
                return None
            try:
                woke = os.read(self.done_r, 64)
            except BlockingIOError:
                return None
            except OSError:
                return None
            if not woke:
                return None
            reply = self.block.read_reply(self.seq)
            if reply is not None:
                self.outstanding = False
                self.rtts_ns.append(time.monotonic_ns() - self.sent_ns)
            return reply

    def overdue(self, now_ns: int, budget: float, answer_timeout: float) -> str | None:
        """Why the outstanding request counts as an overrun now, or None.

        The worker marks in the block when it begins a step: from then on the step's own time
        counts against ``budget`` (the skill is in its code). Before that the worker is waiting to
        be scheduled (a loaded host): that is only an overrun after ``answer_timeout``. A worker
        that lies about when it began gains nothing beyond ``max(budget, answer_timeout)``.
        """
        if not self.outstanding or self.block is None:
            return None
        began = self.block.began(self.seq)
        if began is not None and self.sent_ns <= began <= now_ns and (now_ns - began) / 1e9 > budget:
            return f'watchdog: step running for more than {budget * 1e3:.0f} ms'
        limit = max(budget, answer_timeout)
        if (now_ns - self.sent_ns) / 1e9 > limit:
            return f'watchdog: no answer in {limit * 1e3:.0f} ms' + ('' if began else ' (step never began)')
        return None

    def exit_reason(self) -> str:
        """The exit of a worker that ended but may not be reaped yet ('' while it runs): looked at
        without reaping (``waitid`` with ``WNOWAIT``), so the supervisor still reaps it."""
        with self._lock:   # serialised with the reap (which sets exit_status under this lock)
            if self.closed or self.exit_status:
                return self.exit_status
            try:
                res = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except (OSError, AttributeError):
                return self.exit_status
        if res is None or res.si_pid == 0:
            return ''
        return describe_exit(res.si_status if res.si_code == os.CLD_EXITED else -res.si_status)

    def set_realtime(self, priority: int, budget: float) -> str:
        """While its skill runs: SCHED_FIFO ``priority`` for the worker's main thread (the one that
        steps), with RLIMIT_RTTIME so that it cannot keep a core longer than ``budget`` + 50 ms
        without blocking (SIGXCPU, then SIGKILL 50 ms later: a spinning vendor thread ends the
        worker). ``priority`` 0, or no permission: SCHED_OTHER stays; returns what was set."""
        if priority <= 0:
            return 'SCHED_OTHER'
        soft = int((budget + 0.05) * 1e6)
        with self._lock:   # never once reaped: the pid could belong to another process by then
            if self.exit_status or self.closed:
                return 'SCHED_OTHER (worker ended)'
            try:
                resource.prlimit(self.pid, resource.RLIMIT_RTTIME, (soft, soft + 50_000))
                os.sched_setscheduler(self.pid, os.SCHED_FIFO, os.sched_param(priority))
            except OSError as exc:
                return f'SCHED_OTHER (SCHED_FIFO {priority} refused: {exc.strerror})'
        return f'SCHED_FIFO {priority}'

    def set_normal(self) -> None:
        """Back to SCHED_OTHER (the skill ended: its stop() and the next configure run there)."""
        with self._lock, contextlib.suppress(OSError):
            if not (self.exit_status or self.closed):
                os.sched_setscheduler(self.pid, os.SCHED_OTHER, os.sched_param(0))

    def forget_outstanding(self) -> None:
        """A new run starts: an answer still owed to the previous one must not count for it."""
        with self._lock:
            self.outstanding = False
            with contextlib.suppress(OSError):
                os.read(self.done_r, 64)

    # ------------------------------------------------------------------ ending
    def kill(self, reason: str) -> None:
        """SIGKILL now (any thread; through the pidfd, so never a recycled pid)."""
        with self._lock:
            if not self.dead:
                self.dead = reason
            if self.closed:
                return
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def stop_skill(self, grace: float) -> None:
        """Ask for the skill's ``stop()``; killed if the answer does not come within ``grace``."""
        if self.send('stop'):
            self.kill_at = time.monotonic() + grace

    def retire(self, grace: float) -> None:
        """No more requests: close the channel (the worker exits), SIGKILL after ``grace``."""
        with self._lock:
            self.retired = True
            if not self.closed:
                with contextlib.suppress(OSError):
                    os.close(self.ctrl_w)
                self.ctrl_w = -1
        self.kill_at = time.monotonic() + grace

    # ------------------------------------------------------------------ supervisor side
    def _on_line(self, msg: dict[str, Any]) -> None:
        if 'log' in msg:
            now = time.monotonic()
            self._tokens = min(LOG_BURST, self._tokens + (now - self._last_log) * LOG_RATE)
            self._last_log = now
            dropped = msg.get('dropped')
            self._dropped += dropped if isinstance(dropped, int) and dropped > 0 else 0
            if self._tokens < 1.0:
                self._dropped += 1
                return
            self._tokens -= 1.0
            note = f' ({self._dropped} lines dropped)' if self._dropped else ''
            self._dropped = 0
            level = msg['log'] if msg['log'] in ('debug', 'info', 'warning', 'error') else 'info'
            self._log(level, f'{str(msg.get("msg"))[:ipc.LOG_LINE_CHARS]}{note}')
        elif msg.get('ready'):
            self.ready.set()
        elif 're' in msg:
            rid = msg['re']
            with self._lock:
                box = self._pending.pop(rid, None) if isinstance(rid, int) else None
            if rid == 0:
                self.kill_at = 0.0 if not self.retired else self.kill_at
                if not msg.get('ok'):
                    self._log('warning', str(msg.get('error'))[:ipc.MAX_REASON])
            elif box is not None:
                box[1] = msg
                box[0].set()

    def _on_readable(self) -> bool:
        """Read control lines; False at end of stream."""
        try:
            data = os.read(self.events_r, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        now = time.monotonic()
        start, count = self._window
        if now - start > 1.0:
            start, count = now, 0
        self._window = (start, count + len(data))
        if count + len(data) > CHANNEL_BYTES_PER_S:
            self.kill(f'worker flooded its control channel (over {CHANNEL_BYTES_PER_S >> 10} KiB/s)')
            return True
        for msg in self._reader.feed(data):
            self._on_line(msg)
        return True

    def _reap(self) -> bool:
        """After the pidfd said it ended: waitpid, name the end, close every descriptor."""
        with self._lock:
            rc = self.proc.poll()
            if rc is None:
                return False
            self.exit_status = describe_exit(rc)
        with contextlib.suppress(OSError):
            while self._on_readable():   # what it wrote before dying (a last reply, a log line)
                pass
        last = _tail(self.log_path)
        with self._lock:
            if not self.dead:
                self.dead = self.exit_status + (f' (last output: {last})' if last and rc != 0 else '')
            self.closed = True
            for fd in (self.ctrl_w, self.tick_w, self.done_r, self.events_r, self.pidfd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            pending, self._pending = self._pending, {}
        for box in pending.values():
            box[0].set()
        return True

    def _check(self, now: float) -> None:
        if self.kill_at and now > self.kill_at and not self.closed:
            self.kill('worker closed its control channel' if self.channel_closed else
                      'retired' if self.retired else 'worker did not stop within its grace')
            self.kill_at = 0.0
        try:
            size = os.stat(self.log_path).st_size
        except OSError:
            return
        if size > self.spec.log_cap_bytes and not self.dead:
            self.kill(f'worker wrote more than {self.spec.log_cap_bytes >> 20} MiB to stdout/stderr')


def wait_replies(workers: list[WorkerProcess], deadline_ns: int) -> None:
    """Control thread: wait until every worker with an outstanding request has signalled its
    answer, or ``deadline_ns`` (monotonic) passes - never longer.

    ``select``, not ``poll``: poll and epoll take whole milliseconds and Python rounds the timeout
    up, so a wait with 0.3 ms left slept 1.0 ms and more. Measured 2026-12-01 on a 2-core host
    while a pack's threads spun: 83 % of the waits ended 0.2-0.9 ms past their deadline and the
    500 Hz gate skipped 3-30 % of its ticks. ``select`` sleeps to the microsecond. It cannot watch
    a descriptor numbered FD_SETSIZE (1024) or above; then this falls back to poll for the whole
    milliseconds and sleeps the rest (an answer in that last fraction is seen at the deadline)."""
    fds = [w.done_r for w in workers if w.outstanding and not w.closed and w.done_r >= 0]
    if not fds:
        return
    if max(fds) < FD_SETSIZE:
        while fds:
            left_s = (deadline_ns - time.monotonic_ns()) / 1e9
            if left_s <= 0:
                return
            try:
                ready, _, _ = select.select(fds, [], [], left_s)
            except (OSError, ValueError):   # a worker closed under us: the caller sees it
                return
            fds = [fd for fd in fds if fd not in ready]
        return
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    pending = set(fds)
    while pending:
        left_ms = (deadline_ns - time.monotonic_ns()) / 1e6
        if left_ms <= 0:
            return
        if left_ms < 1.0:   # poll would round it up to 1 ms: sleep it, then look once
            time.sleep(left_ms / 1e3)
            left_ms = 0
        for fd, _ev in poller.poll(int(left_ms)):
            if fd in pending:
                poller.unregister(fd)
                pending.discard(fd)
        if not left_ms:
            return


def tick_workers(active: list[tuple[SkillRun, WorkerProcess]], state: Callable[[], RobotState],
                 deadline_ns: int, answer_timeout: float = ANSWER_TIMEOUT_S) -> set[str]:
    """One control tick across the boundary (control thread); the keys of the runs held this tick.

    Sends the due step requests (the robot state into each block, one wake byte), waits for the
    answers until ``deadline_ns`` at most, hands each answer to its run. An answer that has not
    come holds that skill's joints this tick (counted in ``run.late``) and may still count at a
    later tick; a step running longer than its budget (or no answer at all within
    ``answer_timeout``, see :meth:`WorkerProcess.overdue`) fails the skill and kills its worker (it
    is stuck in vendor code). A dead worker fails its run with the reason of its death.
    """
    current: RobotState | None = None
    for run, worker in active:
        if worker.dead:
            run.finish('failed', worker.dead)
            continue
        t = run.due()
        if t is None:
            continue
        if current is None:
            current = state()
        worker.write_state(t, current.q, current.dq, current.tau, current.imu, current.wrenches,
                           current.stamp_ns, new_request=True)
    wait_replies([w for _, w in active], deadline_ns)
    now = time.monotonic_ns()
    held = set()
    for run, worker in active:
        if run.outcome:
            continue
        reply = worker.take_reply()
        if reply is not None:
            run.accept(reply)
        elif worker.outstanding:
            reason = worker.overdue(now, run.budget, answer_timeout)
            if reason is not None:
                reason = worker.exit_reason() or reason   # it died on the way: say how
                worker.kill(reason)
                run.finish('failed', reason)
            else:
                run.late += 1
                held.add(run.key)
    return held
