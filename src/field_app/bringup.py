"""``field_deploy up``: start the stack's nodes as separate processes, without ROS's launch tool.

Each node of the stack description runs as its own process (a crash stays in its process); their
output is streamed with the node name in front; Ctrl-C / SIGTERM stops them in reverse start order
with SIGINT, so the recorder closes its bag, and kills only what has not exited after a grace
period. A node that exits during its start-up grace period fails the bring-up with its last log
lines as the reason. Restarting a managed node that dies later is the health monitor's lifecycle
policy; this supervisor restarts only the nodes nobody else watches (``managed: false``: the
health monitor itself — who watches the watcher), with their ``restart_parameters`` (the monitor
adopts the running nodes). It is a child subreaper, so nodes the monitor restarted outlive a
monitor killed with -9 as its children and are still stopped at the end; under systemd it
reports ready and feeds the watchdog (:mod:`field_app.systemd`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from field_app import systemd
from field_deploy.rosenv import clean_stale_shm
from field_deploy.stack import Stack, StackNode, load_stack, node_argv

_COLOURS = ('36', '33', '35', '32', '34', '31')


class BringupError(RuntimeError):
    """The stack could not be started; the message names the node and the reason."""


@dataclass
class Child:
    node: StackNode
    proc: subprocess.Popen[bytes]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=30))
    pump: threading.Thread | None = None
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0


class Supervisor:
    """Owns the stack's processes: start in order, stream logs, stop in reverse order."""

    def __init__(self, stack: Stack, *, out: IO[str] | None = None, colour: bool | None = None,
                 env: dict[str, str] | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.stack = stack
        self.out = out or sys.stdout
        self.colour = self.out.isatty() if colour is None else colour
        self.env = {**(env or os.environ), **(extra_env or {})}
        self.children: list[Child] = []
        self._write_lock = threading.Lock()
        self.width = max((len(n.name) for n in stack.nodes), default=8)
        self._colour_index = {n.name: i + 1 for i, n in enumerate(stack.nodes)}

    def say(self, name: str, line: str) -> None:
        tag = f'[{name}]'.ljust(self.width + 2)
        if self.colour:
            index = self._colour_index.get(name, 0)
            tag = f'\033[{_COLOURS[index % len(_COLOURS)]}m{tag}\033[0m'
        with self._write_lock:
            self.out.write(f'{tag} {line}\n')
            self.out.flush()

    def _pump(self, child: Child) -> None:
        assert child.proc.stdout is not None
        for raw in iter(child.proc.stdout.readline, b''):
            line = raw.decode(errors='replace').rstrip()
            child.tail.append(line)
            self.say(child.node.name, line)

    def start_node(self, node: StackNode, *, restart: bool = False) -> Child:
        argv = node_argv(node, self.stack.namespace, restart=restart)
        exe = shutil.which(argv[0]) or str(Path(sys.executable).parent / argv[0])
        if not Path(exe).exists():
            raise BringupError(f'{node.name}: executable {argv[0]!r} not found on PATH')
        proc = subprocess.Popen([exe, *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=self.env, start_new_session=True)
        child = Child(node, proc)
        child.pump = threading.Thread(target=self._pump, args=(child,), daemon=True,
                                      name=f'log-{node.name}')
        child.pump.start()
        self.children.append(child)
        return child

    def start(self, grace_s: float = 2.0) -> None:
        """Start every node in order; raise :class:`BringupError` if one exits within ``grace_s``."""
        freed = clean_stale_shm()
        if freed:
            self.say('bringup', f'freed {freed / 2**20:.0f} MiB of shared memory left in /dev/shm by '
                                'ROS processes that died')
        for node in self.stack.nodes:
            self.say('bringup', f'starting {node.name}: {" ".join(node_argv(node, self.stack.namespace))}')
            self.start_node(node)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            self.check_started()
            time.sleep(0.05)
        self.check_started()

    def check_started(self) -> None:
        for child in self.children:
            if child.proc.poll() is not None:
                raise BringupError(self.exit_reason(child, 'while starting'))

    def check_alive(self) -> None:
        """Raise when nothing of the stack runs and nothing will restart it: every node exited,
        and all of them managed (restarted by a health monitor only, and none is running). A
        node that fails slowly - after the start-up window, as on a loaded host - still ends
        the bring-up with its reason instead of leaving it waiting with nothing up."""
        if self.children and all(c.node.managed and c.proc.poll() is not None for c in self.children):
            raise BringupError(self.exit_reason(self.children[0], 'and nothing is left running'))

    def exit_reason(self, child: Child, when: str) -> str:
        if child.pump is not None:
            child.pump.join(timeout=1.0)
        reason = next((line for line in reversed(child.tail) if line.strip()), 'no output')
        return f'{child.node.name} exited with code {child.proc.returncode} {when}: {reason}'

    def exited(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is not None]

    QUICK_DEATH_S = 10.0
    """A restarted node that dies within this time is restarted again only after a back-off."""

    def restart_due(self, child: Child, now: float) -> float:
        """When an exited unmanaged node may be restarted: at once after a run of at least
        :attr:`QUICK_DEATH_S`, else after 1, 2, 4 … 30 s (a node that cannot start does not spin)."""
        if now - child.started >= self.QUICK_DEATH_S or child.restarts == 0:
            return now
        return child.started + min(30.0, 2.0 ** (child.restarts - 1))

    def restart(self, child: Child) -> Child:
        """Start ``child``'s node again in its place (with its ``restart_parameters``)."""
        quick = time.monotonic() - child.started < self.QUICK_DEATH_S
        self.say('bringup', f'restarting {child.node.name}: '
                            f'{" ".join(node_argv(child.node, self.stack.namespace, restart=True))}')
        clean_stale_shm()
        new = self.start_node(child.node, restart=True)
        new.restarts = child.restarts + 1 if quick else 1
        self.children.remove(new)
        self.children[self.children.index(child)] = new
        return new

    def reap_orphans(self) -> None:
        """Collect the exit status of adopted orphans that ended (no zombies pile up)."""
        import psutil
        ours = {c.proc.pid for c in self.children}
        for proc in psutil.Process().children():
            with contextlib.suppress(Exception):
                if proc.pid not in ours and proc.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(proc.pid, os.WNOHANG)

    def stop_orphans(self, timeout_s: float) -> None:
        """Stop the processes left under us: nodes a dead health monitor had restarted (their
        parent died, so they were re-parented to this subreaper)."""
        try:
            import psutil
            left = [p for p in psutil.Process().children(recursive=True)
                    if p.pid not in {c.proc.pid for c in self.children}]
        except Exception:  # best effort at shutdown
            return
        for proc in left:
            with contextlib.suppress(Exception):
                if proc.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(proc.pid, os.WNOHANG)
                    continue
                self.say('bringup', f'stopping {proc.name()} (pid {proc.pid}, started by a '
                                    'health monitor that is gone)')
                proc.send_signal(signal.SIGINT)
        _gone, alive = psutil.wait_procs(left, timeout=timeout_s)
        for proc in alive:
            with contextlib.suppress(Exception):
                proc.kill()
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass

    def stop_node(self, name: str) -> int | None:
        """SIGINT one running node and wait for it (SIGKILL after its ``stop_timeout``); its exit
        code (``None``: no such node running). The others keep running."""
        for child in self.children:
            if child.node.name == name and child.proc.poll() is None:
                self._interrupt(child, child.node.stop_timeout)
                return child.proc.returncode
        return None

    def _interrupt(self, child: Child, timeout_s: float) -> None:
        self.say('bringup', f'stopping {child.node.name}')
        child.proc.send_signal(signal.SIGINT)
        try:
            child.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.say('bringup', f'{child.node.name} did not stop in {timeout_s:g} s: killing it')
            child.proc.kill()
            child.proc.wait()

    def stop(self, timeout_s: float = 15.0) -> dict[str, int]:
        """SIGINT each node in reverse start order, wait (its ``stop_timeout``), SIGKILL
        stragglers; returns exit codes. ``timeout_s``: for the orphans a dead monitor left."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                self._interrupt(child, child.node.stop_timeout)
        self.stop_orphans(timeout_s)
        for child in self.children:
            if child.pump is not None:
                child.pump.join(timeout=2.0)
        return {c.node.name: c.proc.returncode for c in self.children}


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER (Linux): orphaned descendants are re-parented to us, not init."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def wait_for_signal(supervisor: Supervisor, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Block until SIGINT / SIGTERM or ``should_stop()``: restart unmanaged nodes that exit,
    report managed ones (the health monitor restarts those), feed the systemd watchdog. Raises
    :class:`BringupError` when nothing is left running (:meth:`Supervisor.check_alive`)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    reported: set[int] = set()
    watchdog = systemd.watchdog_period()
    fed = reaped = 0.0
    while not stop.wait(0.1) and not should_stop():
        now = time.monotonic()
        if watchdog is not None and now - fed >= watchdog:
            systemd.notify('WATCHDOG=1')
            fed = now
        if now - reaped >= 2.0:
            supervisor.reap_orphans()
            reaped = now
        for child in supervisor.exited():
            if child.proc.pid not in reported:
                reported.add(child.proc.pid)
                what = ('the health monitor restarts managed nodes' if child.node.managed else
                        'restarting it' if child.restarts == 0 or
                        now - child.started >= supervisor.QUICK_DEATH_S else
                        f'restarting it in {supervisor.restart_due(child, now) - now:.0f} s')
                supervisor.say('bringup', f'{child.node.name} exited with code '
                                          f'{child.proc.returncode} ({what})')
            if not child.node.managed and now >= supervisor.restart_due(child, now):
                supervisor.restart(child)
        supervisor.check_alive()


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--robot', default='quadruped_12dof', help='robot profile (default: %(default)s)')
    parser.add_argument('--stack', default='field_stack', help='stack description name or path')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--sim', dest='sim', action='store_true', default=True,
                      help='run the simulated robot (default)')
    mode.add_argument('--hardware', dest='sim', action='store_false',
                      help='do not start sim_robot: the robot driver publishes the topics')
    parser.add_argument('--no-record', dest='record', action='store_false', help='do not record')
    parser.add_argument('--namespace', default='', help='robot namespace (default: none)')
    parser.add_argument('--bag-dir', default=None,
                        help='where the recorder writes (default: bags/<stack>-<date>-<time>)')


def resolve_bag_dir(args: argparse.Namespace) -> str:
    if args.bag_dir:
        return str(Path(args.bag_dir).resolve())
    return str(Path('bags', f'{args.stack}-{time.strftime("%Y%m%d-%H%M%S")}').resolve())


def up(args: argparse.Namespace) -> int:
    stack = load_stack(args.stack, robot=args.robot, sim=args.sim, record=args.record,
                       namespace=args.namespace, bag_dir=resolve_bag_dir(args))
    supervisor = Supervisor(stack)
    become_subreaper()
    try:
        supervisor.start()
    except BringupError as exc:
        supervisor.stop()
        print(f'field_deploy up: error: {exc}', file=sys.stderr)
        return 1
    supervisor.say('bringup', f'stack {stack.name!r} up ({len(stack.nodes)} nodes); Ctrl-C stops it')
    systemd.notify(f'READY=1\nSTATUS=stack {stack.name} up ({len(stack.nodes)} nodes)')
    failed = ''
    try:
        wait_for_signal(supervisor)
    except BringupError as exc:
        failed = str(exc)
    finally:
        systemd.notify('STOPPING=1')
        codes = supervisor.stop()
    supervisor.say('bringup', 'stopped: ' + ', '.join(f'{k}={v}' for k, v in codes.items()))
    if failed:
        print(f'field_deploy up: error: {failed}', file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser('up', help='bring up the robot stack (nodes as processes)')
    add_up_arguments(parser)
    parser.set_defaults(func=up)
    systemd.register(subparsers)
