"""Opt-in memory tracing of a node process, for finding what grows in a long run (issue 19).

Off by default. With ``FIELD_DEPLOY_MEMTRACE=<folder>`` in a node's environment, :func:`arm`
starts :mod:`tracemalloc` (``FIELD_DEPLOY_MEMTRACE_FRAMES`` frames a trace, default 8) and
installs a SIGUSR2 handler that writes a snapshot to
``<folder>/<process name>-<pid>-<n>.tracemalloc``. Compare two snapshots taken minutes apart::

    FIELD_DEPLOY_MEMTRACE=/tmp/mt field_deploy up ...      # every node inherits it
    kill -USR2 <pid>; sleep 300; kill -USR2 <pid>
    python -m field_deploy.memtrace /tmp/mt/data_recorder-123-0.tracemalloc \
        /tmp/mt/data_recorder-123-1.tracemalloc

Only the Python heap is traced: growth the kernel's RSS shows and tracemalloc does not is
native (rclpy, Fast DDS, numpy buffers, the allocator's fragmentation). Tracing costs CPU and
memory itself, which is why it is never on in the field.
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from pathlib import Path

ENV = 'FIELD_DEPLOY_MEMTRACE'


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
