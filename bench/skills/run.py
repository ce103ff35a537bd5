"""Skill runtime benchmark: control-loop jitter, worker round trip, CPU, e-stop latency. Prints figures.

Runs ``sim_robot`` and ``skill_runtime`` as real processes (as on a robot) on a private DDS
domain, with a reference skill running — in its worker process — so the loop does real work:

* jitter at 500 Hz and 1 kHz: |period − nominal| of the runtime's own loop (from its status
  topic, p50 / p99 / max) and of ``joint_commands`` as received by another process (adds DDS);
* the per-tick round trip to the skill's worker (request sent → answer taken, the runtime's own
  figures over the last 5 s, from the status) and the ticks whose answer came late;
* CPU of the runtime process plus its workers (from /proc) while the skill runs; with
  ``--baseline REF`` also the in-process runtime of that git ref (e.g. ``main`` before the process
  boundary) under the same conditions, for the +20 % target;
* e-stop latency, measured from this process (SCHED_FIFO where permitted): ``/skill_runtime/estop``
  service call and ``estop`` topic publish to the first ``joint_commands`` message with
  ``frame_id == 'estop'``, in the first seconds after the runtime became active (no skill yet),
  then with a skill running in its worker (p50 / p99 / max).

Usage: ``.venv/bin/python bench/skills/run.py [--seconds 8] [--trials 30] [--rt-priority 40]
[--baseline main]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from field_deploy.testing import NodeProcess, isolate_ros_env, wait_until

isolate_ros_env()

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from field_deploy.profile import load_profile  # noqa: E402
from field_deploy.ros import Spinner, qos_profile  # noqa: E402
from skill_runtime.client import SkillClient  # noqa: E402
from skill_runtime.loop import set_thread_realtime  # noqa: E402

PROFILE = load_profile('quadruped_12dof')
SKILL = '/skills/reference_quadruped/stand_up'


class Bench(Node):
    def __init__(self) -> None:
        super().__init__('skill_bench')
        self.lock = threading.Lock()
        self.cmds: list[tuple[int, str]] = []
        self.gate: dict[str, str] = {}
        self.skill: dict[str, str] = {}
        self.create_subscription(JointState, 'joint_commands', self._on_cmd,
                                 qos_profile(PROFILE.topic('joint_commands').qos))
        self.create_subscription(DiagnosticArray, '/skill_runtime/status', self._on_status, 10)
        self.estop_pub = self.create_publisher(Bool, 'estop', 10)
        self.estop_seen = threading.Event()

    def _on_cmd(self, msg: JointState) -> None:
        now = time.monotonic_ns()
        with self.lock:
            self.cmds.append((now, msg.header.frame_id))
        if msg.header.frame_id == 'estop':
            self.estop_seen.set()

    def _on_status(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.name == 'skill_runtime/safety_gate':
                self.gate = {kv.key: kv.value for kv in st.values}
            elif st.name == f'skills{SKILL.split("/skills", 1)[1]}':
                self.skill = {kv.key: kv.value for kv in st.values}


def pct(values: list[float]) -> str:
    a = np.asarray(values)
    return (f'p50 {np.percentile(a, 50):6.3f}  p99 {np.percentile(a, 99):6.3f}  '
            f'max {a.max():7.3f} ms  (n={a.size})')


def start_runtime(rate: float, rt_priority: int, log_dir: Path, src: Path | None = None) -> NodeProcess:
    """The runtime process; ``src``: run that source tree's runtime instead (the baseline)."""
    env = {'PYTHONPATH': str(src)} if src is not None else None
    return NodeProcess('skill_runtime', ['--ros-args', '-p', 'profile:=quadruped_12dof',
                                         '-p', f'control_rate:={rate}', '-p', f'rt_priority:={rt_priority}',
                                         '-p', f'executor_rt_priority:={30 if rt_priority else 0}',
                                         '-p', 'safe_velocity:=2.0', '-p', 'status_rate:=2.0'],
                       log_dir=log_dir, env=env)


def cpu_seconds(pid: int) -> tuple[float, int]:
    """CPU time (user + system) of ``pid`` and its live children, and how many children."""
    tick = os.sysconf('SC_CLK_TCK')
    total, children = 0.0, 0
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / 'stat').read_text().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
            children += int(entry.name) != pid
    return total, children


def jitter(bench: Bench, client: SkillClient, rate: float, seconds: float, rt_priority: int,
           log_dir: Path, src: Path | None = None, label: str = '') -> None:
    with bench.lock:
        bench.cmds.clear()
    bench.skill = {}
    rt = start_runtime(rate, rt_priority, log_dir, src)
    try:
        if not wait_until(lambda: len(bench.cmds) > 100, 30):
            raise SystemExit(f'runtime sent no commands:\n{rt.log()[-2000:]}')
        client.set_params(SKILL, min_duration=seconds + 5.0)
        if not client.run(SKILL):
            raise SystemExit(f'stand_up did not start:\n{rt.log()[-2000:]}')
        time.sleep(1.0)
        with bench.lock:
            bench.cmds.clear()
        (cpu0, _), t0 = cpu_seconds(rt.pid), time.monotonic()
        time.sleep(seconds)
        (cpu1, children), t1 = cpu_seconds(rt.pid), time.monotonic()
        with bench.lock:
            stamps = np.array([t for t, _ in bench.cmds], dtype=np.float64)
        gate, skill = dict(bench.gate), dict(bench.skill)
        period = 1e3 / rate
        dev = (np.abs(np.diff(stamps) / 1e6 - period)).tolist()
        print(f'  {rate:6.0f} Hz  loop (runtime, last 5 s): p50 {gate.get("jitter_p50_ms")}  '
              f'p99 {gate.get("jitter_p99_ms")}  max {gate.get("jitter_max_ms")} ms  '
              f'overruns {gate.get("overruns")}  [{gate.get("scheduling")}]')
        print(f'  {rate:6.0f} Hz  joint_commands at subscriber: {pct(dev)}  '
              f'rate {len(stamps) / seconds:7.1f}/s')
        if skill.get('rtt_p50_ms'):
            print(f'  {rate:6.0f} Hz  worker round trip (last 5 s): p50 {skill["rtt_p50_ms"]}  '
                  f'p99 {skill["rtt_p99_ms"]}  max {skill["rtt_max_ms"]} ms  late ticks '
                  f'{skill.get("late_ticks")}  max step {skill.get("max_step_ms")} ms')
        # CPU counts children that are alive at the end (workers; the runtime's spare is idle).
        print(f'  {rate:6.0f} Hz  CPU {label or "runtime + workers"}: '
              f'{100 * (cpu1 - cpu0) / (t1 - t0):5.1f} % of a core ({children} child processes)')
    finally:
        rt.stop()


def one_estop(bench: Bench, client: SkillClient, estop_cli, via: str, reset: bool = True) -> float | None:
    """(Reset, then) e-stop: ms from the request to the first ``estop`` command seen here."""
    if reset:
        client.trigger('reset')
        time.sleep(0.05)
    bench.estop_seen.clear()
    t0 = time.monotonic_ns()
    if via == 'service':
        estop_cli.call_async(Trigger.Request())  # the answer is not waited for
    else:
        bench.estop_pub.publish(Bool(data=True))
    if not bench.estop_seen.wait(2.0):
        print(f'  {via}: no estop command within 2 s')
        return None
    with bench.lock:
        first = next(t for t, f in bench.cmds if f == 'estop' and t >= t0)
    return (first - t0) / 1e6


def estop_latency(bench: Bench, client: SkillClient, trials: int, log_dir: Path) -> None:
    """From the first command the runtime sends (it just became active), e-stop again and again
    for the first seconds, alternating service and topic; then with a skill running each time."""
    with bench.lock:
        bench.cmds.clear()
    rt = start_runtime(500.0, 40, log_dir)
    estop_cli = bench.create_client(Trigger, '/skill_runtime/estop')
    try:
        if not wait_until(lambda: len(bench.cmds) > 0, 30):
            raise SystemExit(f'runtime sent no commands:\n{rt.log()[-2000:]}')
        active_at = time.monotonic()
        early: dict[str, list[float]] = {'service': [], 'topic': []}
        while time.monotonic() - active_at < 5.0:
            for via in early:
                if via == 'service' and not estop_cli.service_is_ready():
                    continue
                lat = one_estop(bench, client, estop_cli, via)
                if lat is not None:
                    early[via].append(lat)
        for via, lat in early.items():
            print(f'  e-stop via {via:7s}, first 5 s after activation: {pct(lat)}')
        client.set_params(SKILL, min_duration=30.0)
        for via in ('service', 'topic'):
            lat = []
            for _ in range(trials):
                client.trigger('reset')
                if not client.run(SKILL):
                    print(f'  {SKILL} did not start')
                    continue
                time.sleep(0.1)
                value = one_estop(bench, client, estop_cli, via, reset=False)
                if value is not None:
                    lat.append(value)
                wait_until(lambda: client.state(SKILL) != 'active', 5, 0.05)
            print(f'  e-stop via {via:7s}, skill running in its worker: {pct(lat)}')
        client.trigger('reset')
    finally:
        rt.stop()


def baseline_tree(ref: str, log_dir: Path) -> Path:
    """``src`` of git ref ``ref`` (with its ``config``), unpacked under ``log_dir``."""
    out = log_dir / f'baseline-{ref.replace("/", "_")}'
    out.mkdir()
    repo = Path(__file__).resolve().parents[2]
    archive = subprocess.run(['git', '-C', str(repo), 'archive', ref, 'src', 'config'],
                             check=True, capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', str(out)], input=archive, check=True)
    return out / 'src'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=float, default=8.0)
    ap.add_argument('--trials', type=int, default=30)
    ap.add_argument('--rt-priority', type=int, default=40)
    ap.add_argument('--baseline', default='', help='git ref of an in-process runtime to compare CPU with')
    ap.add_argument('--only', choices=('jitter', 'estop', 'cpu'), default=None)
    args = ap.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix='skill_bench_'))
    # The measuring side runs SCHED_FIFO too (DDS threads inherit it), so a loaded host delays
    # the runtime under test, not the stopwatch; below the runtime's priorities, so that it does
    # not preempt a runtime thread holding the GIL (measured: at 35 it pushed the loop p99 to 10 ms).
    print(f'bench process scheduling: {set_thread_realtime(20)}')  # below the runtime's 30 / 40
    rclpy.init()
    bench = Bench()
    spinner = Spinner([bench]).start()
    client = SkillClient(bench)
    sim = NodeProcess('sim_robot', ['--ros-args', '-p', 'profile:=quadruped_12dof'], log_dir=log_dir)
    try:
        print(f'skill_runtime bench — {os.cpu_count()} cores, load average '
              f'{", ".join(f"{x:.1f}" for x in os.getloadavg())}; sim_robot quadruped_12dof, '
              f'stand_up running; logs in {log_dir}')
        if args.only in (None, 'jitter'):
            for rate in (500.0, 1000.0):
                jitter(bench, client, rate, args.seconds, args.rt_priority, log_dir)
            if args.rt_priority:
                print('  without SCHED_FIFO (rt_priority 0, executor_rt_priority 0):')
                jitter(bench, client, 500.0, args.seconds, 0, log_dir)
        if args.baseline and args.only in (None, 'cpu'):
            base = baseline_tree(args.baseline, log_dir)
            for label, src in (('in-process runtime ' + args.baseline, base), ('runtime + workers', None),
                               ('in-process runtime ' + args.baseline, base), ('runtime + workers', None)):
                jitter(bench, client, 500.0, args.seconds, args.rt_priority, log_dir, src, label)
        if args.only in (None, 'estop'):
            estop_latency(bench, client, args.trials, log_dir)
        print(f'  load average after: {", ".join(f"{x:.1f}" for x in os.getloadavg())}')
    finally:
        sim.stop()
        spinner.stop()
        bench.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
