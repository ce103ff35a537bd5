"""Per-tick round trip between the gate's control thread and a skill worker: which IPC, which nice.

No ROS: the control side is a thread at the gate's priority (SCHED_FIFO 40 where permitted)
ticking at 500 Hz; the other side a fresh interpreter. Two transports:

* ``pipe``: the robot state (profile-sized float64 block) written into a pipe, the targets
  read back from another (bytes copied through the kernel both ways);
* ``shm``: state and targets in the shared tick block (:class:`skill_runtime.ipc.TickBlock`),
  one wake byte each way;
* the runtime's own path end to end (:func:`skill_runtime.proxy.tick_workers`): a real worker
  running the acme ``hold`` test skill.

Prints p50 / p99 / max of the round trip and how many answers missed the tick's wait; then how
far past its deadline the tick's wait returns when an answer never comes (on select, and on the
poll path taken where descriptors pass FD_SETSIZE).
Usage: ``.venv/bin/python bench/skills/ipc.py [--seconds 8] [--nice 0 5]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from field_deploy.profile import load_profile
from skill_runtime.api import RobotState
from skill_runtime.gate import SkillRun
from skill_runtime.loop import set_thread_realtime
from skill_runtime.manifest import read_manifest
from skill_runtime.proxy import FD_SETSIZE, WorkerSpec, tick_workers, wait_replies, worker_env
from skill_runtime.supervisor import Supervisor
from skill_runtime.worker import sandbox_policy

QUAD = load_profile('quadruped_12dof')
FIXTURE = Path(__file__).resolve().parents[2] / 'test' / 'fixtures' / 'packs' / 'acme_test'
PERIOD_NS = 2_000_000
WAIT_NS = 1_000_000   # the gate's default wait: half a 500 Hz period

# Both transport children do the same trivial work (copy q out as the targets), so the
# difference is the transport; the third row is the runtime's real worker running a skill.
PIPE_CHILD = r'''
import os, sys, numpy as np
from skill_runtime.worker import prepare_process
prepare_process(0, int(sys.argv[3]))
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))  # as a running skill's worker
r, w, n = int(sys.argv[1]), int(sys.argv[2]), 12
size = (1 + 3 * 12 + 10 + 4 * 7) * 8
while True:
    buf = b''
    while len(buf) < size:
        chunk = os.read(r, size - len(buf))
        if not chunk:
            sys.exit(0)
        buf += chunk
    state = np.frombuffer(buf, dtype=np.float64)
    out = np.concatenate([state[1:1 + n], np.zeros(2 * n + 2)])
    os.write(w, out.tobytes())
'''

SHM_CHILD = r'''
import mmap, os, sys
from skill_runtime import ipc
from skill_runtime.worker import prepare_process
prepare_process(0, int(sys.argv[4]))
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
r, w, fd = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
block = ipc.TickBlock(mmap.mmap(fd, ipc.TickBlock.size(12, 12, 4)), 12, 12, 4)
while os.read(r, 64):
    block.write_reply(block.request(), ipc.ST_TARGETS, q=block.read_state()[1])
    os.write(w, b'.')
'''


def ticker(seconds: float, one_tick) -> list[float]:
    """Call ``one_tick()`` at 500 Hz from a SCHED_FIFO thread; its round trips in ms."""
    out: list[float] = []

    def run() -> None:
        set_thread_realtime(40)
        next_ns = time.monotonic_ns()
        end = next_ns + int(seconds * 1e9)
        while next_ns < end:
            next_ns += PERIOD_NS
            delay = next_ns - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            rt = one_tick()
            if rt is not None:
                out.append(rt)

    th = threading.Thread(target=run)
    th.start()
    th.join()
    return out


def tick_child(child: subprocess.Popen, a_w: int, b_r: int, one, seconds: float) -> list[float]:
    """Tick a transport child for ``seconds``, then close its pipes and reap it."""
    time.sleep(0.5)  # interpreter start
    out = ticker(seconds, one)
    os.close(a_w)
    child.wait(5)
    os.close(b_r)
    return out


def pipe_bench(seconds: float, nice: int) -> tuple[list[float], int]:
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    child = subprocess.Popen([sys.executable, '-c', PIPE_CHILD, str(a_r), str(b_w), str(nice)],
                             pass_fds=(a_r, b_w), env=worker_env())
    os.close(a_r)
    os.close(b_w)
    q, imu = QUAD.array('default'), np.zeros(10)
    wrenches = {site: np.zeros(6) for site in ('a', 'b', 'c', 'd')}
    reply_size = (3 * 12 + 2) * 8
    late = [0]

    def one() -> float | None:
        t0 = time.monotonic_ns()
        # The same assembly as the shm path (state from its parts), then through the kernel.
        state = np.concatenate([np.array([0.0]), q, q, q, imu, *wrenches.values(), np.ones(4)])
        os.write(a_w, state.tobytes())
        got = b''
        import select
        while len(got) < reply_size:
            left = (t0 + WAIT_NS * 20 - time.monotonic_ns()) / 1e6
            ready, _, _ = select.select([b_r], [], [], max(0.0, left / 1e3))
            if not ready:
                late[0] += 1
                return None
            got += os.read(b_r, reply_size - len(got))
        reply = np.frombuffer(got, dtype=np.float64).copy()
        _targets = (reply[0:12], reply[12:24], reply[24:36], float(reply[36]))
        rt = time.monotonic_ns() - t0
        if rt > WAIT_NS:
            late[0] += 1
        return rt / 1e6

    return tick_child(child, a_w, b_r, one, seconds), late[0]


def shm_transport_bench(seconds: float, nice: int) -> tuple[list[float], int]:
    import mmap
    import select

    from skill_runtime import ipc
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    fd = ipc.new_block_file(ipc.TickBlock.size(12, 12, 4))
    block = ipc.TickBlock(mmap.mmap(fd, ipc.TickBlock.size(12, 12, 4)), 12, 12, 4)
    child = subprocess.Popen([sys.executable, '-c', SHM_CHILD, str(a_r), str(b_w), str(fd), str(nice)],
                             pass_fds=(a_r, b_w, fd), env=worker_env())
    for x in (a_r, b_w, fd):
        os.close(x)
    q = QUAD.array('default')
    seq = [0]
    late = [0]
    sites = ('a', 'b', 'c', 'd')
    imu = np.zeros(10)
    wrenches = {site: np.zeros(6) for site in sites}

    def one() -> float | None:
        t0 = time.monotonic_ns()
        seq[0] += 1
        block.write_state(seq[0], 0.0, q, q, q, imu, wrenches, sites, 0)
        os.write(a_w, b'.')
        while True:
            left = (t0 + WAIT_NS * 20 - time.monotonic_ns()) / 1e9
            ready, _, _ = select.select([b_r], [], [], max(0.0, left))
            if not ready:
                late[0] += 1
                return None
            os.read(b_r, 64)
            if block.read_reply(seq[0]) is not None:
                break
        rt = time.monotonic_ns() - t0
        if rt > WAIT_NS:
            late[0] += 1
        return rt / 1e6

    return tick_child(child, a_w, b_r, one, seconds), late[0]


def shm_bench(seconds: float, nice: int) -> tuple[list[float], int]:
    sup = Supervisor(lambda key, level, text: None)
    tmp = Path(tempfile.mkdtemp(prefix='ipc_bench_'))
    spec = next(s for s in read_manifest(FIXTURE).skills if s.name == 'hold')
    idx = np.arange(12)
    worker = sup.spawn(WorkerSpec(key='acme_test/hold', log_path=tmp / 'w.log',
                                  cwd=tmp, nice=nice))
    worker.wait_ready(20)
    worker.request('configure', 20, pack_dir=str(FIXTURE), pack='acme_test', skill='hold',
                   entry=spec.entry, profile=str(QUAD.path), params={}, indices=idx.tolist(),
                   rate_hz=500.0, sites=[], policy=sandbox_policy(scratch_dir=str(tmp),
                                                                  pack_dir=str(FIXTURE),
                                                                  memory_mb=1024, max_files=64))
    state = RobotState(q=QUAD.array('default'), dq=np.zeros(12), tau=np.zeros(12))
    worker.set_layout(12, 12, ())
    worker.write_state(0.0, state.q, state.dq, state.tau, state.imu, {}, 0, new_request=False)
    run = SkillRun(key='acme_test/hold', indices=idx, every=1, budget=1.0, timeout=1e9)
    run.begin(state.q)
    worker.request('start', 20)
    worker.set_realtime(20, 1.0)   # as the runtime does while a skill runs

    def one() -> float | None:
        t0 = time.monotonic_ns()
        steps = run.steps
        tick_workers([(run, worker)], lambda: state, t0 + WAIT_NS)
        if run.steps == steps:
            return None   # late: counted in run.late
        return (time.monotonic_ns() - t0) / 1e6

    out = ticker(seconds, one)
    late = run.late
    sup.stop()
    return out, late


def wait_overshoot(high_fd: bool, trials: int = 2000) -> list[float]:
    """How far past its deadline :func:`wait_replies` returns when the answer never comes, with
    0.3 ms left (a tick that spent 0.7 ms on the robot state before waiting): select's path, or
    poll's (descriptors numbered FD_SETSIZE and up). Before 2026-12-01 the wait was poll's alone,
    in whole milliseconds rounded up: 0.75 ms past the deadline at p50 on a 2-core host."""
    r, w = os.pipe()
    fd = os.dup2(r, FD_SETSIZE + 100) if high_fd else r
    worker = SimpleNamespace(outstanding=True, closed=False, done_r=fd)
    out = []
    for _ in range(trials):
        deadline = time.monotonic_ns() + 300_000
        wait_replies([worker], deadline)
        out.append((time.monotonic_ns() - deadline) / 1e6)
    for d in {r, w, fd}:
        os.close(d)
    return out


def pct(values: list[float]) -> str:
    a = np.asarray(values)
    if a.size == 0:
        return 'no samples'
    return (f'p50 {np.percentile(a, 50):6.3f}  p99 {np.percentile(a, 99):6.3f}  max {a.max():7.3f} ms'
            f'  (n={a.size})')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=float, default=8.0)
    ap.add_argument('--nice', type=int, nargs='+', default=[0, 5])
    args = ap.parse_args()
    print(f'IPC bench: {os.cpu_count()} cores, load average '
          f'{", ".join(f"{x:.1f}" for x in os.getloadavg())}; 500 Hz from a thread at '
          f'{set_thread_realtime(40)}; a tick waits {WAIT_NS / 1e6:g} ms')
    for nice in args.nice:
        for name, fn in (('pipe (state + targets copied)', pipe_bench),
                         ('shm block + wake byte', shm_transport_bench),
                         ('runtime worker (FIFO 20), hold*', shm_bench)):
            rts, late = fn(args.seconds, nice)
            print(f'  nice {nice:2d}  {name:30s} round trip {pct(rts)}  late {late}')
    print('  * shm + wake byte with a real skill step; round trips of answers within the wait only')
    for name, high_fd in (('select (fd < FD_SETSIZE)', False), ('poll (fd >= FD_SETSIZE)', True)):
        print(f'  wait with 0.3 ms left, no answer, {name:24s} past its deadline by '
              f'{pct(wait_overshoot(high_fd))}')
    print(f'  load average after: {", ".join(f"{x:.1f}" for x in os.getloadavg())}')


if __name__ == '__main__':
    main()
