"""Test and benchmark harness over real rclpy and real DDS (no mocks).

Used by ``test/`` and ``bench/``: isolates each process's ROS traffic (own ``ROS_DOMAIN_ID``,
localhost-only discovery), starts project executables as real subprocesses, and collects raw
messages. Import :func:`isolate_ros_env` *before* rclpy creates its first context.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from field_deploy.rosenv import use_project_fastdds_profile


def isolate_ros_env(domain_id: int | None = None) -> int:
    """Give this process (and its children) a private DDS domain on localhost; returns the id.

    Domain ids 1..200 stay inside Fast DDS's port range for the default participant count. The
    id is drawn from the pid and the time, then moved on past any domain a process on this host
    already uses: two test runs (or a test run and a bench) that drew one id would hear each
    other's topics - a foreign ``/numbered`` writer is a "loss" no test can explain.
    """
    if domain_id is None:
        start = (os.getpid() * 7919 + int(time.time())) % 200
        domain_id = next((1 + (start + k) % 200 for k in range(200)
                          if not domain_in_use(1 + (start + k) % 200)), 1 + start)
    os.environ['ROS_DOMAIN_ID'] = str(domain_id)
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    os.environ.setdefault('RCUTILS_LOGGING_BUFFERED_STREAM', '1')
    # The stack's TCP servers (metrics, live view) get ports of their own too: a robot's stack or
    # another test run on this machine must not answer for the one under test.
    for env in ('FIELD_DEPLOY_METRICS_PORT', 'FIELD_DEPLOY_LIVE_PORT'):
        os.environ.setdefault(env, str(free_port()))
    use_project_fastdds_profile()
    return domain_id


def domain_in_use(domain_id: int, participants: int = 8) -> bool:
    """Whether a DDS participant on this host listens on ``domain_id``: the RTPS well-known
    metatraffic unicast port of participant k is ``7400 + 250 * domain + 10 + 2 * k``, bound
    without address reuse, so a bind that fails means somebody holds it."""
    import socket

    for k in range(participants):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(('0.0.0.0', 7400 + 250 * domain_id + 10 + 2 * k))
            except OSError:
                return True
    return False


def free_port() -> int:
    """A TCP port nothing listens on now (loopback)."""
    import socket

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def quiet_for(count: Callable[[], int], seconds: float) -> Callable[[], bool]:
    """A predicate for :func:`wait_until`: true once ``count()`` has not changed for ``seconds``.

    After stopping a stream (a pause, a fault) what was already in flight still arrives, later
    on a loaded host: wait for quiet instead of sleeping a fixed time, then check it holds."""
    last = {'n': count(), 't': time.monotonic()}

    def check() -> bool:
        n = count()
        if n != last['n']:
            last.update(n=n, t=time.monotonic())
        return time.monotonic() - last['t'] >= seconds
    return check


def executable(name: str) -> str:
    """Path of a console script installed beside this interpreter (``.venv/bin/<name>``)."""
    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        raise FileNotFoundError(f'console script {name!r} not installed next to {sys.executable} '
                                '(run `pip install -e .`)')
    return str(candidate)


class NodeProcess:
    """A project executable run as a real process, with its output in a log file."""

    def __init__(self, name: str, args: Sequence[str] = (), *, log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = Path(log_dir) / f'{name}-{int(time.time() * 1000) % 10**8}.log'
        self._log = self.log_path.open('wb')
        # Its own TCP ports (a stack's metrics and live view), not the test process's: a stack
        # of an earlier test still stopping (killed after ``stop``'s timeout, its children left)
        # held the shared one, and the next stack's health monitor served no metrics (a suite
        # pass beside a busy loop, 2026-11-30).
        ports = {e: str(free_port()) for e in ('FIELD_DEPLOY_METRICS_PORT', 'FIELD_DEPLOY_LIVE_PORT')}
        self.proc = subprocess.Popen([executable(name), *args], stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     env={**os.environ, **ports, **(env or {})},
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:  # readable after stop() too (the fixture prints it on failure)
            self._log.flush()
        return self.log_path.read_text(errors='replace')

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int:
        """Send ``sig`` and wait; after ``timeout``, SIGKILL to its whole session (a bring-up
        killed alone leaves its children running into the next test). Returns the exit code."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a power cut or an OOM kill would."""
        if self.alive():
            self.proc.kill()
            self.proc.wait()


class RawCollector:
    """Subscribes raw (CDR bytes, no deserialisation) to topics and keeps what arrives.

    ``messages[topic]`` is a list of ``(receive_time_ns, bytes)``; thread-safe to read counts.
    """

    def __init__(self, node, topics: Iterable[tuple[str, type]], qos=None) -> None:
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        qos = qos or QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                                reliability=ReliabilityPolicy.RELIABLE)
        self.messages: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._subs = [node.create_subscription(msg_type, topic, self._callback(topic), qos, raw=True)
                      for topic, msg_type in topics]

    def _callback(self, topic: str) -> Callable[[bytes], None]:
        def on_message(data: bytes) -> None:
            with self._lock:
                self.messages[topic].append((time.time_ns(), data))
        return on_message

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.messages[topic])


_ROGUE_WRITER = '''
import signal, sys, time, rclpy
from sensor_msgs.msg import JointState
signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with it ignored
rclpy.init()
node = rclpy.create_node(sys.argv[1], namespace=sys.argv[2])
pub = node.create_publisher(JointState, sys.argv[3], 10)
print('ready', flush=True)
msg = JointState()
msg.header.frame_id = 'rogue'
try:
    while True:
        pub.publish(msg)
        time.sleep(0.01)
except KeyboardInterrupt:
    pass
node.destroy_node()
rclpy.try_shutdown()
'''


def start_rogue_writer(node: str = 'rogue_writer', namespace: str = '/vendor',
                       topic: str = '/joint_commands') -> tuple[subprocess.Popen, float]:
    """A separate process that publishes (empty) JointStates on ``topic`` at 100 Hz: the foreign
    writer the skill runtime must report. Returns it and the monotonic time its publisher
    existed; stop it with SIGINT (it leaves the graph at once)."""
    proc = subprocess.Popen([sys.executable, '-c', _ROGUE_WRITER, node, namespace, topic],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != 'ready':
        proc.kill()
        raise RuntimeError(f'rogue writer did not start: {line!r}')
    return proc, time.monotonic()
