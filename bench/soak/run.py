"""Soak benchmark: the whole stack for hours, missions back to back, what grows.

    .venv/bin/python bench/soak/run.py --hours 1 --robot quadruped_12dof [--out soak-out]
    .venv/bin/python bench/soak/run.py --plot soak-out/samples.json       # figures again

Brings the stack up exactly as ``field_deploy up`` (its own ROS domain), runs the robot kind's
reference mission again and again through the operator interfaces, kills a managed node with -9
every ``--kill-every`` seconds (the lifecycle manager must bring it back) and asks the recorder
for a split every ``--split-every`` seconds. Every ``--interval`` seconds it samples, from
outside the processes: each node's RSS, CPU share, threads and open file descriptors; the Fast
DDS files in /dev/shm; the recorder's queue and lost count (its ``/diagnostics``); the bag
folder's size and the disk's free space. At the end it prints each series' slope after the
warm-up (MB per hour for memory) and draws them as PNG plots (``<out>/soak_*.png``).

Why from outside: a process that measures its own memory measures it with the allocator it is
leaking through; psutil reads the kernel's figure, the one that runs a robot out of memory.
Prints figures; not a pass/fail test. A killed node restarts with a new pid: series are kept per
node name, so a restart shows as a step, and its slope is taken over the samples after the last
restart only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'src'))

from field_deploy.memory import STATS_ENV  # noqa: E402
from field_deploy.testing import executable, isolate_ros_env  # noqa: E402

NODES = ('sim_robot', 'data_recorder', 'skill_runtime', 'health_monitor')
KILLABLE = ('skill_runtime', 'data_recorder')


@dataclass
class Sample:
    t: float
    """Seconds since the stack was up."""
    procs: dict[str, dict[str, float]] = field(default_factory=dict)
    """Node name -> rss_mb (and its parts anon_mb, file_mb, shmem_mb), cpu_pct, threads, fds, pid."""
    shm_mb: float = 0.0
    """Fast DDS files in /dev/shm mapped by the stack's processes (MB of pages in use)."""
    shm_files: int = 0
    host_shm_mb: float = 0.0
    """Every Fast DDS file in /dev/shm on the host (other programs' and stale ones too)."""
    host_shm_files: int = 0
    bag_mb: float = 0.0
    pruned_mb: float = 0.0
    """Closed bag files the bench deleted so far (``--keep-gb``)."""
    disk_free_gb: float = 0.0
    recorder: dict[str, float] = field(default_factory=dict)
    load1: float = 0.0
    """The host's 1-minute load average (figures measured under load say so)."""


def node_processes(root_pid: int, copies: dict[str, int] | None = None) -> dict[str, object]:
    """Node name -> psutil.Process among the descendants of the bring-up (the newest, when
    there are several: ``copies`` gets how many run of each name - two recorders at once serve
    every stream twice, and one sample per name would not show the second)."""
    import psutil

    found: dict[str, object] = {}
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for proc in children:
        try:
            argv = proc.cmdline()
        except psutil.Error:
            continue
        name = next((n for n in NODES if len(argv) > 1 and argv[1].endswith(f'/{n}')), None)
        if name:
            if copies is not None:
                copies[name] = copies.get(name, 0) + 1
            try:
                if name not in found or proc.create_time() >= found[name].create_time():
                    found[name] = proc
            except psutil.Error:
                continue
    return found


def shm_usage(pids: list[int] | None = None) -> tuple[float, int]:
    """MB and count of the Fast DDS files in /dev/shm: the ones ``pids`` map, or all of them.

    The host's total includes every other ROS program on it (and the files a killed process
    left); the stack's own share is the files its live processes have mapped.
    """
    names: set[str] | None = None
    if pids is not None:
        names = set()
        for pid in pids:
            try:
                with open(f'/proc/{pid}/maps') as maps:
                    names.update(line.rsplit('/', 1)[-1].strip() for line in maps if '/dev/shm/' in line)
            except OSError:
                continue
    total, count = 0, 0
    for entry in os.scandir('/dev/shm'):
        if entry.name.startswith(('fastrtps_', 'sem.fastrtps_')) and (names is None or entry.name in names):
            try:
                total += entry.stat().st_blocks * 512
                count += 1
            except OSError:
                continue
    return total / 1e6, count


def rss_parts_mb(pid: int) -> dict[str, float]:
    """The RSS in its three kinds, from ``/proc/<pid>/status``: ``anon_mb`` (heap, thread arenas,
    pools: what a native leak grows), ``file_mb`` (libraries and other mapped files: code pages
    come in the first time a path runs, bounded by the files' size) and ``shmem_mb`` (pages of the
    Fast DDS segments in /dev/shm this process maps: its own and every writer's it reads from, in
    full in the project's nodes (``field_deploy.memory.SegmentPrefaulter``), as far as touched in
    other processes; counted once for the host in the /dev/shm series). A slope in the
    RSS names its kind; nan when the process is gone."""
    keys = {'RssAnon:': 'anon_mb', 'RssFile:': 'file_mb', 'RssShmem:': 'shmem_mb'}
    parts = dict.fromkeys(keys.values(), float('nan'))
    try:
        with open(f'/proc/{pid}/status') as status:
            for line in status:
                key = line.split(maxsplit=1)[0]
                if key in keys:
                    parts[keys[key]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return parts


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob('*') if f.is_file()) / 1e6 if path.exists() else 0.0


MCAP_MAGIC = b'\x89MCAP0\r\n'


def prune_closed_files(bag_dir: Path, keep_bytes: int) -> int:
    """Delete the oldest *closed* MCAP files of the soak's bags (``bag``, and ``bag_2`` … that
    the recorder's restarts open) until they hold at most ``keep_bytes``; returns the bytes
    deleted. The newest file of each bag may be the one being written: never touched.

    Why the bench does it: the stack records ~13.5 MB/s (quadruped, cameras), 48 GB an hour,
    and the fleet rotation deletes only whole closed bags once they are verified uploaded - a
    recording that runs all shift is one bag, never closed. The first one-hour soak
    (2026-11-30 16:55) filled this disk at 28 min; the recorder's disk guard stopped it, and
    its restart found no room. The bags the soak keeps are then incomplete: they are not its
    point."""
    closed = []
    for folder in sorted(bag_dir.parent.glob(f'{bag_dir.name}*')):
        files = sorted(folder.glob('*.mcap'), key=lambda f: f.stat().st_mtime)
        for f in files[:-1]:
            with f.open('rb') as fh:
                fh.seek(-len(MCAP_MAGIC), 2)
                if fh.read() == MCAP_MAGIC:
                    closed.append(f)
    total = sum(f.stat().st_size for folder in bag_dir.parent.glob(f'{bag_dir.name}*')
                for f in folder.rglob('*') if f.is_file())
    deleted = 0
    for f in sorted(closed, key=lambda f: f.stat().st_mtime):
        if total - deleted <= keep_bytes:
            break
        size = f.stat().st_size
        f.unlink()
        deleted += size
    return deleted


class Sampler:
    """Samples the stack's processes every ``interval`` seconds from its own thread."""

    def __init__(self, root_pid: int, bag_dir: Path, interval: float, recorder_status: dict,
                 keep_bytes: int = 0, memstats: Path | None = None) -> None:
        self.root_pid = root_pid
        self.memstats = memstats
        self.bag_dir = bag_dir
        self.keep_bytes = keep_bytes
        self.pruned_bytes = 0
        self.interval = interval
        self.recorder_status = recorder_status
        self.samples: list[Sample] = []
        self._cpu: dict[int, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self.sample())

    def sample(self) -> Sample:
        import psutil

        now = time.monotonic()
        s = Sample(t=now - self._t0)
        copies: dict[str, int] = {}
        procs = node_processes(self.root_pid, copies)
        for name, proc in procs.items():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    cpu_s = times.user + times.system
                    last = self._cpu.get(proc.pid)
                    self._cpu[proc.pid] = (now, cpu_s)
                    cpu = 100 * (cpu_s - last[1]) / (now - last[0]) if last else float('nan')
                    s.procs[name] = {'pid': proc.pid, 'rss_mb': proc.memory_info().rss / 1e6,
                                     **rss_parts_mb(proc.pid), 'cpu_pct': cpu, 'threads': proc.num_threads(),
                                     'fds': proc.num_fds(), 'thread_cpu_s': thread_cpu_s(proc.pid),
                                     'copies': copies.get(name, 1), **allocator_mb(self.memstats, proc.pid)}
            except psutil.Error:
                continue
        s.shm_mb, s.shm_files = shm_usage([self.root_pid, *(p.pid for p in procs.values())])
        s.host_shm_mb, s.host_shm_files = shm_usage()
        if self.keep_bytes:
            self.pruned_bytes += prune_closed_files(self.bag_dir, self.keep_bytes)
        s.bag_mb = folder_mb(self.bag_dir)
        s.pruned_mb = self.pruned_bytes / 1e6
        s.disk_free_gb = psutil.disk_usage(str(self.bag_dir.parent)).free / 1e9
        s.recorder = dict(self.recorder_status)
        s.load1 = os.getloadavg()[0]
        return s


def allocator_mb(folder: Path | None, pid: int) -> dict[str, float]:
    """The node's own allocator figures (``field_deploy.memory.AllocatorReport``: pymalloc's
    arenas and blocks in use, glibc's heap, in use and free), at most 10 s old; {} without."""
    if folder is None:
        return {}
    for path in folder.glob(f'*-{pid}.json'):
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text())
    return {}


def thread_cpu_s(pid: int) -> dict[str, float]:
    """Thread name -> CPU seconds so far (threads of one name summed): a process whose CPU
    drifts says which of its threads does it (the executor, a DDS receiver, a Python thread)."""
    tick = os.sysconf('SC_CLK_TCK')
    out: dict[str, float] = {}
    task = Path(f'/proc/{pid}/task')
    try:
        tids = list(task.iterdir())
    except OSError:
        return out
    for tid in tids:
        try:
            name = (tid / 'comm').read_text().strip()
            fields = (tid / 'stat').read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue                     # a thread that ended meanwhile
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour; nan with fewer than 3 points."""
    import numpy as np

    if len(points) < 3:
        return float('nan')
    t, v = np.array(points, dtype=np.float64).T
    return float(np.polyfit(t, v, 1)[0] * 3600.0)


#: A restarted node's own start-up, left out of its slope as the stack's first minutes are: its
#: ``SegmentPrefaulter`` maps the peers' segments (92 MB of shared pages) within 10 s of its start,
#: so a sample taken before that reads ~90 MB low and alone makes a slope of +40-75 MB/h (the
#: one-hour soak of 2026-12-02 09:21: skill_runtime 98 MB 20 s after its restart, 187 after).
RESTART_SETTLE_S = 60.0


def series(samples: list[dict], name: str, key: str, warmup: float) -> list[tuple[float, float]]:
    """One node's (t, value) after the warm-up and after its last restart (new pid), less the
    first :data:`RESTART_SETTLE_S` of a restarted process."""
    everything = [(s['t'], s['procs'][name]['pid']) for s in samples if name in s['procs']]
    points = [(s['t'], s['procs'][name].get(key, float('nan')), s['procs'][name]['pid'])
              for s in samples if name in s['procs'] and s['t'] >= warmup]
    if not points:
        return []
    last_pid = points[-1][2]
    born = min(t for t, pid in everything if pid == last_pid)
    settled = born + RESTART_SETTLE_S if born > everything[0][0] else born
    return [(t, v) for t, v, pid in points if pid == last_pid and t >= settled]


def report(samples: list[dict], warmup: float, out: Path) -> None:
    print(f'\n{len(samples)} samples over {samples[-1]["t"] / 60:.1f} min; slopes after '
          f'{warmup / 60:.0f} min of warm-up (and after each node\'s last restart and its first '
          f'{RESTART_SETTLE_S:.0f} s)')
    print(f'{"process":16} {"RSS MB":>14} {"MB/hour":>9} {"anon MB/h":>9} {"file MB/h":>9} '
          f'{"shm MB/h":>9} {"threads":>9} {"fds":>9} '
          f'{"CPU %":>7} {"restarts":>8} {"copies":>6}')
    for name in NODES:
        rss = series(samples, name, 'rss_mb', warmup)
        if not rss:
            continue
        threads = [v for _, v in series(samples, name, 'threads', warmup)]
        fds = [v for _, v in series(samples, name, 'fds', warmup)]
        cpu = [v for _, v in series(samples, name, 'cpu_pct', warmup) if v == v]
        parts = [slope_per_hour([(t, v) for t, v in series(samples, name, key, warmup) if v == v])
                 for key in ('anon_mb', 'file_mb', 'shmem_mb')]
        print(f'{name:16} {rss[0][1]:6.0f}->{rss[-1][1]:<6.0f} {slope_per_hour(rss):9.1f} '
              + ''.join(f'{part:9.1f} ' for part in parts) +
              f'{min(threads):4.0f}-{max(threads):<4.0f} {min(fds):4.0f}-{max(fds):<4.0f} '
              f'{sum(cpu) / max(len(cpu), 1):7.1f} '
              f'{len({s["procs"][name]["pid"] for s in samples if name in s["procs"]}) - 1:8d} '
              f'{max(s["procs"][name].get("copies", 1) for s in samples if name in s["procs"]):6d}')
    settled_recorder(samples, warmup)
    allocator_drift(samples, warmup)
    thread_drift(samples, warmup)
    late = [s for s in samples if s['t'] >= warmup] or samples
    shm = [(s['t'], s['shm_mb']) for s in late]
    print(f'/dev/shm Fast DDS, the stack\'s: {late[0]["shm_mb"]:.0f} -> {late[-1]["shm_mb"]:.0f} MB '
          f'({late[0]["shm_files"]} -> {late[-1]["shm_files"]} files), {slope_per_hour(shm):.1f} MB/hour; '
          f'the host\'s: {late[0].get("host_shm_files", 0)} -> {late[-1].get("host_shm_files", 0)} files')
    print(f'bag folder: {late[-1]["bag_mb"]:.0f} MB (closed files deleted by --keep-gb: '
          f'{late[-1].get("pruned_mb", 0.0):.0f} MB); disk free {late[-1]["disk_free_gb"]:.1f} GB')
    loads = [s.get('load1', float('nan')) for s in samples]
    print(f'host load average (1 min) during the run: mean {sum(loads) / len(loads):.1f}, '
          f'min {min(loads):.1f}, max {max(loads):.1f} ({os.cpu_count()} cores)')
    plot(samples, warmup, out)


def settled_recorder(samples: list[dict], warmup: float) -> None:
    """The recorder's RSS slope over the samples where its queue was empty, beside the slope of
    all of them: a backlog is the bounded queue at work (up to ``queue_max_bytes``) and lifts the
    RSS while it lasts; what stays once it has drained is what a shift accumulates."""
    queue = {s['t']: s.get('recorder', {}).get('queue', float('nan')) for s in samples}
    rss = series(samples, 'data_recorder', 'rss_mb', warmup)
    settled = [(t, v) for t, v in rss if queue.get(t) == 0]
    if len(settled) >= 3:
        print(f'data_recorder with its queue empty ({len(settled)} of {len(rss)} samples): '
              f'{settled[0][1]:.0f} -> {settled[-1][1]:.0f} MB, {slope_per_hour(settled):+.1f} MB/hour')


ALLOCATOR_KEYS = ('py_used_mb', 'py_arenas_mb', 'c_used_mb', 'c_free_mb', 'c_heap_mb')


def allocator_drift(samples: list[dict], warmup: float) -> None:
    """Each node's allocator books after the warm-up (first -> last MB, slope MB/h): which of
    them an anonymous-memory step is in - live Python objects, pymalloc arenas kept for a few
    live blocks, live native blocks, glibc's free pages not yet trimmed."""
    rows = []
    for name in NODES:
        parts = []
        for key in ALLOCATOR_KEYS:
            points = [(t, v) for t, v in series(samples, name, key, warmup) if v == v]
            if len(points) >= 3:
                parts.append(f'{key[:-3]} {points[0][1]:.1f}->{points[-1][1]:.1f} '
                             f'({slope_per_hour(points):+.1f}/h)')
        if parts:
            rows.append(f'  {name:16} ' + ', '.join(parts))
    if rows:
        print('allocators (MB, after warm-up and last restart; py: pymalloc, c: glibc):')
        print('\n'.join(rows))


def thread_drift(samples: list[dict], warmup: float, window_s: float = 300.0) -> None:
    """Each node's CPU by thread (share of a core): the first ``window_s`` after the warm-up
    against the last, over one pid (a restart starts its counters again)."""
    print(f'CPU by thread, first {window_s / 60:.0f} min after the warm-up -> last '
          f'{window_s / 60:.0f} min (threads over 1 % of a core):')
    for name in NODES:
        points = [(s['t'], s['procs'][name]) for s in samples
                  if name in s['procs'] and s['t'] >= warmup
                  and 'thread_cpu_s' in s['procs'][name]]
        if len(points) < 4:
            continue
        pid = points[-1][1]['pid']
        points = [(t, p['thread_cpu_s']) for t, p in points if p['pid'] == pid]
        if len(points) < 4 or points[-1][0] - points[0][0] < 2 * window_s:
            continue
        first = [p for p in points if p[0] - points[0][0] <= window_s]
        last = [p for p in points if points[-1][0] - p[0] <= window_s]

        def shares(window: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
            (t0, a), (t1, b) = window[0], window[-1]
            return {k: 100 * (b[k] - a.get(k, 0.0)) / (t1 - t0) for k in b if t1 > t0}
        before, after = shares(first), shares(last)
        busy = sorted((k for k in after if max(after[k], before.get(k, 0.0)) >= 1.0),
                      key=lambda k: -after[k])
        print(f'  {name:16} ' + ', '.join(
            f'{k} {before.get(k, 0.0):.1f}->{after[k]:.1f}' for k in busy))


def plot(samples: list[dict], warmup: float, out: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    keys = (('rss_mb', 'RSS (MB)'), ('threads', 'threads'), ('fds', 'open files'), ('cpu_pct', 'CPU (%)'))
    fig, axes = plt.subplots(len(keys) + 2, 1, figsize=(9, 13), sharex=True)
    for ax, (key, label) in zip(axes, keys, strict=False):
        for name in NODES:
            points = [(s['t'] / 60, s['procs'][name][key]) for s in samples if name in s['procs']]
            if points:
                ax.plot(*zip(*points, strict=True), label=name, linewidth=1)
        ax.set_ylabel(label)
    axes[0].legend(loc='upper left', fontsize=8)
    minutes = [s['t'] / 60 for s in samples]
    queue = axes[-2]
    queue.plot(minutes, [s['recorder'].get('queue', float('nan')) for s in samples], linewidth=1,
               label='recorder queue (messages)')
    queue.set_ylabel('recorder queue')
    load = queue.twinx()
    load.plot(minutes, [s.get('load1', float('nan')) for s in samples], color='grey',
              linewidth=1, linestyle='--', label='host load (1 min)')
    load.set_ylabel('host load', color='grey')
    axes[-1].plot(minutes, [s['shm_mb'] for s in samples], label="the stack's")
    axes[-1].plot(minutes, [s.get('host_shm_mb', float('nan')) for s in samples], label="the host's")
    axes[-1].legend(loc='upper left', fontsize=8)
    axes[-1].set_ylabel('/dev/shm Fast DDS (MB)')
    axes[-1].set_xlabel('minutes')
    for ax in axes:
        ax.axvline(warmup / 60, color='grey', linestyle=':', linewidth=1)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / 'soak.png'
    fig.savefig(path, dpi=70)
    print(f'plot: {path}')


def save(out: Path, args: argparse.Namespace, samples: list[Sample], outcomes: dict[str, int],
         kills: list[str], splits: int) -> list[dict]:
    """Write ``samples.json`` (also during the run: a soak cut short keeps what it measured)."""
    rows = [s.__dict__ for s in list(samples)]
    doc = {'warmup': args.warmup, 'robot': args.robot, 'idle': args.idle, 'outcomes': outcomes,
           'kills': kills, 'splits': splits, 'samples': rows}
    tmp = out / 'samples.json.tmp'
    tmp.write_text(json.dumps(doc))
    tmp.replace(out / 'samples.json')
    return rows


def run(args: argparse.Namespace) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node

    from field_app.demo import MISSIONS
    from field_app.operator import Operator, OperatorError, load_mission
    from field_deploy.profile import load_profile
    from field_deploy.ros import Spinner, init

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bag_dir = out / 'bag'
    isolate_ros_env()
    profile = load_profile(args.robot)
    mission = load_mission(MISSIONS[profile.kind])
    log = (out / 'stack.log').open('w')
    up = subprocess.Popen([executable('field_deploy'), 'up', '--robot', args.robot, '--bag-dir',
                           str(bag_dir)], stdout=log, stderr=subprocess.STDOUT,
                          env={**os.environ, 'HOME': str(out), STATS_ENV: str(out / 'memstats')})
    init([])
    node = Node('soak_operator')
    recorder_status: dict[str, float] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.name == 'data_recorder':
                for kv in st.values:
                    if kv.key in ('queue', 'lost', 'received', 'written'):
                        recorder_status[kv.key] = float(kv.value)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 50)
    operator = Operator(node)
    operator.prepare(mission.steps)
    spinner = Spinner([node]).start()
    sampler = None
    outcomes: dict[str, int] = {}
    kills: list[str] = []
    splits, printed = 0, 0
    try:
        for name in ('sim_robot', 'data_recorder', 'skill_runtime'):
            if not operator.wait_state(f'/{name}', 'active', timeout=90.0):
                raise SystemExit(f'{name} did not become active (see {out / "stack.log"})')
        sampler = Sampler(up.pid, bag_dir, args.interval, recorder_status,
                          int(args.keep_gb * 1e9), out / 'memstats').start()
        t0 = time.monotonic()
        next_kill, next_split = t0 + args.kill_every, t0 + args.split_every
        end = t0 + args.hours * 3600
        while time.monotonic() < end and up.poll() is None:
            for step in ([] if args.idle else mission.steps):
                try:
                    result = operator.run_skill(step)
                    outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
                except OperatorError as exc:
                    outcomes['error'] = outcomes.get('error', 0) + 1
                    print(f'  operator: {exc}')
            now = time.monotonic()
            if args.kill_every > 0 and now >= next_kill:
                victim = args.kill[len(kills) % len(args.kill)]
                proc = node_processes(up.pid).get(victim)
                if proc is not None:
                    os.kill(proc.pid, signal.SIGKILL)
                    kills.append(victim)
                    print(f'  {(now - t0) / 60:5.1f} min: killed {victim} (-9)')
                    operator.wait_state(f'/{victim}', 'active', timeout=120.0)
                next_kill = now + args.kill_every
            if args.split_every > 0 and now >= next_split:
                try:
                    operator.trigger('/data_recorder/split')
                    splits += 1
                except OperatorError as exc:   # a loaded host, a recorder restarting: go on
                    print(f'  {(now - t0) / 60:5.1f} min: split: {exc}')
                next_split = now + args.split_every
            if args.idle:
                time.sleep(1.0)
            if len(sampler.samples) >= printed + 10:
                printed = len(sampler.samples)
                s = sampler.samples[-1]
                print(f'  {s.t / 60:5.1f} min (load {os.getloadavg()[0]:.1f}): ' + ', '.join(
                    f'{n} {p["rss_mb"]:.0f} MB' for n, p in s.procs.items()), flush=True)
                save(out, args, sampler.samples, outcomes, kills, splits)
    finally:
        if sampler is not None:
            sampler.stop()
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
        log.close()
    samples = save(out, args, sampler.samples if sampler else [], outcomes, kills, splits)
    print(f'skill outcomes: {outcomes}; nodes killed: {len(kills)} ({", ".join(kills) or "none"}); '
          f'splits: {splits}; load average at the end: {os.getloadavg()}')
    if samples:
        report(samples, min(args.warmup, samples[-1]['t'] / 2), out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--hours', type=float, default=1.0)
    ap.add_argument('--robot', default='quadruped_12dof')
    ap.add_argument('--out', default='soak-out')
    ap.add_argument('--interval', type=float, default=30.0, help='seconds between samples')
    ap.add_argument('--warmup', type=float, default=600.0, help='seconds left out of the slopes')
    ap.add_argument('--kill-every', type=float, default=900.0, help='seconds; 0: never')
    ap.add_argument('--kill', nargs='+', choices=KILLABLE, default=list(KILLABLE),
                    help='the nodes killed in turn (one alone: what its restarts cost the others)')
    ap.add_argument('--split-every', type=float, default=600.0, help='seconds; 0: never')
    ap.add_argument('--keep-gb', type=float, default=10.0,
                    help='delete the oldest closed bag files beyond this (0: keep all)')
    ap.add_argument('--idle', action='store_true',
                    help='no missions: the stack only streams and records (the issue-19 measurement)')
    ap.add_argument('--plot', default=None, help='samples.json of an earlier run: report it again')
    args = ap.parse_args()
    if args.plot:
        doc = json.loads(Path(args.plot).read_text())
        samples = doc['samples']
        report(samples, min(doc['warmup'], samples[-1]['t'] / 2), Path(args.plot).parent)
        return
    # Ctrl-C and kill (a soak started with nohup / & has SIGINT ignored): stop the stack cleanly
    # and keep the figures (run's finally), never leave the nodes running behind
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    run(args)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == '__main__':
    main()
