#!/usr/bin/env python3
"""CPU cost per message of the recording path alone (no DDS): ours vs the naive recorder.

The end-to-end benchmark (run.py) needs idle cores to mean anything; on a shared machine its
figures are dominated by CPU contention. This one feeds the reference humanoid mix (one second
of it = 4,700 messages, 85 MB) straight into the two write paths and measures process CPU time
(``time.process_time``: all threads, not wall clock), so it is stable under load:

* ours: ``Recorder.on_message`` (what the subscription callback runs) + the writer thread
  (``BagWriter``: MCAP chunking, index, flush + fsync every second);
* naive: ``rclpy.serialization.deserialize_message`` → plain dict → ``mcap_ros2`` writer (what a
  recorder that deserialises and re-serialises does), no compression either.

The DDS receive cost (the same for both, and for a no-op subscriber) comes on top.

    .venv/bin/python bench/recorder/core_cost.py --seconds 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2] / 'src'))
sys.path.insert(0, str(HERE.parent))

from run import STREAMS, _sample, plain  # noqa: E402

import field_deploy  # noqa: E402,F401


def one_second(multiplier: float = 1.0) -> list[tuple[str, str, bytes]]:
    """The reference load's messages of one second, interleaved by time."""
    from rclpy.serialization import serialize_message
    events = []
    for topic, type_name, rate in STREAMS:
        data = serialize_message(_sample(type_name))
        n = int(rate * multiplier)
        events += [(k / n, topic, type_name, data) for k in range(n)]
    events.sort(key=lambda e: e[0])
    return [(t, ty, d) for _, t, ty, d in events]


def ours(batch: list[tuple[str, str, bytes]], seconds: int, out: Path,
         writer_process: bool = False) -> tuple[float, int]:
    import psutil

    from data_recorder.capture.recorder import Recorder, RecorderConfig
    recorder = Recorder(RecorderConfig(str(out / 'bag'), min_free_space=0,
                                       queue_max_bytes=2**34, queue_size=10**7,
                                       writer_process=writer_process))
    writer = psutil.Process(recorder.status()['writer_pid']) if writer_process else None
    w0 = sum(writer.cpu_times()[:2]) if writer else 0.0
    stats = {}
    for topic, type_name, _ in STREAMS:
        recorder.add_topic(topic, type_name, [])
        stats[topic] = recorder.stats(topic)
    on_message = recorder.on_message
    c0 = time.process_time()
    for _ in range(seconds):
        for topic, _ty, data in batch:
            on_message(stats[topic], topic, data)
    if writer is not None:
        recorder.snapshot()          # waits until the writer process has written everything
        child = sum(writer.cpu_times()[:2]) - w0
    recorder.close()
    cpu = time.process_time() - c0
    lost = recorder.accounting.totals()['lost']
    assert lost == 0, lost
    if writer is not None:
        WRITER_CPU.append(child)
    return cpu, sum(f.stat().st_size for f in (out / 'bag').glob('*.mcap'))


#: the writer process's CPU time of the last ``ours(..., writer_process=True)`` run
WRITER_CPU: list[float] = []


def naive(batch: list[tuple[str, str, bytes]], seconds: int, out: Path) -> tuple[float, int]:
    from mcap.writer import CompressionType
    from mcap_ros2.writer import Writer
    from rclpy.serialization import deserialize_message

    from data_recorder.bag.msgdefs import full_definition
    from field_deploy.ros import message_class

    stream = (out / 'naive.mcap').open('wb')
    writer = Writer(stream, compression=CompressionType.NONE)
    schemas = {t: writer.register_msgdef(ty, full_definition(ty)) for t, ty, _ in STREAMS}
    classes = {t: message_class(ty) for t, ty, _ in STREAMS}
    c0 = time.process_time()
    for _ in range(seconds):
        for topic, _ty, data in batch:
            msg = deserialize_message(data, classes[topic])
            stamp = msg.header.stamp
            writer.write_message(topic, schemas[topic], plain(msg), log_time=time.time_ns(),
                                 publish_time=stamp.sec * 10**9 + stamp.nanosec)
    writer.finish()
    stream.close()
    return time.process_time() - c0, (out / 'naive.mcap').stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=int, default=10, help='seconds of reference load')
    args = parser.parse_args()
    batch = one_second()
    size = sum(len(d) for _, _, d in batch)
    print(f'reference load: {len(batch)} msg/s, {size / 2**20:.1f} MB/s; {args.seconds} s fed',
          flush=True)
    results = {}
    paths = (('ours', ours), ('ours: capture process (writer process beside)',
                              lambda *a: ours(*a, writer_process=True)), ('naive', naive))
    for name, fn in paths:
        with tempfile.TemporaryDirectory() as tmp:
            cpu, written = fn(batch, args.seconds, Path(tmp))
        per_msg = cpu / (len(batch) * args.seconds) * 1e6
        results[name] = per_msg
        print(f'{name:6s} {per_msg:7.1f} us CPU per message = {cpu / args.seconds * 100:5.1f} % of '
              f'a core at 1x; max {1e6 / per_msg:8.0f} msg/s per core '
              f'({1e6 / per_msg / len(batch):.1f}x the reference load); '
              f'{written / 2**20 / args.seconds:.1f} MB/s written', flush=True)
        if 'capture process' in name:
            child = WRITER_CPU[-1] / (len(batch) * args.seconds) * 1e6
            print(f'       the writer process: {child:7.1f} us CPU per message = '
                  f'{WRITER_CPU[-1] / args.seconds * 100:5.1f} % of a core at 1x, '
                  f'{WRITER_CPU[-1] / (written / 2**20) * 1e3:.2f} ms per MB', flush=True)
    print(f'naive / ours: {results["naive"] / results["ours"]:.1f}x the CPU per message; load '
          f'average {os.getloadavg()[0]:.1f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
