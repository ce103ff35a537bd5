"""A backlog of camera images drained: does the process's RSS come back? (issue 19)

    .venv/bin/python bench/soak/malloc_backlog.py            # both modes, in fresh processes

Like a recorder that fell behind: 300 images of 921 kB queued between small messages (30 a
frame), a few small objects kept for good, the queue drained; five times. Prints the RSS after
each drain with glibc's default (its mmap threshold rises to the largest block freed, so later
images come from the heap, which cannot shrink below the small objects kept) and with
:func:`field_deploy.memory.return_large_buffers` (threshold fixed at 128 kB), which every node
calls. Measured 2026-11-30 (load 17-27), three runs alike: default 15, 292, 293, 291, 290 MB;
fixed 16, 17, 17, 17, 17 MB. The default's figure depends on where the small objects land (a
variant with 100 images kept ~105 MB in some runs, ~15 MB in others).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rss_mb() -> float:
    return int(Path('/proc/self/statm').read_text().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 1e6


def backlog(fixed: bool, images: int = 300, cycles: int = 5) -> list[float]:
    if fixed:
        sys.path.insert(0, str(ROOT / 'src'))
        from field_deploy.memory import return_large_buffers
        assert return_large_buffers()
    keep, out = [], []
    for _ in range(cycles):
        q: collections.deque[bytes] = collections.deque()
        for i in range(images * 30):
            q.append(os.urandom(921_641) if i % 30 == 0 else os.urandom(300))
            if i % 97 == 0:
                keep.append(os.urandom(400))
        while q:
            q.popleft()
        out.append(rss_mb())
    return out


def main() -> None:
    if len(sys.argv) > 1:
        print(' '.join(f'{v:.0f}' for v in backlog(sys.argv[1] == 'fixed')))
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
    for mode in ('default', 'fixed'):
        figures = subprocess.run([sys.executable, __file__, mode], env=env, check=True,
                                 capture_output=True, text=True).stdout.strip()
        print(f'{mode:8} RSS after each drain (MB): {figures}   (load {os.getloadavg()[0]:.1f})')


if __name__ == '__main__':
    main()
