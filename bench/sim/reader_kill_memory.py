"""sim_robot's private memory around each kill -9 of a reader of all its streams (issue 19's step).

sim_robot (the real executable, the project's Fast DDS profile unless ``--profile``) publishes; a
``field_deploy bag record -a`` records everything for 20 s and is killed with -9; the sim's
anonymous memory (``RssAnon``, the kernel's figure) and glibc's own books (blocks in use, free,
heap: ``FIELD_DEPLOY_MEMSTATS``, written by the sim every 10 s) are printed before the kill, 12 s
after (the dead reader still matched: its writers' histories full) and 65 s after (its lease
over, the trimmer run). ``--kills`` times, a new recorder each time.

Why: in the one-hour soak sim_robot's memory stepped up by ~5 MB at the recorder's kill and
stayed (docs/soak.md): a step is a slope in an hour's fit. Measured 2026-12-02 (quiet host, 2
runs each): before ``allocated_samples`` in config/fastdds.xml +3.1 MB at the first kill, none
after, the heap 95 MB with 66 MB free; with it +1.6 MB, a 40 MB heap with 11 MB free.

    python bench/sim/reader_kill_memory.py --kills 3
    python bench/sim/reader_kill_memory.py --kills 3 --profile other_fastdds.xml
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from field_deploy.testing import NodeProcess, isolate_ros_env

isolate_ros_env()

from field_deploy.memory import STATS_ENV  # noqa: E402
from field_deploy.rosenv import FASTDDS_PROFILES_ENV, clean_stale_shm  # noqa: E402


def anon_mb(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('RssAnon:'):
            return int(line.split()[1]) / 1024
    return float('nan')


def books(folder: Path, pid: int) -> dict[str, float]:
    """The sim's last allocator report (``field_deploy.memory.AllocatorReport``)."""
    found = list(folder.glob(f'*-{pid}.json'))
    return json.loads(found[0].read_text()) if found else {}


def show(tag: str, sim: NodeProcess, folder: Path) -> None:
    b = books(folder, sim.pid)
    print(f'{tag:22s} anon {anon_mb(sim.pid):6.1f} MB   glibc: in use {b.get("c_used_mb", 0):6.1f}, '
          f'free {b.get("c_free_mb", 0):6.1f}, heap {b.get("c_heap_mb", 0):6.1f} MB   '
          f'pymalloc arenas {b.get("py_arenas_mb", 0):5.1f} MB   (load {os.getloadavg()[0]:.1f})',
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--kills', type=int, default=2)
    ap.add_argument('--robot', default='quadruped_12dof')
    ap.add_argument('--profile', default=None, help='Fast DDS XML for the sim and the recorders')
    args = ap.parse_args()
    env = {FASTDDS_PROFILES_ENV: args.profile} if args.profile else {}
    with tempfile.TemporaryDirectory(prefix='reader_kill_memory-', dir='/dev/shm') as name:
        tmp = Path(name)
        stats = tmp / 'stats'
        sim = NodeProcess('sim_robot', ['--ros-args', '-p', f'profile:={args.robot}'],
                          log_dir=tmp, env={STATS_ENV: str(stats), **env})
        try:
            time.sleep(40)                      # warm: the sim's pools and first reports
            show('no reader', sim, stats)
            for kill in range(1, args.kills + 1):
                recorder = subprocess.Popen(
                    [str(Path(sys.executable).with_name('field_deploy')), 'bag', 'record', '-a',
                     '-o', str(tmp / f'bag{kill}')], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, env={**os.environ, **env})
                time.sleep(20)
                show(f'kill {kill}: before', sim, stats)
                recorder.kill()
                recorder.wait()
                time.sleep(12)
                show(f'kill {kill}: +12 s', sim, stats)
                time.sleep(53)
                show(f'kill {kill}: +65 s', sim, stats)
                shutil.rmtree(tmp / f'bag{kill}', ignore_errors=True)
                clean_stale_shm()
            print('sim "behind" log lines:', sim.log().count('behind'))
        finally:
            sim.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
