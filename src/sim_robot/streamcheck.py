"""Loss and rate accounting for received streams, from raw CDR bytes (no deserialisation).

``sim_robot`` stamps the k-th sample of a stream at ``t0 + k / rate`` exactly, so a receiver can
tell from the stamps alone how many samples were published between the first and the last one it
saw, and how many of those never arrived. Used by the tests and by ``bench/sim``; it works for any
message whose first field is a ``std_msgs/Header`` (every stamped sim topic). No rclpy import.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

_STAMP = struct.Struct('<iI')
_STAMP_BE = struct.Struct('>iI')


def cdr_header_stamp_ns(data: bytes) -> int:
    """Stamp (ns) of a serialised message whose first field is a Header.

    CDR: 4-byte encapsulation header (byte 1 is 0x01 for little endian), then the Header's
    ``stamp.sec`` (int32) and ``stamp.nanosec`` (uint32).
    """
    if len(data) < 12:
        raise ValueError(f'serialised message of {len(data)} bytes is too short for a Header')
    fmt = _STAMP if data[1] & 1 else _STAMP_BE
    sec, nanosec = fmt.unpack_from(data, 4)
    return sec * 1_000_000_000 + nanosec


@dataclass(frozen=True)
class StreamStats:
    """What a receiver saw of one stream."""

    received: int
    expected: int
    """Samples published between the first and the last received stamp (from the nominal rate)."""
    lost: int
    duplicates: int
    non_monotonic: int
    """Received stamps not strictly greater than the previous one (reordering or stamp bug)."""
    rate_hz: float
    """Received samples per second of stamp time."""

    @property
    def loss_fraction(self) -> float:
        return self.lost / self.expected if self.expected else 0.0


def stream_stats(stamps_ns: Sequence[int], nominal_rate_hz: float) -> StreamStats:
    """Account a stream from its received stamps in arrival order."""
    if not stamps_ns:
        return StreamStats(0, 0, 0, 0, 0, 0.0)
    period = 1e9 / nominal_rate_hz
    first = min(stamps_ns)
    indices = [round((s - first) / period) for s in stamps_ns]
    unique = set(indices)
    expected = max(indices) + 1
    non_monotonic = sum(1 for a, b in pairwise(stamps_ns) if b <= a)
    span = (max(stamps_ns) - first) * 1e-9
    rate = (len(stamps_ns) - 1) / span if span > 0 else 0.0
    return StreamStats(received=len(stamps_ns), expected=expected, lost=expected - len(unique),
                       duplicates=len(stamps_ns) - len(unique), non_monotonic=non_monotonic,
                       rate_hz=rate)


def stats_from_raw(messages: Iterable[tuple[int, bytes]], nominal_rate_hz: float) -> StreamStats:
    """:func:`stream_stats` of ``(receive_ns, cdr_bytes)`` pairs (``RawCollector.messages[topic]``)."""
    return stream_stats([cdr_header_stamp_ns(data) for _, data in messages], nominal_rate_hz)
