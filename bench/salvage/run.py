"""Cost of ``bag verify`` and ``bag recover`` on a realistic bag (prints figures, never fails).

Writes the reference humanoid load (``data_recorder.synthetic``) for ``--seconds`` through the
project's ``BagWriter`` (``--compression``, 1 MiB chunks), overwrites 4 KiB in the middle of the
file, then times ``scan`` (what ``verify`` does) and ``recover``. Run:
``.venv/bin/python bench/salvage/run.py --seconds 2 --compression zstd``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from data_recorder.bag.assess import assess
from data_recorder.bag.reader import Bag
from data_recorder.bag.recover import recover
from data_recorder.bag.scan import scan
from data_recorder.bag.writer import BagWriter
from data_recorder.synthetic import reference_streams, write_bag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=2.0)
    parser.add_argument('--compression', choices=('none', 'lz4', 'zstd'), default='zstd')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get('TMPDIR')) as tmp:
        source = Bag(write_bag(Path(tmp) / 'src', reference_streams(), args.seconds))
        with BagWriter(Path(tmp) / 'bag', compression=args.compression) as writer:
            for name, topic in source.topics.items():
                writer.add_topic(name, topic.type, list(topic.qos))
            for m in source.messages():
                writer.write(m.topic, m.data, m.log_time_ns, m.publish_time_ns)
        path = Path(tmp) / 'bag' / 'bag_0.mcap'
        size = path.stat().st_size
        t0 = time.perf_counter()
        found = scan(path)
        intact = assess(found)
        t_verify = time.perf_counter() - t0
        raw = sum(c.uncompressed_size for c in found.chunks) / 1e6
        with path.open('r+b') as f:
            f.seek(size // 2)
            f.write(b'\0' * 4096)
        t0 = time.perf_counter()
        damaged = assess(scan(path))
        t_damaged = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = recover(path.parent)
        t_recover = time.perf_counter() - t0
        mb = size / 1e6
        print(f'bag: {mb:.0f} MB on disk, {raw:.0f} MB of records, {intact.chunks} chunks '
              f'({args.compression}), {intact.kept_messages} messages; '
              f'load {os.getloadavg()[0]:.1f}')
        print(f'verify intact:  {t_verify:.2f} s ({raw / t_verify:.0f} MB/s of records)')
        print(f'verify damaged: {t_damaged:.2f} s ({raw / t_damaged:.0f} MB/s); '
              f'{len(damaged.bad_chunks)} bad chunk(s), {damaged.lost_messages} messages lost')
        print(f'recover:        {t_recover:.2f} s ({raw / t_recover:.0f} MB/s); '
              f'{report.messages} messages kept')


if __name__ == '__main__':
    main()
