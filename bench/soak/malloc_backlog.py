"""A backlog of camera images drained: does the process's RSS come back? (issue 19)

    .venv/bin/python bench/soak/malloc_backlog.py            # both modes, in fresh processes

Like a recorder that fell behind: 300 images of 921 kB queued between small messages (30 a
frame), a few small objects kept for good, the queue drained; five times. Prints the RSS after
each drain, and the CPU per MB of making the images (a copy into new memory, as a take does):

* ``default``: glibc's own (its mmap threshold rises to the largest block freed, so later images
  come from the heap, which cannot shrink below the small objects kept);
* ``fixed``: the threshold fixed at 128 kB (every node's default,
  :func:`field_deploy.memory.return_large_buffers`): every image a fresh mapping, faulted in
  page by page;
* ``reuse``: :func:`field_deploy.memory.reuse_large_buffers` (``FIELD_DEPLOY_ALLOCATOR=reuse``) and one
  :meth:`~field_deploy.memory.HeapTrimmer.trim_if_worth_it` after each drain, as its trimmer
  does (every 30 s).

Measured 2026-11-30 (load 17-27), three runs alike: default 15, 292, 293, 291, 290 MB; fixed
16, 17, 17, 17, 17 MB. The default's figure depends on where the small objects land (a variant
with 100 images kept ~105 MB in some runs, ~15 MB in others). 2026-12-03: see
docs/data_recorder.md, "The field's allocator".
"""

from __future__ import annotations

import collections
import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rss_mb() -> float:
    return int(Path('/proc/self/statm').read_text().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 1e6


def backlog(mode: str, images: int = 300, cycles: int = 5) -> tuple[list[float], float]:
    """RSS after each drain (MB); then the CPU per MB (ms) of copying images into new blocks in
    a steady stream (each freed three images later, as a recorder that keeps up frees them)."""
    sys.path.insert(0, str(ROOT / 'src'))
    from field_deploy import memory
    trimmer = memory.HeapTrimmer()
    if mode == 'fixed':
        assert memory.return_large_buffers()
    elif mode == 'reuse':
        assert memory.reuse_large_buffers()
    keep, out = [], []
    for _ in range(cycles):
        q: collections.deque[bytes] = collections.deque()
        for i in range(images * 30):
            q.append(os.urandom(921_641) if i % 30 == 0 else os.urandom(300))
            if i % 97 == 0:
                keep.append(os.urandom(400))
        while q:
            q.popleft()
        if mode == 'reuse':
            trimmer.trim_if_worth_it()
        out.append(rss_mb())
    source = ctypes.create_string_buffer(os.urandom(921_641))
    stream: collections.deque[bytes] = collections.deque(maxlen=3)
    copies = 2000
    start = time.process_time()
    for _ in range(copies):
        stream.append(ctypes.string_at(source, 921_641))       # the take's copy
    return out, (time.process_time() - start) * 1e3 / (copies * 0.921641)


def main() -> None:
    if len(sys.argv) > 1:
        rss, ms_per_mb = backlog(sys.argv[1])
        print(' '.join(f'{v:.0f}' for v in rss) + f'   copies {ms_per_mb:.2f} ms CPU per MB')
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
    for mode in ('default', 'fixed', 'reuse'):
        figures = subprocess.run([sys.executable, __file__, mode], env=env, check=True,
                                 capture_output=True, text=True).stdout.strip()
        print(f'{mode:8} RSS after each drain (MB): {figures}   (load {os.getloadavg()[0]:.1f})')


if __name__ == '__main__':
    main()
