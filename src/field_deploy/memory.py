"""Memory of a long-running node process (issue 19): freed buffers go back, growth can be traced.

:func:`return_large_buffers` (every node, from :func:`field_deploy.ros.run_nodes`): glibc raises
its mmap threshold to the size of the largest mmapped block freed so far (up to 32 MiB), so after
the first camera image (921 kB) is freed every later image comes from the heap; with small
long-lived objects allocated between them the heap cannot shrink, and a backlog (a recorder
behind, a reliable writer's history) leaves its high-water mark in the RSS for good. Measured
by ``bench/soak/malloc_backlog.py`` (300 images behind, drained, 5 times): 292 MB kept with
glibc's default, 17 MB with the threshold fixed at 128 kB. Cost: an mmap/munmap per large buffer.

:func:`arm`, opt-in tracing, is off by default. With ``FIELD_DEPLOY_MEMTRACE=<folder>`` in a
node's environment it starts :mod:`tracemalloc` (``FIELD_DEPLOY_MEMTRACE_FRAMES`` frames a
trace, default 8) and installs a SIGUSR2 handler that writes a snapshot to
``<folder>/<process name>-<pid>-<n>.tracemalloc``. Compare two snapshots taken minutes apart::

    FIELD_DEPLOY_MEMTRACE=/tmp/mt field_deploy up ...      # every node inherits it
    kill -USR2 <pid>; sleep 300; kill -USR2 <pid>
    python -m field_deploy.memory /tmp/mt/data_recorder-123-0.tracemalloc \
        /tmp/mt/data_recorder-123-1.tracemalloc

Only the Python heap is traced: growth the kernel's RSS shows and tracemalloc does not is
native (rclpy, Fast DDS, numpy buffers, the allocator's fragmentation). Tracing costs CPU and
memory itself, which is why it is never on in the field.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import tracemalloc
from pathlib import Path

ENV = 'FIELD_DEPLOY_MEMTRACE'
MMAP_THRESHOLD = 128 * 1024
"""glibc's initial threshold: blocks from this size up are mmapped and unmapped when freed."""
_M_MMAP_THRESHOLD = -3   # mallopt parameter (malloc.h)


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` (no dynamic raise); False elsewhere.

    An operator's own ``MALLOC_MMAP_THRESHOLD_`` wins (glibc read it at start-up already).
    """
    if 'MALLOC_MMAP_THRESHOLD_' in os.environ:
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):       # not glibc: nothing to fix
        return False


def arm() -> bool:
    """Start tracing and the SIGUSR2 snapshot handler when ``FIELD_DEPLOY_MEMTRACE`` is set."""
    folder = os.environ.get(ENV)
    if not folder:
        return False
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(int(os.environ.get(f'{ENV}_FRAMES', '8')))
    name = Path(sys.argv[0]).name or 'python'
    count = [0]

    def _dump(_signum: int, _frame: object) -> None:
        tracemalloc.take_snapshot().dump(str(out / f'{name}-{os.getpid()}-{count[0]}.tracemalloc'))
        count[0] += 1

    signal.signal(signal.SIGUSR2, _dump)
    return True


def compare(before: str, after: str, top: int = 15) -> str:
    """The ``top`` allocation sites (by traceback) that grew most from ``before`` to ``after``."""
    old, new = tracemalloc.Snapshot.load(before), tracemalloc.Snapshot.load(after)
    lines = [f'traced: {sum(s.size for s in old.statistics("filename")) / 1e6:.1f} -> '
             f'{sum(s.size for s in new.statistics("filename")) / 1e6:.1f} MB']
    for stat in new.compare_to(old, 'traceback')[:top]:
        lines.append(f'{stat.size_diff / 1e3:+9.1f} kB {stat.count_diff:+7d} blocks')
        lines.extend(f'        {frame}' for frame in stat.traceback.format()[-8:])
    return '\n'.join(lines)


if __name__ == '__main__':
    print(compare(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 15))
