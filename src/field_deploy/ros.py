"""Thin rclpy helpers shared by every node shell: QoS from the profile contract, stamps, spinning."""

from __future__ import annotations

import importlib
import os
import signal
import threading
from collections.abc import Callable, Sequence

import rclpy
import rclpy.context
import rclpy.utilities
from rclpy.executors import Executor
from rclpy.experimental import EventsExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription

from field_deploy import memory
from field_deploy.profile import QosSpec
from field_deploy.rosenv import use_project_fastdds_profile

_RELIABILITY = {'reliable': ReliabilityPolicy.RELIABLE, 'best_effort': ReliabilityPolicy.BEST_EFFORT}
_DURABILITY = {'volatile': DurabilityPolicy.VOLATILE,
               'transient_local': DurabilityPolicy.TRANSIENT_LOCAL}


def qos_profile(spec: QosSpec) -> QoSProfile:
    """The rclpy QoS of a profile stream (keep-last ``depth``)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=spec.depth,
                      reliability=_RELIABILITY[spec.reliability],
                      durability=_DURABILITY[spec.durability])


def stamp_to_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def set_stamp(stamp, ns: int) -> None:
    stamp.sec, stamp.nanosec = divmod(int(ns), 1_000_000_000)


def init(args: Sequence[str] | None = None, small_segment: bool = False,
         allocator: str | None = None) -> list[str]:
    """``rclpy.init`` without rclpy's signal handlers; returns the non-ROS arguments.

    rclpy's own SIGINT/SIGTERM handlers shut the context down at once, so a node could not
    publish its safe command or close its bag on the way out: :func:`run_nodes` handles the
    signals itself and tears down in order. ``small_segment``: this process publishes no large
    messages (:func:`field_deploy.rosenv.use_project_fastdds_profile`). ``allocator``: the
    process's allocator policy, unless ``FIELD_DEPLOY_ALLOCATOR`` says otherwise
    (:func:`field_deploy.memory.set_allocator`), set here, before DDS starts its threads; None
    and no such variable: glibc's own until :func:`run_nodes` sets every node's default.
    """
    if allocator is not None or memory.ALLOCATOR_ENV in os.environ:
        memory.set_allocator(allocator or memory.ALLOCATOR_POLICIES[0])
    use_project_fastdds_profile(small_segment=small_segment)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    return rclpy.utilities.remove_ros_args(args)


class Spinner:
    """Spin an executor in a background thread with ``spin_once`` steps.

    Measured on Jazzy 7.1.6: ``EventsExecutor.spin()`` started from a non-main thread never runs
    a callback, and from the main thread it does not return to Python for signals; stepping with
    ``spin_once(timeout)`` works in both places and costs nothing measurable.
    """

    def __init__(self, nodes: Sequence[Node] = (), *, executor: Executor | None = None,
                 context: rclpy.context.Context | None = None, step_s: float = 0.05) -> None:
        """``step_s``: the longest a step waits for work, and so how long :meth:`stop` may take.
        Every step of a Python executor (``SingleThreadedExecutor``) rebuilds its wait set in
        Python, so an idle one pays for each wake-up: a client-only node, which new entities
        and answers wake anyway, can take longer steps (measured: 20 idle steps a second were
        ~10 % of the health monitor's CPU)."""
        self.executor = executor or EventsExecutor(context=context)
        self.step_s = step_s
        for node in nodes:
            self.executor.add_node(node)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add_node(self, node: Node) -> None:
        self.executor.add_node(node)

    def spin_until(self, stop: threading.Event) -> None:
        """Spin in the calling thread until ``stop`` is set."""
        while not stop.is_set():
            self.executor.spin_once(timeout_sec=self.step_s)

    def start(self) -> Spinner:
        self._thread = threading.Thread(target=self.spin_until, args=(self._stop,),
                                        name='ros-spinner', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.executor.shutdown()

    def __enter__(self) -> Spinner:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def run_nodes(nodes: Sequence[Node], *, executor: Executor | None = None,
              drain: Callable[[Executor], None] | None = None,
              on_shutdown: Callable[[], None] | None = None) -> None:
    """Spin ``nodes`` in the main thread until SIGINT / SIGTERM, then shut down in order.

    ``drain`` gets the executor first, to take what has already arrived (a recorder's backlog);
    ``on_shutdown`` runs while the context is still valid (a gate can still publish its safe
    command, a recorder closes its bag), then the nodes are destroyed and rclpy shut down.
    The EventsExecutor is the default: measured here it takes a third of the CPU of the
    SingleThreadedExecutor and keeps up with 1 kHz streams.
    """
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    process = memory.ProcessMemory()
    spinner = Spinner(nodes, executor=executor)
    try:
        spinner.spin_until(stop)
    finally:
        try:
            if drain is not None:
                drain(spinner.executor)
        finally:
            if on_shutdown is not None:
                on_shutdown()
        process.stop()
        spinner.executor.shutdown()
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()


def _never(_data: bytes) -> None:
    """Callback of the polled subscriptions: their node is never spun, so it never runs."""


def polled_subscription(node: Node, msg_type: type, topic: str, qos: QoSProfile) -> Subscription:
    """A raw subscription that no executor serves: its owner takes samples when it wants them.

    ``node`` must be a node that is never added to an executor. An executor event per message
    costs Python time in the receiving process for every sample of a 500 Hz stream; a reader that
    only needs the newest sample at its own pace (a control tick, a monitor's check) pays nothing
    per message this way. Take with ``sub.handle.take_message(sub.msg_type, True)`` or
    :func:`take_latest`.
    """
    return node.create_subscription(msg_type, topic, _never, qos, raw=True)


def take_latest(sub: Subscription) -> bytes | None:
    """The newest CDR sample waiting in a :func:`polled_subscription` (None: nothing new)."""
    latest = None
    while (taken := sub.handle.take_message(sub.msg_type, True)) is not None:
        latest = taken[0]
    return latest


def message_class(type_name: str) -> type:
    """The Python class of ``pkg/msg/Type`` (or ``pkg/Type``), imported from the installed package.

    Raises ``LookupError`` naming the type when the package is not installed: the callers (player,
    recorder) skip that topic with a warning rather than fail.
    """
    parts = type_name.split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3 or not all(parts):
        raise LookupError(f'{type_name!r} is not a ROS type name (expected pkg/msg/Type)')
    package, kind, name = parts
    try:
        module = importlib.import_module(f'{package}.{kind}')
        return getattr(module, name)
    except (ImportError, AttributeError):
        raise LookupError(f'message type {type_name!r} is not installed') from None
