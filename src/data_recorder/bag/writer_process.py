"""The bag writer in a process of its own: :class:`WriterProcess` (the recorder's side, the same
API as :class:`data_recorder.bag.writer.BagWriter`) and :func:`main` (the writer process).

Why: with capture and writing in one interpreter, the DDS take and the MCAP writing (records,
chunks, CRC, flush, fsync) took turns on one GIL, and at 2x the reference load that core was the
wall (docs/data_recorder.md, "Headroom"). Here the recorder's process only takes, accounts and
copies each record into a shared-memory :class:`data_recorder.bag.ring.Ring`; this process owns
the MCAP files and metadata.yaml: chunks, splits, flush + fsync every ``flush_interval``. One
writer writes the files one after another, so the bag stays one rosbag2 bag read in time order.

* Commands (topics, metadata records, custom data, flush, split, close) go through the ring too,
  in order with the messages; their answers come back as JSON lines on the process's stdout.
* Bounded: a full ring makes :meth:`WriterProcess.write` wait (the recorder's hand-off queue in
  front of it fills and counts ``lost_queue``: never silent).
* Crash safety: the writer process flushes and fsyncs every ``flush_interval``. If the recorder's
  process dies (kill -9), the writer's stdin reaches EOF: it writes what is in the ring, flushes,
  fsyncs and exits, leaving the bag as a killed single-process recorder did (no summary, no
  metadata.yaml: ``bag recover``, or the restarted node's ``if_output_exists: next``, rebuilds
  it - with everything the recorder had handed over). If the writer process dies, the
  recorder's next write raises ``OSError`` naming it: the recorder stops loudly (error log,
  ``/diagnostics`` ERROR, the close line's stop reason) and ``bag recover`` rebuilds the files
  (at most ``flush_interval`` lost).
* Signals: the writer runs in a session of its own, so Ctrl-C or a group SIGTERM reaches only
  the recorder, which drains DDS and then closes the writer in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from data_recorder.bag import metadata as md
from data_recorder.bag.ring import COMMAND, MESSAGE, Ring
from data_recorder.bag.writer import (
    BagError,
    BagWriter,
    _Topic,
    check_metadata,
    check_output_dir,
    declare_topic,
)

#: topic id, log time, publish time (0: the writer takes the header stamp / log time)
MESSAGE_HEAD = struct.Struct('<HQQ')
DEFAULT_RING_BYTES = 128 * 1024 * 1024
_ERRORS: dict[str, type[Exception]] = {
    'FileExistsError': FileExistsError, 'PermissionError': PermissionError,
    'ValueError': ValueError, 'LookupError': LookupError, 'KeyError': KeyError}


class WriterProcess:
    """:class:`BagWriter`'s API, written by a child process through a shared-memory ring."""

    def __init__(self, path: Path | str, *, compression: str = 'none',
                 chunk_size: int = 1024 * 1024, flush_interval: float = 1.0,
                 max_bag_size: int = 0, max_bag_duration: float = 0.0, fsync: bool = True,
                 ring_bytes: int = DEFAULT_RING_BYTES) -> None:
        self.path = check_output_dir(Path(path))
        self.compression = 'none' if compression == '' else compression
        self.chunk_size = chunk_size
        self.topics: dict[str, _Topic] = {}
        self.custom_data: dict[str, str] = {}
        self.closed = False
        self._ids: dict[str, int] = {}
        self._replies: dict[int, dict[str, Any]] = {}
        self._reply_ready = threading.Condition()
        self._next_id = 0
        self._failed = ''
        self._metadata: dict[str, Any] | None = None
        self._last_check = 0.0
        self.ring = Ring.create(ring_bytes)
        options = {'path': str(self.path), 'compression': compression, 'chunk_size': chunk_size,
                   'flush_interval': flush_interval, 'max_bag_size': max_bag_size,
                   'max_bag_duration': max_bag_duration, 'fsync': fsync, 'ring': self.ring.name}
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'data_recorder.bag.writer_process', json.dumps(options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        threading.Thread(target=self._read_replies, name='bag-writer-replies', daemon=True).start()
        try:
            self._wait(0, 60.0)                 # reply 0: the bag was created, or why not
        except BaseException:
            self._end_process()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    # -- BagWriter's API ----------------------------------------------------------------------

    def add_topic(self, name: str, type_name: str,
                  offered_qos_profiles: list[dict[str, Any]] | None = None,
                  serialization_format: str = 'cdr') -> None:
        topic = declare_topic(self.topics, name, type_name, offered_qos_profiles,
                              serialization_format)
        if topic is None:
            return
        self._ids[name] = len(self._ids)
        self._command('add_topic', wait=False, name=name, type=topic.info.type,
                      qos=topic.info.offered_qos_profiles, format=serialization_format,
                      id=self._ids[name])

    def write(self, topic: str, data: bytes, log_time: int, publish_time: int | None = None) -> None:
        """Hand one message to the writer process; waits while the ring is full."""
        head = MESSAGE_HEAD.pack(self._ids[topic], log_time, publish_time or 0)
        if not self.ring.put(MESSAGE, head, data):
            self._wait_for_room(head, data)
        self.topics[topic].written += 1
        now = time.monotonic()
        if now - self._last_check > 0.1:
            self._last_check = now
            self._check()

    def tick(self) -> None:
        """The writer process flushes on its own clock; here: is it still there?"""
        self._check()

    def flush(self) -> None:
        self._command('flush')

    def split(self) -> None:
        self._command('split')

    def add_metadata(self, name: str, data: Mapping[str, str]) -> None:
        check_metadata(name, data)
        self._command('add_metadata', wait=False, name=name, data=dict(data))

    def set_custom_data(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f'custom_data {key!r}: key and value must be strings')
        self.custom_data[key] = value
        if not self.closed and not self._failed:   # a dead writer: close() says so, once
            self._command('set_custom_data', wait=False, key=key, value=value)

    @property
    def file_count(self) -> int:
        return max(1, self.ring.status()['files']) if not self.closed else len(
            (self._metadata or {}).get('relative_file_paths', [])) or 1

    @property
    def file_messages(self) -> int:
        """Messages in the current file (written by the writer process so far)."""
        return self.ring.status()['file_messages'] if not self.closed else 0

    @property
    def current_file(self) -> str:
        return f'{self.path.name}_{self.file_count - 1}.mcap'

    @property
    def message_count(self) -> int:
        if self.closed and self._metadata is not None:
            return int(self._metadata['message_count'])
        return self.ring.status()['written']

    def written(self) -> dict[str, int]:
        return {name: t.written for name, t in self.topics.items()}

    def close(self) -> Path:
        """Write what is in the ring, finish the files and metadata.yaml; the process exits."""
        if not self.closed:
            self.closed = True
            try:
                result = self._command('close', timeout=600.0)
                self._metadata = result.get('metadata') if isinstance(result, dict) else None
            finally:
                self._end_process()
        return self.path

    def rewrite_metadata(self) -> Path:
        """metadata.yaml again with the custom data set since the close (see BagWriter)."""
        if not self.closed or self._metadata is None:
            raise BagError(f'{self.path}: no metadata.yaml to rewrite (the writer process did not '
                           'close the bag)')
        self._metadata['custom_data'] = dict(self.custom_data)
        return md.write(self.path, {'rosbag2_bagfile_information': self._metadata})

    # -- internals ----------------------------------------------------------------------------

    def _command(self, op: str, *, wait: bool = True, timeout: float = 30.0, **args: Any) -> Any:
        self._check()
        self._next_id += 1
        request = json.dumps({'op': op, 'reply': self._next_id if wait else 0, **args}).encode()
        if not self.ring.put(COMMAND, request):
            self._wait_for_room(request, b'', COMMAND)
        return self._wait(self._next_id, timeout) if wait else None

    def _wait_for_room(self, head: bytes, data: bytes, kind: int = MESSAGE) -> None:
        """The writer is behind by a whole ring: wait for it (the hand-off queue in front of us
        absorbs and counts), asking every 0.1 s whether it is still alive."""
        checked = time.monotonic()
        while not self.ring.put(kind, head, data):
            time.sleep(0.002)
            if time.monotonic() - checked > 0.1:
                checked = time.monotonic()
                self._check()

    def _check(self) -> None:
        if self._failed:
            raise BagError(self._failed)
        code = self.process.poll()
        if code is not None:
            self._failed = (f'{self.path}: the writer process {self.process.pid} died (exit code '
                            f'{code}); run `field_deploy bag recover {self.path}`')
            raise BagError(self._failed)

    def _wait(self, reply_id: int, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self._reply_ready:
            while reply_id not in self._replies:
                if self.process.poll() is not None or self._failed:
                    self._check()
                    raise BagError(f'{self.path}: the writer process ended without answering')
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f'{self.path}: the writer process did not answer in '
                                       f'{timeout} s')
                self._reply_ready.wait(min(left, 0.2))
            reply = self._replies.pop(reply_id)
        if 'error' in reply:
            raise _ERRORS.get(reply['type'], BagError)(reply['error'])
        return reply.get('result')

    def _read_replies(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            reply = json.loads(line)
            if reply.get('reply') == -1:          # the writer failed on its own (disk)
                self._failed = reply.get('error', 'the writer process failed')
            with self._reply_ready:
                self._replies[reply.get('reply', -1)] = reply
                self._reply_ready.notify_all()

    def _end_process(self) -> None:
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()      # EOF: the writer finishes on its own
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            self.ring.close()


# -- the writer process -----------------------------------------------------------------------

def _answer(out: IO[bytes], reply: int, **fields: Any) -> None:
    if reply:
        out.write(json.dumps({'reply': reply, **fields}).encode() + b'\n')
        out.flush()


def _serve(writer: BagWriter, ring: Ring, out: IO[bytes], parent_gone: threading.Event) -> None:
    """Write what the ring brings until ``close`` (or the recorder's process is gone)."""
    names: dict[int, str] = {}
    head_size = MESSAGE_HEAD.size
    peek, get, write = ring.peek_head, ring.get, writer.write
    last_status = idle_since = 0.0
    while True:
        head = peek(MESSAGE_HEAD)
        if head is not None:             # a message: its bytes copied out once
            record = get(head_size)
            assert record is not None
            topic_id, log_time, publish_time = head
            write(names[topic_id], record[1], log_time, publish_time or None)
            now = time.monotonic()
            if now - last_status > 0.05:
                last_status = now
                _publish(writer, ring)
            idle_since = 0.0
            continue
        record = get()
        if record is None:
            if parent_gone.is_set():    # the recorder died: what it handed over goes to disk
                writer.flush()
                return
            writer.tick()
            _publish(writer, ring)
            now = time.monotonic()
            idle_since = idle_since or now
            # idle: look again soon, less often the longer nothing comes (1 ms, at most 5 ms:
            # the ring holds seconds of data, this only bounds the wake-ups of an idle writer)
            time.sleep(min(0.005, 0.001 + (now - idle_since) / 10))
            continue
        kind, payload = record
        if kind == MESSAGE:              # the first record after a wrap (peek does not look past)
            topic_id, log_time, publish_time = MESSAGE_HEAD.unpack_from(payload)
            write(names[topic_id], payload[head_size:], log_time, publish_time or None)
            continue
        request = json.loads(payload)
        op, reply = request.pop('op'), request.pop('reply')
        try:
            result: Any = None
            if op == 'add_topic':
                names[request['id']] = request['name']
                writer.add_topic(request['name'], request['type'], request['qos'],
                                 request['format'])
            elif op == 'add_metadata':
                writer.add_metadata(request['name'], request['data'])
            elif op == 'set_custom_data':
                writer.set_custom_data(request['key'], request['value'])
            elif op == 'flush':
                writer.flush()
            elif op == 'split':
                writer.split()
            elif op == 'close':
                writer.close()
                result = {'metadata': writer.metadata()['rosbag2_bagfile_information']}
            _publish(writer, ring)
            _answer(out, reply, result=result)
            if op == 'close':
                return
        except Exception as exc:
            if not reply:               # nobody waits for it: the next write will say
                raise
            _answer(out, reply, error=str(exc), type=type(exc).__name__)


def _publish(writer: BagWriter, ring: Ring) -> None:
    ring.set_status(files=len(writer.files), file_messages=writer.files[-1].message_count,
                    written=writer.message_count, closed=int(writer.closed))


def main(argv: list[str] | None = None) -> int:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the recorder decides when to stop
    options = json.loads((argv or sys.argv[1:])[0])
    out = sys.stdout.buffer
    ring = Ring.attach(options.pop('ring'))
    try:
        writer = BagWriter(options.pop('path'), **options)
    except Exception as exc:            # reply 0: the recorder's constructor raises it
        out.write(json.dumps({'reply': 0, 'error': str(exc), 'type': type(exc).__name__})
                  .encode() + b'\n')
        out.flush()
        ring.close()
        return 1
    out.write(b'{"reply": 0}\n')
    out.flush()
    parent_gone = threading.Event()

    def watch_stdin() -> None:          # EOF: the recorder closed it, or it died
        sys.stdin.buffer.read()
        parent_gone.set()
    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        _serve(writer, ring, out, parent_gone)
    except OSError as exc:              # disk full, write error: the recorder stops on it
        out.write(json.dumps({'reply': -1, 'error': f'{writer.path}: write error: {exc}'})
                  .encode() + b'\n')
        out.flush()
        with contextlib.suppress(OSError):
            writer.close()
        return 1
    finally:
        ring.close()
    return 0


if __name__ == '__main__':
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    sys.exit(main())
