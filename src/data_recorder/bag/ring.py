"""A bounded single-producer / single-consumer byte ring in shared memory (pure, no rclpy).

Why: the recorder's capture (DDS take, sequence accounting) and its writing (MCAP chunks, CRC,
flush, fsync) shared one interpreter and one GIL; at 2x the reference load that one core was
the wall. The ring hands the received records to a writer process (:mod:`writer_process`)
without pickling: one ``struct`` pack for the record head and one ``memcpy`` of the CDR bytes.

Layout: a 64-byte header, then ``capacity`` bytes of records. Header words (u64, little endian):
``head`` (bytes ever written, producer only), ``tail`` (bytes ever read, consumer only), then
status words the consumer publishes for the producer (see :data:`STATUS`). A record is an
8-byte head (``u32`` payload length, ``u8`` kind) and its payload, padded to 8 bytes; it never
wraps around the end: a ``WRAP`` head (or the end's last < 8 bytes) says "continue at 0".

Ordering: the producer copies the record, then stores ``head``; the consumer reads ``head``,
copies the record out, then stores ``tail``. Each word has one writer and is read and stored
whole, through a native ``'Q'`` memoryview (one aligned 8-byte load or store on x86-64 and
aarch64) - not ``struct``'s little-endian ``'<Q'``, which stores byte by byte: the other process
read half-written counters at 3x the reference load (a record read before it was written, bench
2026-11-30). Stores are not reordered across the Python-level calls (each one is a C function
call the compiler cannot move a store over; x86-64 keeps store order, loads in order).
Bounded: :meth:`Ring.put` returns False when the record does not fit - the caller waits or
counts it, nothing grows.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from multiprocessing import shared_memory

HEADER = 64
RECORD = struct.Struct('<IB3x')
MESSAGE, COMMAND, WRAP = 1, 2, 3
#: Status words after head and tail, written by the consumer: files so far, messages in the
#: current file, messages written, messages on disk (flushed), 1 when the bag is closed.
STATUS = ('files', 'file_messages', 'written', 'flushed', 'closed')
_HEAD, _TAIL = 0, 1            # word indexes


def _padded(n: int) -> int:
    return RECORD.size + ((n + 7) & ~7)


class Ring:
    """One end of the ring. ``Ring.create(capacity)`` (the producer's process owns the segment,
    unlinks it at :meth:`close`) or ``Ring.attach(name)`` (the consumer: a plain mapping of
    ``/dev/shm/<name>``, so this process's exit never unlinks what the owner still uses)."""

    def __init__(self, buf: memoryview, name: str, owner: shared_memory.SharedMemory | None,
                 mapping: mmap.mmap | None) -> None:
        self.buf = buf
        self.name = name
        self.capacity = len(buf) - HEADER
        self.words = buf[:HEADER].cast('Q')   # head, tail, status: whole-word loads and stores
        self._owner = owner
        self._mapping = mapping
        self._head = self.words[_HEAD]
        self._tail = self.words[_TAIL]

    @classmethod
    def create(cls, capacity: int) -> Ring:
        capacity = max(1 << 16, capacity & ~7)
        shm = shared_memory.SharedMemory(create=True, size=HEADER + capacity)
        shm.buf[:HEADER] = bytes(HEADER)
        return cls(shm.buf[:HEADER + capacity], shm.name, shm, None)

    @classmethod
    def attach(cls, name: str) -> Ring:
        fd = os.open(f'/dev/shm/{name.lstrip("/")}', os.O_RDWR)
        try:
            mapping = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        return cls(memoryview(mapping), name, None, mapping)

    @property
    def max_record(self) -> int:
        """The largest payload :meth:`put` takes (half the ring: a wrap never blocks it)."""
        return self.capacity // 2 - RECORD.size

    # -- producer -----------------------------------------------------------------------------

    def put(self, kind: int, head: bytes, data: bytes = b'') -> bool:
        """Append one record (``head`` + ``data``); False when it does not fit now."""
        n = len(head) + len(data)
        size = _padded(n)
        capacity = self.capacity
        if n > self.max_record:
            raise ValueError(f'record of {n} bytes: larger than half the ring ({capacity} bytes)')
        buf = self.buf
        pos = self._head
        at = pos % capacity
        skip = capacity - at if capacity - at < size else 0
        if pos + skip + size - self.words[_TAIL] > capacity:
            return False
        if skip:
            if skip >= RECORD.size:
                RECORD.pack_into(buf, HEADER + at, 0, WRAP)
            pos += skip
            at = 0
        start = HEADER + at
        RECORD.pack_into(buf, start, n, kind)
        start += RECORD.size
        buf[start:start + len(head)] = head
        if data:
            start += len(head)
            buf[start:start + len(data)] = data
        self._head = pos + size
        self.words[_HEAD] = self._head
        return True

    def used(self) -> int:
        """Bytes in the ring not yet taken by the consumer."""
        return self._head - self.words[_TAIL]

    def status(self) -> dict[str, int]:
        words = self.words
        return {name: words[2 + k] for k, name in enumerate(STATUS)}

    # -- consumer -----------------------------------------------------------------------------

    def get(self, skip: int = 0) -> tuple[int, bytes] | None:
        """The next record ``(kind, payload)`` copied out, or None when the ring is empty.

        ``skip``: leave out the first bytes of a MESSAGE payload (a head the caller read with
        :meth:`peek_head`): each message's bytes are copied once, not twice."""
        buf = self.buf
        capacity = self.capacity
        while True:
            tail = self._tail
            if tail == self.words[_HEAD]:
                return None
            at = tail % capacity
            if capacity - at < RECORD.size:
                self._advance(tail + capacity - at)
                continue
            n, kind = RECORD.unpack_from(buf, HEADER + at)
            if kind == WRAP:
                self._advance(tail + capacity - at)
                continue
            start = HEADER + at + RECORD.size
            if kind == MESSAGE:
                start += skip
                n -= skip
            payload = bytes(buf[start:start + n])
            self._advance(self._tail + _padded(n + (skip if kind == MESSAGE else 0)))
            return kind, payload

    def peek_head(self, head: struct.Struct) -> tuple[int, ...] | None:
        """The head of the next record if it is a MESSAGE (None otherwise, or when empty): read
        in place, before :meth:`get` copies the rest."""
        buf = self.buf
        capacity = self.capacity
        tail = self._tail
        if tail == self.words[_HEAD]:
            return None
        at = tail % capacity
        if capacity - at < RECORD.size:
            return None
        _n, kind = RECORD.unpack_from(buf, HEADER + at)
        if kind != MESSAGE:
            return None
        return head.unpack_from(buf, HEADER + at + RECORD.size)

    def set_status(self, **values: int) -> None:
        for name, value in values.items():
            self.words[2 + STATUS.index(name)] = value

    def _advance(self, tail: int) -> None:
        self._tail = tail
        self.words[_TAIL] = tail

    # -- both ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap; the owner also unlinks the segment."""
        self.words.release()
        self.buf.release()
        if self._owner is not None:
            self._owner.close()
            with contextlib.suppress(FileNotFoundError):
                self._owner.unlink()
        if self._mapping is not None:
            self._mapping.close()
