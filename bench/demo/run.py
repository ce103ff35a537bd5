"""Benchmark of the whole stack: `field_deploy demo` run N times, loss and lag per run.

    .venv/bin/python bench/demo/run.py [--runs 10] [--robot quadruped_12dof] [--busy 0]

For each run: the mission's outcomes, the messages recorded and lost (the bag's own accounting,
per topic when not zero), the recorder's worst lag on the 500 Hz streams and on the camera
(receive time minus header stamp, read back from the bag: how far behind the sample clock the
recorder took messages), the STALE alarms the health monitor raised on /diagnostics_agg (read
back from the bag: every watched stream that had been OK and turned STALE) and the CPU share
and peak RSS of each process of the stack. ``--busy K`` adds K
busy-loop processes at normal priority, an overloaded host. Prints figures; not a pass/fail test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'src'))

from field_deploy.testing import executable  # noqa: E402

NODES = ('sim_robot', 'data_recorder', 'skill_runtime', 'health_monitor')


def sample_cpu(proc: subprocess.Popen[bytes]) -> dict[str, tuple[float, float]]:
    """CPU share (% of one core) and peak RSS (MB) of each stack process, sampled until ``proc`` ends."""
    import psutil

    seen: dict[int, tuple[str, float, float, float, float]] = {}  # pid -> (name, first, last, cpu s, rss)
    while proc.poll() is None:
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                argv = p.cmdline()
                name = next((n for n in NODES if len(argv) > 1 and argv[1].endswith(f'/{n}')), None)
                if name:
                    times = p.cpu_times()
                    rss = p.memory_info().rss / 1e6
                    now = time.monotonic()
                    _, first, _, _, peak = seen.get(p.pid, (name, now, now, 0.0, 0.0))
                    seen[p.pid] = (name, first, now, times.user + times.system, max(peak, rss))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.5)
    return {name: (100 * cpu / max(last - first, 1e-9), rss)
            for name, first, last, cpu, rss in seen.values()}


def lag_ms(bag_dir: Path, topics: list[str]) -> float:
    """Worst (log time - header stamp) over ``topics``, in ms."""
    from data_recorder.bag.reader import Bag
    from data_recorder.bag.writer import header_stamp_ns

    worst = 0
    for m in Bag(bag_dir).messages(topics):
        stamp = header_stamp_ns(m.data)
        if stamp:
            worst = max(worst, m.log_time_ns - stamp)
    return worst / 1e6


def stale_raised(bag_dir: Path, robot: str) -> dict[str, int]:
    """STALE transitions of each watched stream (by topic) on /diagnostics_agg, read back from
    the bag: a leaf that had been OK or WARN and turns STALE (a stream not yet started is not
    counted)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.serialization import deserialize_message

    from data_recorder.bag.reader import Bag
    from health_monitor.config import load_config

    leaves = {'/' + w.path: '/' + w.name.lstrip('/') for w in load_config(None, robot).topics}
    level: dict[str, int] = {}
    raised: dict[str, int] = {}
    for m in Bag(bag_dir).messages(['/diagnostics_agg']):
        for s in deserialize_message(m.data, DiagnosticArray).status:
            if s.name not in leaves:
                continue
            lv = s.level[0] if isinstance(s.level, bytes) else int(s.level)
            if lv == 3 and level.get(s.name, 3) != 3:
                raised[leaves[s.name]] = raised.get(leaves[s.name], 0) + 1
            level[s.name] = lv
    return raised


def one_run(out: Path, robot: str) -> dict[str, object]:
    from data_recorder.bag.info import summary
    from data_recorder.bag.reader import Bag

    started = time.monotonic()
    proc = subprocess.Popen([executable('field_deploy'), 'demo', '--robot', robot, '--out', str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cpu = sample_cpu(proc)
    text = proc.stdout.read().decode(errors='replace') if proc.stdout else ''
    result: dict[str, object] = {'rc': proc.wait(), 'seconds': time.monotonic() - started, 'cpu': cpu}
    bag_dir = out / 'bag'
    if not (bag_dir / 'metadata.yaml').exists():
        result['error'] = text[-600:]
        return result
    bag = Bag(bag_dir)
    info = summary(bag)
    totals = json.loads(bag.custom_data.get('data_recorder.totals', '{}'))
    accounting = json.loads(bag.custom_data.get('data_recorder.accounting', '{}'))
    result['written'] = totals.get('written', 0)
    result['lost'] = totals.get('lost', 0)
    # where each loss was seen: middleware event, gap in the stamps, our own queue
    result['lost_topics'] = {t: f'{c["lost"]} (mw {c.get("lost_middleware", 0)}, gaps '
                                f'{c.get("lost_gaps", 0)}, queue {c.get("lost_queue", 0)})'
                             for t, c in accounting.items() if c.get('lost')}
    result['outcomes'] = [e.fields.get('outcome', '') for e in bag.episodes]
    fast = [t['topic'] for t in info['topics'] if t['topic'] in ('/joint_states', '/imu')]
    cams = [t['topic'] for t in info['topics'] if t['topic'].endswith('/image_raw')]
    result['lag_fast_ms'] = lag_ms(bag_dir, fast)
    result['lag_camera_ms'] = lag_ms(bag_dir, cams)
    result['stale'] = stale = stale_raised(bag_dir, robot)
    # the done-when figure: STALE on a stream that lost nothing (the recorder's accounting)
    result['stale_lossless'] = {t: n for t, n in stale.items() if t not in result['lost_topics']}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=10)
    parser.add_argument('--robot', default='quadruped_12dof')
    parser.add_argument('--busy', type=int, default=0, help='busy-loop processes beside the stack')
    parser.add_argument('--keep', type=Path, metavar='DIR',
                        help='keep every run (bag, stack.log) under DIR instead of a temporary one')
    args = parser.parse_args()
    print(f'# field_deploy demo x{args.runs}, {args.robot}, {args.busy} busy loop(s); '
          f'{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}')
    busy = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(args.busy)]
    clean = stale_total = stale_lossless = 0
    try:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
        with (contextlib.nullcontext(str(args.keep)) if args.keep
              else tempfile.TemporaryDirectory(prefix='bench_demo_')) as tmp:
            for i in range(args.runs):
                r = one_run(Path(tmp) / f'run{i}', args.robot)
                cpu = ', '.join(f'{n} {c:.0f} % {m:.0f} MB' for n, (c, m) in sorted(r['cpu'].items()))
                if 'error' in r:
                    print(f'run {i + 1}: rc {r["rc"]}, no bag: {r["error"]!r}')
                    continue
                ok = r['rc'] == 0 and r['lost'] == 0
                clean += ok
                stale_total += sum(r['stale'].values())
                stale_lossless += sum(r['stale_lossless'].values())
                print(f'run {i + 1}: rc {r["rc"]} {r["seconds"]:.1f} s, outcomes {r["outcomes"]}, '
                      f'{r["written"]} written, {r["lost"]} lost {r["lost_topics"] or ""}; '
                      f'worst lag 500 Hz {r["lag_fast_ms"]:.0f} ms, camera {r["lag_camera_ms"]:.0f} ms; '
                      f'STALE raised {sum(r["stale"].values())} {r["stale"] or ""}, on streams '
                      f'that lost nothing {sum(r["stale_lossless"].values())}; '
                      f'CPU, peak RSS: {cpu}', flush=True)
    finally:
        for p in busy:
            p.kill()
    print(f'clean runs (all skills done, 0 lost): {clean} / {args.runs}; STALE raised on '
          f'/diagnostics_agg: {stale_total} in all, {stale_lossless} on streams that lost nothing; '
          f'load average {os.getloadavg()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
