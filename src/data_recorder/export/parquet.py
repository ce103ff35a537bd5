"""Bag → training dataset: Parquet tables resampled to a common clock + MP4 (or PNG) images.

Format (see docs/bag_tools.md for why): one folder per episode holding

* ``data.parquet`` — one row per tick of a common clock at ``rate_hz``: ``timestamp`` (s since
  the episode start), ``time_ns`` (bag time), ``frame_index``, then one fixed-size-list column
  per signal (``joint_states.position`` [29], ``imu.angular_velocity`` [3], ``wrench/left_foot.force``
  [3] …) and, per camera, ``<camera>.frame_index`` (the video frame shown at that tick);
* ``videos/<camera>.mp4`` (or ``images/<camera>/NNNNNN.png``) at the camera's recorded rate, with
  ``videos/<camera>.timestamps.parquet`` giving each frame's bag time;
* ``manifest.json`` — fields, shapes, units, joint names, source topic / type / recorded rate.

This is the layout LeRobot uses (Parquet + MP4), so ``pyarrow``/``pandas`` and ``cv2``/``av`` load
it without this project. Resampling is *zero-order hold*: each tick carries the latest message at
or before it (what the robot knew then; nothing is invented by interpolation); NaN before a
topic's first message. It is streamed: messages are read once in time order, only the message
that a tick actually uses is deserialised (a 1 kHz stream exported at 50 Hz deserialises 50
messages/s), rows go out in row groups and frames to per-camera encoder threads (OpenCV releases
the GIL while encoding), so memory stays bounded whatever the bag length.
"""

from __future__ import annotations

import json
import queue
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_recorder.bag.marks import marks_between
from data_recorder.bag.reader import Bag, Episode

FORMAT = 'field_deploy.dataset/1 (parquet + mp4, LeRobot-style)'
ROW_GROUP = 4096

# type -> list of (field suffix, unit, getter(msg) -> sequence of float, labels or None)
_J = 'sensor_msgs/msg/JointState'


def _xyz(v) -> list[float]:
    return [v.x, v.y, v.z]


def _xyzw(q) -> list[float]:
    return [q.x, q.y, q.z, q.w]


SIGNALS: dict[str, list[tuple[str, str, Callable[[Any], Sequence[float]]]]] = {
    'sensor_msgs/msg/Imu': [
        ('orientation', 'quaternion xyzw', lambda m: _xyzw(m.orientation)),
        ('angular_velocity', 'rad/s', lambda m: _xyz(m.angular_velocity)),
        ('linear_acceleration', 'm/s^2', lambda m: _xyz(m.linear_acceleration))],
    'geometry_msgs/msg/WrenchStamped': [
        ('force', 'N', lambda m: _xyz(m.wrench.force)),
        ('torque', 'N*m', lambda m: _xyz(m.wrench.torque))],
    'nav_msgs/msg/Odometry': [
        ('position', 'm', lambda m: _xyz(m.pose.pose.position)),
        ('orientation', 'quaternion xyzw', lambda m: _xyzw(m.pose.pose.orientation)),
        ('linear_velocity', 'm/s', lambda m: _xyz(m.twist.twist.linear)),
        ('angular_velocity', 'rad/s', lambda m: _xyz(m.twist.twist.angular))],
    'sensor_msgs/msg/BatteryState': [
        ('voltage', 'V', lambda m: [m.voltage]),
        ('current', 'A', lambda m: [m.current]),
        ('percentage', '0..1', lambda m: [m.percentage])],
}
_JOINT_FIELDS = (('position', 'rad'), ('velocity', 'rad/s'), ('effort', 'N*m'))
IMAGE_TYPE = 'sensor_msgs/msg/Image'
EXPORTABLE = {_J, IMAGE_TYPE, *SIGNALS}


class ExportError(ValueError):
    """An export that cannot be done; names the bag / topic and the reason."""


# ----------------------------------------------------------------------------- CDR image header
def _cdr_string(buf: bytes, off: int) -> tuple[str, int]:
    off = (off + 3) & ~3
    (n,) = struct.unpack_from('<I', buf, off)
    return buf[off + 4: off + 4 + max(0, n - 1)].decode(), off + 4 + n


def parse_image(data: bytes) -> tuple[int, int, str, int, memoryview]:
    """``(height, width, encoding, step, pixels)`` of a CDR sensor_msgs/Image without copying
    the pixels (a full deserialisation converts 900 kB into a Python sequence first)."""
    if data[1] != 1:
        raise ExportError('big-endian CDR images are not supported')
    off = 4 + 8                                   # encapsulation, stamp
    _, off = _cdr_string(data, off)               # frame_id
    off = (off + 3) & ~3
    height, width = struct.unpack_from('<II', data, off)
    encoding, off = _cdr_string(data, off + 8)
    off += 1                                      # is_bigendian
    off = (off + 3) & ~3
    (step,) = struct.unpack_from('<I', data, off)
    (n,) = struct.unpack_from('<I', data, off + 4)
    return height, width, encoding, step, memoryview(data)[off + 8: off + 8 + n]


IMAGE_CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, '8UC1': 1, '8UC3': 3}


def image_pixels(data: bytes) -> tuple[str, np.ndarray]:
    """``(encoding, (H, W, C) uint8 view)`` of a CDR image; ExportError for other encodings."""
    h, w, enc, step, px = parse_image(data)
    if enc not in IMAGE_CHANNELS:
        raise ExportError(f'image encoding {enc!r} is not supported (8-bit rgb/bgr/mono only)')
    c = IMAGE_CHANNELS[enc]
    return enc, np.frombuffer(px, np.uint8).reshape(h, step)[:, : w * c].reshape(h, w, c)


def image_to_bgr(data: bytes) -> np.ndarray:
    """The frame as an OpenCV BGR (or mono) uint8 array; ExportError for other encodings."""
    import cv2
    enc, arr = image_pixels(data)
    if enc == 'rgb8':
        return cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if enc == 'rgba8':
        return cv2.cvtColor(arr, cv2.COLOR_RGBA2BGR)
    if enc == 'bgra8':
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2BGR)
    return arr if arr.shape[2] == 3 else arr[:, :, 0]


# ----------------------------------------------------------------------------- image sinks
class _FrameSink:
    """Writes one camera's frames (MP4 via cv2.VideoWriter, or PNG files) in its own thread."""

    def __init__(self, folder: Path, name: str, mode: str, fps: float) -> None:
        self.name, self.mode, self.fps = name, mode, fps
        self.times: list[int] = []
        self.error: str = ''
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        safe = name.strip('/').replace('/', '_')
        if mode == 'mp4':
            folder = folder / 'videos'
            self.path = folder / f'{safe}.mp4'
        else:
            folder = folder / 'images' / safe
            self.path = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.times_path = (folder if mode == 'mp4' else folder.parent) / f'{safe}.timestamps.parquet'
        self.shape: tuple[int, ...] = ()
        self._writer = None
        self._thread = threading.Thread(target=self._run, name=f'export-{safe}', daemon=True)
        self._thread.start()

    def put(self, t_ns: int, data: bytes) -> int:
        self.times.append(t_ns)
        self._q.put(data)
        return len(self.times) - 1

    def _run(self) -> None:
        import cv2
        index = 0
        while (data := self._q.get()) is not None:
            if self.error:
                continue
            try:
                frame = image_to_bgr(data)
                if self.mode == 'mp4':
                    if self._writer is None:
                        self.shape = frame.shape
                        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*'mp4v'),
                                                       self.fps, (frame.shape[1], frame.shape[0]),
                                                       frame.ndim == 3)
                        if not self._writer.isOpened():
                            raise ExportError(f'{self.path}: OpenCV cannot open an MP4 writer')
                    self._writer.write(frame)
                else:
                    self.shape = frame.shape
                    cv2.imwrite(str(self.path / f'{index:06d}.png'), frame)
                index += 1
            except (ExportError, ValueError, struct.error) as exc:
                self.error = f'{self.name}: {exc}'

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        self._q.put(None)
        self._thread.join()
        if self._writer is not None:
            self._writer.release()
        pq.write_table(pa.table({'frame_index': np.arange(len(self.times), dtype=np.int64),
                                 'time_ns': np.asarray(self.times, dtype=np.int64)}), self.times_path)


# ----------------------------------------------------------------------------- signals
@dataclass
class _Signal:
    column: str
    topic: str
    type: str
    unit: str
    width: int
    getter: Callable[[Any], Sequence[float]]
    labels: list[str] | None = None


@dataclass
class _TopicState:
    topic: str
    type: str
    cls: type | None
    signals: list[_Signal] = field(default_factory=list)
    raw: bytes | None = None           # latest message, deserialised lazily when a tick uses it
    values: list[np.ndarray] | None = None
    names: list[str] | None = None


def _deserializer():
    from rclpy.serialization import deserialize_message
    return deserialize_message


def _joint_signals(topic: str, first: Any) -> list[_Signal]:
    names = list(first.name)
    col = topic.strip('/')
    out = []
    for attr, unit in _JOINT_FIELDS:
        out.append(_Signal(f'{col}.{attr}', topic, _J, unit, len(names),
                           lambda m, a=attr: getattr(m, a), names))
    return out


def _joint_vector(msg: Any, attr: str, names: list[str]) -> np.ndarray:
    seq = getattr(msg, attr)
    if len(seq) == len(names) and list(msg.name) == names:
        return np.asarray(seq, dtype=np.float64)
    out = np.full(len(names), np.nan)
    index = {n: i for i, n in enumerate(names)}
    for n, v in zip(msg.name, seq, strict=False):
        if n in index:
            out[index[n]] = v
    return out


@dataclass
class EpisodeResult:
    folder: Path
    rows: int
    videos: dict[str, int]
    warnings: list[str]


def _episode_folder(out: Path, index: int, episode: Episode | None) -> Path:
    if episode is None:
        return out / f'episode_{index:03d}'
    safe = ''.join(c if c.isalnum() or c in '-_' else '_' for c in episode.name)[:60]
    return out / f'episode_{index:03d}_{safe}'


def choose_topics(bag: Bag, topics: Iterable[str] | None) -> tuple[list[str], list[str]]:
    """Exportable topics (all supported ones by default) and warnings for the rest."""
    warnings = []
    if topics:
        wanted = ['/' + t.lstrip('/') for t in topics]
        missing = [t for t in wanted if t not in bag.topics]
        if missing:
            raise ExportError(f'{bag.path}: topic(s) not in the bag: {", ".join(missing)}')
    else:
        wanted = list(bag.topics)
    chosen = []
    for t in wanted:
        if bag.topics[t].type in EXPORTABLE:
            chosen.append(t)
        elif topics:
            warnings.append(f'{t}: type {bag.topics[t].type} is not exportable (skipped)')
    if not chosen:
        raise ExportError(f'{bag.path}: no exportable topic (supported types: '
                          f'{", ".join(sorted(EXPORTABLE))})')
    return chosen, warnings


def export_episode(bag: Bag, topics: Sequence[str], out: Path, start_ns: int, end_ns: int, *,
                   rate_hz: float, images: str, index: int = 0, name: str = '',
                   progress: Callable[[int], None] | None = None) -> EpisodeResult:
    """Export ``[start_ns, end_ns]`` of ``topics`` into ``out`` (created); see module docstring."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from field_deploy.ros import message_class

    deserialize = _deserializer()
    out.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    states: dict[str, _TopicState] = {}
    sinks: dict[str, _FrameSink] = {}
    latest_frame: dict[str, int] = {}
    period = round(1e9 / rate_hz)
    for t in topics:
        info = bag.topics[t]
        if info.type == IMAGE_TYPE:
            if images == 'none':
                continue
            dur = max(bag.duration_ns, 1) / 1e9
            fps = max(1.0, round(info.count / dur, 3)) if info.count > 1 else 30.0
            sinks[t] = _FrameSink(out, t.strip('/').removesuffix('/image_raw'), images, fps)
            latest_frame[t] = -1
            continue
        try:
            cls = message_class(info.type)
        except LookupError as exc:
            warnings.append(f'{t}: {exc} (skipped)')
            continue
        st = _TopicState(t, info.type, cls)
        if info.type in SIGNALS:
            col = t.strip('/')
            for suffix, unit, getter in SIGNALS[info.type]:
                width = len(getter(cls()))
                st.signals.append(_Signal(f'{col}.{suffix}', t, info.type, unit, width, getter))
        states[t] = st

    # the joint-state layout needs its first message (joint names): a cheap lookahead
    for t, st in states.items():
        if st.type == _J:
            first = next(iter(bag.messages([t], start_ns, end_ns + 1)), None)
            if first is None:
                warnings.append(f'{t}: no message in this episode (skipped)')
                continue
            msg = deserialize(first.data, st.cls)
            st.signals = _joint_signals(t, msg)
            st.names = list(msg.name)
            st.signals = [s for s in st.signals if len(getattr(msg, s.column.rsplit('.', 1)[1]))
                          or s.column.endswith('.position')]
    states = {t: s for t, s in states.items() if s.signals}
    signals = [s for st in states.values() for s in st.signals]

    schema = pa.schema([('timestamp', pa.float64()), ('time_ns', pa.int64()),
                        ('frame_index', pa.int64()), ('episode_index', pa.int64()),
                        *[(s.column, pa.list_(pa.float64(), s.width)) for s in signals],
                        *[(f'{sink.name}.frame_index', pa.int64()) for sink in sinks.values()]])
    writer = pq.ParquetWriter(out / 'data.parquet', schema, compression='zstd')
    rows: dict[str, list] = {name: [] for name in schema.names}
    nrows = 0
    nan_cache = {s.column: np.full(s.width, np.nan) for s in signals}

    def flush_rows() -> None:
        if not rows['time_ns']:
            return
        arrays = [pa.array(rows['timestamp'], pa.float64()), pa.array(rows['time_ns'], pa.int64()),
                  pa.array(rows['frame_index'], pa.int64()), pa.array(rows['episode_index'], pa.int64())]
        for s in signals:
            flat = np.concatenate(rows[s.column]) if rows[s.column] else np.zeros(0)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float64()), s.width))
        for sink in sinks.values():
            arrays.append(pa.array(rows[f'{sink.name}.frame_index'], pa.int64()))
        writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
        for v in rows.values():
            v.clear()

    def values_of(st: _TopicState) -> list[np.ndarray]:
        if st.raw is not None:
            msg = deserialize(st.raw, st.cls)
            if st.type == _J:
                st.values = [_joint_vector(msg, s.column.rsplit('.', 1)[1], st.names or [])
                             for s in st.signals]
            else:
                st.values = [np.asarray(s.getter(msg), dtype=np.float64) for s in st.signals]
            st.raw = None
        return st.values or [nan_cache[s.column] for s in st.signals]

    tick = start_ns

    def emit_until(t_ns: int) -> None:
        """Emit every tick strictly before ``t_ns`` with the current latest values."""
        nonlocal tick, nrows
        while tick < t_ns and tick <= end_ns:
            rows['timestamp'].append((tick - start_ns) / 1e9)
            rows['time_ns'].append(tick)
            rows['frame_index'].append(nrows)
            rows['episode_index'].append(index)
            for st in states.values():
                for s, v in zip(st.signals, values_of(st), strict=True):
                    rows[s.column].append(v)
            for t, sink in sinks.items():
                rows[f'{sink.name}.frame_index'].append(latest_frame[t])
            nrows += 1
            tick += period
            if len(rows['time_ns']) >= ROW_GROUP:
                flush_rows()

    wanted = list(states) + list(sinks)
    done = 0
    try:
        for m in bag.messages(wanted, start_ns, end_ns + 1):
            emit_until(m.log_time_ns)     # ticks before this message keep the previous value
            st = states.get(m.topic)
            if st is not None:
                st.raw = m.data
            else:
                latest_frame[m.topic] = sinks[m.topic].put(m.log_time_ns, m.data)
            if progress is not None:
                done += 1
                if done >= 1000:
                    progress(done)
                    done = 0
        emit_until(end_ns + 1)
        flush_rows()
    finally:
        writer.close()
        for sink in sinks.values():
            sink.close()
    if progress is not None and done:
        progress(done)
    for sink in sinks.values():
        if sink.error:
            warnings.append(sink.error)

    manifest = {
        'format': FORMAT, 'bag': str(bag.path), 'episode_index': index, 'episode': name,
        'start_time_ns': start_ns, 'end_time_ns': end_ns, 'rate_hz': rate_hz, 'rows': nrows,
        'marks': marks_between(bag.marks, start_ns, end_ns),
        'resampling': 'zero-order hold (latest message at or before each tick; NaN before the first)',
        'table': 'data.parquet',
        'fields': {
            'timestamp': {'dtype': 'float64', 'shape': [], 'unit': 's since episode start'},
            'time_ns': {'dtype': 'int64', 'shape': [], 'unit': 'ns, bag log time'},
            'frame_index': {'dtype': 'int64', 'shape': [], 'unit': 'row index'},
            'episode_index': {'dtype': 'int64', 'shape': [], 'unit': ''},
            **{s.column: {'dtype': 'float64', 'shape': [s.width], 'unit': s.unit,
                          'source_topic': s.topic, 'source_type': s.type,
                          'source_rate_hz': _rate(bag, s.topic),
                          **({'names': s.labels} if s.labels else {})} for s in signals},
            **{f'{sink.name}.frame_index': {'dtype': 'int64', 'shape': [],
                                            'unit': f'frame of {sink.path.name} shown at this tick '
                                                    '(-1: none yet)'} for sink in sinks.values()}},
        'videos' if images == 'mp4' else 'images': {
            sink.name: {'path': str(sink.path.relative_to(out)), 'frames': len(sink.times),
                        'fps': sink.fps, 'shape': list(sink.shape), 'source_topic': t,
                        'timestamps': str(sink.times_path.relative_to(out)),
                        'codec': 'mp4v' if images == 'mp4' else 'png'}
            for t, sink in sinks.items()},
        'warnings': warnings,
    }
    (out / 'manifest.json').write_text(json.dumps(manifest, indent=2))
    return EpisodeResult(out, nrows, {s.name: len(s.times) for s in sinks.values()}, warnings)


def _rate(bag: Bag, topic: str) -> float:
    n = bag.topics[topic].count
    return round((n - 1) / (bag.duration_ns / 1e9), 3) if n > 1 and bag.duration_ns > 0 else 0.0


def _is_bag_dir(p: Path) -> bool:
    return p.is_dir() and ((p / 'metadata.yaml').exists() or any(p.glob('*.mcap')))


def planned_messages(path: str | Path, topics: Sequence[str] | None, images: str) -> int:
    """How many messages :func:`export` will read (for a progress bar)."""
    total = 0
    for bag_path in find_bags(Path(path)):
        bag = Bag(bag_path)
        chosen, _ = choose_topics(bag, topics)
        total += sum(bag.topics[t].count for t in chosen
                     if images != 'none' or bag.topics[t].type != IMAGE_TYPE)
    return total


def find_bags(path: Path) -> list[Path]:
    """``path`` itself if it is a bag, else the bags directly inside it (sorted): rosbag2
    directories and loose ``.mcap`` files. A directory holding both loose MCAP files and bag
    directories is a folder of bags; one with only MCAP files is a bag (e.g. a crashed recording)."""
    if path.is_file() or (path / 'metadata.yaml').exists():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f'{path}: no such bag or folder')
    subdirs = sorted(p for p in path.iterdir() if _is_bag_dir(p))
    if not subdirs and any(path.glob('*.mcap')):
        return [path]
    bags = sorted([*subdirs, *path.glob('*.mcap')])
    if not bags:
        raise ExportError(f'{path}: no bag in this folder')
    return bags


def export(path: str | Path, out: str | Path, *, topics: Sequence[str] | None = None,
           rate_hz: float = 50.0, images: str = 'mp4',
           progress: Callable[[int], None] | None = None) -> list[EpisodeResult]:
    """Export a bag (or every bag of a folder) into ``out``; one folder per episode.
    ``progress(n)`` is called with the number of messages read since the last call."""
    if images not in ('mp4', 'png', 'none'):
        raise ExportError(f'--images must be mp4, png or none (got {images!r})')
    if not rate_hz > 0:
        raise ExportError(f'--rate must be > 0 Hz (got {rate_hz})')
    path, out = Path(path), Path(out)
    bags = find_bags(path)
    results = []
    for bag_path in bags:
        bag = Bag(bag_path)
        chosen, warnings = choose_topics(bag, topics)
        target = out if len(bags) == 1 else out / bag_path.stem
        episodes: list[Episode | None] = list(bag.episodes) or [None]
        for i, ep in enumerate(episodes):
            start, end = (bag.start_ns, bag.end_ns) if ep is None else (ep.start_ns, ep.end_ns)
            res = export_episode(bag, chosen, _episode_folder(target, i, ep), start, end,
                                 rate_hz=rate_hz, images=images, index=i,
                                 name=ep.name if ep else bag_path.name, progress=progress)
            res.warnings[:0] = warnings
            results.append(res)
    return results
