"""Export throughput vs the ``rosbags`` library's read throughput, same bag, same run.

Writes the reference humanoid load (see bench/player/run.py) with the rosbags writer, then times:

* ``rosbags`` Reader, raw iteration of every message (the target to beat);
* this project's reader, raw iteration;
* ``field_deploy bag export --format parquet`` (Parquet at 50 Hz + MP4 for the 3 cameras), and
  without images;
* ``field_deploy bag export --format lerobot`` (a LeRobot v3.0 dataset at 30 fps, AV1 video of the 3
  cameras by LeRobot's encoder settings), and the video encoder's own rate (frames per second of
  encoder-thread time, and per second of wall time);
* deserialisation per message: rclpy ``deserialize_message`` vs rosbags typestore ``deserialize_cdr``
  (why export uses rclpy for the small messages and its own header parser for images).

MB/s are bag bytes on disk divided by wall time. Usage:
``.venv/bin/python bench/export/run.py [--seconds 10] [--keep BAG]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import data_recorder  # noqa: F401
from data_recorder.bag.reader import Bag
from data_recorder.export.lerobot.dataset import export_lerobot
from data_recorder.export.parquet import export
from data_recorder.synthetic import reference_streams, write_bag


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=10.0)
    parser.add_argument('--keep', default=None)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    path = Path(args.keep) if args.keep else Path(tmp.name) / 'reference'
    if not path.exists():
        write_bag(path, reference_streams(), args.seconds)
    bag = Bag(path)
    mb = bag.size_bytes / 1e6
    print(f'bag: {bag.message_count} messages, {mb:.0f} MB, {bag.duration_ns / 1e9:.1f} s; '
          f'machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}')

    from rosbags.rosbag2 import Reader

    def rosbags_read() -> None:
        with Reader(path) as r:
            for _ in r.messages():
                pass

    def own_read() -> None:
        for _ in Bag(path).messages():
            pass

    results = {}
    for name, fn in (('rosbags read (raw)', rosbags_read), ('data_recorder.bag.reader read (raw)', own_read)):
        fn()  # warm the page cache once, then measure
        results[name] = min(timed(fn) for _ in range(2))
    out = Path(tmp.name) / 'out'
    for name, images in (('export parquet+mp4', 'mp4'), ('export parquet only', 'none')):
        shutil.rmtree(out, ignore_errors=True)
        results[name] = timed(lambda images=images: export(path, out, rate_hz=50, images=images))
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    report = export_lerobot([path], out / 'lerobot')
    results['export lerobot v3.0 (3 cameras)'] = time.perf_counter() - t0
    for name, dt in results.items():
        print(f'{name:34s} {dt:6.2f} s  {mb / dt:7.1f} MB/s')
    ratio = (mb / results['export parquet+mp4']) / (mb / results['rosbags read (raw)'])
    print(f'export (mp4) / rosbags read throughput: {ratio:.2f}  (target >= 1)')
    lr = results['export lerobot v3.0 (3 cameras)']
    print(f'export lerobot / rosbags read throughput: {results["rosbags read (raw)"] / lr:.2f}; '
          f'{report.total_frames} frames at {report.fps} fps = {report.total_frames / lr:.0f} frames/s')
    cams = len(report.episodes) and report.frames_encoded // max(report.total_frames, 1)
    print(f'video encoder (libsvtav1, 640x480, {cams} cameras): {report.frames_encoded} frames, '
          f'{report.frames_encoded / report.encode_seconds:.0f} fps per encoder thread, '
          f'{report.frames_encoded / lr:.0f} fps wall; load average {os.getloadavg()[0]:.1f}')

    # deserialisation cost per message
    from rclpy.serialization import deserialize_message
    from rosbags.typesys import Stores, get_typestore

    from field_deploy.ros import message_class
    store = get_typestore(Stores.ROS2_JAZZY)
    for topic in ('/joint_states', '/imu', '/odom', '/camera/head/image_raw'):
        info = bag.topics[topic]
        msgs = [m.data for m, _ in zip(bag.messages([topic]), range(300), strict=False)]
        cls = message_class(info.type)
        t_rclpy = timed(lambda cls=cls, msgs=msgs: [deserialize_message(d, cls) for d in msgs]) / len(msgs)
        t_rb = timed(lambda info=info, msgs=msgs: [store.deserialize_cdr(d, info.type)
                                                  for d in msgs]) / len(msgs)
        print(f'deserialise {info.type:34s} rclpy {t_rclpy * 1e6:8.1f} us   rosbags {t_rb * 1e6:8.1f} us')
    if topic.endswith('image_raw'):
        from data_recorder.export.parquet import parse_image
        t_own = timed(lambda: [parse_image(d) for d in msgs]) / len(msgs)
        print(f'{"parse_image (header + pixel view)":46s} {t_own * 1e6:8.1f} us')
    return 0


if __name__ == '__main__':
    sys.exit(main())
