"""Heap pages taken before a backlog needs them: a queue's memory resident from its start.

Why: a recorder's hand-off queue grows when its writer falls behind - above all when the streams
begin, when every reader history arrives at once (``bench/recorder``, 4.5x the reference load,
2026-12-03: 165-254 MB queued within a second). Each byte of that growth lands in fresh heap
pages, and the first touch of a fresh page is a page fault taken by the thread that copies the
sample - the recorder's taking thread, inside the copy that holds the GIL. On this project's
2-core VM (free pages are reported to the hypervisor) a fresh page costs 2.7-3.1 ms of CPU per
MB: 76,000-165,000 faults at the start, the writer starved of the GIL, the queue growing
further, and 5.0-8.1 % of the numbered messages lost in three alternating runs of four at 4.5x,
where the runs with the pages taken beforehand lost none in four of four (docs/data_recorder.md,
"2026-12-03 night: the queue's pages, taken before the streams"). On bare metal a fresh page
costs less (zeroing: ~0.2-0.45 ms per MB), but the fault is still taken on the hot thread at the
worst moment.

:func:`reserve` touches ``nbytes`` of heap in blocks under every mmap threshold this project
sets, frees them, and sets glibc's ``M_TOP_PAD`` to ``nbytes`` so that neither ``free()``'s own
trim nor :class:`field_deploy.memory.HeapTrimmer` (which asks :func:`reserved`) gives them back:
the heap's top keeps them resident, and a backlog up to that size takes pages that exist. The
price is that memory, held for as long as the reserve stands; :func:`release` ends it. One
reserve per process (the heap is the process's): a later call replaces the earlier one.
"""

from __future__ import annotations

import ctypes

_M_TOP_PAD = -2               # mallopt parameter (malloc.h)
DEFAULT_TOP_PAD = 128 * 1024
"""glibc's own ``M_TOP_PAD`` (mallopt(3)), restored by :func:`release`."""
BLOCK = 64 * 1024
"""Bytes touched per block: under :data:`field_deploy.memory.MMAP_THRESHOLD` (128 kB), the lowest
mmap threshold a node runs with, so every block comes from the heap whatever the policy."""

_reserved = [0]


def reserved() -> int:
    """Bytes the heap's top keeps now (0: no reserve)."""
    return _reserved[0]


def reserve(nbytes: int) -> int:
    """Keep ``nbytes`` of heap resident from now on (see the module docstring); returns the bytes
    reserved: ``nbytes``, or 0 where it is not glibc. ``nbytes`` <= 0 is :func:`release`.

    Takes ~0.1 s per 256 MiB where fresh pages are cheap, up to ~0.8 s where the host supplies
    them slowly: call it before the streams begin, not while they run."""
    if nbytes <= 0:
        release()
        return 0
    try:
        libc = ctypes.CDLL('libc.so.6')
        if not libc.mallopt(_M_TOP_PAD, int(nbytes)):
            return 0
    except (OSError, AttributeError):        # not glibc: nothing to keep
        return 0
    _reserved[0] = int(nbytes)
    # The list first (its array must not sit between the blocks and the top), then the blocks:
    # each written through, so each page is faulted in now. Freed in order, they coalesce into
    # the heap's top, which M_TOP_PAD keeps.
    blocks: list[bytes | None] = [None] * (int(nbytes) // BLOCK)
    for i in range(len(blocks)):
        blocks[i] = b'\xa5' * BLOCK
    del blocks
    return _reserved[0]


def release() -> None:
    """End the reserve: glibc's own top pad again, and the heap's free top given back now."""
    if not _reserved[0]:
        return
    _reserved[0] = 0
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(_M_TOP_PAD, DEFAULT_TOP_PAD)
        libc.malloc_trim(ctypes.c_size_t(0))
    except (OSError, AttributeError):
        pass
