"""``field_deploy up``: start the stack's nodes as separate processes, without ROS's launch tool.

Each node of the stack description runs as its own process (a crash stays in its process); their
output is streamed with the node name in front; Ctrl-C / SIGTERM stops them in reverse start order
with SIGINT, so the recorder closes its bag, and kills only what has not exited after a grace
period. A node that exits during its start-up grace period fails the bring-up with its last log
lines as the reason. Restarting a process that dies later is the health monitor's lifecycle
policy, not this module's: one mechanism, configured in one place.
"""

from __future__ import annotations

import argparse
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

    def start_node(self, node: StackNode) -> Child:
        argv = node_argv(node, self.stack.namespace)
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
            code = child.proc.poll()
            if code is not None:
                if child.pump is not None:
                    child.pump.join(timeout=1.0)
                reason = next((line for line in reversed(child.tail) if line.strip()), 'no output')
                raise BringupError(f'{child.node.name} exited with code {code} while starting: {reason}')

    def exited(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is not None]

    def stop(self, timeout_s: float = 15.0) -> dict[str, int]:
        """SIGINT each node in reverse start order, wait, SIGKILL stragglers; returns exit codes."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                self.say('bringup', f'stopping {child.node.name}')
                child.proc.send_signal(signal.SIGINT)
                try:
                    child.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.say('bringup', f'{child.node.name} did not stop in {timeout_s:g} s: killing it')
                    child.proc.kill()
                    child.proc.wait()
        for child in self.children:
            if child.pump is not None:
                child.pump.join(timeout=2.0)
        return {c.node.name: c.proc.returncode for c in self.children}


def wait_for_signal(supervisor: Supervisor, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Block until SIGINT / SIGTERM or ``should_stop()``; report nodes that exit meanwhile."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    reported: set[str] = set()
    while not stop.wait(0.2) and not should_stop():
        for child in supervisor.exited():
            if child.node.name not in reported:
                reported.add(child.node.name)
                supervisor.say('bringup', f'{child.node.name} exited with code {child.proc.returncode}'
                               ' (the health monitor restarts managed nodes)')


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
    try:
        supervisor.start()
    except BringupError as exc:
        supervisor.stop()
        print(f'field_deploy up: error: {exc}', file=sys.stderr)
        return 1
    supervisor.say('bringup', f'stack {stack.name!r} up ({len(stack.nodes)} nodes); Ctrl-C stops it')
    try:
        wait_for_signal(supervisor)
    finally:
        codes = supervisor.stop()
    supervisor.say('bringup', 'stopped: ' + ', '.join(f'{k}={v}' for k, v in codes.items()))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser('up', help='bring up the robot stack (nodes as processes)')
    add_up_arguments(parser)
    parser.set_defaults(func=up)
