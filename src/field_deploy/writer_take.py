"""Take a sample with its writer's id: ``rcl_take_serialized_message`` through ctypes.

rclpy (7.1.6) hands a taken sample's message info over as a dict without the publisher's gid
(``source_timestamp``, ``received_timestamp``, ``publication_sequence_number`` only), so a
reader of a topic with several writers had to tell them apart by their sequence numbers alone
(:class:`field_deploy.sequence.SequenceTracker`: a heuristic that five 1 Hz ``/diagnostics``
writers matched at different times can still confuse). The rmw message info has the gid: this
module calls rcl's own take of the serialized sample, on the subscription rclpy created, and
returns the gid beside the sequence number. Measured here (one small message, a subscription
with 5,000 waiting, load 5): 6.8 µs per take with the gid, 12.0 µs for rclpy's
``take_message(type, raw=True)`` in the same run.

Only for subscriptions no executor serves (:func:`field_deploy.ros.polled_subscription`): an
executor would take the samples first. The take must run on the thread that may destroy the
subscription (rcl does not guard it), and :meth:`WriterTake.close` before the subscription
is destroyed.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

#: rmw's ``RMW_GID_STORAGE_SIZE`` (Jazzy: 16; Humble had 24).
GID_SIZE = 16
#: ``RCL_RET_SUBSCRIPTION_TAKE_FAILED``: nothing to take.
_TAKE_FAILED = 401


class _Allocator(ctypes.Structure):
    _fields_ = [('allocate', ctypes.c_void_p), ('deallocate', ctypes.c_void_p),
                ('reallocate', ctypes.c_void_p), ('zero_allocate', ctypes.c_void_p),
                ('state', ctypes.c_void_p)]


class _Uint8Array(ctypes.Structure):      # rcutils_uint8_array_t = rmw_serialized_message_t
    _fields_ = [('buffer', ctypes.POINTER(ctypes.c_uint8)), ('buffer_length', ctypes.c_size_t),
                ('buffer_capacity', ctypes.c_size_t), ('allocator', _Allocator)]


class _Gid(ctypes.Structure):
    _fields_ = [('implementation_identifier', ctypes.c_char_p),
                ('data', ctypes.c_uint8 * GID_SIZE)]


class _MessageInfo(ctypes.Structure):     # rmw_message_info_t (rmw/types.h, Jazzy)
    _fields_ = [('source_timestamp', ctypes.c_int64), ('received_timestamp', ctypes.c_int64),
                ('publication_sequence_number', ctypes.c_uint64),
                ('reception_sequence_number', ctypes.c_uint64),
                ('publisher_gid', _Gid), ('from_intra_process', ctypes.c_bool)]


_LIBS: tuple[Any, Any] | None = None


def _libs() -> tuple[Any, Any]:
    """librcl and librcutils, as loaded by rclpy (the same copies: one process, one rcl)."""
    global _LIBS
    if _LIBS is None:
        # PyDLL, not CDLL: CDLL drops the GIL around every call, and taking it back waits for
        # whichever thread holds it (up to the 5 ms switch interval) - per sample. A take does
        # not block (it copies what the reader history holds), so it keeps the GIL.
        rcl = ctypes.PyDLL('librcl.so')
        rcutils = ctypes.PyDLL('librcutils.so')
        rcutils.rcutils_get_default_allocator.restype = _Allocator
        rcutils.rcutils_uint8_array_init.argtypes = [
            ctypes.POINTER(_Uint8Array), ctypes.c_size_t, ctypes.POINTER(_Allocator)]
        rcutils.rcutils_uint8_array_fini.argtypes = [ctypes.POINTER(_Uint8Array)]
        rcl.rcl_take_serialized_message.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(_Uint8Array), ctypes.POINTER(_MessageInfo),
            ctypes.c_void_p]
        rcl.rcl_take_serialized_message.restype = ctypes.c_int
        _LIBS = (rcl, rcutils)
    return _LIBS


class Taken(NamedTuple):
    """One taken sample and what rmw says of it."""

    data: bytes
    """The CDR bytes."""
    seq: int
    """The writer's publication sequence number (1, 2, 3, ... per writer)."""
    gid: bytes
    """The writer's gid (:data:`GID_SIZE` bytes; Fast DDS: its GUID prefix and entity id)."""
    source_ns: int
    """When the writer wrote it (wall clock, ns; 0 when the middleware does not say)."""
    received_ns: int
    """When this reader received it (wall clock, ns; 0 when the middleware does not say)."""


class WriterTakeError(RuntimeError):
    """rcl refused a take (not "nothing to take"): names the topic and rcl's return code."""


class WriterTake:
    """Takes the samples waiting in one polled subscription, each with its writer's gid."""

    def __init__(self, subscription: Any, capacity: int = 64 * 1024) -> None:
        rcl, rcutils = _libs()
        self.topic = subscription.topic_name
        self._subscription = subscription           # kept alive while we hold its pointer
        self._pointer = ctypes.c_void_p(subscription.handle.pointer)
        self._array = _Uint8Array()
        allocator = rcutils.rcutils_get_default_allocator()
        if rcutils.rcutils_uint8_array_init(ctypes.byref(self._array), capacity,
                                            ctypes.byref(allocator)) != 0:
            raise MemoryError(f'{self.topic}: no buffer of {capacity} bytes for the take')
        self._info = _MessageInfo()
        self._take = rcl.rcl_take_serialized_message
        self._fini = rcutils.rcutils_uint8_array_fini
        self._array_ref = ctypes.byref(self._array)
        self._info_ref = ctypes.byref(self._info)
        self.closed = False

    def take(self) -> Taken | None:
        """The next sample (:class:`Taken`); None when nothing waits. Raises
        :class:`WriterTakeError` on any other rcl error."""
        if self.closed:
            return None
        ret = self._take(self._pointer, self._array_ref, self._info_ref, None)
        if ret == _TAKE_FAILED:
            return None
        if ret != 0:
            raise WriterTakeError(f'{self.topic}: rcl_take_serialized_message returned {ret}')
        info = self._info
        return Taken(ctypes.string_at(self._array.buffer, self._array.buffer_length),
                     info.publication_sequence_number, bytes(info.publisher_gid.data),
                     info.source_timestamp, info.received_timestamp)

    def close(self) -> None:
        """Free the take buffer (before the subscription is destroyed)."""
        if not self.closed:
            self.closed = True
            self._fini(self._array_ref)
            self._subscription = None
