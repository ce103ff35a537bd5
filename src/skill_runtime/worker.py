"""The skill worker: the process where a vendor's skill runs, never the runtime's own.

Started by the runtime (:mod:`skill_runtime.proxy`) as a fresh interpreter,
``python -m skill_runtime.worker serve --fds ...`` (never a ``fork()`` of the runtime, which has
DDS threads), with an environment stripped of ROS / DDS variables: it must not and need not join
the ROS graph. Before any vendor code runs it

1. asks the kernel to SIGKILL it when its parent thread goes (``PR_SET_PDEATHSIG``), and exits if
   the runtime is already gone;
2. drops to normal scheduling at a raised nice value: below the gate's control thread;
3. calls ``skill_runtime.sandbox.apply_sandbox(policy)`` when that module exists (the policy: see
   :func:`sandbox_policy`);

then imports the pack (digests were checked by the runtime before), builds the skill with a
:class:`~skill_runtime.api.SkillContext` whose logger forwards lines to the runtime, and serves
control requests (configure / start / stop, JSON lines) and control ticks (shared memory, see
:mod:`skill_runtime.ipc`) until the runtime closes the control channel.

``python -m skill_runtime.worker discover`` is the short-lived child that resolves entry-point
locators and test-imports the accepted packs for discovery (both are vendor code).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import faulthandler
import math
import mmap
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from field_deploy.profile import load_profile
from skill_runtime import ipc
from skill_runtime.api import Done, Failed, RobotState, Skill, SkillContext, Targets
from skill_runtime.gate import check_targets
from skill_runtime.loader import entry_point_candidates, import_skill
from skill_runtime.manifest import PackError

PR_SET_PDEATHSIG = 1
LOG_RATE = 50.0     # log lines per second a worker may send (burst: LOG_BURST)
LOG_BURST = 100


def sandbox_policy(*, scratch_dir: str, pack_dir: str, memory_mb: int, max_files: int) -> dict[str, Any]:
    """The policy handed to ``skill_runtime.sandbox.apply_sandbox`` (a plain dict: it crosses
    the process boundary as JSON). Keys:

    ``scratch_dir``: the only folder the pack may write (its own, created by the runtime);
    ``pack_dir``: the pack's folder (read-only); ``address_space_bytes``: RLIMIT_AS;
    ``max_open_files``: RLIMIT_NOFILE; ``network``: False (no sockets: no DDS, no internet);
    ``core_dumps``: False.
    """
    return {'scratch_dir': scratch_dir, 'pack_dir': pack_dir,
            'address_space_bytes': int(memory_mb) * 1024 * 1024, 'max_open_files': int(max_files),
            'network': False, 'core_dumps': False}


def prepare_process(parent_pid: int, nice: int) -> None:
    """Tie the worker's life to the runtime and put it below the gate, before any vendor code."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if parent_pid and os.getppid() != parent_pid:
        os._exit(70)  # the runtime died between spawn and prctl: nobody to serve
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, max(os.getpriority(os.PRIO_PROCESS, 0), nice))
    faulthandler.enable()  # a native crash leaves its Python traceback in the worker's log


def apply_sandbox(policy: dict[str, Any]) -> str:
    """The sandbox hook; returns what was applied (for the runtime's log)."""
    try:
        from skill_runtime import sandbox  # type: ignore[attr-defined]
    except ImportError:
        return 'no sandbox module'
    result = sandbox.apply_sandbox(policy)
    return str(result) if result is not None else 'applied'


class Channel:
    """The worker's end of the control channel: JSON lines out, bounded and rate-limited logs."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._tokens = float(LOG_BURST)
        self._last = time.monotonic()
        self._dropped = 0

    def send(self, obj: dict[str, Any]) -> None:
        data = ipc.encode_line(obj)
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]

    def log(self, level: str, msg: object) -> None:
        now = time.monotonic()
        with self._lock:
            self._tokens = min(LOG_BURST, self._tokens + (now - self._last) * LOG_RATE)
            self._last = now
            if self._tokens < 1.0:
                self._dropped += 1
                return
            self._tokens -= 1.0
            dropped, self._dropped = self._dropped, 0
        text = str(msg)[:ipc.LOG_LINE_CHARS]
        self.send({'log': level, 'msg': text, 'dropped': dropped})


class ChannelLogger:
    """``ctx.logger`` inside a worker: the rclpy logger's methods, lines go to the runtime."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def debug(self, msg: object, *_a: Any, **_k: Any) -> None:
        self._channel.log('debug', msg)

    def info(self, msg: object, *_a: Any, **_k: Any) -> None:
        self._channel.log('info', msg)

    def warning(self, msg: object, *_a: Any, **_k: Any) -> None:
        self._channel.log('warning', msg)

    warn = warning

    def error(self, msg: object, *_a: Any, **_k: Any) -> None:
        self._channel.log('error', msg)

    def fatal(self, msg: object, *_a: Any, **_k: Any) -> None:
        self._channel.log('error', msg)


def _what(exc: BaseException) -> str:
    return f'{type(exc).__name__}: {exc}'[:ipc.MAX_REASON - 40]


def exit_now(exc: SystemExit) -> None:
    """Vendor code called ``sys.exit``: the worker ends at once with that code (no interpreter
    teardown that could outlast the step budget and hide the exit behind a watchdog reason)."""
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if not isinstance(exc.code, int | None):
        print(exc.code, file=sys.stderr, flush=True)
    os._exit(code)


class Server:
    """One skill instance served over the control channel and the tick block."""

    def __init__(self, ctrl: int, events: int, tick: int, done: int, block_fd: int, size: int) -> None:
        self.ctrl, self.tick, self.done = ctrl, tick, done
        self.channel = Channel(events)
        self.map = mmap.mmap(block_fd, size)
        self.block: ipc.TickBlock | None = None
        self.skill: Skill | None = None
        self.cls: type[Skill] | None = None
        self.sites: tuple[str, ...] = ()
        self.sandboxed = False
        self.last_seq = 0

    # ------------------------------------------------------------------ control requests
    def handle(self, msg: dict[str, Any]) -> None:
        op, rid = msg.get('op'), msg.get('id')
        try:
            reply = getattr(self, f'op_{op}')(msg) if op in ('configure', 'start', 'stop') else \
                {'ok': False, 'error': f'unknown request {op!r}'}
        except Exception as exc:
            reply = {'ok': False, 'error': f'{op} raised {_what(exc)}'}
        except SystemExit as exc:
            exit_now(exc)
        self.channel.send({'re': rid, **reply})

    def op_configure(self, msg: dict[str, Any]) -> dict[str, Any]:
        if not self.sandboxed:
            os.chdir(msg['policy']['scratch_dir'])   # relative paths of the pack land there
            note = apply_sandbox(msg['policy'])
            self.sandboxed = True
            self.channel.log('debug', f'sandbox: {note}')
        if self.cls is None:
            t0 = time.monotonic()
            try:
                self.cls = import_skill(Path(msg['pack_dir']), msg['pack'], msg['skill'], msg['entry'])
            except PackError as exc:
                return {'ok': False, 'error': str(exc)}
            self.import_s = time.monotonic() - t0
        profile = load_profile(msg['profile'])
        indices = np.array(msg['indices'], dtype=int)
        self.sites = tuple(msg['sites'])
        self.block = ipc.TickBlock(self.map, profile.dof, len(indices), len(self.sites))
        ctx = SkillContext(profile=profile, params=dict(msg['params']),
                           logger=ChannelLogger(self.channel), clock=time.monotonic,
                           joints=tuple(profile.joint_names[i] for i in indices), indices=indices,
                           rate_hz=float(msg['rate_hz']))
        self.skill = None
        try:
            skill = self.cls(ctx)
            problem = skill.configure()
        except Exception as exc:
            return {'ok': False, 'error': f'configure raised {_what(exc)}'}
        self.skill = skill
        return {'ok': True, 'problem': None if problem is None else str(problem)[:ipc.MAX_REASON]}

    def op_start(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self.skill is None or self.block is None:
            return {'ok': False, 'error': 'start before configure'}
        try:
            self.skill.start(self._state()[0])
        except Exception as exc:
            return {'ok': False, 'error': f'start raised {_what(exc)}'}
        return {'ok': True}

    def op_stop(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self.skill is None:
            return {'ok': True}
        try:
            self.skill.stop()
        except Exception as exc:
            return {'ok': False, 'error': f'stop() raised {_what(exc)}'}
        return {'ok': True}

    # ------------------------------------------------------------------ ticks
    def _state(self) -> tuple[RobotState, float]:
        assert self.block is not None
        t, q, dq, tau, imu, wrench, valid, stamp = self.block.read_state()
        wrenches = {site: wrench[i] for i, site in enumerate(self.sites) if valid[i]}
        return RobotState(q=q, dq=dq, tau=tau, imu=imu, wrenches=wrenches, stamp_ns=stamp), t

    def step(self) -> None:
        b = self.block
        if b is None or self.skill is None:
            return
        seq = b.request()
        if seq == self.last_seq:
            return
        self.last_seq = seq
        b.begin(seq)
        state, t = self._state()
        t0 = time.perf_counter()
        try:
            result = self.skill.step(state, t)
        except SystemExit as exc:
            exit_now(exc)
        except Exception as exc:
            b.write_reply(seq, ipc.ST_ERROR, reason=f'step raised {_what(exc)}',
                          step_time=time.perf_counter() - t0)
        else:
            elapsed = time.perf_counter() - t0
            if isinstance(result, Done):
                b.write_reply(seq, ipc.ST_DONE, reason=str(result.reason or 'done'), step_time=elapsed)
            elif isinstance(result, Failed):
                b.write_reply(seq, ipc.ST_FAILED, reason=str(result.reason or 'failed'), step_time=elapsed)
            else:
                try:   # touching vendor objects runs vendor code (__len__, __array__, __float__)
                    problem = check_targets(result, b.n)
                except Exception as exc:
                    problem = f'step result unreadable: {_what(exc)}'
                if problem is not None:
                    b.write_reply(seq, ipc.ST_ERROR, reason=problem, step_time=elapsed)
                else:
                    assert isinstance(result, Targets)
                    progress = None
                    with contextlib.suppress(Exception):
                        if result.progress is not None and math.isfinite(float(result.progress)):
                            progress = float(result.progress)
                    b.write_reply(seq, ipc.ST_TARGETS, q=result.q, dq=result.dq, tau=result.tau,
                                  progress=progress, step_time=elapsed)
        with contextlib.suppress(BlockingIOError):
            os.write(self.done, b'.')

    # ------------------------------------------------------------------ loop
    def serve(self) -> int:
        os.set_blocking(self.done, False)
        reader = ipc.LineReader()
        poller = select.poll()
        poller.register(self.tick, select.POLLIN)
        poller.register(self.ctrl, select.POLLIN)
        self.channel.send({'ready': True, 'pid': os.getpid()})
        while True:
            events = dict(poller.poll())
            if self.tick in events:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.tick, 64)
                self.step()
            if self.ctrl in events:
                data = os.read(self.ctrl, 65536)
                if not data:
                    return 0  # the runtime closed the channel: retire
                for msg in reader.feed(data):
                    self.handle(msg)


# ---------------------------------------------------------------------------- discovery child

def discover_child(inp: Any, out: Any) -> int:
    """Two questions on stdin, one JSON line each, answered on the protocol fd:

    ``{"entry_points": group}`` → ``{"candidates": [{"name", "path"}]}`` (locators are vendor code);
    ``{"packs": [{"name", "dir", "skills": {skill: entry}}]}`` → ``{"refused": {pack: PackError fields}}``.
    """
    reader = ipc.LineReader()
    out.write(ipc.encode_line({'ready': True}))   # start-up done: from here on, vendor code
    out.flush()
    for line in inp:
        for msg in reader.feed(line):
            if 'entry_points' in msg:
                cands = entry_point_candidates(msg['entry_points'])
                reply: dict[str, Any] = {'candidates': [{'source': c.source, 'path': str(c.path)}
                                                        for c in cands]}
            else:
                refused = {}
                for pack in msg.get('packs', []):
                    try:
                        for skill, entry in pack['skills'].items():
                            import_skill(Path(pack['dir']), pack['name'], skill, entry)
                    except PackError as exc:
                        refused[pack['name']] = {'file': exc.file, 'field': exc.field,
                                                 'message': exc.problem}
                    except Exception as exc:
                        refused[pack['name']] = {'file': pack['dir'], 'field': '<pack>',
                                                 'message': _what(exc)}
                reply = {'refused': refused}
            out.write(ipc.encode_line(reply))
            out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='skill_runtime.worker')
    ap.add_argument('mode', choices=('serve', 'discover'))
    ap.add_argument('--fds', default='', help='ctrl,events,tick,done,block file descriptors')
    ap.add_argument('--size', type=int, default=0, help='size of the tick block')
    ap.add_argument('--parent', type=int, default=0)
    ap.add_argument('--nice', type=int, default=0)
    args = ap.parse_args(argv)
    prepare_process(args.parent, args.nice)
    if args.mode == 'discover':
        # Locators and pack imports are vendor code too: sandboxed like a worker, nothing writable.
        apply_sandbox({'address_space_bytes': 1024 << 20, 'max_open_files': 64, 'network': False})
        # The protocol gets its own copy of stdout; whatever vendor code prints goes to stderr.
        out = os.fdopen(os.dup(1), 'wb')
        os.dup2(2, 1)
        return discover_child(sys.stdin.buffer, out)
    ctrl, events, tick, done, block = (int(x) for x in args.fds.split(','))
    return Server(ctrl, events, tick, done, block, args.size).serve()


if __name__ == '__main__':
    sys.exit(main())
