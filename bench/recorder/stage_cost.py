#!/usr/bin/env python3
"""CPU per message and per MB of each stage of the recorder's path, and of the alternatives.

Fed with the reference humanoid mix (``core_cost.one_second``: 4,700 messages, 81 MB a second)
and timed in process CPU time (user + system of this process, all threads), so the figures hold on
a shared host. Stages (the DDS take is ``take_cost.py``'s):

* ``sequence``: the callback's inlined sequence accounting (one compare, one store);
* ``hand-off deque``: append + popleft of ``(topic, bytes, time)`` (today's hand-off);
* ``hand-off ring copy``: the CDR bytes copied into a shared-memory ring with a 24-byte head (the
  cost a capture process would pay to hand a record to a writer process);
* ``mcap write``: ``BagWriter.write`` through the ``mcap`` package's ``Writer.add_message``;
* ``lean write``: ``BagWriter.write`` through ``bag.chunk.LeanChunkBuilder`` (the default now);
* ``foxglove-sdk``: the compiled (Rust) MCAP writer, ``Channel.log`` per message (if installed);
* ``crc32``, ``flush+fsync``: per MB; compression ``lz4`` / ``zstd`` levels per MB on an image
  (matplotlib's sample photograph resized to 640x480 rgb8: a real scene) and on noise.

    .venv/bin/python bench/recorder/stage_cost.py --seconds 5
"""

from __future__ import annotations

import argparse
import itertools
import os
import struct
import sys
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Callable
from multiprocessing import shared_memory
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2] / 'src'))
sys.path.insert(0, str(HERE.parent))

from core_cost import one_second  # noqa: E402
from run import STREAMS  # noqa: E402

import field_deploy  # noqa: E402,F401

Batch = list[tuple[str, str, bytes]]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def stage_sequence(batch: Batch, seconds: int) -> float:
    from data_recorder.capture.accounting import TopicStats
    stats = {t: TopicStats() for t, _, _ in STREAMS}
    infos = [(stats[t].seq, {'publication_sequence_number': k + 1}) for k, (t, _, _) in
             enumerate(batch)]

    def run() -> None:
        for _ in range(seconds):
            for tracker, info in infos:
                seq = info['publication_sequence_number']
                if seq == tracker.last + 1:
                    tracker.last = seq
                else:
                    tracker.other(seq)
    return timed(run)


def stage_deque(batch: Batch, seconds: int) -> float:
    queue: deque = deque()

    def run() -> None:
        for _ in range(seconds):
            for topic, _ty, data in batch:
                queue.append((topic, data, time.time_ns()))
            while queue:
                queue.popleft()
    return timed(run)


def stage_ring(batch: Batch, seconds: int) -> float:
    shm = shared_memory.SharedMemory(create=True, size=256 * 2**20)
    head = struct.Struct('<IHHQQ')
    ids = {t: k for k, (t, _, _) in enumerate(STREAMS)}
    try:
        size = shm.size

        def run() -> None:
            buf = shm.buf
            pos = 0
            for _ in range(seconds):
                for topic, _ty, data in batch:
                    n = len(data)
                    if pos + 24 + n > size:
                        pos = 0
                    head.pack_into(buf, pos, n, ids[topic], 0, time.time_ns(), 0)
                    buf[pos + 24: pos + 24 + n] = data
                    pos += 24 + n
        return timed(run)
    finally:
        shm.close()
        shm.unlink()


def stage_bagwriter(batch: Batch, seconds: int, out: Path, *, lean: bool,
                    fsync: bool, compression: str = 'none') -> tuple[float, int]:
    from data_recorder.bag.writer import BagWriter
    BagWriter.lean_chunks = lean
    try:
        writer = BagWriter(out / f'bag_{lean}_{fsync}_{compression}', compression=compression,
                           fsync=fsync, flush_interval=1.0 if fsync else 3600.0)
        for topic, type_name, _ in STREAMS:
            writer.add_topic(topic, type_name, [])

        def run() -> None:
            t = time.time_ns()
            for _ in range(seconds):
                for topic, _ty, data in batch:
                    t += 1000
                    writer.write(topic, data, t)
                if fsync:
                    writer.flush()            # the once-a-second flush of a live recording
            writer.close()
        cpu = timed(run)
    finally:
        BagWriter.lean_chunks = True
    return cpu, sum(f.stat().st_size for f in writer.path.glob('*.mcap'))


def stage_foxglove(batch: Batch, seconds: int, out: Path) -> tuple[float, Path] | None:
    try:
        import foxglove
        from foxglove.mcap import MCAPWriteOptions
    except ImportError:
        return None
    from data_recorder.bag import msgdefs
    out.mkdir(parents=True)
    path = out / 'foxglove.mcap'
    context = foxglove.Context()
    writer = foxglove.open_mcap(path, context=context, writer_options=MCAPWriteOptions(
        compression=None,
        profile='ros2', chunk_size=1024 * 1024))
    channels = {t: foxglove.Channel(t, message_encoding='cdr', context=context,
                                    schema=foxglove.Schema(name=ty, encoding='ros2msg',
                                                           data=msgdefs.full_definition(ty).encode()))
                for t, ty, _ in STREAMS}

    def run() -> None:
        t = time.time_ns()
        for _ in range(seconds):
            for topic, _ty, data in batch:
                t += 1000
                channels[topic].log(data, log_time=t)
        writer.close()
    return timed(run), path


def real_image() -> bytes:
    import matplotlib.cbook
    from PIL import Image
    with matplotlib.cbook.get_sample_data('grace_hopper.jpg') as f:
        image = Image.open(f).convert('RGB').resize((640, 480))
    return image.tobytes()


def compression_rows(image: bytes, repeat: int) -> list[str]:
    import lz4.frame
    import zstandard
    rows = []
    mirrored = image[::-1]      # a second frame: not a repeat the compressor's window would find
    for name, chunk in (('photo 640x480 rgb8', image + mirrored),
                        ('noise 640x480 rgb8', os.urandom(2 * len(image)))):
        for label, fn in (
                ('lz4 (default)', lambda d: lz4.frame.compress(d)),
                ('zstd level 1', lambda d: zstandard.ZstdCompressor(level=1).compress(d)),
                ('zstd level 3 (mcap default)', lambda d: zstandard.compress(d)),
                ('zstd level 9', lambda d: zstandard.ZstdCompressor(level=9).compress(d))):
            t0 = time.process_time()
            for _ in range(repeat):
                packed = fn(chunk)
            cpu = (time.process_time() - t0) / repeat
            mb = len(chunk) / 2**20
            rows.append(f'  {name:20s} {label:28s} {cpu / mb * 1e3:7.2f} ms CPU/MB  '
                        f'ratio {len(chunk) / len(packed):5.2f}')
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=int, default=5, help='seconds of reference load fed')
    args = parser.parse_args()
    mix = one_second()
    feeds = {'mix': mix, 'small': [m for m in mix if not m[0].startswith('/camera/')],
             'images': [m for m in mix if m[0].startswith('/camera/')]}
    sizes = {k: (len(b) * args.seconds, sum(len(d) for _, _, d in b) * args.seconds / 2**20)
             for k, b in feeds.items()}
    print(f'{time.strftime("%Y-%m-%d %H:%M")}  load average {os.getloadavg()[0]:.2f}; reference '
          f'load {len(mix)} msg/s, {sizes["mix"][1] / args.seconds:.1f} MB/s; {args.seconds} s fed; '
          'small = all but the cameras, images = the 3 cameras', flush=True)

    def line(name: str, cpu: float, feed: str = 'mix', extra: str = '') -> None:
        n, mb = sizes[feed]
        print(f'{name:36s} {feed:6s} {cpu / n * 1e6:7.2f} us/msg {cpu / mb * 1e3:6.2f} ms/MB '
              f'{cpu / args.seconds * 100:5.1f} % of a core at 1x {extra}', flush=True)

    line('sequence accounting', stage_sequence(mix, args.seconds))
    line('hand-off: deque append+popleft', stage_deque(mix, args.seconds))
    for feed in ('small', 'images'):
        line('hand-off: shared-memory ring copy', stage_ring(feeds[feed], args.seconds), feed)
    with tempfile.TemporaryDirectory(dir=os.environ.get('STAGE_DIR')) as tmp:
        out = Path(tmp)
        for lean, fsync, comp in ((False, False, 'none'), (True, False, 'none'),
                                  (True, True, 'none'), (True, True, 'lz4'),
                                  (True, True, 'zstd')):
            name = (f'{"lean" if lean else "mcap"} write{" + flush/fsync 1 s" if fsync else ""}'
                    f'{"" if comp == "none" else " + " + comp}')
            for feed in ('mix', 'small', 'images'):
                cpu, size = stage_bagwriter(feeds[feed], args.seconds, out / feed, lean=lean,
                                            fsync=fsync, compression=comp)
                line(name, cpu, feed, f'(on disk: {size / 2**20 / sizes[feed][1]:.2f} of it)')
        for feed in ('mix', 'small', 'images'):
            fox = stage_foxglove(feeds[feed], args.seconds, out / f'fox_{feed}')
            if fox is not None:
                line('foxglove-sdk Channel.log', fox[0], feed)
        if fox is not None:
            print(f'  foxglove-sdk output: {check_readers(fox[1])}', flush=True)
    blob = b''.join(d for _, _, d in mix)
    line('crc32 (zlib) of the chunks', timed(lambda: [zlib.crc32(blob)
                                                        for _ in range(args.seconds)]))
    from isal import isal_zlib  # what the chunk writer uses (bag/chunk.py)
    line('crc32 (isal, ISA-L) of the chunks', timed(lambda: [isal_zlib.crc32(blob)
                                                              for _ in range(args.seconds)]))
    print('compression of one 1.8 MB chunk of two images:')
    for row in compression_rows(real_image(), 5):
        print(row, flush=True)
    return 0


def check_readers(path: Path) -> str:
    """Does the ``mcap`` reader and ``rosbags`` open the file, and what profile / encodings."""
    from mcap.reader import make_reader
    with path.open('rb') as f:
        reader = make_reader(f)
        header = reader.get_header()
        summary = reader.get_summary()
        schemas = {s.encoding for s in summary.schemas.values()}
        encodings = {c.message_encoding for c in summary.channels.values()}
        count = summary.statistics.message_count
        log_times = [m.log_time for _, _, m in reader.iter_messages(log_time_order=False)]
    ordered = all(a <= b for a, b in itertools.pairwise(log_times))
    verdict = (f'profile {header.profile!r}, schemas {sorted(schemas)}, encodings '
               f'{sorted(encodings)}, {count} messages, file order = log time: {ordered}')
    try:
        from rosbags.highlevel import AnyReader

        from data_recorder.bag.recover import recover
        recover(path.parent)               # metadata.yaml from the file's summary
        with AnyReader([path.parent]) as reader:
            got = sum(1 for _ in reader.messages())
            order = [t for _, t, _ in reader.messages()]
        verdict += (f'; rosbags (metadata.yaml by bag recover): {got} messages, time order: '
                    f'{order == sorted(order)}')
    except Exception as exc:   # say what it was
        verdict += f'; rosbags: {type(exc).__name__}: {exc}'
    return verdict


if __name__ == '__main__':
    sys.exit(main())
