"""Memory of a long-running node process (issue 19): freed buffers go back, growth can be traced.

:func:`return_large_buffers` (every node by default, from :class:`ProcessMemory`): glibc raises
its mmap threshold to the size of the largest mmapped block freed so far (up to 32 MiB), so after
the first camera image (921 kB) is freed every later image comes from the heap; with small
long-lived objects allocated between them the heap cannot shrink, and a backlog (a recorder
behind, a reliable writer's history) leaves its high-water mark in the RSS for good. Measured
by ``bench/soak/malloc_backlog.py`` (300 images behind, drained, 5 times): 292 MB kept with
glibc's default, 17 MB with the threshold fixed at 128 kB. Cost: every large block (Fast DDS's
payload of an image, the rmw's CDR buffer, a take's ``bytes``) is a fresh mapping whose pages
the kernel zeroes on first touch - profiled at 2x the reference load (``perf``, 2026-12-03),
35 % of the recorder's CPU, and it lost 41 % in two runs of six (docs/data_recorder.md, "The
field's allocator").

:func:`reuse_large_buffers` (the recorder's policy, ``reuse``; any node's with
``FIELD_DEPLOY_ALLOCATOR=reuse`` in its environment): images from the heap, reusing the pages the
previous ones left (page faults 1 % of the recorder's CPU; 2x without loss), and one arena for
every thread: ``malloc_trim`` (:class:`HeapTrimmer`) gives back the free pages inside every arena
but the top of the main one only, so with glibc's arena per thread the recorder's memory moved with
the free tops its threads' arenas kept (one-hour soak of 2026-12-03 08:16: 81-111 MB anonymous,
+12.9 MB/h by the fit). A drained backlog goes back by glibc's trim threshold
(:data:`TRIM_THRESHOLD`) and the trimmer. :func:`set_allocator` applies a policy before the
process starts its threads (:func:`field_deploy.ros.init`).

:class:`HeapTrimmer` (every node, from :class:`ProcessMemory`): the heap's free pages go back to
the OS every 30 s when more than 4 MiB are free (a dead reader's unacknowledged small samples,
freed when its lease ends; a drained backlog's images).

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

:class:`AllocatorReport`, opt-in and cheap (``FIELD_DEPLOY_MEMSTATS=<folder>``): every 10 s the
node writes ``<folder>/<process name>-<pid>.json`` with both allocators' own books
(:func:`allocator_figures`), which tell a step of anonymous memory apart without stopping the
process: Python objects (pymalloc's blocks in use), pymalloc's arenas kept for a few live blocks
(fragmentation: an arena goes back only when empty), glibc's blocks in use, its free pages not
yet trimmed. ``bench/soak/run.py`` sets it and samples the files beside the RSS.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import signal
import sys
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Self

from field_deploy import heap_reserve

ENV = 'FIELD_DEPLOY_MEMTRACE'
STATS_ENV = 'FIELD_DEPLOY_MEMSTATS'
MMAP_THRESHOLD = 128 * 1024
"""glibc's initial threshold: blocks from this size up are mmapped and unmapped when freed."""
REUSE_MMAP_THRESHOLD = 32 * 2**20
"""With :func:`reuse_large_buffers`: only blocks this large are mapped (glibc's ceiling)."""
TRIM_THRESHOLD = 8 * 2**20
"""With :func:`reuse_large_buffers`, free() gives a heap's top back past this: room for a few
images to come and go without page faults. The bound of what a thread's arena keeps:
``malloc_trim`` (:class:`HeapTrimmer`) gives back the free pages inside every arena but the top
of the main one only."""
_M_TRIM_THRESHOLD = -1   # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


ALLOCATOR_ENV = 'FIELD_DEPLOY_ALLOCATOR'
"""A node's allocator policy, over the node's own default: ``fixed`` (:func:`return_large_buffers`,
every node's but the recorder's) or ``reuse`` (:func:`reuse_large_buffers`, the recorder's)."""
ALLOCATOR_POLICIES = ('fixed', 'reuse')
"""What :data:`ALLOCATOR_ENV` may say, the default first."""
_applied: list[str] = []


def set_allocator(default: str = ALLOCATOR_POLICIES[0]) -> str:
    """Apply :data:`ALLOCATOR_ENV`'s policy, else ``default``; once per process (later calls
    return the policy applied). Call it before the process starts threads (``reuse`` gives every
    later thread the main arena). Raises ValueError naming the variable for a policy it does not
    know."""
    policy = os.environ.get(ALLOCATOR_ENV, default)
    if policy not in ALLOCATOR_POLICIES:
        raise ValueError(f'{ALLOCATOR_ENV}={policy!r}: expected one of {", ".join(ALLOCATOR_POLICIES)}')
    if _applied:
        return _applied[0]
    # fixed: a backlog's images go back to the OS once drained (issue 19); reuse: images reuse
    # the heap's pages, no fault per copy (issue 14)
    (return_large_buffers if policy == 'fixed' else reuse_large_buffers)()
    _applied.append(policy)
    return policy


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` (no dynamic raise); False elsewhere.

    An operator's own ``MALLOC_MMAP_THRESHOLD_`` wins (glibc read it at start-up already).
    """
    if 'MALLOC_MMAP_THRESHOLD_' in os.environ:
        return False
    try:
        return bool(ctypes.CDLL('libc.so.6').mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):       # not glibc: nothing to fix
        return False


def reuse_large_buffers() -> bool:
    """Large blocks from the heap, a heap's top handed back by free() only past
    :data:`TRIM_THRESHOLD`, one arena for all threads (see the module docstring); the
    :class:`HeapTrimmer` runs beside. Returns False where it is not glibc.

    An operator's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` win (glibc read
    them at start-up already), and so does ``MALLOC_ARENA_MAX``.
    """
    if {'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_'} & set(os.environ):
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
        if 'MALLOC_ARENA_MAX' not in os.environ and not libc.mallopt(_M_ARENA_MAX, 1):
            return False
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, REUSE_MMAP_THRESHOLD) and
                    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):       # not glibc: nothing to set
        return False


def resident_bytes() -> int:
    """This process's resident memory (the kernel's figure, ``/proc/self/statm``)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


class _MallInfo2(ctypes.Structure):     # struct mallinfo2 (glibc >= 2.33), every arena summed
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks',
        'fordblks', 'keepcost')]


def _glibc_mallinfo2() -> Callable[[], _MallInfo2] | None:
    """glibc's ``mallinfo2`` (every arena summed), None where it is missing: not glibc, or
    older than 2.33 - where ``malloc_trim`` is not worth calling either."""
    try:
        mallinfo2 = ctypes.CDLL('libc.so.6').mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    return mallinfo2


TRIM_PERIOD_S = 30.0
TRIM_FREE_BYTES = 4 * 2**20
"""Free heap memory (every arena) above which :class:`HeapTrimmer` gives it back."""


class _Chore:
    """A check run every :attr:`period_s` on a daemon thread, when the platform allows it."""

    thread_name = 'chore'

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        raise NotImplementedError

    def check(self) -> object:
        raise NotImplementedError

    def start(self) -> Self:
        if self.available and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            with contextlib.suppress(OSError):   # e.g. /proc unreadable: again next period
                self.check()


class HeapTrimmer(_Chore):
    """Gives the heap's free pages back to the OS now and then (``malloc_trim(0)``).

    Why: a reliable writer keeps every sample a dead or stalled reader has not acknowledged
    until the reader leaves (its lease: 20 s). Those are small blocks (a 500 Hz JointState is
    ~1 kB), so they come from the heap, not from mmap, and when they are freed glibc keeps the
    pages: measured in the one-hour soak of 2026-11-30 23:18, sim_robot's anonymous memory went
    53 -> 65 MB at skill_runtime's kill -9 and stayed. A step that stays reads as a slope in a
    one-hour soak and as memory perception cannot have. With :func:`reuse_large_buffers` the
    images come from the heap too: a drained backlog's go back here, within a period.
    ``malloc_trim(0)`` releases every whole free page of every arena (madvise); it runs only
    when the arenas hold more than :data:`TRIM_FREE_BYTES` free (beyond a heap reserve,
    :mod:`field_deploy.heap_reserve`, whose top it keeps), every :data:`TRIM_PERIOD_S` at
    most, on a daemon thread (the call drops the GIL: ctypes' CDLL).
    """

    thread_name = 'heap-trim'

    def __init__(self, period_s: float = TRIM_PERIOD_S, free_bytes: int = TRIM_FREE_BYTES) -> None:
        super().__init__(period_s)
        self.free_bytes = free_bytes
        self.trims = 0
        self.released = 0
        """Bytes of resident memory the trims gave back (the process's RSS before and after)."""
        self._mallinfo2 = _glibc_mallinfo2()
        self._trim = None
        if self._mallinfo2 is not None:
            self._trim = ctypes.CDLL('libc.so.6').malloc_trim
            self._trim.argtypes = [ctypes.c_size_t]

    @property
    def available(self) -> bool:
        return self._trim is not None

    def free(self) -> int:
        """Free bytes in the heap arenas now (0 where unknown)."""
        return int(self._mallinfo2().fordblks) if self._mallinfo2 is not None else 0

    def trim_if_worth_it(self) -> bool:
        """One check: trim when more than :attr:`free_bytes` are free. Returns whether it did."""
        if self._trim is None:
            return False
        keep = heap_reserve.reserved()      # a queue's pages taken on purpose stay
        if self.free() <= self.free_bytes + keep:
            return False
        before = resident_bytes()
        self._trim(keep)
        self.trims += 1
        self.released += max(0, before - resident_bytes())
        return True

    check = trim_if_worth_it


SEGMENT_PREFIX = '/dev/shm/fastrtps_'
"""Fast DDS's shared-memory files: each participant's segment and each port."""
_MADV_POPULATE_READ = 22   # Linux >= 5.14 (mman-common.h)


class SegmentPrefaulter(_Chore):
    """Maps every page of the Fast DDS shared-memory files this process has mapped, once each.

    Why: a reader maps its writers' segments (the sim's is 32 MiB) and the kernel counts a page
    in the reader's RSS only once the reader has touched it. The pages themselves exist from the
    start (Fast DDS writes a segment through when it creates it; they live in /dev/shm, once for
    the host), but a reader touches more of them whenever a writer's allocations move on - at
    every crash of another reader, which strands buffers (docs/soak.md) - so its RSS rose in
    steps through a shift: the health monitor +16.8 MB/h in the one-hour soak of 2026-12-01,
    15.3 of them such shared pages, its private memory flat. A fleet alarm on RSS growth would
    call that a leak. Populating every page of each segment as soon as it is mapped
    (``madvise(MADV_POPULATE_READ)``: page-table entries only, nothing allocated or copied)
    makes the RSS count each peer's segment in full from the start and stay level, and spares
    the hot paths those first-touch page faults. Checked every :attr:`period_s` on a daemon
    thread (ctypes drops the GIL in the call); a segment mapped anew (a restarted peer) is
    populated at the next check.
    """

    thread_name = 'shm-prefault'

    def __init__(self, period_s: float = 10.0, prefix: str = SEGMENT_PREFIX) -> None:
        super().__init__(period_s)
        self.prefix = prefix
        self.populated = 0
        """Bytes of mappings populated so far."""
        self.failed = 0
        self._done: set[tuple[int, int, str]] = set()
        try:
            self._madvise = ctypes.CDLL('libc.so.6', use_errno=True).madvise
            self._madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError):     # not glibc: leave the RSS as the kernel counts it
            self._madvise = None

    def mappings(self) -> list[tuple[int, int, str]]:
        """``(start, end, path)`` of this process's mappings of files under :attr:`prefix`."""
        with open('/proc/self/maps') as f:
            text = f.read()
        out = []
        for line in text.splitlines():
            if self.prefix not in line:
                continue
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(self.prefix):
                start, end = (int(x, 16) for x in fields[0].split('-'))
                out.append((start, end, fields[5]))
        return out

    def scan(self) -> int:
        """Populate the mappings not seen before; returns their bytes."""
        if self._madvise is None:
            return 0
        current = self.mappings()
        self._done &= set(current)             # unmapped (a peer gone): forget it
        done = 0
        for mapping in current:
            if mapping in self._done:
                continue
            start, end, _path = mapping
            if self._madvise(start, end - start, _MADV_POPULATE_READ) == 0:
                done += end - start
            else:                                # older kernel (EINVAL): the RSS as it was
                self.failed += 1
            self._done.add(mapping)
        self.populated += done
        return done

    @property
    def available(self) -> bool:
        return self._madvise is not None

    check = scan


def _pymalloc_stats() -> str:
    """CPython's ``_PyObject_DebugMallocStats`` report, read into memory (``open_memstream``:
    no file, and the GIL held by ``pythonapi``); '' where either is missing."""
    try:
        libc = ctypes.CDLL('libc.so.6')
        report = ctypes.pythonapi._PyObject_DebugMallocStats
    except (OSError, AttributeError):
        return ''
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    report.argtypes = [ctypes.c_void_p]
    buf, size = ctypes.c_void_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not stream:
        return ''
    try:
        report(stream)
    finally:
        libc.fclose(stream)      # sets buf and size
    try:
        return ctypes.string_at(buf, size.value).decode(errors='replace')
    finally:
        libc.free(buf)


def _figure(report: str, label: str) -> float:
    """The number after ``<label> =`` in a pymalloc report (first occurrence), nan if absent."""
    at = report.find(label)
    if at < 0:
        return float('nan')
    value = report[at + len(label):].split('=', 1)[1].split('\n', 1)[0]
    return float(value.replace(',', '').strip() or 'nan')


def allocator_figures() -> dict[str, float]:
    """Both allocators' own figures, in MB: ``py_arenas_mb`` (pymalloc's arenas, resident while
    any block in them lives), ``py_used_mb`` (its blocks in use), ``c_heap_mb`` (glibc's arenas
    and mmapped blocks), ``c_used_mb`` and ``c_free_mb`` (in use; free, not yet trimmed)."""
    report = _pymalloc_stats()
    out = {'py_arenas_mb': _figure(report, 'bytes/arena') / 1e6,    # "4 arenas * 1048576 bytes/arena = …"
           'py_used_mb': _figure(report, '# bytes in allocated blocks') / 1e6}
    mallinfo2 = _glibc_mallinfo2()
    if mallinfo2 is not None:
        info = mallinfo2()
        out.update(c_heap_mb=(info.arena + info.hblkhd) / 1e6, c_used_mb=(info.uordblks + info.hblkhd) / 1e6,
                   c_free_mb=info.fordblks / 1e6)
    return out


class AllocatorReport(_Chore):
    """Writes :func:`allocator_figures` as JSON to ``<folder>/<process name>-<pid>.json`` every
    :attr:`period_s`, when ``FIELD_DEPLOY_MEMSTATS`` names the folder (opt-in: the report walks
    every pymalloc pool, ~1 ms). Replaced atomically, so a reader never sees half a file."""

    thread_name = 'mem-report'

    def __init__(self, period_s: float = 10.0, folder: str | None = None) -> None:
        super().__init__(period_s)
        folder = folder if folder is not None else os.environ.get(STATS_ENV, '')
        self.path = (Path(folder) / f'{Path(sys.argv[0]).name or "python"}-{os.getpid()}.json'
                     if folder else None)

    @property
    def available(self) -> bool:
        return self.path is not None

    def write(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix('.part')
        partial.write_text(json.dumps(allocator_figures()))
        os.replace(partial, self.path)

    check = write


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


def freeze_startup_objects() -> int:
    """Collect once, then keep every object alive now out of the cyclic collector's scans
    (:func:`gc.freeze`); returns how many were frozen.

    Why: a full (generation 2) collection walks every tracked object, and it runs on whichever
    thread allocates when it is due. In the recorder that is the taking thread, and the start's
    objects (modules, rclpy, the node: 44,000) made it 15-21 ms on an idle host and 25-60 ms
    under the bench's load - the first one right when the streams begin, while the reader
    histories fill (traced at 4.5x the reference load, 2026-12-03). Frozen: 1-11 ms. Whether
    that changes the bench's loss is not resolved: 0.09 % and 0 in the first two runs against
    2-4 % in five without, then 0.9 / 7.7 / 2.4 / 17.2 % against 2.4 / 6.7 / 7.6 / 0.3 % in four
    alternating pairs an hour later on a noisier host; it is kept for the pauses it removes.
    Frozen objects are never collected: the start's objects live as long as the process anyway;
    a cycle among them that becomes garbage later (a node reconfigured) stays, a bounded leak of
    one configuration's objects."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class ProcessMemory:
    """A node process's memory set-up, in one place: what :func:`field_deploy.ros.run_nodes`
    does for every node, and what a bench does for the node it measures - so a bench's figures
    are the field's (the recorder bench ran without it until 2026-12-03).

    Starting: the allocator policy (:func:`set_allocator`: ``fixed`` unless the process set one
    at its start, as the recorder does through :func:`field_deploy.ros.init`),
    :class:`HeapTrimmer`, :class:`SegmentPrefaulter`, :func:`arm` and :class:`AllocatorReport`;
    :meth:`stop` stops the chores. Raises ValueError naming the variable when the policy is not
    one it knows."""

    def __init__(self) -> None:
        set_allocator()
        self.trimmer = HeapTrimmer().start()  # free pages go back: a backlog's, a dead reader's
        self.prefaulter = SegmentPrefaulter().start()  # peers' segments counted in full
        arm()  # tracemalloc snapshots on SIGUSR2, off unless FIELD_DEPLOY_MEMTRACE is set
        self.allocators = AllocatorReport().start()  # off unless FIELD_DEPLOY_MEMSTATS is set

    def stop(self) -> None:
        self.trimmer.stop()
        self.prefaulter.stop()
        self.allocators.stop()


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
