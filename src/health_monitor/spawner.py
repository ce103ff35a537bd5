"""Managed nodes' processes: started as children, or found among the bring-up's (by command line).

Split from :mod:`health_monitor.manager` (the lifecycle logic, which sees processes only through
its :class:`~health_monitor.manager.Spawner` protocol) so the manager stays a pure core.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

from field_deploy.rosenv import clean_stale_shm


def runs_command(cmdline: Sequence[str], argv: Sequence[str]) -> bool:
    """``cmdline`` (a process's) runs ``argv``: the same executable name and the same
    arguments, the executable itself or a script after its interpreter (a console script)."""
    head, args = os.path.basename(argv[0]), list(argv[1:])
    return any(len(cmdline) == i + 1 + len(args) and os.path.basename(cmdline[i]) == head
               and list(cmdline[i + 1:]) == args for i in (0, 1))


def resolve_command(argv: Sequence[str]) -> list[str]:
    """``sim_robot`` -> the console script next to this interpreter (the venv), else PATH."""
    head = argv[0]
    if os.sep not in head:
        beside = os.path.join(os.path.dirname(sys.executable), head)
        if os.path.exists(beside):
            return [beside, *argv[1:]]
        found = shutil.which(head)
        if found:
            return [found, *argv[1:]]
    return list(argv)


class PopenSpawner:
    """Starts managed nodes as child processes.

    A child writes to our own stdout and stderr (inherited): its log lines name it already
    (``[INFO] [time] [data_recorder]: …``). Why no pipe with a thread to prefix them: that cost
    the monitor one thread and one descriptor for each node it ever restarted (the one-hour soak:
    19 -> 24 threads, 65 -> 68 descriptors), and a pump that stalls stalls the child's logging.
    """

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def start(self, name: str, argv: Sequence[str]) -> None:
        self.stop(name, timeout=2.0)
        clean_stale_shm()   # the dead process's Fast DDS segment would stay in RAM otherwise
        proc = subprocess.Popen(resolve_command(argv), start_new_session=True)
        with self._lock:
            self.procs[name] = proc

    def alive(self, name: str) -> bool | None:
        proc = self.procs.get(name)
        return None if proc is None else proc.poll() is None

    def pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return None if proc is None else proc.pid

    def stop(self, name: str, timeout: float = 5.0) -> None:
        with self._lock:
            proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def running(self, name: str, argv: Sequence[str]) -> list[int]:
        """Our children and our parent's other descendants (the bring-up's or the launch's
        nodes, and those a dead monitor had started, re-parented to the bring-up) that run
        ``argv`` on our ROS domain: another stack on the same host (another domain, another
        supervisor) has the same command lines and is never touched."""
        import psutil
        me = psutil.Process()
        family = me.children(recursive=True)
        if me.ppid() > 1:
            with contextlib.suppress(psutil.Error):
                family += psutil.Process(me.ppid()).children(recursive=True)
        domain = os.environ.get('ROS_DOMAIN_ID', '0')
        found: set[int] = set()
        for proc in family:
            try:
                if (proc.pid != me.pid and proc.status() != psutil.STATUS_ZOMBIE
                        and runs_command(proc.cmdline(), argv)
                        and proc.environ().get('ROS_DOMAIN_ID', '0') == domain):
                    found.add(proc.pid)
            except psutil.Error:
                continue
        return sorted(found)

    def terminate(self, pid: int, timeout: float = 5.0) -> None:
        import psutil
        with self._lock:
            ours = next((n for n, p in self.procs.items() if p.pid == pid), None)
        if ours is not None:
            self.stop(ours, timeout)
            return
        try:
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        except psutil.NoSuchProcess:
            pass

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)
