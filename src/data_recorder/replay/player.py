"""Playback core: what to publish when (no rclpy here; the node gives it publish callbacks).

Pieces, each testable alone:

* :class:`PlayOptions` — the ``ros2 bag play``-like options, validated.
* :func:`select_topics`, :func:`parse_remaps` — include list, exclude regex, ``old:=new`` remaps.
* :class:`PlaybackClock` — bag time ↔ monotonic wall time under rate, pause, resume and seek.
* :class:`ReadAhead` — a background thread that reads the bag into a buffer bounded in messages
  *and* bytes (a 1 kHz bag and a 30 Hz image bag both stay within a few tens of MB), restartable
  at any bag time for loop and seek.
* :class:`Player` — the timing loop: sleeps until ~1.5 ms before a message is due, then
  spin-waits to the exact time (a plain ``sleep`` overshoots by 50–100 µs plus scheduler noise),
  publishes the recorded bytes, and interleaves ``/clock`` ticks. Pause / resume / seek / step /
  rate change wake it through a condition variable, so control never waits for a message.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from data_recorder.bag.reader import Bag, RawMessage

#: Wake this long before a message is due, then spin: covers sleep overshoot and GIL hand-over.
#: Measured on the 2-core CI machine under load: 1.5 ms of spinning made the thread a CPU hog that
#: the scheduler preempted for whole time slices (3–4 ms stalls); 0.3 ms keeps p99 near 1 ms.
SPIN_WINDOW_NS = 300_000


@dataclass
class PlayOptions:
    """Options of ``bag_player`` / ``field_deploy bag play`` (names as ``ros2 bag play``'s)."""

    rate: float = 1.0
    start_offset_s: float = 0.0
    duration_s: float | None = None
    loop: bool = False
    topics: tuple[str, ...] = ()
    exclude: str = ''
    remap: dict[str, str] = field(default_factory=dict)
    clock_hz: float = 0.0
    start_paused: bool = False
    delay_s: float = 0.0
    read_ahead_messages: int = 10_000
    read_ahead_bytes: int = 64 << 20
    #: SCHED_FIFO priority for the timing thread only (0: off). Needs root or CAP_SYS_NICE /
    #: an rtprio limit; without them playback goes on at normal priority (see PlayStats.realtime).
    realtime_priority: int = 10
    #: Node only: before playing, wait up to this long for every publisher to match a subscriber
    #: (cross-process discovery takes 0.1–3 s; messages sent before it are lost to that reader).
    wait_for_subscribers_s: float = 0.0
    #: Node only: before playing, wait (at most this long, logged) until each played topic's
    #: publisher has matched every subscriber the graph already shows, so a subscriber that was
    #: running before the player starts gets the first messages (0: do not wait).
    match_timeout_s: float = 5.0

    def validate(self) -> PlayOptions:
        if not self.rate > 0:
            raise ValueError(f'rate must be > 0 (got {self.rate})')
        if self.start_offset_s < 0:
            raise ValueError(f'start offset must be >= 0 s (got {self.start_offset_s})')
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f'duration must be > 0 s (got {self.duration_s})')
        if self.match_timeout_s < 0:
            raise ValueError(f'match timeout must be >= 0 s (got {self.match_timeout_s})')
        if self.clock_hz < 0:
            raise ValueError(f'clock rate must be >= 0 Hz (got {self.clock_hz})')
        if self.exclude:
            try:
                re.compile(self.exclude)
            except re.error as exc:
                raise ValueError(f'exclude regex {self.exclude!r} is invalid: {exc}') from None
        return self


def parse_remaps(items: Iterable[str]) -> dict[str, str]:
    """``['/a:=/b', 'c:=d']`` → ``{'/a': '/b', '/c': '/d'}`` (names made absolute as recorded)."""
    remap = {}
    for item in items:
        old, sep, new = item.partition(':=')
        if not sep or not old or not new:
            raise ValueError(f'remap {item!r} is not of the form old:=new')
        remap['/' + old.lstrip('/')] = '/' + new.lstrip('/')
    return remap


def select_topics(recorded: Iterable[str], include: Sequence[str] = (), exclude: str = '') -> list[str]:
    """Recorded topics to play: those in ``include`` (all when empty) not matching ``exclude``.

    An included topic that the bag does not hold raises ``ValueError`` naming it: a typo would
    otherwise play nothing silently.
    """
    recorded = list(recorded)
    wanted = ['/' + t.lstrip('/') for t in include]
    missing = [t for t in wanted if t not in recorded]
    if missing:
        raise ValueError(f'topic(s) not in the bag: {", ".join(missing)}')
    chosen = [t for t in recorded if not wanted or t in wanted]
    if exclude:
        pattern = re.compile(exclude)
        chosen = [t for t in chosen if not pattern.search(t)]
    return chosen


class PlaybackClock:
    """Bag time as a function of monotonic wall time: ``bag = anchor_bag + rate·(wall − anchor_wall)``.

    Paused, bag time stands still at ``anchor_bag``. Every change re-anchors at the current
    instant, so time never jumps except by :meth:`jump`.
    """

    def __init__(self, rate: float = 1.0, now_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.rate = rate
        self._now = now_ns
        self.anchor_bag = 0
        self.anchor_wall = now_ns()
        self.paused = False

    def start(self, bag_ns: int, *, paused: bool = False, at_wall_ns: int | None = None) -> None:
        self.anchor_bag = bag_ns
        self.anchor_wall = self._now() if at_wall_ns is None else at_wall_ns
        self.paused = paused

    def bag_now(self) -> int:
        if self.paused:
            return self.anchor_bag
        return self.anchor_bag + int((self._now() - self.anchor_wall) * self.rate)

    def wall_for(self, bag_ns: int) -> int:
        """Monotonic time at which ``bag_ns`` is due (meaningless while paused)."""
        return self.anchor_wall + int((bag_ns - self.anchor_bag) / self.rate)

    def pause(self) -> None:
        if not self.paused:
            self.anchor_bag = self.bag_now()
            self.anchor_wall = self._now()
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.anchor_wall = self._now()
            self.paused = False

    def set_rate(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f'rate must be > 0 (got {rate})')
        self.anchor_bag = self.bag_now()
        self.anchor_wall = self._now()
        self.rate = rate

    def jump(self, bag_ns: int) -> None:
        self.anchor_bag = bag_ns
        self.anchor_wall = self._now()


def set_realtime(priority: int) -> bool:
    """Put the calling thread under SCHED_FIFO ``priority``; False when not permitted / not Linux.

    Threads created afterwards inherit it, and that is wanted: measured here, an RT timing thread
    alone was *worse* (p99 46 ms vs 1.3 ms) because it waits on the GIL held by a normal-priority
    thread that the kernel preempted. So the read-ahead thread (and, in the node, the executor
    thread) run at the same priority; they sleep most of the time, bounded by the buffer.
    ``priority`` 0 restores SCHED_OTHER.
    """
    if not hasattr(os, 'sched_setscheduler'):
        return False
    try:
        if priority <= 0:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            return False
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError):
        return False
    return True


class ReadAhead:
    """Reads messages ahead of playback in a thread, into a buffer bounded in count and bytes.

    Messages travel in *batches* (lists of up to :data:`BATCH` messages): the playing thread takes
    a whole batch under one lock and the reader is woken only when the buffer falls under half,
    so the two threads do not ping-pong the lock (and the GIL) at every message.
    :meth:`restart` begins a new *generation* at a bag time (loop, seek); items of an older
    generation are dropped. ``None`` marks the end of a generation's messages.
    """

    BATCH = 256

    def __init__(self, source: Callable[[int], Iterator[RawMessage]], *, max_messages: int,
                 max_bytes: int) -> None:
        self._source = source
        self._max_messages = max(self.BATCH, max_messages)
        self._max_bytes = max(1, max_bytes)
        self._buf: deque[tuple[int, list[RawMessage] | None, int]] = deque()
        self._count = 0
        self._bytes = 0
        self._gen = 0
        self._start_ns = 0
        self._cond = threading.Condition()
        self._closed = False
        self.error: BaseException | None = None
        self._local: deque[RawMessage | None] = deque()
        self._thread = threading.Thread(target=self._run, name='bag-read-ahead', daemon=True)
        self._started = False

    def restart(self, start_ns: int) -> None:
        with self._cond:
            self._gen += 1
            self._start_ns = start_ns
            self._buf.clear()
            self._count = self._bytes = 0
            self._local.clear()
            self._cond.notify_all()
        if not self._started:
            self._started = True
            self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._started:
            self._thread.join(timeout=5.0)

    def get(self, timeout: float) -> tuple[bool, RawMessage | None]:
        """``(True, msg)``, ``(True, None)`` at the end, or ``(False, None)`` on timeout."""
        if self._local:
            return True, self._local.popleft()
        with self._cond:
            deadline = time.monotonic() + timeout
            while True:
                while self._buf and self._buf[0][0] != self._gen:
                    self._take()
                if self._buf:
                    batch = self._take()
                    if batch is None:
                        return True, None
                    self._local.extend(batch)
                    return True, self._local.popleft()
                if self.error is not None:
                    raise self.error
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False, None
                self._cond.wait(remaining)

    def _take(self) -> list[RawMessage] | None:
        _, batch, nbytes = self._buf.popleft()
        if batch is not None:
            self._count -= len(batch)
            self._bytes -= nbytes
        if self._count <= self._max_messages // 2 and self._bytes <= self._max_bytes // 2:
            self._cond.notify_all()
        return batch

    def _full(self) -> bool:
        return bool(self._buf) and (self._count >= self._max_messages or
                                    self._bytes >= self._max_bytes)

    def _put(self, gen: int, batch: list[RawMessage] | None, nbytes: int) -> bool:
        """Append a batch (waiting while the buffer is full); False if stale or closed."""
        with self._cond:
            while not self._closed and gen == self._gen and self._full():
                self._cond.wait(0.5)
            if self._closed or gen != self._gen:
                return False
            self._buf.append((gen, batch, nbytes))
            if batch is not None:
                self._count += len(batch)
                self._bytes += nbytes
            self._cond.notify_all()
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                gen, start = self._gen, self._start_ns
            try:
                batch: list[RawMessage] = []
                nbytes = 0
                completed = True
                for msg in self._source(start):
                    batch.append(msg)
                    nbytes += len(msg.data)
                    if len(batch) >= self.BATCH or nbytes >= (1 << 20):
                        if not self._put(gen, batch, nbytes):
                            completed = False
                            break
                        batch, nbytes = [], 0
                if completed and batch:
                    completed = self._put(gen, batch, nbytes)
                if completed:
                    self._put(gen, None, 0)
            except BaseException as exc:  # surfaced to the playing thread by get()
                with self._cond:
                    self.error = exc
                    self._cond.notify_all()
                return
            with self._cond:   # wait for the next generation (or close)
                while gen == self._gen and not self._closed:
                    self._cond.wait()


@dataclass
class PlayStats:
    """What a play did; ``errors_ns`` (publish time − scheduled time) when timing is recorded."""

    published: int = 0
    loops: int = 0
    clock_ticks: int = 0
    realtime: bool = False
    errors_ns: list[int] = field(default_factory=list)


class Player:
    """Plays ``topics`` of ``bag`` through ``publish(topic, data)`` with faithful timing.

    ``publish_clock(bag_ns)`` (optional) is called at ``options.clock_hz``. Thread-safe controls:
    :meth:`pause`, :meth:`resume`, :meth:`toggle_paused`, :meth:`seek`, :meth:`step`,
    :meth:`set_rate`, :meth:`stop`. :meth:`run` blocks until the end (or stop) and returns stats.
    """

    def __init__(self, bag: Bag, topics: Sequence[str], options: PlayOptions,
                 publish: Callable[[str, bytes], None],
                 publish_clock: Callable[[int], None] | None = None, *,
                 record_timing: bool = False, now_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.bag = bag
        self.options = options.validate()
        self.topics = list(topics)
        self._publish = publish
        self._publish_clock = publish_clock if options.clock_hz > 0 else None
        self._now = now_ns
        self.begin_ns = bag.start_ns + int(options.start_offset_s * 1e9)
        self.end_ns = (bag.end_ns + 1 if options.duration_s is None
                       else self.begin_ns + int(options.duration_s * 1e9))
        self.clock = PlaybackClock(options.rate, now_ns)
        self.stats = PlayStats()
        self._record = record_timing
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._changed = False       # a control changed the schedule: re-evaluate the wait
        self._seek_to: int | None = None
        self._steps = 0
        self.finished = threading.Event()
        #: set by the node shell: topic -> rclpy publisher (the core never touches it)
        self.publishers: dict[str, object] = {}
        self._reader = ReadAhead(self._source, max_messages=options.read_ahead_messages,
                                 max_bytes=options.read_ahead_bytes)

    def _source(self, start_ns: int) -> Iterator[RawMessage]:
        return self.bag.messages(self.topics, start_ns, self.end_ns)

    # ------------------------------------------------------------------ controls
    def _control(self, action: Callable[[], None]) -> None:
        with self._cond:
            action()
            self._changed = True
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self.clock.paused

    def pause(self) -> None:
        self._control(self.clock.pause)

    def resume(self) -> None:
        self._control(self.clock.resume)

    def toggle_paused(self) -> bool:
        """Returns the new paused state."""
        with self._cond:
            (self.clock.resume if self.clock.paused else self.clock.pause)()
            self._changed = True
            self._cond.notify_all()
            return self.clock.paused

    def set_rate(self, rate: float) -> None:
        self._control(lambda: self.clock.set_rate(rate))

    def seek(self, offset_s: float) -> None:
        """Jump to ``offset_s`` seconds after the bag start (clamped to the played window)."""
        target = min(max(self.bag.start_ns + int(offset_s * 1e9), self.begin_ns), self.end_ns)

        def action() -> None:
            self._seek_to = target
        self._control(action)

    def step(self) -> bool:
        """While paused, publish the next message now; False when not paused."""
        with self._cond:
            if not self.clock.paused:
                return False
            self._steps += 1
            self._changed = True
            self._cond.notify_all()
            return True

    def stop(self) -> None:
        self._stop.set()
        self._control(lambda: None)

    # ------------------------------------------------------------------ timing loop
    def run(self) -> PlayStats:
        opts = self.options
        try:
            self.stats.realtime = set_realtime(opts.realtime_priority)
            self._reader.restart(self.begin_ns)     # its thread inherits the policy
            start_wall = self._now() + int(opts.delay_s * 1e9)
            self.clock.start(self.begin_ns, paused=opts.start_paused, at_wall_ns=start_wall)
            if opts.delay_s > 0:
                self._sleep_until(start_wall)
            clock_period = int(1e9 / opts.clock_hz) if self._publish_clock else 0
            self._next_clock = self._now()
            pending: RawMessage | None = None
            while not self._stop.is_set():
                if self._seek_to is not None:
                    with self._cond:
                        target, self._seek_to = self._seek_to, None
                        self.clock.jump(target)
                    self._reader.restart(target)
                    pending = None
                if pending is None:
                    ok, pending = self._reader.get(timeout=0.05)
                    if not ok:
                        self._tick_clock(clock_period)
                        continue
                    if pending is None:      # end of the played window
                        if not opts.loop:
                            break
                        self.stats.loops += 1
                        self._reader.restart(self.begin_ns)
                        self.clock.jump(self.begin_ns)
                        continue
                if not self._wait_for(pending.log_time_ns, clock_period):
                    continue                 # a control changed the schedule: re-evaluate
                if self._record:
                    self.stats.errors_ns.append(self._now() - self.clock.wall_for(pending.log_time_ns))
                self._publish(pending.topic, pending.data)
                self.stats.published += 1
                pending = None
        finally:
            self._reader.close()
            if self.stats.realtime:
                set_realtime(0)
            self.finished.set()
        return self.stats

    def _tick_clock(self, period: int) -> None:
        if period and self._now() >= self._next_clock:
            self._publish_clock(self.clock.bag_now())
            self.stats.clock_ticks += 1
            self._next_clock += period
            if self._next_clock < self._now():
                self._next_clock = self._now() + period

    def _wait_for(self, bag_ns: int, clock_period: int) -> bool:
        """Wait until ``bag_ns`` is due; False if a control (pause, seek, rate…) interrupted."""
        while not self._stop.is_set():
            with self._cond:
                if self._changed:
                    self._changed = False
                    if self._seek_to is not None:
                        return False
                if self.clock.paused:
                    if self._steps:
                        self._steps -= 1
                        self.clock.jump(bag_ns)     # stays paused, at the stepped message
                        return True
                    wait = clock_period / 1e9 if clock_period else 0.1
                    self._tick_clock(clock_period)
                    self._cond.wait(wait)
                    continue
                due = self.clock.wall_for(bag_ns)
            now = self._now()
            self._tick_clock(clock_period)
            remaining = due - now
            if remaining <= 0:
                return True
            if clock_period:
                remaining = min(remaining, max(0, self._next_clock - now) + SPIN_WINDOW_NS)
            if remaining > SPIN_WINDOW_NS:
                with self._cond:
                    if not self._changed:
                        self._cond.wait((remaining - SPIN_WINDOW_NS) / 1e9)
            else:
                self._spin_until(min(due, self._next_clock) if clock_period else due)
        return False

    def _spin_until(self, wall_ns: int) -> None:
        now = self._now
        while now() < wall_ns and not self._changed:
            pass

    def _sleep_until(self, wall_ns: int) -> None:
        while not self._stop.is_set():
            remaining = wall_ns - self._now()
            if remaining <= 0:
                return
            self._stop.wait(remaining / 1e9)
