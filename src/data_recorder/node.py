"""``data_recorder``: the lifecycle node shell around :class:`data_recorder.capture.recorder.Recorder`.

configure validates the parameters and creates the bag; activate subscribes (raw CDR) and
records; deactivate pauses; cleanup / shutdown close the bag (metadata.yaml with the
accounting). With ``autostart`` (default) the node configures and activates itself, so
``ros2 run field_deploy data_recorder --ros-args -p all_topics:=true`` just works.

Services (std_srvs/Trigger): ``~/pause``, ``~/resume``, ``~/split``, ``~/snapshot``.
Diagnostics: one ``data_recorder`` status on ``/diagnostics`` every ``diagnostics_period`` s.
Episodes (``episodes``, default on): every skill activation heard on the skills'
``transition_event`` topics and ``skill_runtime/status`` is marked in the bag (MCAP ``episode``
Metadata records and ``metadata.yaml`` custom data); ``split_per_episode`` starts a new file at
each episode boundary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from lifecycle_msgs.msg import TransitionEvent
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import Executor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_msgs.msg import String
from std_srvs.srv import Trigger

from data_recorder.bag.marks import MARK_RECORD, MarkLog
from data_recorder.bag.recover import free_output
from data_recorder.capture.accounting import summary_line, topic_line
from data_recorder.capture.episodes import EPISODE_RECORD, EpisodeTracker, skill_of_topic
from data_recorder.capture.recorder import Recorder, RecorderConfig
from data_recorder.capture.selection import Selection, load_qos_overrides, unique
from data_recorder.capture.subscriptions import Capture
from data_recorder.capture.taker import INTERVAL as TAKE_INTERVAL
from data_recorder.parameters import ALLOCATOR, PARAMETERS, STRING_ARRAYS, default_output
from field_deploy.memory import freeze_startup_objects
from field_deploy.ros import init, run_nodes

NODE_NAME = 'data_recorder'

#: At stop, a stream silent for less than this may be held back by DDS, not finished: Fast DDS's
#: default writer heartbeat (3 s) is the longest a reliable reader waits for a repair.
REPAIR_WAIT_S = 3.5

class DataRecorderNode(LifecycleNode):
    """The recorder. ``accounting()`` returns the per-topic ledger for other modules."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for name, default in PARAMETERS.items():
            if name in STRING_ARRAYS:   # an empty list default would be typed as a byte array
                self.declare_parameter(name, Parameter.Type.STRING_ARRAY, ParameterDescriptor(
                    type=ParameterType.PARAMETER_STRING_ARRAY))
            else:
                self.declare_parameter(name, default)
        self.recorder: Recorder | None = None
        self._final: Recorder | None = None   # the last closed recording (its accounting)
        self._stop_ns = 0                     # set by drain(): the stop time, for the tail count
        self._behind: dict[str, int] = {}     # ... and the streams still behind at its end
        self._silent: dict[str, int] = {}     # ... and those silent with samples due
        self.last_error = ''
        self._selection: Selection | None = None
        self.capture: Capture | None = None    # the recorded topics' subscriptions
        self._arrivals: dict[str, tuple[int, float]] = {}   # see _note_arrivals
        self._warned: set[str] = set()
        self._discovery_timer = None
        self._take_timer = None                # takes the recorded topics (Capture.take)
        self._episodes = EpisodeTracker()
        self._episode_subs: dict[str, Any] = {}
        self._marks = MarkLog()                # operator marks on ~/mark (data_recorder.bag.marks)
        self.create_subscription(String, '~/mark', self._on_mark, 10)
        self.create_subscription(DiagnosticArray, 'skill_runtime/status', self._on_skill_status, 100)
        self._diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_timer = self.create_timer(float(self._param('diagnostics_period')),
                                             self._publish_diagnostics)
        for name, handler in (('pause', self._srv_pause), ('resume', self._srv_resume),
                              ('split', self._srv_split), ('snapshot', self._srv_snapshot)):
            self.create_service(Trigger, f'~/{name}', handler)
        if (self._param('autostart')
                and self.trigger_configure() == TransitionCallbackReturn.SUCCESS):
            self.trigger_activate()

    # -- public ---------------------------------------------------------------------------------

    def accounting(self) -> dict[str, dict[str, Any]]:
        """Per-topic ``{received, written, lost, lost_sequence, …, not_written, writers}``
        (:data:`data_recorder.capture.accounting.COUNTERS`)."""
        recorder = self.recorder or self._final
        return recorder.accounting.as_dict() if recorder else {}

    def drain(self, executor: Executor) -> int:
        """Take what DDS has already received before the bag closes (the process is stopping).

        On a loaded host the recorder runs seconds behind its publishers (measured: 7.7 s with a
        busy loop beside the demo stack), and that backlog waits in the DDS reader histories:
        destroying the subscriptions at once dropped it unseen and uncounted - the bag lost its
        last seconds and still said 0 lost. So spin until every periodic stream that is still
        flowing, from a publisher still there, has delivered its samples up to the stop
        (``TopicStats.due_before``), at most ``drain_timeout`` s. A stream that has delivered
        nothing for :data:`REPAIR_WAIT_S` and 100 executor steps has nothing waiting (a silent
        sensor is not a backlog); a shorter silence may be a reliable stream held back behind a
        hole until the writer's next heartbeat repairs it (3 s with Fast DDS's defaults: measured
        in bench/recorder, the last 0.5-3.7 s of such streams were missed by a 0.3 s rule and not
        counted). Other streams come along in arrival order, taken until nothing arrives for
        0.1 s (at most 0.5 s). Streams still behind at the timeout: :meth:`close_bag` counts
        their tail lost. Returns the stop time (ns, wall clock) the tail is counted against.
        """
        recorder = self.recorder
        capture = self.capture
        if recorder is None or capture is None or not recorder.streaming or not capture.subs:
            return time.time_ns()
        self._stop_ns = stop_ns = time.time_ns()
        started = time.monotonic()
        deadline = started + float(self._param('drain_timeout'))
        stats = {topic: recorder.stats(topic) for topic in capture.subs}
        seen = {topic: s.received for topic, s in stats.items()}
        # topic -> (time, step) of its last message: before the drain, as the discovery polls saw
        last = {topic: ((started, 0) if self._arrivals.get(topic, (-1, 0.0))[0] != s.received
                        else (self._arrivals[topic][1], -100)) for topic, s in stats.items()}
        first = received = sum(seen.values())
        last_arrival, steps = started, 0
        live, live_at = set(), -1.0                     # topics with a publisher (graph, 0.5 s)
        while True:
            now = time.monotonic()
            if now - live_at >= 0.5:
                live, live_at = {t for t in stats if self.count_publishers(t) > 0}, now
            for topic, s in stats.items():
                if s.received != seen[topic]:
                    seen[topic], last[topic], last_arrival = s.received, (now, steps), now
            received = sum(seen.values())
            self._behind = {
                topic: n for topic, (at, step) in last.items()
                if (now - at < REPAIR_WAIT_S or steps - step < 100)
                and (n := stats[topic].due_before(stop_ns)) and topic in live}
            if now >= deadline or (not self._behind and (now - last_arrival >= 0.1
                                                         or now - started >= 0.5)):
                break
            capture.take()          # the recorded topics: at once, not at the next take tick
            executor.spin_once(timeout_sec=0.02)
            steps += 1
        took = f'took {received - first} more messages in {time.monotonic() - started:.2f} s'
        # due from a live publisher, but silent longer than a repair takes: a sensor that stopped,
        # or a stream starved past repair - not known lost, never hidden (``silent_tail``)
        self._silent = {topic: n for topic, s in stats.items() if topic not in self._behind
                        and (n := s.due_before(stop_ns)) and self.count_publishers(topic) > 0}
        if self._silent:
            silent = ', '.join(f'{t} ({n})' for t, n in sorted(self._silent.items()))
            self.get_logger().warning(f'stopping: silent for more than {REPAIR_WAIT_S:g} s with '
                                      f'samples due before the stop: {silent}')
        if self._behind:
            self.get_logger().warning(
                f'stopping: {took}; still behind after drain_timeout: '
                + ', '.join(f'{t} ({n} samples)' for t, n in sorted(self._behind.items()))
                + ' - counted lost')
        else:
            self.get_logger().info(f'stopping: {took}')
        return stop_ns

    def close_bag(self) -> None:
        """Stop subscribing and close the bag cleanly (shutdown path of the process).

        After :meth:`drain`, the streams it left behind get the samples still due before the stop,
        once the writer thread has written what it had, counted lost.
        """
        recorder, self.recorder = self.recorder, None
        if self._take_timer is not None:
            self.destroy_timer(self._take_timer)
            self._take_timer = None
        if self.capture is not None:
            self.capture.close()
        if recorder is not None:
            # The lists go into metadata.yaml once, here: each boundary is in the bag already (its
            # MCAP record, what recover reads), and dumping the whole list at every boundary cost
            # O(episodes) each time - 26 ms at 1,150 episodes, a CPU drift over a shift.
            if self._episodes.episodes:
                self._episodes.close(self.get_clock().now().nanoseconds)
                for key, value in self._episodes.custom_data().items():
                    recorder.set_custom_data(key, value)
            if self._marks.marks:
                for key, value in self._marks.custom_data().items():
                    recorder.set_custom_data(key, value)
            path = recorder.close(stop_ns=self._stop_ns, live_topics=list(self._behind),
                                  silent_topics=list(self._silent))
            self._stop_ns, self._behind, self._silent = 0, {}, {}
            totals = recorder.accounting.totals()
            log = self.get_logger().warning if totals['lost'] or totals['not_written'] else \
                self.get_logger().info
            log(f'bag closed: {path}: {summary_line(totals)}')
            self._final = recorder
            self._publish_diagnostics()

    # -- lifecycle ------------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = self._config()
            self._selection = Selection(
                topics=unique(self.resolve_topic_name(t) for t in self._param('topics') if t),
                all_topics=self._param('all_topics'), regex=self._param('regex'),
                exclude_regex=self._param('exclude_regex'),
                include_hidden=self._param('include_hidden_topics'))
            path = self._param('qos_profile_overrides_path')
            overrides = load_qos_overrides(path) if path else {}
            self.recorder = Recorder(config, log=self._log)
            self.capture = Capture(self, self.recorder, depth=self._param('qos_depth'),
                                   overrides=overrides,
                                   message_lost_events=self._param('message_lost_events'),
                                   per_writer_topics={self.resolve_topic_name(t) for t in
                                                      self._param('per_writer_topics') if t})
            self._take_timer = self.create_timer(TAKE_INTERVAL, self._take)
            self._episodes = EpisodeTracker()
            self._marks = MarkLog()
            if self._param('hardware_profile'):   # the hardware this bag is recorded on
                from health_monitor.rohs import write_into_bag
                write_into_bag(self.recorder, self._param('hardware_profile'),
                               self.get_logger().warning)
        except (ValueError, OSError, RuntimeError) as exc:
            self.last_error = str(exc)
            self.get_logger().error(f'configure failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f'recording to {self.recorder.path}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.recorder is not None
        self.recorder.resume()
        self._discover()
        self._discovery_timer = self.create_timer(float(self._param('discovery_interval')),
                                                  self._discover)
        freeze_startup_objects()      # no full collection of them while the streams start
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.recorder is not None:
            self.recorder.pause()
        if self._discovery_timer is not None:
            self.destroy_timer(self._discovery_timer)
            self._discovery_timer = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close_bag()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close_bag()
        return TransitionCallbackReturn.SUCCESS

    # -- internals ------------------------------------------------------------------------------

    def _param(self, name: str) -> Any:
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:
            value = None
        return PARAMETERS[name] if value is None else value

    def _output(self) -> str:
        """The bag directory to create. ``if_output_exists``: ``fail`` (never overwrite, as
        ``ros2 bag record``) or ``next``: recover a bag there that a crash cut short and record
        into the first free ``<output>_2``, ``<output>_3``… - what a recorder restarted by the
        lifecycle manager with its old command line needs. The recording starts at once; the cut
        bag is rebuilt by a child process meanwhile (:func:`recover_cut_bags`)."""
        output = self._param('output') or default_output()
        mode = self._param('if_output_exists')
        if mode not in ('fail', 'next'):
            raise ValueError(f'parameter if_output_exists: {mode!r} is not one of fail, next')
        if mode == 'fail':
            return output
        path, cut = free_output(output)
        if cut:
            self._recover_in_background(cut)
        if str(path) != output:
            self.get_logger().warning(f'{output} exists: recording into {path}')
        return str(path)

    def _recover_in_background(self, bags: list[Path]) -> None:
        """Rebuild ``bags`` in a niced child process of its own session (a kill of the
        recorder's process group does not cut it short); its lines go to our output."""
        import subprocess
        import threading

        proc = subprocess.Popen([sys.executable, '-m', 'data_recorder.bag.recover', *map(str, bags)],
                                start_new_session=True)
        self.get_logger().warning(f'{", ".join(map(str, bags))}: a recording cut short (no '
                                  f'metadata.yaml): recovering in the background (pid {proc.pid})')
        threading.Thread(target=proc.wait, name='recover-wait', daemon=True).start()

    def _config(self) -> RecorderConfig:
        return RecorderConfig(
            output=self._output(),
            compression_format=self._param('compression_format'),
            chunk_size=self._param('chunk_size'), flush_interval=self._param('flush_interval'),
            max_bag_size=self._param('max_bag_size'),
            max_bag_duration=float(self._param('max_bag_duration')),
            snapshot_mode=self._param('snapshot_mode'),
            snapshot_duration=float(self._param('snapshot_duration')),
            snapshot_max_bytes=self._param('snapshot_max_bytes'),
            min_free_space=self._param('min_free_space'), queue_size=self._param('queue_size'),
            queue_max_bytes=self._param('queue_max_bytes'),
            queue_reserve_bytes=self._param('queue_reserve_bytes'),
            fsync=self._param('fsync'), throttle=tuple(self._param('throttle') or ()),
            writer_process=self._param('writer_process'), ring_bytes=self._param('ring_bytes'))

    def _take(self) -> None:
        """The take timer: the recorded topics' samples in batches (Capture.take); the period
        follows the fill of the histories (data_recorder.capture.taker)."""
        capture, timer = self.capture, self._take_timer
        if capture is None or timer is None:
            return
        capture.take()
        self._follow_take_interval()

    def _follow_take_interval(self, now: bool = False) -> None:
        """The take timer's period follows the taker's interval; ``now``: from this moment
        (a subscription was just added and the taker looks again soon, not a whole idle
        interval later - a fast stream would overflow a short reader history meanwhile)."""
        capture, timer = self.capture, self._take_timer
        if capture is None or timer is None:
            return
        period = round(capture.taker.interval * 1e9)
        if period != timer.timer_period_ns:
            timer.timer_period_ns = period
            if now:
                timer.reset()

    def _log(self, level: str, message: str) -> None:
        getattr(self.get_logger(), level)(message)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.get_logger().warning(message)

    def _discover(self) -> None:
        """Subscribe to every selected topic that now has a publisher (late topics included)."""
        recorder, selection, capture = self.recorder, self._selection, self.capture
        if (recorder is None or selection is None or capture is None
                or recorder.state != 'recording'):
            return
        for topic, types in self.get_topic_names_and_types():
            if self._param('episodes') and topic not in self._episode_subs and skill_of_topic(topic):
                self._episode_subs[topic] = self.create_subscription(
                    TransitionEvent, topic, self._episode_transition(skill_of_topic(topic)), 100)
            if not selection.matches(topic):
                continue
            if topic in capture.subs:
                recorded = capture.types[topic]
                if types != [recorded]:
                    self._warn_once(f'change:{topic}:{types}', (
                        f'topic {topic}: type changed to {types} while recording it as '
                        f'{recorded}: only {recorded} is recorded'))
                capture.poll(topic)
                self._note_arrivals(topic)
                continue
            if len(types) != 1:
                self._warn_once(f'types:{topic}:{types}', (
                    f'topic {topic}: several types on the graph {types}: skipped (nothing of it '
                    'is recorded until one type remains)'))
                continue
            capture.subscribe(topic, types[0], self._warn_once)
            self._follow_take_interval(now=True)

    def _note_arrivals(self, topic: str) -> None:
        """Per topic, (received count, time it last changed) at the discovery polls: how long a
        stream has been silent when the drain starts."""
        assert self.recorder is not None
        received = self.recorder.stats(topic).received
        if self._arrivals.get(topic, (-1, 0.0))[0] != received:
            self._arrivals[topic] = (received, time.monotonic())

    # -- episodes -------------------------------------------------------------------------------

    def _episode_transition(self, skill: str) -> Any:
        def on_event(msg: TransitionEvent) -> None:
            boundary = self._episodes.on_transition(skill, msg.goal_state.id, msg.goal_state.label,
                                                    self.get_clock().now().nanoseconds)
            if boundary is not None:
                self._episode_boundary(*boundary)
        return on_event

    def _on_skill_status(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith('skills/'):
                boundary = self._episodes.on_status(status.name.removeprefix('skills/'),
                                                    {kv.key: kv.value for kv in status.values})
                if boundary is not None:
                    self._episode_boundary(*boundary)

    def _episode_boundary(self, kind: str, episode: Any) -> None:
        recorder = self.recorder
        if recorder is None or not self._param('episodes'):
            return
        # Not awaited: this runs on the executor thread, which must keep taking messages.
        split = self._param('split_per_episode')
        if kind == 'start' and split:
            recorder.split(wait=False)
        recorder.add_metadata(EPISODE_RECORD, episode.record(kind), wait=False)
        if kind == 'end' and split:
            recorder.split(wait=False)
        self.get_logger().info(f'episode {episode.index} {kind}: {episode.skill}'
                               + (f' -> {episode.outcome} {episode.reason}' if kind != 'start' else ''))

    def _on_mark(self, msg: String) -> None:
        """An operator's mark: an MCAP ``mark`` record now, the list in metadata.yaml at close."""
        recorder = self.recorder
        try:
            if recorder is None:
                raise ValueError('no bag is open')
            mark = self._marks.add(msg.data, time.time_ns())
        except ValueError as exc:
            self.get_logger().warning(f'mark not written ({exc}): {msg.data[:200]}')
            return
        recorder.add_metadata(MARK_RECORD, mark.record(), wait=False)
        self.get_logger().info(f'mark {mark.index} [{mark.kind}]: {mark.text}')

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=NODE_NAME, hardware_id=self.get_fully_qualified_name())
        recorder = self.recorder or self._final
        if recorder is None:
            status.level = DiagnosticStatus.OK if not self.last_error else DiagnosticStatus.ERROR
            status.message = self.last_error or 'not recording'
        else:
            info = recorder.status()
            if info['state'] == 'stopped':
                status.level = DiagnosticStatus.ERROR
                status.message = f'{info["stop_reason"]}: {summary_line(info)}'
            elif info['lost']:
                status.level = DiagnosticStatus.WARN
                status.message = f'{info["state"]}: {summary_line(info)}'
            else:
                status.level, status.message = DiagnosticStatus.OK, info['state']
            status.values = [KeyValue(key=k, value=str(v)) for k, v in info.items()]
            for topic, counts in recorder.accounting.as_dict().items():
                status.values.append(KeyValue(key=topic, value=topic_line(counts)))
        status.values += [KeyValue(key=k, value=v) for k, v in self._marks.diagnostics().items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(array)

    def _trigger(self, response: Trigger.Response, action: str) -> Trigger.Response:
        recorder = self.recorder
        if recorder is None:
            response.success, response.message = False, f'cannot {action}: no bag is open'
            return response
        # split and snapshot are queued for the writer thread, in order with the messages already
        # received, and answered at once: waiting here for a flush's fsync would stall this
        # executor - the one taking the messages - and lose samples under load. The writer thread
        # logs what it did.
        if action in ('split', 'snapshot') and recorder.state != 'recording':
            response.success = False
            response.message = f'cannot {action}: recording {recorder.state} ({recorder.stop_reason})'
            return response
        try:
            if action == 'pause':
                recorder.pause()
                response.message = 'paused'
            elif action == 'resume':
                recorder.resume()
                response.message = 'recording'
            elif action == 'split':
                recorder.split(wait=False)
                response.message = 'split queued: the messages received from now on go to a new file'
            else:
                recorder.snapshot(wait=False)
                response.message = (
                    f'snapshot queued: the last {recorder.config.snapshot_duration:g} s go to a new file'
                    if recorder.snapshot_buffer is not None else
                    'snapshot queued: everything is recorded (not in snapshot mode); flushed to disk '
                    'after the messages received so far')
            response.success = True
        except (RuntimeError, OSError, TimeoutError) as exc:
            response.success, response.message = False, f'{action} failed: {exc}'
        return response

    def _srv_pause(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        return self._trigger(res, 'pause')

    def _srv_resume(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        return self._trigger(res, 'resume')

    def _srv_split(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        return self._trigger(res, 'split')

    def _srv_snapshot(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        return self._trigger(res, 'snapshot')


def main(args: Sequence[str] | None = None) -> int:
    init(sys.argv if args is None else list(args), small_segment=True,   # it publishes diagnostics
         allocator=ALLOCATOR)
    node = DataRecorderNode()
    if node.recorder is None and node._param('autostart'):
        node.get_logger().error(f'not recording: {node.last_error}')
        node.destroy_node()
        rclpy.try_shutdown()
        return 1
    run_nodes([node], drain=node.drain, on_shutdown=node.close_bag)
    return 0


if __name__ == '__main__':
    sys.exit(main())
