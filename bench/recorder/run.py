#!/usr/bin/env python3
"""Recorder benchmark: the reference humanoid load, published by separate generator processes,
received by one subject process at a time — our recorder, a no-op raw subscriber (the ceiling
any Python recorder can reach), a naive recorder (deserialise + ``mcap_ros2`` re-serialise).

Prints, per subject and load multiplier: messages published vs received / recorded per topic,
loss, MB/s written, CPU of the subject (share of one core), CPU of the generators, peak RSS.
A benchmark prints figures; it does not pass or fail.

    .venv/bin/python bench/recorder/run.py                      # 10 s, 1x and 2x, all subjects
    .venv/bin/python bench/recorder/run.py --duration 60 --multipliers 1 2 4
    .venv/bin/python bench/recorder/run.py --best-effort --depth 100 --subjects recorder

Reference load (4,700 msg/s at 1x): JointState 29 joints @ 1 kHz, Imu @ 1 kHz,
4 x WrenchStamped @ 500 Hz, Odometry @ 100 Hz, 3 x Image 640x480 rgb8 @ 30 Hz,
DiagnosticArray @ 10 Hz, joint_commands @ 500 Hz. Messages are serialised once and published as
bytes with their header stamp patched in, so the generators cost what DDS costs, not Python.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2] / 'src'))

from data_recorder.parameters import ALLOCATOR as RECORDER_ALLOCATOR  # noqa: E402
from data_recorder.parameters import PARAMETERS as RECORDER_PARAMETERS  # noqa: E402
from field_deploy.memory import ALLOCATOR_POLICIES  # noqa: E402
from field_deploy.testing import isolate_ros_env  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from warm_pages import WarmPages, on_tmpfs, write_blocks  # noqa: E402

#: Bytes a second the reference load writes into a bag at 1x (measured: 83 MB/s of MiB), with the
#: records' framing: what the warm pages are sized from.
BAG_BYTES_PER_S = 90e6
#: Subjects that write a bag.
WRITERS = ('recorder', 'recorder-wp', 'naive')

#: (topic, type, rate_hz)
STREAMS: list[tuple[str, str, float]] = [
    ('/joint_states', 'sensor_msgs/msg/JointState', 1000.0),
    ('/imu', 'sensor_msgs/msg/Imu', 1000.0),
    ('/wrench/left_foot', 'geometry_msgs/msg/WrenchStamped', 500.0),
    ('/wrench/right_foot', 'geometry_msgs/msg/WrenchStamped', 500.0),
    ('/wrench/left_wrist', 'geometry_msgs/msg/WrenchStamped', 500.0),
    ('/wrench/right_wrist', 'geometry_msgs/msg/WrenchStamped', 500.0),
    ('/odom', 'nav_msgs/msg/Odometry', 100.0),
    ('/camera/head/image_raw', 'sensor_msgs/msg/Image', 30.0),
    ('/camera/left/image_raw', 'sensor_msgs/msg/Image', 30.0),
    ('/camera/right/image_raw', 'sensor_msgs/msg/Image', 30.0),
    ('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray', 10.0),
    ('/joint_commands', 'sensor_msgs/msg/JointState', 500.0),
]



def plain(value):
    """rclpy message → dict/list (what rosidl_runtime_py's message_to_ordereddict does): the
    naive recorder's re-serialisation input."""
    import numpy as np

    if hasattr(value, 'get_fields_and_field_types'):
        return {f: plain(getattr(value, f)) for f in value.get_fields_and_field_types()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, bytes) and len(value) == 1:   # a ``byte`` field
        return value[0]
    return value


def _reader_depth(args: argparse.Namespace) -> int:
    """The subjects' reader history depth: ``--reader-depth``, else the publishers' (>= 1000)."""
    return args.reader_depth or max(args.depth, 1000)


def _qos(best_effort: bool, depth: int):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=(ReliabilityPolicy.BEST_EFFORT if best_effort
                                   else ReliabilityPolicy.RELIABLE))


def _sample(type_name: str):
    """One realistic message of each type (sizes as on a humanoid)."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    from field_deploy.ros import message_class
    msg = message_class(type_name)()
    if type_name.endswith('JointState'):
        msg.name = [f'joint_{k:02d}' for k in range(29)]
        msg.position = [0.1 * k for k in range(29)]
        msg.velocity = [0.01 * k for k in range(29)]
        msg.effort = [1.0 * k for k in range(29)]
    elif type_name.endswith('Image'):
        msg.height, msg.width, msg.encoding, msg.step = 480, 640, 'rgb8', 640 * 3
        msg.data = os.urandom(480 * 640 * 3)
    elif type_name.endswith('DiagnosticArray'):
        msg.status = [DiagnosticStatus(name=f'motor/joint_{k:02d}', hardware_id=f'joint_{k:02d}',
                                       values=[KeyValue(key=key, value='42.0') for key in
                                               ('temperature', 'current', 'voltage', 'error_code')])
                      for k in range(29)]
    msg.header.frame_id = '0' * NUMBER_WIDTH     # the message's number, patched in per publish
    return msg


#: Every message is numbered: ``header.frame_id`` is its count, NUMBER_WIDTH decimal digits, at
#: CDR offset 16 (4 encapsulation + 8 stamp + 4 string length) - every stream here starts with a
#: Header. The bag is read back with foxglove's ``mcap`` (not this project's reader) and the
#: numbers found are compared with the numbers published.
NUMBER_WIDTH = 10
NUMBER_AT = 16


def numbers_in_bag(bag: Path) -> dict[str, set[int]]:
    """``{topic: {number, …}}`` of the messages in the MCAP files of ``bag`` (read with mcap)."""
    from mcap.reader import make_reader

    found: dict[str, set[int]] = {}
    for path in sorted(Path(bag).glob('*.mcap')):
        with path.open('rb') as stream:
            for _schema, channel, message in make_reader(stream).iter_messages():
                found.setdefault(channel.topic, set()).add(
                    int(message.data[NUMBER_AT:NUMBER_AT + NUMBER_WIDTH]))
    return found


# -- generator process --------------------------------------------------------------------------

def generate(args: argparse.Namespace) -> int:
    """Publish this generator's share of the streams; print START / END json lines on stdout."""
    import rclpy
    from rclpy.serialization import serialize_message

    from field_deploy.ros import init, message_class

    init([])
    node = rclpy.create_node(f'load_generator_{args.index}')
    qos = _qos(args.best_effort, args.depth)
    mine = [s for i, s in enumerate(STREAMS) if i % args.generators == args.index]
    streams = []
    for topic, type_name, rate in mine:
        pub = node.create_publisher(message_class(type_name), topic, qos)
        data = bytearray(serialize_message(_sample(type_name)))
        streams.append([topic, pub, data, 1.0 / (rate * args.multiplier), 0])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(s[1].get_subscription_count() for s in streams):
        time.sleep(0.05)
    time.sleep(0.5)
    pack = struct.Struct('<iI').pack_into
    stop = threading.Event()        # SIGTERM: the orchestrator ends the run after the subject
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    start = time.monotonic()
    wall0 = time.time_ns()
    print('START', flush=True)
    due = [start] * len(streams)
    # Like a robot's drivers, the generators publish until after the subject stopped: a recorder
    # stops while its sources still run, and what it owes is what was stamped before its stop.
    while not stop.is_set():
        now = time.monotonic()
        for k, s in enumerate(streams):
            while due[k] <= now:
                count = s[4]
                pack(s[2], 4, *divmod(stamp_of(wall0, s[3], count), 1_000_000_000))
                s[2][NUMBER_AT:NUMBER_AT + NUMBER_WIDTH] = b'%010d' % count
                s[1].publish(bytes(s[2]))
                s[4] = count + 1
                due[k] = start + (count + 1) * s[3]
        time.sleep(max(0.0, min(due) - time.monotonic()))
    elapsed = time.monotonic() - start
    print('END ' + json.dumps({'published': {s[0]: s[4] for s in streams}, 'elapsed': elapsed,
                               'wall0': wall0, 'period_s': {s[0]: s[3] for s in streams}}),
          flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def stamp_of(wall0: int, period_s: float, n: int) -> int:
    """Header stamp of message ``n`` of a stream (its sample clock)."""
    return wall0 + int(n * period_s * 1e9)


def owed_before(wall0: int, period_s: float, published: int, stop_ns: int) -> int:
    """How many of the ``published`` messages were stamped at or before ``stop_ns``."""
    n = max(0, min(published, int((stop_ns - wall0) / (period_s * 1e9)) + 2))
    while n > 0 and stamp_of(wall0, period_s, n - 1) > stop_ns:
        n -= 1
    return n


def _holes(ranges: list[list[int]], owed: int, most: int = 4) -> list[list[int]]:
    """The first ``most`` runs of numbers in ``[0, owed)`` that ``ranges`` lack."""
    holes, expect = [], 0
    for a, b in [*ranges, [owed, owed]]:
        if a > expect:
            holes.append([expect, min(a, owed) - 1])
        expect = max(expect, b + 1)
    return holes[:most]


def _ranges(numbers: set[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for n in sorted(numbers):
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


# -- subject process ----------------------------------------------------------------------------

def subject(args: argparse.Namespace) -> int:
    """Run one subject until SIGINT; print a json line with its counts."""
    import resource

    import rclpy

    from field_deploy.ros import Spinner, init, message_class

    recorder = args.subject in ('recorder', 'recorder-wp')
    init([], allocator=args.allocator if recorder else None)   # the no-op: glibc's own, as before
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    qos = _qos(args.best_effort, _reader_depth(args))
    counts = {t: 0 for t, _, _ in STREAMS}
    result: dict = {}
    out = Path(args.output)
    if recorder:
        from data_recorder.node import DataRecorderNode
        from field_deploy.memory import ProcessMemory
        ProcessMemory()     # the chores of the node in the field (its allocator: set by init)
        from data_recorder.parameters import parameter_overrides
        node = DataRecorderNode(parameter_overrides=parameter_overrides({
            'output': str(out / 'bag'), 'topics': [t for t, _, _ in STREAMS],
            'qos_depth': _reader_depth(args), 'diagnostics_period': 3600.0,
            'min_free_space': 0, 'writer_process': args.subject == 'recorder-wp',
            'queue_reserve_bytes': args.queue_reserve_bytes,
            'queue_max_bytes': args.queue_max_bytes}))
        spinner = Spinner([node])
        spinner.spin_until(stop)
        result['stop_ns'] = node.drain(spinner.executor)   # as at a real stop: the backlog
        node.close_bag()
        accounting = node.accounting()
        # the independent count: numbers found in the bag, read with mcap
        found = numbers_in_bag(out / 'bag')
        counts = {t: len(found.get(t, ())) for t in counts}
        result['found'] = {t: _ranges(numbers) for t, numbers in found.items()}
        result['reported_lost'] = {t: int(accounting.get(t, {}).get('lost', 0)) for t in counts}
        result['received'] = {t: int(accounting.get(t, {}).get('received', 0)) for t in counts}
        # the highest DDS sequence number received per topic (one writer each: number n is
        # sequence n + 1): what the recorder took in, even if its queue dropped it, it owes
        result['last_received'] = {t: max((int(w.get('last', 0)) for w in
                                           accounting.get(t, {}).get('writers', [])), default=0)
                                   for t in counts}
        result['loss_sources'] = {k: sum(int(a.get(k, 0)) for a in accounting.values())
                                  for k in ('lost_sequence', 'lost_start', 'lost_queue', 'lost_tail',
                                            'silent_tail', 'not_written', 'lost_gaps')}
    else:
        node = rclpy.create_node(f'bench_{args.subject.replace("-", "_")}')
        if args.subject in ('noop', 'noop-batched'):
            def make(topic: str):
                def cb(_data: bytes) -> None:
                    counts[topic] += 1
                return cb
            subs = [(node.create_subscription(message_class(type_name), topic, make(topic), qos,
                                              raw=True), make(topic), topic)
                    for topic, type_name, _ in STREAMS]
            if args.subject == 'noop-batched':
                # taken as the recorder takes them (data_recorder.capture.taker), from a node no
                # executor spins: the ceiling of a batched Python subscriber
                from data_recorder.capture.taker import Taker, message_drain
                taker = Taker()
                for sub, callback, _ in subs:
                    taker.add(sub, message_drain(sub, callback), qos.depth)
                node = rclpy.create_node('bench_noop_batched_timer')
                node.create_timer(0.005, taker.take)
        else:   # naive: deserialise, then mcap_ros2 re-serialises
            from mcap.writer import CompressionType
            from mcap_ros2.writer import Writer

            from data_recorder.bag.msgdefs import full_definition
            out.mkdir(parents=True, exist_ok=True)
            stream = (out / 'naive.mcap').open('wb')
            writer = Writer(stream, compression=CompressionType.NONE)   # as ours: no compression
            schemas = {t: writer.register_msgdef(ty, full_definition(ty)) for t, ty, _ in STREAMS}
            lock = threading.Lock()
            def make(topic: str):
                schema = schemas[topic]

                def cb(msg) -> None:
                    stamp = msg.header.stamp
                    with lock:
                        writer.write_message(topic, schema, plain(msg), log_time=time.time_ns(),
                                             publish_time=stamp.sec * 10**9 + stamp.nanosec)
                    counts[topic] += 1
                return cb
            for topic, type_name, _ in STREAMS:
                node.create_subscription(message_class(type_name), topic, make(topic), qos)
        spinner = Spinner([node])
        spinner.spin_until(stop)
        result['stop_ns'] = time.time_ns()
        if args.subject == 'noop-batched':
            drain_noop(subs, taker, counts, result['stop_ns'], qos.depth)
        if args.subject == 'naive':
            writer.finish()
            stream.close()
        node.destroy_node()
    size = sum(f.stat().st_size for f in out.rglob('*.mcap')) if out.exists() else 0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update({'counts': counts, 'bytes': size, 'maxrss_kb': usage.ru_maxrss})
    print('RESULT ' + json.dumps(result), flush=True)
    rclpy.try_shutdown()
    return 0


def drain_noop(subs: list, taker, counts: dict[str, int], stop_ns: int, depth: int) -> None:
    """The batched no-op's stop, as the recorder's (``DataRecorderNode.drain``): what its reader
    histories hold that was stamped before the stop is taken and counted. Without it the
    messages in flight at the stop - a few hundred, more at higher rates - read as the no-op's
    loss (its constant 0.05-0.2 % up to 2026-12-03). The sources publish on, so only samples
    stamped at or before ``stop_ns`` count (the stamp at CDR offset 4, the generators' sample
    clock, as :func:`owed_before` counts them); it ends when none of those came for 0.1 s (the
    recorder's rule for streams in arrival order), or after 2 s."""
    from data_recorder.capture.taker import Taker, message_drain
    stamp = struct.Struct('<iI').unpack_from

    def late(topic: str):
        def cb(sample: tuple[bytes, dict]) -> None:    # (data, info), as message_drain gives
            sec, nsec = stamp(sample[0], 4)
            if sec * 1_000_000_000 + nsec <= stop_ns:
                counts[topic] += 1
                owed[0] += 1
        return cb
    owed = [0]
    drain = Taker()
    for sub, _callback, topic in subs:
        taker.remove(sub)
        drain.add(sub, message_drain(sub, late(topic)), depth)
    now = time.monotonic()
    deadline, quiet_since = now + 2.0, now
    while now < deadline and now - quiet_since < 0.1:
        before = owed[0]
        drain.take()
        now = time.monotonic()
        if owed[0] != before:
            quiet_since = now
        time.sleep(0.005)


# -- orchestration ------------------------------------------------------------------------------

def _lines(proc: subprocess.Popen, sink: list[str], event: dict[str, threading.Event]) -> None:
    for raw in proc.stdout:
        line = raw.decode(errors='replace').rstrip()
        sink.append(line)
        for key, ev in event.items():
            if line.startswith(key):
                ev.set()


def pinned_cpus(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(subject's CPUs, generators' CPUs) for ``--pin``: the subject (and its writer process) on
    the last CPU this bench may use, the generators on the others; (None, None) without it.
    Why: on two cores the generators take about one, and unpinned every subject gets what the
    scheduler leaves it - a different share per subject and load. Pinned, each gets one core."""
    if not pin:
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit(f'--pin needs two CPUs, this process may use {cpus}')
    return {cpus[-1]}, set(cpus[:-1])


def _on_cpus(cpus: set[int] | None):
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def _resident(pid: int) -> int:
    """Resident bytes of ``pid`` and its children (the writer process); 0 once gone."""
    import psutil
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


def run_once(args: argparse.Namespace, subject_name: str, multiplier: float) -> dict:
    import psutil

    work = Path(tempfile.mkdtemp(prefix=f'bench_{subject_name}_', dir=args.workdir))
    common = ['--duration', str(args.duration), '--depth', str(args.depth),
              '--reader-depth', str(args.reader_depth),
              '--generators', str(args.generators), '--multiplier', str(multiplier)]
    if args.best_effort:
        common.append('--best-effort')
    subject_cpus, generator_cpus = pinned_cpus(args.pin)
    warm = None
    if args.warm_pages and subject_name in WRITERS:
        warm = WarmPages(Path(args.workdir), int(BAG_BYTES_PER_S * multiplier
                                                 * (args.duration + 15)))
    subj = subprocess.Popen([sys.executable, str(HERE), '--role', 'subject', '--subject',
                             subject_name, '--output', str(work), '--allocator', args.allocator,
                             '--queue-reserve-bytes', str(args.queue_reserve_bytes),
                             '--queue-max-bytes', str(args.queue_max_bytes),
                             *common],
                            stdout=subprocess.PIPE, stderr=(work / 'subject.log').open('wb'),
                            preexec_fn=_on_cpus(subject_cpus))
    if warm is not None:
        warm.follow(work, lambda: _resident(subj.pid))
    subj_lines: list[str] = []
    got_result = threading.Event()
    threading.Thread(target=_lines, args=(subj, subj_lines, {'RESULT': got_result}),
                     daemon=True).start()
    time.sleep(2.0)
    gens, gen_lines, starts, ends = [], [], [], []
    for i in range(args.generators):
        env = dict(os.environ)
        if args.publisher_profile == 'default':   # Fast DDS as shipped: no project profile
            env['FASTRTPS_DEFAULT_PROFILES_FILE'] = ''
        g = subprocess.Popen([sys.executable, str(HERE), '--role', 'generate', '--index', str(i),
                              *common], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                             preexec_fn=_on_cpus(generator_cpus))
        lines: list[str] = []
        s, e = threading.Event(), threading.Event()
        threading.Thread(target=_lines, args=(g, lines, {'START': s, 'END': e}), daemon=True).start()
        gens.append(g)
        gen_lines.append(lines)
        starts.append(s)
        ends.append(e)
    ps = psutil.Process(subj.pid)
    gps = [psutil.Process(g.pid) for g in gens]
    for s in starts:
        s.wait(90)
    t0 = time.monotonic()
    children = ps.children(recursive=True)     # the recorder's writer process
    c0 = sum(ps.cpu_times()[:2])
    k0 = [sum(p.cpu_times()[:2]) for p in children]
    g0 = sum(sum(p.cpu_times()[:2]) for p in gps)
    peak = 0
    while time.monotonic() - t0 < args.duration:
        peak = max(peak, ps.memory_info().rss)
        time.sleep(0.25)
    wall = time.monotonic() - t0
    cpu = sum(ps.cpu_times()[:2]) - c0
    child_cpu = sum(sum(p.cpu_times()[:2]) - k for p, k in zip(children, k0, strict=True))
    gcpu = sum(sum(p.cpu_times()[:2]) for p in gps) - g0
    subj.send_signal(signal.SIGINT)      # the sources still publish: the recorder drains
    got_result.wait(180)
    try:
        subj.wait(60)
    except subprocess.TimeoutExpired:
        subj.kill()          # reported below as 'gave no result' with its log kept
    for g in gens:
        g.terminate()
    for g, e in zip(gens, ends, strict=True):
        e.wait(30)
        try:
            g.wait(30)
        except subprocess.TimeoutExpired:
            g.kill()
    found = [json.loads(line[7:]) for line in subj_lines if line.startswith('RESULT ')]
    if not found:
        raise RuntimeError(f'{subject_name} gave no result; its log: {work / "subject.log"}')
    result = found[0]
    # what the subject owed: the messages stamped at or before its stop
    published: dict[str, int] = {}
    achieved = 0.0
    for lines in gen_lines:
        for line in lines:
            if line.startswith('END '):
                info = json.loads(line[4:])
                for topic, n in info['published'].items():
                    published[topic] = owed_before(info['wall0'], info['period_s'][topic], n,
                                                   result['stop_ns'])
                achieved += sum(info['published'].values()) / info['elapsed']
    if 'found' in result:
        # numbers read back from the bag. The recorder answers for every number up to the later
        # of the stop and the last one it recorded (it records on while it drains: a hole there
        # is a loss too),
        # and for every number it received (a message its queue dropped after the stop is
        # still one it took in and did not write)
        found = result.pop('found')
        for topic, ranges in found.items():
            published[topic] = max(published.get(topic, 0), ranges[-1][1] + 1 if ranges else 0)
        for topic, last_seq in result.get('last_received', {}).items():
            if topic in published:
                published[topic] = max(published[topic], last_seq)
        result['counts'] = {t: sum(b - a + 1 for a, b in ranges) for t, ranges in found.items()}
        result['missing_ranges'] = {t: _holes(found.get(t, []), n) for t, n in published.items()}
    shutil.rmtree(work, ignore_errors=True)
    if warm is not None:
        warm.close()
        result['warm_pages'] = {'mb': warm.size >> 20, 'requested_mb': warm.requested >> 20,
                                'written_mb_s': round(warm.speed)}
    return {'subject': subject_name, 'multiplier': multiplier, 'published': published,
            'load_average': os.getloadavg()[0],
            'achieved_rate': achieved, 'wall': wall, 'cpu': (cpu + child_cpu) / wall,
            'cpu_main': cpu / wall, 'cpu_writer': child_cpu / wall, 'gen_cpu': gcpu / wall,
            'peak_rss_mb': max(peak, result['maxrss_kb'] * 1024) / 2**20, **result}


def report(run: dict, duration: float, verbose: bool) -> None:
    published, counts = run['published'], run['counts']
    total_pub = sum(published.values())
    total = sum(counts.get(t, 0) for t in published)
    lost = total_pub - total
    cpu_split = (f" = {100 * run['cpu_main']:.1f} capture + {100 * run['cpu_writer']:.1f} writer"
                 if run.get('cpu_writer') else '')
    mb_s = run['bytes'] / 2**20 / duration
    per_mb = f", {1e3 * run['cpu'] / mb_s:.2f} ms CPU per MB" if mb_s else ''
    line = (f"{run['subject']:9s} x{run['multiplier']:<4g} published before its stop {total_pub:8d} "
            f"({run['achieved_rate']:7.0f} msg/s achieved)  got {total:8d}  lost {lost:6d} "
            f"({100 * lost / max(1, total_pub):.3f} %)  "
            f"{run['bytes'] / 2**20 / duration:6.1f} MB/s written  "
            f"CPU {100 * run['cpu']:5.1f} % of a core{cpu_split} (generators "
            f"{100 * run['gen_cpu']:5.1f} %){per_mb}  "
            f"peak RSS {run['peak_rss_mb']:6.1f} MB  (load average {run['load_average']:.1f})")
    if 'warm_pages' in run:
        warm = run['warm_pages']
        line += (f"\n    warm pages: {warm['mb']} MB held for the bag (of {warm['requested_mb']} "
                 f"wanted), written first at {warm['written_mb_s']} MB/s")
    if 'reported_lost' in run:
        line += (f"\n    missing from the bag (numbers published - numbers read back by mcap): "
                 f"{lost}; the recorder reports lost {sum(run['reported_lost'].values())} "
                 f"{run.get('loss_sources', '')}")
    print(line, flush=True)
    if verbose or lost:
        for topic, n in published.items():
            got = counts.get(topic, 0)
            extra = (f" reported {run['reported_lost'][topic]}" if 'reported_lost' in run else '')
            if run.get('missing_ranges', {}).get(topic):
                extra += f"  missing {run['missing_ranges'][topic]}"
            print(f'    {topic:28s} published {n:7d} got {got:7d} lost {n - got:6d}{extra}')


def write_speed(folder: Path, megabytes: int = 512) -> float:
    """MB/s of writing fresh pages into ``folder`` (1 MiB writes, then fsync; the file removed).

    Why: hosts differ in this by more than our code does: on 2026-12-02 a VM (DAMON on) wrote
    tmpfs at 0.4-0.6 GB/s on first tries and 1.4-2.2 GB/s minutes later, and py-spy put 67 % of
    the recorder's samples (time active, not CPU) in its file write. Printed beside the figures so
    runs on different hosts can be compared."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'write_speed_{os.getpid()}'
    seconds = write_blocks(path, megabytes, block=os.urandom(1 << 20), sync=True)
    path.unlink()
    return megabytes * 1.048576 / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--duration', type=float, default=10.0, help='seconds per run (60 for figures)')
    parser.add_argument('--multipliers', type=float, nargs='+', default=[1.0, 2.0])
    parser.add_argument('--subjects', nargs='+', default=['recorder', 'noop', 'naive'],
                        choices=['recorder', 'recorder-wp', 'noop', 'noop-batched', 'naive'],
                        help='recorder: the node as it is by default (one process); recorder-wp: '
                             'the node with its writer process (writer_process:=true); noop: '
                             'raw subscriptions on the EventsExecutor, counting; noop-batched: '
                             'the same taken in batches as the recorder takes them')
    parser.add_argument('--best-effort', action='store_true', help='publishers best effort')
    parser.add_argument('--depth', type=int, default=1000, help='publisher history depth')
    parser.add_argument('--reader-depth', type=int, default=0,
                        help='every subject\'s reader history depth (default: the publisher '
                             'depth, at least 1000); the same for all subjects')
    parser.add_argument('--generators', type=int, default=2, help='generator processes')
    parser.add_argument('--publisher-profile', choices=('project', 'default'), default='project',
                        help="generators on config/fastdds.xml (project) or on Fast DDS's "
                             'defaults, as a third-party driver has them')
    parser.add_argument('--pin', action='store_true',
                        help='subject on one CPU, generators on the others (a fair share for each subject)')
    parser.add_argument('--queue-reserve-bytes', type=int,
                        default=RECORDER_PARAMETERS['queue_reserve_bytes'], metavar='BYTES',
                        help="the recorder's heap reserve for its queue (0: none; default: the "
                             "node's)")
    parser.add_argument('--queue-max-bytes', type=int,
                        default=RECORDER_PARAMETERS['queue_max_bytes'], metavar='BYTES',
                        help="the recorder's queue bound (default: the node's)")
    parser.add_argument('--allocator', choices=ALLOCATOR_POLICIES, default=RECORDER_ALLOCATOR,
                        help="the recorder's allocator policy (FIELD_DEPLOY_ALLOCATOR, "
                             f'field_deploy.memory; default: the recorder\'s own, {RECORDER_ALLOCATOR})')
    parser.add_argument('--cold-pages', dest='warm_pages', action='store_false', default=None,
                        help='no warm pages for the bag (default on tmpfs: a ballast file holds '
                             'pages the bag then takes, see warm_pages.py; this measures the '
                             "host's own page supply too)")
    parser.add_argument('--verbose', action='store_true', help='per-topic lines for every run')
    parser.add_argument('--workdir', default=None, help='where bags are written (default: /tmp)')
    parser.add_argument('--json', default='', help='also write all results to this file')
    # internal roles
    parser.add_argument('--role', default='main', choices=['main', 'generate', 'subject'],
                        help=argparse.SUPPRESS)
    parser.add_argument('--index', type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument('--multiplier', type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument('--subject', default='noop', help=argparse.SUPPRESS)
    parser.add_argument('--output', default='', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == 'generate':
        return generate(args)
    if args.role == 'subject':
        return subject(args)
    isolate_ros_env()
    print(f'machine: {os.cpu_count()} cores, {sys.platform}; duration {args.duration:g} s; '
          f'publishers {"best effort" if args.best_effort else "reliable"} keep-last '
          f'{args.depth}; readers keep-last {_reader_depth(args)}; {args.generators} generator '
          f'processes; publishers on the '
          f'{args.publisher_profile} Fast DDS profile; recorder allocator {args.allocator}, '
          f'queue {args.queue_max_bytes >> 20} MiB, {args.queue_reserve_bytes >> 20} MiB of it '
          f'reserved'
          + ('; subject on CPU {}, generators on CPU {}'.format(*map(sorted, pinned_cpus(True)))
             if args.pin else ''), flush=True)
    workdir = Path(args.workdir or tempfile.gettempdir())
    print(f'writing fresh pages into {workdir}: {write_speed(workdir):.0f} MB/s', flush=True)
    args.workdir = str(workdir)
    if args.warm_pages is None:
        args.warm_pages = on_tmpfs(workdir)
    print(f'warm pages for the bags: {"on (a ballast file, tmpfs)" if args.warm_pages else "off"}',
          flush=True)
    results = []
    for multiplier in args.multipliers:
        for name in args.subjects:
            run = run_once(args, name, multiplier)
            results.append(run)
            report(run, args.duration, args.verbose)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
