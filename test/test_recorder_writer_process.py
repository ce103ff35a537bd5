"""The recorder's writer process (data_recorder.bag.writer_process) and its shared-memory ring.

Pure tests feed the engine directly; the DDS ones run ``bag record`` with numbered publishers
(``field_deploy.numbered``): a high rate through the new path with nothing lost and every number
in the bag, and the writer process killed with SIGKILL mid-recording - the recorder says so and
stops, and ``bag recover`` gives back everything but the last flush interval.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from mcap.reader import make_reader
from rosbags.highlevel import AnyReader

from data_recorder.bag import metadata as md
from data_recorder.bag.recover import recover
from data_recorder.bag.ring import COMMAND, MESSAGE, Ring
from data_recorder.capture.recorder import Recorder, RecorderConfig
from field_deploy.numbered import numbers_in_bag
from field_deploy.testing import wait_until
from test_recorder_loss import TOPIC, _start_writer, assert_loss_matches, record_numbered


def _cdr(i: int, size: int) -> bytes:
    """A JointState-shaped CDR blob: encapsulation, then the stamp (i ms) the recorder reads."""
    sec, nanosec = divmod(1_000_000_000 + i * 1_000_000, 10**9)
    return (b'\x00\x01\x00\x00' + sec.to_bytes(4, 'little') + nanosec.to_bytes(4, 'little') +
            bytes([i % 251]) * size)


def test_ring_keeps_order_across_wraps_and_refuses_when_full() -> None:
    ring = Ring.create(1 << 16)
    consumer = Ring.attach(ring.name)
    try:
        rng = random.Random(1)
        sent, got = [], []
        for k in range(5000):
            record = (MESSAGE if k % 9 else COMMAND, bytes([k % 256]) * rng.randrange(0, 3000))
            while not ring.put(record[0], record[1][:7], record[1][7:]):
                item = consumer.get()                 # full: the consumer makes room
                assert item is not None
                got.append(item)
            sent.append(record)
        while (item := consumer.get()) is not None:
            got.append(item)
        assert got == sent and ring.used() == 0
        assert ring.put(MESSAGE, bytes(ring.max_record))        # half the ring fits ...
        assert not ring.put(MESSAGE, bytes(ring.max_record))    # ... a second one does not yet
        consumer.set_status(files=3, written=42)
        assert ring.status()['files'] == 3 and ring.status()['written'] == 42
    finally:
        consumer.close()
        ring.close()
    assert not Path(f'/dev/shm/{ring.name}').exists()


_CONSUMER = """
import sys, zlib
from data_recorder.bag.ring import Ring
ring, expected, bad = Ring.attach(sys.argv[1]), 0, 0
while expected < int(sys.argv[2]):
    item = ring.get()
    if item is None:
        continue
    kind, payload = item
    n = int.from_bytes(payload[:8], 'little')
    if n != expected or zlib.crc32(payload[12:]) != int.from_bytes(payload[8:12], 'little'):
        bad += 1
    expected = n + 1
ring.close()
print(bad)
"""


def test_ring_between_two_processes_every_record_whole_and_in_order() -> None:
    # a small ring, many wraps, both sides busy: a counter read half-written (struct's '<Q'
    # stores byte by byte; seen at 3x the reference load) shows as a record out of order or
    # with a bad CRC
    count = 200_000
    ring = Ring.create(1 << 16)
    consumer = subprocess.Popen([sys.executable, '-c', _CONSUMER, ring.name, str(count)],
                                stdout=subprocess.PIPE, text=True)
    try:
        import zlib
        rng = random.Random(7)
        blobs = [rng.randbytes(rng.randrange(0, 2000)) for _ in range(64)]
        for n in range(count):
            data = blobs[n % 64]
            head = n.to_bytes(8, 'little') + zlib.crc32(data).to_bytes(4, 'little')
            while not ring.put(MESSAGE, head, data):
                pass
        out, _ = consumer.communicate(timeout=120)
        assert consumer.returncode == 0 and out.strip() == '0', out
    finally:
        if consumer.poll() is None:
            consumer.kill()
        ring.close()


def test_engine_through_the_writer_process_one_bag_in_time_order(tmp_path: Path) -> None:
    bag = tmp_path / 'bag'
    recorder = Recorder(RecorderConfig(str(bag), writer_process=True, min_free_space=0,
                                       ring_bytes=8 * 1024 * 1024, chunk_size=64 * 1024,
                                       max_bag_size=4 * 1024 * 1024))
    writer_pid = recorder.status()['writer_pid']
    assert writer_pid and psutil.pid_exists(writer_pid)
    recorder.add_topic('/small', 'sensor_msgs/msg/JointState', [])
    recorder.add_topic('/large', 'sensor_msgs/msg/Image', [])
    small, large = recorder.stats('/small'), recorder.stats('/large')
    for i in range(20_000):                  # more than the 8 MiB ring: the writer keeps up
        if i % 100 == 7:
            recorder.on_message(large, '/large', _cdr(i, 300_000))
        else:
            recorder.on_message(small, '/small', _cdr(i, 200))
        if i == 10_000:
            recorder.add_metadata('episode', {'event': 'start'}, wait=False)
            recorder.split(wait=False)
    path = recorder.close()
    assert not psutil.pid_exists(writer_pid) or psutil.Process(writer_pid).status() == 'zombie'
    info = md.load(path)
    assert info['message_count'] == 20_000 == recorder.accounting.totals()['written']
    assert len(info['relative_file_paths']) >= 3               # the split and the size splits
    assert 'data_recorder.accounting' in info['custom_data']
    log_times, episodes = [], 0
    for name in info['relative_file_paths']:
        with (path / name).open('rb') as f:
            reader = make_reader(f, validate_crcs=True)
            episodes += sum(m.name == 'episode' for m in reader.iter_metadata())
            log_times += [m.log_time for _, _, m in reader.iter_messages(log_time_order=False)]
    assert episodes == 1 and len(log_times) == 20_000 and log_times == sorted(log_times)
    with AnyReader([path]) as reader:
        order = [t for _c, t, _raw in reader.messages()]
    assert len(order) == 20_000 and order == sorted(order)
    assert not Path(f'/dev/shm/{recorder.writer.ring.name}').exists()      # the ring is gone


def test_writer_process_killed_the_engine_stops_loudly_and_recover_keeps_all_but_1_s(
        tmp_path: Path) -> None:
    bag, logs = tmp_path / 'bag', []
    recorder = Recorder(RecorderConfig(str(bag), writer_process=True, min_free_space=0),
                        log=lambda level, msg: logs.append((level, msg)))
    recorder.add_topic('/js', 'sensor_msgs/msg/JointState', [])
    stats = recorder.stats('/js')
    handed_at_kill, i, t0 = 0, 0, time.monotonic()
    while time.monotonic() - t0 < 3.0:          # 1 kHz for 3 s, the writer killed at 2 s
        recorder.on_message(stats, '/js', _cdr(i, 200))
        i += 1
        if not handed_at_kill and time.monotonic() - t0 > 2.0:
            assert wait_until(lambda: recorder.queue_length == 0, 5)
            handed_at_kill = i
            os.kill(recorder.status()['writer_pid'], signal.SIGKILL)
        time.sleep(0.001)
    assert wait_until(lambda: recorder.state == 'stopped', 5), recorder.status()
    assert 'writer process' in recorder.stop_reason and any(
        level == 'error' and 'writer process' in msg for level, msg in logs), logs
    recorder.close()
    totals = recorder.accounting.totals()
    assert totals['skipped_stopped'] > 0 and totals['received'] == i     # counted, not "0 lost"
    report = recover(bag)
    kept = report.messages
    # everything but what the writer had not flushed yet: at most one flush interval (1 s)
    assert handed_at_kill - 1.2 * handed_at_kill / 2.0 <= kept <= handed_at_kill, (
        kept, handed_at_kill)
    with AnyReader([bag]) as reader:
        stamps = [t for _c, t, _raw in reader.messages()]
    assert len(stamps) == kept and stamps == sorted(stamps)


def test_numbered_publishers_at_a_high_rate_nothing_lost(tmp_path: Path) -> None:
    # 2 x 2 kHz of 1 kB messages through the recorder's node, its writer process and the ring
    fig = record_numbered(tmp_path, {
        'a': ['--rate', '2000', '--count', '10000', '--depth', '5000', '--size', '1000'],
        'b': ['--rate', '2000', '--count', '10000', '--depth', '5000', '--size', '1000',
              '--aperiodic', '--seed', '4'],
    }, depth=5000, recorder_args=['--writer-process'])
    assert_loss_matches(fig)
    assert fig['missing'] <= 0.001 * fig['published'], fig['accounting']   # the no-op's bound
    assert fig['accounting']['written'] == fig['published'] - fig['missing']


def test_writer_process_killed_mid_recording_recovers_with_at_most_1_s_lost(
        tmp_path: Path) -> None:
    bag, log = tmp_path / 'bag', tmp_path / 'record.log'
    recorder = subprocess.Popen(
        [sys.executable, '-m', 'data_recorder.record_cli', 'record', '-o', str(bag), TOPIC,
         '--qos-depth', '2000', '--writer-process'], stdout=log.open('wb'), stderr=subprocess.STDOUT,
        start_new_session=True)
    writer, _report_path = _start_writer(tmp_path, 'w', ['--rate', '500', '--count', '3000',
                                                        '--depth', '2000'])
    try:
        assert wait_until(lambda: 'publishing w' in (tmp_path / 'w.log').read_text(), 60), \
            log.read_text()
        t_start = time.monotonic()
        children = []
        assert wait_until(lambda: bool(children.extend(
            c for c in psutil.Process(recorder.pid).children()
            if 'writer_process' in ' '.join(c.cmdline())) or children), 30)
        time.sleep(3.0)
        killed_after = time.monotonic() - t_start
        children[0].send_signal(signal.SIGKILL)
        assert writer.wait(120) == 0, (tmp_path / 'w.log').read_text()
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)
    finally:
        for proc in (writer, recorder):
            if proc.poll() is None:
                proc.kill()
    output = log.read_text(errors='replace')
    assert 'writer process' in output and 'died' in output, output[-3000:]
    assert not (bag / 'metadata.yaml').exists() or 'stop_reason' in (bag / 'metadata.yaml').read_text()
    recover(bag)
    found = sorted(numbers_in_bag(bag, TOPIC).get('w', set()))
    assert found == list(range(len(found))), 'a hole in what was kept'      # from 0, no hole
    # published at 500 Hz from t_start: what was published more than 1 s before the kill is in
    assert len(found) >= 500 * (killed_after - 1.0), (len(found), killed_after, output[-2000:])


def test_recorder_node_killed_its_writer_keeps_what_it_was_handed(ros, spin, node_process,
                                                                   tmp_path: Path) -> None:
    """kill -9 of the node's process: its writer process writes what is in the ring, fsyncs and
    exits; the bag is left cut, as before, and ``recover`` gives back all 300 messages."""
    import rclpy
    from sensor_msgs.msg import JointState

    from field_deploy.testing import RawCollector
    from test_recorder import RELIABLE, _joint_state, _readable_in_open_bag
    pub_node = rclpy.create_node('crash_test_wp')
    pub = pub_node.create_publisher(JointState, '/chatter_wp', RELIABLE)
    collector = RawCollector(pub_node, [('/chatter_wp', JointState)])
    spin(pub_node)
    bag = tmp_path / 'crash'
    proc = node_process('data_recorder', ['--ros-args', '-p', f'output:={bag}',
                                          '-p', "topics:=['/chatter_wp']",
                                          '-p', 'writer_process:=true'])
    assert wait_until(lambda: pub.get_subscription_count() >= 2, 30), proc.log()
    writers = [c for c in psutil.Process(proc.pid).children(recursive=True)
               if 'writer_process' in ' '.join(c.cmdline())]
    assert len(writers) == 1, proc.log()
    for i in range(300):
        pub.publish(_joint_state(i))
        time.sleep(0.002)
    assert wait_until(lambda: collector.count('/chatter_wp') == 300, 10)
    time.sleep(0.3)             # handed over (not yet flushed: the flush interval is 1 s)
    proc.kill()
    writers[0].wait(30)         # it ends by itself once its stdin is closed
    assert not (bag / 'metadata.yaml').exists()
    assert _readable_in_open_bag(bag, '/chatter_wp') == 300
    report = recover(bag)
    assert report.messages == 300, report
    assert md.load(bag)['message_count'] == 300
