"""What crosses the process boundary between the runtime and a skill worker. Pure (no rclpy).

Two channels per worker, both set up by the runtime before the worker starts:

* **the tick block**: an anonymous shared-memory file (``memfd``) with a fixed layout of int64
  counters and float64 arrays (:class:`TickBlock`): the runtime writes the robot state and a
  request number, the worker writes its targets, status and the request number it answered.
  Wake-ups are one byte on a pipe each way. Nothing in it is ever unpickled or evaluated: the
  runtime copies numbers out of fixed slots and checks them (finite, status known).
* **the control channel**: one JSON object per line each way on a pipe pair (configure, start,
  stop and their answers; the worker's log lines). Lines are bounded (:data:`MAX_LINE`); the
  runtime parses them with ``json.loads`` only (never ``pickle``: unpickling what vendor code
  wrote would run vendor code in the runtime).

Why this split (figures in ``bench/skills/ipc.py`` and docs/skill_runtime.md): a tick carries
~60 floats both ways 500 times a second, where JSON would cost the runtime's control thread
tens of microseconds and GIL time per tick; control requests are rare and need error text.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_LINE = 8192
"""Longest control line the runtime reads; a longer one is cut off and counted as malformed."""
MAX_REASON = 400
"""Bytes of a step's done / failed / error reason kept in the tick block."""
LOG_LINE_CHARS = 500
"""A worker's log line is cut to this many characters."""

# Step reply status, in the block's ``status`` slot.
ST_NONE = 0
ST_TARGETS = 1
ST_DONE = 2
ST_FAILED = 3    # the skill returned Failed(reason)
ST_ERROR = 4     # step raised, or returned something that is not a valid result
STATUS_NAMES = {ST_TARGETS: 'targets', ST_DONE: 'done', ST_FAILED: 'failed', ST_ERROR: 'error'}

F_DQ = 1         # flags: Targets.dq given
F_TAU = 2        #        Targets.tau given
F_PROGRESS = 4   #        Targets.progress given

# int64 header slots
_REQ, _REP, _STATUS, _FLAGS, _REASON_LEN, _STAMP, _BEGAN_SEQ, _BEGAN_NS, _NHDR = 0, 1, 2, 3, 4, 5, 6, 7, 8
IMU_SIZE = 10
MAX_DOF, MAX_SITES = 64, 16
"""A worker's block is sized for these (it is started before it knows its robot: a spare)."""
WRENCH_SIZE = 6


@dataclass
class StepReply:
    """One answer of a worker, as the runtime read it from the block (copies, not views)."""

    status: int
    q: np.ndarray
    dq: np.ndarray | None
    tau: np.ndarray | None
    progress: float | None
    reason: str
    step_time: float


class TickBlock:
    """Fixed layout of the shared tick memory for a robot of ``dof`` joints, a skill claiming
    ``n`` of them and ``n_sites`` wrench sites. Both sides build it from the same three numbers.

    Layout: int64 header[8] (request seq, reply seq, status, flags, reason length, stamp ns,
    the request the worker began stepping and when: CLOCK_MONOTONIC ns, shared by both processes),
    float64 state (t, q[dof], dq[dof], tau[dof], imu[10], wrench[n_sites*6], wrench_valid[n_sites]),
    float64 reply (q[n], dq[n], tau[n], progress, step_time), then the reason bytes.
    """

    def __init__(self, buf: mmap.mmap | memoryview | bytearray, dof: int, n: int, n_sites: int) -> None:
        if len(buf) < self.size(dof, n, n_sites):
            raise ValueError(f'tick block of {len(buf)} bytes is too small for {dof} joints, '
                             f'{n} claimed, {n_sites} wrench sites')
        self.dof, self.n, self.n_sites = dof, n, n_sites
        self.hdr = np.frombuffer(buf, dtype=np.int64, count=_NHDR, offset=0)
        off = _NHDR * 8
        n_state = 1 + 3 * dof + IMU_SIZE + n_sites * (WRENCH_SIZE + 1)
        state = np.frombuffer(buf, dtype=np.float64, count=n_state, offset=off)
        off += n_state * 8
        reply = np.frombuffer(buf, dtype=np.float64, count=3 * n + 2, offset=off)
        off += (3 * n + 2) * 8
        self.reason = np.frombuffer(buf, dtype=np.uint8, count=MAX_REASON, offset=off)
        self.state = state
        self.reply = reply
        self._zero_wrench = np.zeros(WRENCH_SIZE)

    @staticmethod
    def size(dof: int, n: int, n_sites: int) -> int:
        return _NHDR * 8 + (1 + 3 * dof + IMU_SIZE + n_sites * (WRENCH_SIZE + 1)) * 8 \
            + (3 * n + 2) * 8 + MAX_REASON

    # ------------------------------------------------------------------ runtime side
    def write_state(self, seq: int, t: float, q: np.ndarray, dq: np.ndarray, tau: np.ndarray,
                    imu: np.ndarray, wrenches: dict[str, np.ndarray], sites: tuple[str, ...],
                    stamp_ns: int) -> None:
        """The state of request ``seq``; the sequence number is written last."""
        parts = [np.array([t]), q, dq, tau, imu]
        valid = np.zeros(len(sites))
        for i, site in enumerate(sites):
            w = wrenches.get(site)
            parts.append(self._zero_wrench if w is None else w)
            valid[i] = w is not None
        parts.append(valid)
        np.concatenate(parts, out=self.state)   # one copy into the block (each numpy call costs µs)
        self.hdr[_STAMP] = stamp_ns
        self.hdr[_REQ] = seq

    def read_reply(self, seq: int) -> StepReply | None:
        """The worker's answer to request ``seq``, copied out; None while it has not answered.

        Nothing here trusts the worker: an unknown status is kept as is (the caller fails the
        skill on it), the reason is cut to :data:`MAX_REASON` bytes and decoded with replacement.
        """
        if int(self.hdr[_REP]) != seq:
            return None
        hdr = self.hdr.tolist()
        status, flags = hdr[_STATUS], hdr[_FLAGS]
        length = min(max(hdr[_REASON_LEN], 0), MAX_REASON)
        reply = self.reply.copy()
        n = self.n
        return StepReply(status=status, q=reply[0:n],
                         dq=reply[n:2 * n] if flags & F_DQ else None,
                         tau=reply[2 * n:3 * n] if flags & F_TAU else None,
                         progress=float(reply[3 * n]) if flags & F_PROGRESS else None,
                         reason=self.reason[:length].tobytes().decode('utf-8', 'replace') if length else '',
                         step_time=float(reply[3 * n + 1]))

    def began(self, seq: int) -> int | None:
        """When the worker began stepping request ``seq`` (monotonic ns), None if it has not."""
        if int(self.hdr[_BEGAN_SEQ]) != seq:
            return None
        return int(self.hdr[_BEGAN_NS])

    # ------------------------------------------------------------------ worker side
    def request(self) -> int:
        return int(self.hdr[_REQ])

    def begin(self, seq: int) -> None:
        """The worker starts stepping ``seq``: from now on a late answer is the step's overrun."""
        self.hdr[_BEGAN_NS] = time.monotonic_ns()
        self.hdr[_BEGAN_SEQ] = seq

    def write_reply(self, seq: int, status: int, *, q: np.ndarray | None = None,
                    dq: np.ndarray | None = None, tau: np.ndarray | None = None,
                    progress: float | None = None, reason: str = '', step_time: float = 0.0) -> None:
        flags = (F_DQ if dq is not None else 0) | (F_TAU if tau is not None else 0) \
            | (F_PROGRESS if progress is not None else 0)
        zeros = np.zeros(self.n)
        np.concatenate([zeros if q is None else q, zeros if dq is None else dq,
                        zeros if tau is None else tau, [progress or 0.0, step_time]], out=self.reply)
        raw = reason.encode('utf-8', 'replace')[:MAX_REASON]
        if raw:
            self.reason[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        self.hdr[_REASON_LEN] = len(raw)
        self.hdr[_STATUS] = status
        self.hdr[_FLAGS] = flags
        self.hdr[_REP] = seq   # last: the answer is complete when the runtime sees its number

    def read_state(self) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                  np.ndarray, int]:
        """Worker side: one copy of the state (t, q, dq, tau, imu, wrench rows, valid, stamp)."""
        st = self.state.copy()
        dof, s = self.dof, 1 + 3 * self.dof
        w0 = s + IMU_SIZE
        return (float(st[0]), st[1:1 + dof], st[1 + dof:1 + 2 * dof], st[1 + 2 * dof:s], st[s:w0],
                st[w0:w0 + self.n_sites * WRENCH_SIZE].reshape(self.n_sites, WRENCH_SIZE),
                st[w0 + self.n_sites * WRENCH_SIZE:], int(self.hdr[_STAMP]))


def check_reply(reply: StepReply, n: int) -> str | None:
    """Why the runtime cannot use a worker's targets (status unknown, not finite), or None.

    The worker checked the skill's result already; this is the runtime's own check of what
    actually arrived (the worker is not trusted). Shapes are fixed by the block's layout.
    """
    if reply.status not in STATUS_NAMES:
        return f'worker answered with an unknown status {reply.status}'
    if reply.status != ST_TARGETS:
        return None
    for name, arr in (('q', reply.q), ('dq', reply.dq), ('tau', reply.tau)):
        if arr is not None and (arr.shape != (n,) or not np.all(np.isfinite(arr))):
            return f'Targets.{name} contains NaN or inf'
    if reply.progress is not None and not math.isfinite(reply.progress):
        reply.progress = None
    return None


# ---------------------------------------------------------------------------- control lines

def encode_line(obj: dict[str, Any]) -> bytes:
    """One control message: compact JSON, one line, at most :data:`MAX_LINE` bytes."""
    data = json.dumps(obj, separators=(',', ':'), allow_nan=False, default=str).encode()
    if len(data) >= MAX_LINE:
        raise ValueError(f'control message of {len(data)} bytes is over {MAX_LINE}')
    return data + b'\n'


class LineReader:
    """Split a byte stream into JSON objects, bounded: a line over :data:`MAX_LINE` bytes is
    dropped up to its newline and counted in :attr:`malformed`, as is one that is not a JSON
    object. Never evaluates anything but JSON."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skipping = False
        self.malformed = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        self._buf += data
        while True:
            nl = self._buf.find(b'\n')
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    self._buf.clear()
                    if not self._skipping:
                        self.malformed += 1
                    self._skipping = True
                return out
            line = bytes(self._buf[:nl])
            del self._buf[:nl + 1]
            if self._skipping or len(line) > MAX_LINE:
                self._skipping = False
                if len(line) > MAX_LINE:
                    self.malformed += 1
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                out.append(obj)
            else:
                self.malformed += 1


def new_block_file(size: int) -> int:
    """An anonymous shared-memory file of ``size`` bytes (no name in /dev/shm to clean up)."""
    fd = os.memfd_create('skill-tick', 0)
    os.ftruncate(fd, size)
    return fd
