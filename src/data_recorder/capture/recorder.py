"""Recording engine: bounded hand-off queue, background writer thread, accounting, disk guard,
snapshot mode. Pure core (no rclpy): the node feeds :meth:`Recorder.on_message` from its
subscription callbacks; tests and tools can feed it directly.

Why a thread and a deque: a subscription callback must never wait for the disk (a 30 ms fsync
at 1 kHz would overflow the DDS history). The callback only appends ``(topic, bytes, t)`` to a
deque (atomic under the GIL, no lock); the writer thread drains it in batches. The deque is
bounded by ``queue_size`` messages and ``queue_max_bytes``: when full, the message is counted as
``lost_queue`` instead of growing memory without limit (measured: a CPU-starved recorder with a
count bound only reached 1.4 GB of queued camera images).
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_recorder.bag.writer import BagWriter, header_stamp_ns
from data_recorder.bag.writer_process import WriterProcess
from data_recorder.capture.accounting import Accounting, TopicStats
from data_recorder.capture.snapshot import SnapshotBuffer
from field_deploy import heap_reserve

LogFn = Callable[[str, str], None]   # (level, message)


@dataclass
class RecorderConfig:
    """Everything the node's parameters and the CLI flags set. Validated by :meth:`validate`."""

    output: str
    compression_format: str = 'none'
    chunk_size: int = 1024 * 1024
    flush_interval: float = 1.0
    max_bag_size: int = 0
    max_bag_duration: float = 0.0
    snapshot_mode: bool = False
    snapshot_duration: float = 30.0
    snapshot_max_bytes: int = 0
    min_free_space: int = 64 * 1024 * 1024
    queue_size: int = 100_000
    queue_max_bytes: int = 256 * 1024 * 1024
    queue_reserve_bytes: int = 0
    """Heap kept resident for the queue from the start, at most ``queue_max_bytes``
    (:mod:`field_deploy.heap_reserve`): a backlog up to that size takes pages that exist instead
    of faulting fresh ones in on the taking thread. 0 here (the pure core's tests, tools); the
    node's and ``bag record``'s default is 256 MiB (``data_recorder.parameters``)."""
    fsync: bool = True
    writer_process: bool = False
    """Write the bag in a process of its own (:mod:`data_recorder.bag.writer_process`), fed
    through a shared-memory ring of ``ring_bytes`` (the node's ``writer_process`` parameter, the
    CLI's ``--writer-process``). Off by default: on the shared 2-core host its single writer
    thread got only its fair share of the CPU and fell behind where one process kept up
    (docs/data_recorder.md, "Headroom")."""
    ring_bytes: int = 128 * 1024 * 1024
    throttle: tuple[str, ...] = ()
    """``TOPIC_REGEX:HZ`` entries: keep at most HZ messages a second of the matching topics (the
    first entry that matches a topic applies); the rest are counted ``skipped_throttled``."""

    def throttle_rules(self) -> list[tuple[re.Pattern[str], float]]:
        """The parsed :attr:`throttle` entries; ValueError naming the bad one."""
        rules = []
        for entry in self.throttle:
            pattern, sep, hz = entry.rpartition(':')
            try:
                rate = float(hz)
                rules.append((re.compile(pattern), rate))
            except (ValueError, re.error) as exc:
                raise ValueError(f'throttle: {entry!r}: expected TOPIC_REGEX:HZ ({exc})') from None
            if not sep or not pattern or not rate > 0:
                raise ValueError(f'throttle: {entry!r}: expected TOPIC_REGEX:HZ with HZ > 0')
        return rules

    def throttle_period_ns(self, topic: str) -> int:
        """Minimum nanoseconds between two kept messages of ``topic`` (0: not throttled)."""
        for pattern, rate in self.throttle_rules():
            if pattern.search(topic):
                return round(1e9 / rate)
        return 0

    def validate(self) -> None:
        self.throttle_rules()
        if not self.output:
            raise ValueError('output: must name the bag directory to create')
        if self.compression_format not in ('', 'none', 'lz4', 'zstd'):
            raise ValueError(f'compression_format: {self.compression_format!r} is not one of '
                             'none, lz4, zstd')
        for name in ('chunk_size', 'max_bag_size', 'snapshot_max_bytes', 'min_free_space'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name}: {getattr(self, name)} must be >= 0')
        if self.queue_size < 1:
            raise ValueError(f'queue_size: {self.queue_size} must be >= 1')
        if self.writer_process and self.ring_bytes < 4 * 1024 * 1024:
            raise ValueError(f'ring_bytes: {self.ring_bytes} must be >= 4 MiB')
        if self.queue_max_bytes < 1024 * 1024:
            raise ValueError(f'queue_max_bytes: {self.queue_max_bytes} must be >= 1 MiB')
        if self.queue_reserve_bytes < 0:
            raise ValueError(f'queue_reserve_bytes: {self.queue_reserve_bytes} must be >= 0')
        if self.flush_interval <= 0:
            raise ValueError(f'flush_interval: {self.flush_interval} must be > 0 seconds')
        if self.max_bag_duration < 0 or self.snapshot_duration < 0:
            raise ValueError('max_bag_duration / snapshot_duration must be >= 0 seconds')
        if self.snapshot_mode and not (self.snapshot_duration > 0 or self.snapshot_max_bytes > 0):
            raise ValueError('snapshot_mode needs snapshot_duration > 0 or snapshot_max_bytes > 0')


class _Command:
    """A request run by the writer thread in order with the messages queued before it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:   # reported to the caller
            self.error = exc
        finally:
            self.done.set()


class Recorder:
    """Record to one bag directory. States: ``recording``, ``paused``, ``stopped`` (disk guard or
    write error: the bag is closed and readable, arriving messages are counted, not written),
    ``closed``."""

    def __init__(self, config: RecorderConfig, log: LogFn | None = None) -> None:
        config.validate()
        self.config = config
        self.log: LogFn = log or (lambda _level, _msg: None)
        options: dict[str, Any] = dict(
            compression=config.compression_format or 'none', chunk_size=config.chunk_size,
            flush_interval=config.flush_interval, max_bag_size=config.max_bag_size,
            max_bag_duration=config.max_bag_duration, fsync=config.fsync)
        self.writer: BagWriter | WriterProcess = (
            WriterProcess(config.output, ring_bytes=config.ring_bytes, **options)
            if config.writer_process else BagWriter(config.output, **options))
        self.path: Path = self.writer.path
        self.accounting = Accounting()
        self.snapshot_buffer = (SnapshotBuffer(config.snapshot_duration, config.snapshot_max_bytes)
                                if config.snapshot_mode else None)
        self.paused = False
        self.state = 'recording'
        self.stop_reason = ''
        self.records_not_written = 0
        """Metadata records (episode, mark) that came after the recording stopped."""
        self._queue: deque[tuple[Any, Any, int]] = deque()
        self._cap = config.queue_size
        self._max_bytes = config.queue_max_bytes
        # bytes handed over / taken: each has one writer thread, so no lock is needed
        self._in_bytes = 0
        self._out_bytes = 0
        self._headers: dict[str, bool] = {}
        self._closing = False
        self._bytes_since_check = 0
        self._last_disk_check = 0.0
        # the queue's pages before the streams begin (released at close)
        self.reserved = heap_reserve.reserve(min(config.queue_reserve_bytes,
                                                 config.queue_max_bytes))
        self._thread = threading.Thread(target=self._run, name='bag-writer', daemon=True)
        self._thread.start()
        self._check_disk(force=True)

    # -- hot path (subscription callbacks) ------------------------------------------------------

    def stats(self, topic: str) -> TopicStats:
        """The ledger entry of ``topic`` (the node binds it into its callback)."""
        return self.accounting.topic(topic)

    def on_message(self, stats: TopicStats, topic: str, data: bytes) -> None:
        """Hand one received message to the writer thread; never blocks."""
        stats.received += 1
        if self.paused:
            stats.skipped_paused += 1
        elif stats.throttle_ns and not stats.keep_throttled(time.monotonic_ns()):
            stats.skipped_throttled += 1
            if self._headers.get(topic):  # the stamp gap it leaves is not a loss
                self._queue.append((topic, None, header_stamp_ns(data) or 0))
        elif (len(self._queue) >= self._cap or
              self._in_bytes - self._out_bytes + len(data) > self._max_bytes):
            stats.lost_queue += 1
            # a stamp-only marker (no payload): the gap detector must see the stamp, or it would
            # count this message a second time as a hole in the stream
            if self._headers.get(topic):
                self._queue.append((topic, None, header_stamp_ns(data) or 0))
        else:
            self._in_bytes += len(data)
            self._queue.append((topic, data, time.time_ns()))

    def on_message_seq(self, stats: TopicStats, topic: str, data: bytes, seq: int) -> None:
        """:meth:`on_message` with the sample's DDS publication sequence number."""
        tracker = stats.seq
        if seq == tracker.last + 1:
            tracker.last = seq
        else:
            tracker.other(seq)
        self.on_message(stats, topic, data)

    def on_message_lost(self, stats: TopicStats, total_count_change: int) -> None:
        stats.lost_middleware += total_count_change

    # -- control (any thread) -----------------------------------------------------------------

    def add_topic(self, name: str, type_name: str, offered_qos_profiles: list[dict[str, Any]]) -> None:
        """Declare a topic (before subscribing). Raises LookupError / ValueError with the reason."""
        stats = self.accounting.topic(name, type_name)
        stats.type = type_name
        stats.throttle_ns = self.config.throttle_period_ns(name)
        self._call(lambda: self._add_topic(name, type_name, offered_qos_profiles))

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        """Record again. Runs in the writer thread, after what was queued before the pause, so
        the stamp gap over the pause is not mistaken for loss."""
        if self.paused:
            self._call(self._resume)

    def _resume(self) -> None:
        for stats in self.accounting.topics.values():
            stats.forget_stamps()
        self.paused = False

    def split(self, *, wait: bool = True) -> None:
        self._submit(self._split, wait, 'split')

    def snapshot(self, *, wait: bool = True) -> str:
        """Write the ring buffer (snapshot mode) or flush (normal mode); returns what was done
        (``wait=False``: queued in order with the messages, what was done is logged)."""
        if wait:
            return self._call(self._snapshot)
        self.post(lambda: self.log('info', self._snapshot()), 'snapshot')
        return 'queued'

    def add_metadata(self, name: str, data: Mapping[str, str], *, wait: bool = True) -> None:
        """An MCAP Metadata record in the current file, in order with the queued messages.

        Once the recording stopped (the disk guard closed the bag) the record is counted
        (``records_not_written``), not written: the episodes still reach metadata.yaml at the
        close. Before, each episode marker after a disk-full stop logged an error with an empty
        reason (the writer's assertion), twice a second in the soak."""
        def write() -> None:
            if self.writer.closed:
                self.records_not_written += 1
                return
            self.writer.add_metadata(name, data)
        self._submit(write, wait, f'metadata record {name!r}')

    def set_custom_data(self, key: str, value: str, *, wait: bool = True) -> None:
        """An entry of metadata.yaml ``custom_data`` (written at close)."""
        self._submit(lambda: self.writer.set_custom_data(key, value), wait, f'custom data {key!r}')

    def _submit(self, fn: Callable[[], Any], wait: bool, what: str) -> None:
        if wait:
            self._call(fn)
        else:
            self.post(fn, what)

    def close(self, *, stop_ns: int = 0, live_topics: Collection[str] = (),
              silent_topics: Collection[str] = ()) -> Path:
        """Write what is queued, close the bag (metadata.yaml with the accounting). Idempotent.

        ``stop_ns`` and ``live_topics`` (the stop time and the streams still flowing, from a
        publisher still there, that had not caught up with it): samples of those periodic streams
        stamped before the stop that were not received are counted lost (``lost_gaps``), the end
        of a stream being a hole like any other. ``silent_topics``: streams with a live publisher
        that delivered nothing for longer than a repair takes - their due samples are reported
        (``silent_tail``), not counted lost: a sensor that stopped owes nothing.
        """
        if self.state != 'closed':
            self._closing = True
            self._thread.join()
            if stop_ns and self.streaming:
                for topic in live_topics:
                    stats = self.accounting.topics.get(topic)
                    if stats is not None:
                        stats.lost_tail += stats.due_before(stop_ns)
                for topic in silent_topics:
                    stats = self.accounting.topics.get(topic)
                    if stats is not None:
                        stats.silent_tail += stats.due_before(stop_ns)
            if self.snapshot_buffer is not None:      # buffered, never snapshotted: not written
                for topic, _data, _t in self.snapshot_buffer.drain():
                    self.accounting.topics[topic].skipped_snapshot += 1
            if self.writer.closed:
                self._final_metadata()
            self._close_writer()
            if self.reserved:
                heap_reserve.release()
                self.reserved = 0
            self.state = 'closed'
        return self.path

    def _final_metadata(self) -> None:
        """The bag was closed early (disk guard, write error): its metadata.yaml has the counts
        of that moment. Rewrite it with the final ones - what arrived after is counted too."""
        for key, value in self.accounting.custom_data().items():
            self.writer.set_custom_data(key, value)
        try:
            self.writer.rewrite_metadata()
        except OSError as exc:
            self.log('error', f'{self.path}: could not update metadata.yaml with the final '
                              f'accounting ({exc}); the counts of the stop are in it')

    @property
    def streaming(self) -> bool:
        """Writing what arrives to the bag as it comes: recording, not paused, not snapshot mode.
        Only then is a stream's missing end a loss (see :meth:`close`)."""
        return self.state == 'recording' and not self.paused and self.snapshot_buffer is None

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def status(self) -> dict[str, Any]:
        return {'state': 'paused' if self.paused and self.state == 'recording' else self.state,
                'path': str(self.path), 'files': self.writer.file_count,
                'writer_pid': getattr(self.writer, 'pid', 0),
                'queue': len(self._queue), 'stop_reason': self.stop_reason,
                'records_not_written': self.records_not_written,
                'snapshot_buffered': len(self.snapshot_buffer) if self.snapshot_buffer else 0,
                **self.accounting.totals()}

    # -- writer thread ------------------------------------------------------------------------

    def post(self, fn: Callable[[], Any], what: str) -> None:
        """Run ``fn`` in the writer thread, in order with the queued messages, without waiting.

        For callers on a ROS executor thread (episode markers, per-episode splits): waiting there
        for the queue to drain and a split's fsync stalled the executor past the DDS history of
        the 500 Hz streams (2 s at keep-last 1000), which lost messages. A failure is logged.
        """
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # nobody waits: say it
                self.log('error', f'{self.path}: {what} failed: {exc}')
        if self.state != 'closed' and not self._closing:
            self._queue.append((None, _Command(run), 0))

    def _call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        if self.state == 'closed' or self._closing:
            raise RuntimeError(f'{self.path}: the bag is closed')
        command = _Command(fn)
        self._queue.append((None, command, 0))
        if not command.done.wait(timeout):
            raise TimeoutError(f'{self.path}: the writer thread did not answer in {timeout} s')
        if command.error is not None:
            raise command.error
        return command.result

    def _run(self) -> None:
        queue = self._queue
        while True:
            if queue:
                while queue:
                    topic, data, t = queue.popleft()
                    if topic is None:
                        data.run()
                    elif data is None:                   # dropped at the queue: stamp only
                        if t:
                            self.accounting.topics[topic].observe_stamp(t)
                    else:
                        self._out_bytes += len(data)
                        self._handle(topic, data, t)
            elif self._closing:
                return
            else:
                if self.state == 'recording':
                    try:
                        self.writer.tick()
                    except OSError as exc:
                        self._stop(f'write error: {exc}')
                    self._check_disk()
                time.sleep(0.005)

    def _handle(self, topic: str, data: bytes, t: int) -> None:
        stats = self.accounting.topics[topic]
        if self.state != 'recording':
            stats.skipped_stopped += 1
            return
        stamp = header_stamp_ns(data) if self._headers.get(topic) else None
        if stamp:
            stats.observe_stamp(stamp)
        if self.snapshot_buffer is not None:
            for old in self.snapshot_buffer.add(topic, data, t):
                self.accounting.topics[old].skipped_snapshot += 1
            return
        try:
            self.writer.write(topic, data, t, stamp or t)
        except OSError as exc:
            stats.skipped_stopped += 1
            self._stop(f'write error: {exc}')
            return
        stats.written += 1
        self._bytes_since_check += len(data)
        if self._bytes_since_check > 256 * 1024:
            self._check_disk()

    def _add_topic(self, name: str, type_name: str, qos: list[dict[str, Any]]) -> None:
        if self.writer.closed:      # stopped by the disk guard: counted, never written
            return
        self.writer.add_topic(name, type_name, qos)
        self._headers[name] = self.writer.topics[name].header

    def _split(self) -> None:
        if self.state == 'recording':
            self.writer.split()

    def _snapshot(self) -> str:
        if self.state != 'recording':
            raise RuntimeError(f'recording stopped ({self.stop_reason})')
        if self.snapshot_buffer is None:
            self.writer.flush()
            return 'not in snapshot mode: everything is recorded; flushed to disk'
        if self.writer.file_messages:
            self.writer.split()
        count = 0
        for topic, data, t in self.snapshot_buffer.drain():
            stamp = header_stamp_ns(data) if self._headers.get(topic) else None
            self.writer.write(topic, data, t, stamp or t)
            self.accounting.topics[topic].written += 1
            count += 1
        self.writer.flush()
        return f'snapshot: {count} messages written to {self.writer.current_file}'

    def _check_disk(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_disk_check < 0.2 and self._bytes_since_check < 256 * 1024:
            return
        self._last_disk_check = now
        self._bytes_since_check = 0
        if not self.config.min_free_space or self.state != 'recording':
            return
        free = shutil.disk_usage(self.path).free
        # the open chunk and the file summary still have to fit above the minimum
        if free - self.writer.chunk_size < self.config.min_free_space:
            self._stop(f'disk guard: {free} bytes free under {self.path}, minimum '
                       f'{self.config.min_free_space} + chunk {self.writer.chunk_size}')

    def _stop(self, reason: str) -> None:
        self.state = 'stopped'
        self.stop_reason = reason
        self.log('error', f'{self.path}: recording stopped: {reason}; the bag is closed and '
                          'readable, arriving messages and episode or mark records are counted, '
                          'not written')
        self._close_writer()

    def _close_writer(self) -> None:
        if self.writer.closed:
            return
        for key, value in self.accounting.custom_data().items():
            self.writer.set_custom_data(key, value)
        if self.stop_reason:
            self.writer.set_custom_data('data_recorder.stop_reason', self.stop_reason)
        try:
            self.writer.close()
        except OSError as exc:
            self.stop_reason = self.stop_reason or f'close failed: {exc}'
            self.log('error', f'{self.path}: closing the bag failed ({exc}); run '
                              f'`field_deploy bag recover {self.path}`')
