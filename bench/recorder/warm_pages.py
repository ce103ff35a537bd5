"""Warm pages for a bag written into tmpfs: a ballast file holds them, and gives them back as the
bag grows.

Why: on the bench's VMs (Firecracker, ``page_reporting``) the guest reports free memory to the
host, which takes it back; the next first touch of such a page faults in the host. Measured
2026-12-03 on this 2-core VM, 1 MiB writes into a fresh /dev/shm file: 2.2-2.5 GB/s
(0.39-0.46 ms CPU per MB) for the first 5-8 GB - pages freed recently, not yet reported - and
then 330-370 MB/s (2.7-3.1 ms CPU per MB) for every GB after. A recorder run at 3.5x writes
~6 GB in 20 s, so it ran into the reported pages partway through and its writer fell behind
(the queue grew from 0 to 256 MB within 2 s near the end of the run, in both traced runs): the figure
measured the hypervisor, not the recorder. On a robot's disk the page cache recycles its own
pages and a bare-metal host has no reporting.

The ballast is written before the subject starts (paying the host's first touch once, off the
clock; its speed is printed), and a thread truncates it as the bag and the subject's resident
memory grow, a margin ahead, so the pages they take are ones just freed: Linux hands out
unreported pages before reported ones (they are queued at the tail of the free lists). The
subject still pays the kernel's own cost of a new tmpfs page (zeroing it, ~0.4 ms per MB).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

#: Kept free ahead of the bag and the subject's memory: what they may grow by in a few polls.
#: Small, because pages left free for longer than page reporting's delay (2 s) are reported.
MARGIN_BYTES = 128 << 20
POLL_S = 0.02


def on_tmpfs(folder: Path) -> bool:
    """Whether ``folder`` lies on a tmpfs mount (the longest mount point that contains it)."""
    folder = folder.resolve()
    best, kind = '', ''
    for line in Path('/proc/mounts').read_text().splitlines():
        fields = line.split()
        if (len(fields) >= 3 and len(fields[1]) >= len(best)
                and (str(folder) + '/').startswith(fields[1].rstrip('/') + '/')):
            best, kind = fields[1], fields[2]
    return kind == 'tmpfs'


def write_blocks(path: Path, megabytes: int, *, block: bytes = b'\x01' * (1 << 20),
                 sync: bool = False) -> float:
    """Write ``megabytes`` 1 MiB blocks into a new file at ``path`` (fsync'd when ``sync``);
    returns the seconds it took - the host's first touch of each page included."""
    start = time.perf_counter()
    with path.open('wb') as f:
        for _ in range(megabytes):
            f.write(block)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    return time.perf_counter() - start


class WarmPages:
    """A ballast file of ``size`` bytes in ``folder`` (capped at half the available memory),
    truncated while :meth:`follow` runs so that it and the followed folder hold ``size``
    together."""

    def __init__(self, folder: Path, size: int) -> None:
        import psutil
        self.requested = size
        self.size = min(size, psutil.virtual_memory().available // 2) >> 20 << 20
        self.path = folder / f'warm_pages_{os.getpid()}'
        self.seconds = write_blocks(self.path, self.size >> 20)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def speed(self) -> float:
        """MB/s at which the ballast was written (the host's first touch included)."""
        return self.size / 1e6 / max(self.seconds, 1e-9)

    def follow(self, folder: Path, memory: Callable[[], int] = lambda: 0) -> None:
        """Give the ballast's pages back as ``folder`` and ``memory()`` (the subject's resident
        memory: its heap grows into fresh pages too) grow (a thread, until :meth:`close`)."""
        def run() -> None:
            held = self.size
            start = memory()
            while not self._stop.wait(POLL_S):
                grown = max(0, memory() - start)
                want = max(0, self.size - _used(folder) - grown - MARGIN_BYTES)
                if want < held:
                    os.truncate(self.path, want)
                    held = want
        self._thread = threading.Thread(target=run, name='warm-pages', daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.path.unlink(missing_ok=True)


def _used(folder: Path) -> int:
    """Bytes of storage under ``folder`` (files may come and go while it walks)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total
