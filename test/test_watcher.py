"""Who watches the watcher: the bring-up supervisor restarts an unmanaged node that dies, stops
what a dead monitor left behind, talks sd_notify to systemd, and writes a unit systemd accepts.

These run ``field_deploy up`` as a real process on a stack of plain sleeper processes (no ROS:
the supervisor's behaviour does not depend on what its children are); the real stack's version
(the health monitor killed with -9 and adopting the nodes) is in test_e2e_stack.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from field_app import systemd
from field_deploy.testing import executable, wait_until

pytestmark = pytest.mark.timeout(120)

SLEEPER = ('import subprocess, sys, time\n'
           'subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], '
           'start_new_session=True)\n'
           'print("sleeper up", sys.argv[1:], flush=True)\n'
           'time.sleep(600)\n')


def _bind(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / 'notify.sock'))
    sock.settimeout(0.2)
    return sock


def _received(sock: socket.socket, until: float) -> list[str]:
    out = []
    while time.monotonic() < until:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


def test_notify_sends_datagrams_to_the_socket_systemd_names(tmp_path: Path) -> None:
    sock = _bind(tmp_path)
    env = {'NOTIFY_SOCKET': str(tmp_path / 'notify.sock')}
    assert systemd.notify('READY=1\nSTATUS=up', env)
    assert sock.recv(4096) == b'READY=1\nSTATUS=up'
    assert not systemd.notify('READY=1', {})                     # not under systemd
    assert not systemd.notify('READY=1', {'NOTIFY_SOCKET': str(tmp_path / 'nobody')})
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f'field_deploy_test_{os.getpid()}'
    abstract.bind('\0' + name)
    assert systemd.notify('WATCHDOG=1', {'NOTIFY_SOCKET': '@' + name})
    assert abstract.recv(64) == b'WATCHDOG=1'
    assert systemd.watchdog_period({'WATCHDOG_USEC': '4000000'}) == 2.0
    assert systemd.watchdog_period({'WATCHDOG_USEC': '4000000', 'WATCHDOG_PID': '1'}) is None
    assert systemd.watchdog_period({}) is None


def test_supervisor_restarts_the_watcher_feeds_the_watchdog_and_stops_orphans(
        tmp_path: Path) -> None:
    stack = tmp_path / 'sleepers.yaml'
    stack.write_text(yaml.safe_dump({'name': 'sleepers', 'nodes': [
        {'name': 'worker', 'executable': sys.executable, 'args': ['-c', SLEEPER]},
        {'name': 'watcher', 'executable': sys.executable, 'managed': False,
         'args': ['-c', SLEEPER], 'parameters': {'role': 'watch'},
         'restart_parameters': {'adopt': True}}]}))
    sock = _bind(tmp_path)
    env = {**os.environ, 'NOTIFY_SOCKET': str(tmp_path / 'notify.sock'),
           'WATCHDOG_USEC': '1000000'}
    up = subprocess.Popen([executable('field_deploy'), 'up', '--stack', str(stack), '--no-record'],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        first: list[str] = []
        deadline = time.monotonic() + 60.0       # a loaded host starts slowly: not a timing test
        while time.monotonic() < deadline and first.count('WATCHDOG=1') < 2:
            first += _received(sock, time.monotonic() + 0.5)
        assert any(m.startswith('READY=1') for m in first), first
        assert first.count('WATCHDOG=1') >= 2, first             # fed again and again
        assert first.index('WATCHDOG=1') > next(i for i, m in enumerate(first)
                                                if m.startswith('READY=1'))

        def cmdlines() -> dict[int, str]:
            out = {}
            for child in psutil.Process(up.pid).children():
                try:
                    out[child.pid] = ' '.join(child.cmdline())
                except psutil.Error:      # a zombie or one that just ended
                    continue
            return out

        def watcher() -> psutil.Process | None:
            pid = next((p for p, c in cmdlines().items() if 'role:=watch' in c), None)
            return None if pid is None else psutil.Process(pid)

        def worker_pid() -> int:
            return next(p for p, c in cmdlines().items() if '--ros-args' in c
                        and 'role:=watch' not in c)

        assert wait_until(lambda: watcher() is not None, 10)
        old, worker = watcher(), worker_pid()
        orphan = old.children()[0].pid            # what a dead monitor leaves running
        old.kill()
        killed = time.monotonic()
        assert wait_until(lambda: (w := watcher()) is not None and w.pid != old.pid, 5.0)
        print(f'watcher back after {time.monotonic() - killed:.2f} s')
        new = watcher()
        assert 'adopt:=true' in ' '.join(new.cmdline())          # its restart parameters
        assert worker_pid() == worker                              # nothing else restarted
        assert psutil.Process(orphan).ppid() == up.pid             # re-parented: subreaper
        assert psutil.pid_exists(orphan)
    finally:
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, out
    assert 'watcher exited with code -9 (restarting it)' in out, out
    assert 'STOPPING=1' in _received(sock, time.monotonic() + 0.5)
    assert wait_until(lambda: not psutil.pid_exists(orphan)
                      or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE, 5), out
    assert 'started by a health monitor that is gone' in out


def test_systemd_unit_is_generated_installed_and_verified(tmp_path: Path) -> None:
    done = subprocess.run([executable('field_deploy'), 'systemd-unit', '--robot', 'humanoid_29dof',
                           '--no-record', '--watchdog', '15'], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    unit = done.stdout
    for line in ('Type=notify', 'Restart=always', 'WatchdogSec=15', 'NotifyAccess=main',
                 'KillMode=mixed', 'WantedBy=multi-user.target'):
        assert f'\n{line}\n' in unit, unit
    assert 'field_deploy up --robot humanoid_29dof --stack field_stack --no-record' in unit
    # without recording: sim, runtime, live view stop in turn (15 s each) and the monitor (110 s:
    # it stops the nodes it restarted itself, the recorder within its 60 s), and a 20 s margin
    assert '\nTimeoutStopSec=175\n' in unit, unit
    done = subprocess.run([executable('field_deploy'), 'systemd-unit', '--install', '--unit-dir',
                           str(tmp_path), '--name', 'robot_stack'], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    installed = tmp_path / 'robot_stack.service'
    assert 'Type=notify' in installed.read_text()
    analyze = shutil.which('systemd-analyze')
    if analyze is None:
        pytest.skip('systemd-analyze is not installed here: the unit was not verified by systemd')
    check = subprocess.run([analyze, 'verify', str(installed)], capture_output=True, text=True,
                           timeout=60)
    problems = [line for line in (check.stdout + check.stderr).splitlines()
                if 'robot_stack.service' in line]
    assert check.returncode == 0 and not problems, check.stdout + check.stderr
