"""Camera frames → the MP4 files of a LeRobot v3.0 dataset, with PyAV (the encoder LeRobot uses).

LeRobot's defaults (``lerobot/configs/video.py``, ``video_utils.encode_video_frames``): AV1 by
``libsvtav1``, ``yuv420p``, a key frame every 2 frames (``g=2``: random access for training),
``crf=30``, preset 12. One MP4 per camera holds many episodes one after the other at the dataset's
fps (frame ``k`` of the file at ``k / fps``), and an episode is the span ``[from_timestamp,
to_timestamp)`` of it; a file is closed and the next one begun once it would pass the size limit
(``video_files_size_in_mb``), at an episode boundary, as LeRobot does. Each episode is encoded to a
file of its own in the camera's thread (PyAV releases the GIL while encoding), then appended by
remuxing (no re-encoding); an episode that turns out to be left out is just not appended.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_recorder.export.lerobot.layout import VIDEO_PATH, next_file
from data_recorder.export.parquet import ExportError, image_pixels, parse_image

DEFAULT_CODEC = 'libsvtav1'
PIX_FMT = 'yuv420p'
STATS_STRIDE = 4                        # pixel stats on every 4th row and column (LeRobot: ~150 px)


def codec_options(codec: str) -> dict[str, str]:
    """LeRobot's encoder options for ``codec`` (``VideoEncoderConfig.get_codec_options``)."""
    if codec == 'libsvtav1':
        return {'g': '2', 'crf': '30', 'preset': '12'}
    if codec in ('libx264', 'h264', 'libx265', 'hevc'):
        return {'g': '2', 'crf': '30', 'preset': 'veryfast'}
    return {'g': '2'}


def image_to_rgb(data: bytes) -> np.ndarray:
    """A CDR sensor_msgs/Image as an ``(H, W, 3)`` uint8 RGB array (LeRobot's frames are RGB)."""
    enc, arr = image_pixels(data)
    if enc in ('bgr8', 'bgra8'):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def image_shape(data: bytes) -> tuple[int, int]:
    h, w, *_ = parse_image(data)
    return h, w


@dataclass
class VideoSpan:
    chunk_index: int
    file_index: int
    from_timestamp: float
    to_timestamp: float


class CameraVideo:
    """One camera's MP4 files under ``root``: raw images in, one :class:`VideoSpan` per kept episode.

    Each episode is encoded to its own file in ``temp_dir`` (in the camera's thread); a kept
    episode is then appended to the dataset's current MP4 by remuxing its packets with a time
    offset (what LeRobot's ``concatenate_video_files`` does, without rewriting the file so far),
    a dropped one is deleted. ``start`` is the ``(chunk, file)`` of the first file this writer
    creates: never an existing file (appending starts a new one, as LeRobot does when it resumes).
    """

    def __init__(self, root: Path, key: str, fps: int, start: tuple[int, int], *, codec: str,
                 size_limit_mb: float, chunks_size: int, temp_dir: Path) -> None:
        self.root, self.key, self.fps, self.codec = root, key, fps, codec
        self.size_limit = size_limit_mb * 1024 * 1024
        self.chunks_size, self.temp_dir = chunks_size, temp_dir
        self._chunk, self._file = start
        self._out = self._out_stream = None
        self._frames_in_file = 0
        self._episodes = 0
        self.first_path: Path | None = None
        self.shape: tuple[int, int] | None = None
        self.error: BaseException | None = None
        self.histogram = np.zeros((3, 256), np.int64)
        self.episode_frames = 0
        self.frames_encoded = 0
        self.encode_seconds = 0.0
        self._enc = self._enc_stream = None
        self._temp: Path | None = None
        self._q: queue.Queue = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name=f'lerobot-video-{key}', daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- caller side
    def path(self) -> Path:
        return self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self._chunk,
                                             file_index=self._file)

    def begin_episode(self) -> None:
        self._command('flush')
        self._temp = self.temp_dir / f'{self.key}-{self._episodes:06d}.mp4'
        self._episodes += 1
        self.histogram = np.zeros((3, 256), np.int64)
        self.episode_frames = 0

    def add(self, data: bytes) -> None:
        """Queue one raw CDR image (decoded and encoded in the camera's thread)."""
        self._raise()
        self._q.put(data)

    def end_episode(self, keep: bool) -> VideoSpan | None:
        """Finish the episode's file; append it to the dataset's MP4 if ``keep``."""
        self._command('flush')
        temp, self._temp = self._temp, None
        if temp is None or not temp.exists():
            return None
        try:
            return self._append(temp) if keep else None
        finally:
            temp.unlink(missing_ok=True)

    def close(self) -> None:
        """Flush and close everything (the dataset's last MP4 gets its index)."""
        self._q.put(None)
        self._thread.join()
        self._raise()
        if self._out is not None:
            self._out.close()
            self._out = self._out_stream = None

    def _command(self, what: str) -> None:
        done = threading.Event()
        self._q.put((what, done))
        while not done.wait(0.5):
            if not self._thread.is_alive():
                break
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise ExportError(f'{self.key}: video encoding failed: {self.error}') from self.error

    # ---------------------------------------------------------------- dataset file (caller thread)
    def _append(self, temp: Path) -> VideoSpan:
        import av
        if self._out is not None and self.path().stat().st_size + temp.stat().st_size >= self.size_limit:
            self._out.close()
            self._out = self._out_stream = None
            self._chunk, self._file = next_file(self._chunk, self._file, self.chunks_size)
        with av.open(str(temp)) as src:
            stream = src.streams.video[0]
            if self._out is None:
                path = self.path()
                path.parent.mkdir(parents=True, exist_ok=True)
                self.first_path = self.first_path or path
                self._out = av.open(str(path), 'w')
                self._out_stream = self._out.add_stream_from_template(stream, opaque=True)
                self._out_stream.time_base = stream.time_base
                self._frames_in_file = 0
            tb = stream.time_base
            ticks = tb.denominator / (self.fps * tb.numerator)
            if ticks != int(ticks):
                raise ExportError(f'{temp}: time base {tb} is not a whole number of ticks per frame')
            offset = self._frames_in_file * int(ticks)
            packets = 0
            for packet in src.demux(stream):
                if packet.dts is None:
                    continue
                packet.dts += offset
                if packet.pts is not None:
                    packet.pts += offset
                packet.stream = self._out_stream
                self._out.mux(packet)
                packets += 1
        if packets != self.episode_frames:
            raise ExportError(f'{self.key}: {packets} packets for {self.episode_frames} frames')
        first = self._frames_in_file
        self._frames_in_file += packets
        return VideoSpan(self._chunk, self._file, first / self.fps, self._frames_in_file / self.fps)

    # ---------------------------------------------------------------- encoder thread
    def _run(self) -> None:
        import time
        while True:
            item = self._q.get()
            if item is None:
                self._flush()
                return
            if isinstance(item, tuple):
                self._flush()
                item[1].set()
                continue
            if self.error is not None:
                continue
            try:
                t0 = time.perf_counter()
                self._encode(image_to_rgb(item))
                self.encode_seconds += time.perf_counter() - t0
            except Exception as exc:  # reported to the caller by _raise
                self.error = exc

    def _encode(self, rgb: np.ndarray) -> None:
        import av
        h, w = rgb.shape[:2]
        if self.shape is None:
            self.shape = (h, w)
        elif self.shape != (h, w):
            raise ExportError(f'frame size changed from {self.shape[1]}x{self.shape[0]} to {w}x{h}')
        if self._enc is None:
            os.environ.setdefault('SVT_LOG', '1')     # SVT-AV1 prints its banner otherwise
            self._enc = av.open(str(self._temp), 'w')
            stream = self._enc.add_stream(self.codec, self.fps, options=codec_options(self.codec))
            stream.pix_fmt = PIX_FMT
            stream.width, stream.height = w, h
            self._enc_stream = stream
        frame = av.VideoFrame.from_ndarray(rgb, format='rgb24')
        frame.pts = self.episode_frames
        for packet in self._enc_stream.encode(frame):
            self._enc.mux(packet)
        self.episode_frames += 1
        self.frames_encoded += 1
        sub = rgb[::STATS_STRIDE, ::STATS_STRIDE].reshape(-1, 3)
        for c in range(3):
            self.histogram[c] += np.bincount(sub[:, c], minlength=256)

    def _flush(self) -> None:
        if self._enc is None:
            return
        try:
            if self.error is None:
                for packet in self._enc_stream.encode():
                    self._enc.mux(packet)
            self._enc.close()
        except Exception as exc:  # reported to the caller by _raise
            self.error = self.error or exc
        self._enc = self._enc_stream = None


def video_info(path: Path) -> dict[str, object]:
    """The ``info`` block LeRobot keeps per video feature (``get_video_info``), probed from the file."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {'video.height': stream.height, 'video.width': stream.width,
                'video.codec': stream.codec.canonical_name, 'video.pix_fmt': stream.pix_fmt,
                'video.is_depth_map': False, 'is_depth_map': False,
                'video.fps': int(stream.base_rate), 'video.channels': 3, 'has_audio': False}
