"""A writer's CPU after each kill -9 of its reader: the sim's CPU drift in the soak, without the stack.

Two plain rclpy processes on a private domain (``reader_restart.py``'s): a writer publishing six
500 Hz JointState topics (reliable, keep-last 1000: what sim_robot does) and a reader of all six.
The reader is killed with -9 ``--kills`` times (``--signal INT``: stopped gracefully); after
each stop the bench waits until the reader has left the graph, removes dead processes' shared
memory (as the health monitor does), starts a new reader, waits until it hears 3000 samples,
then reads the writer's CPU from ``/proc`` over ``--window`` s. A second reader, the witness, is
never killed: its ``RssShmem`` (the writer's segment pages it has touched) is the readers' RSS
step of the soak. Printed per kill: the writer's CPU, the witness's shared pages, the host load.

Why: in the one-hour soak sim_robot's CPU rose after every reader restart and py-spy put the
growth in Fast DDS's write. The cause is in Fast DDS 2.14's shared-memory transport
(docs/soak.md, "The CPU drift after reader kills"): samples a writer pushed into a killed
reader's port are never released, and every allocation walks them. ``--writer-profile`` runs the
writer with another Fast DDS XML (a smaller segment bounds the walk: the figures are in the doc).

    python bench/soak/reader_kill_cpu.py --kills 8
    python bench/soak/reader_kill_cpu.py --kills 6 --writer-profile my_small_segment.xml
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil
from reader_restart import _READER, _WRITER, _start, _wait_count, wait_left_graph
from run import rss_parts_mb

from field_deploy.rosenv import clean_stale_shm


def cpu_share(pid: int, seconds: float) -> float:
    """The process's CPU (user + system) over the next ``seconds``, in % of one core."""
    proc = psutil.Process(pid)
    before = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - before) / seconds * 100.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--kills', type=int, default=8)
    ap.add_argument('--window', type=float, default=10.0, help='seconds of CPU reading per point')
    ap.add_argument('--signal', default='KILL', choices=('KILL', 'INT'),
                    help='how the reader is stopped: KILL (a crash) or INT (a graceful stop)')
    ap.add_argument('--writer-profile', default=None,
                    help="Fast DDS XML for the writer (default: the project's config/fastdds.xml)")
    ap.add_argument('--reader-profile', default=None,
                    help='Fast DDS XML for every reader (its port queue is what a kill strands)')
    args = ap.parse_args()

    import rclpy

    from field_deploy.ros import init
    init([])
    probe = rclpy.create_node('reader_kill_cpu_probe')
    with tempfile.TemporaryDirectory(prefix='reader_kill_cpu-') as name:
        tmp = Path(name)
        writer = _start(_WRITER, tmp / 'writer.log', args.writer_profile)
        witness = _start(_READER, tmp / 'witness.log', args.reader_profile)
        reader = _start(_READER, tmp / 'reader0.log', args.reader_profile)
        try:
            if _wait_count(tmp / 'reader0.log', 3000, 60) is None:
                print('the first reader heard nothing: no run')
                return 1
            time.sleep(3.0)
            first = cpu_share(writer.pid, args.window)
            shared = rss_parts_mb(witness.pid)['shmem_mb']
            print(f'kills 0: writer {first:5.1f} % of a core; witness shared {shared:5.1f} MB'
                  f'  (load {os.getloadavg()[0]:.1f})', flush=True)
            for kill in range(1, args.kills + 1):
                reader.send_signal(getattr(signal, f'SIG{args.signal}'))
                reader.wait(timeout=30)
                wait_left_graph(probe)
                clean_stale_shm()
                reader = _start(_READER, tmp / f'reader{kill}.log', args.reader_profile)
                if _wait_count(tmp / f'reader{kill}.log', 3000, 60) is None:
                    print(f'kills {kill}: the new reader heard nothing; stopping')
                    return 1
                time.sleep(3.0)
                share = cpu_share(writer.pid, args.window)
                shared = rss_parts_mb(witness.pid)['shmem_mb']
                print(f'kills {kill}: writer {share:5.1f} % of a core  ({share - first:+.1f}); witness '
                      f'shared {shared:5.1f} MB  (load {os.getloadavg()[0]:.1f})', flush=True)
        finally:
            for proc in (writer, witness, reader):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return 0


if __name__ == '__main__':
    sys.exit(main())
