"""The two halves of staging an episode: its frames (:class:`EpisodeFrames`: the features'
vectors, the images handed to the cameras, the stamp gaps of every stream) and the dataset files
they go to (:class:`DatasetWriter`: the data Parquet, the episode rows, the videos, tasks, stats,
info), all inside the aside copy of :mod:`data_recorder.export.lerobot.store`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from data_recorder.capture.accounting import TopicStats
from data_recorder.export.lerobot import layout as lay
from data_recorder.export.lerobot import store as store
from data_recorder.export.lerobot.mapping import Plan
from data_recorder.export.lerobot.video import CameraVideo, video_info
from data_recorder.export.parquet import ExportError


class EpisodeFrames:
    """Frames of one episode: vectors per feature, images to the cameras, per-stream gaps."""

    def __init__(self, pl: Plan, videos: dict[str, CameraVideo]) -> None:
        from rclpy.serialization import deserialize_message

        from field_deploy.ros import message_class
        self._deser = deserialize_message
        self._cls = {t: message_class(s.type) for t, s in pl.sources.items()}
        self.plan, self.videos = pl, videos
        self.columns: dict[str, list[np.ndarray]] = {k: [] for k, f in pl.features.items()
                                                     if f['dtype'] != 'video'}
        self.gaps = {t: TopicStats() for t in [*pl.sources, *pl.cameras]}
        self._gaps_before: dict[str, int] = {}
        self._cache: dict[str, tuple[int, list[np.ndarray]]] = {}
        self.first_time_ns: int | None = None
        self.last_time_ns: int | None = None
        self.frames = 0

    def observe(self, topic: str, stamp: int, start_ns: int, end_ns: int) -> None:
        """Holes in a stream's sample stamps (the recorder's rule, :class:`TopicStats`): learned
        over the pre-roll too, counted from the episode's start (a hole reaching into it counts)."""
        if stamp > end_ns:
            return
        gaps = self.gaps[topic]
        if stamp >= start_ns and topic not in self._gaps_before:
            self._gaps_before[topic] = gaps.lost_gaps
        gaps.observe_stamp(stamp)

    def lost(self, topic: str) -> int:
        """Holes inside the episode, plus the samples a periodic stream owed after its last one up
        to the last frame (a stream that stopped inside the episode: frames held a stale sample)."""
        gaps = self.gaps[topic]
        inside = gaps.lost_gaps - self._gaps_before.get(topic, gaps.lost_gaps)
        return inside + (gaps.due_before(self.last_time_ns) if self.last_time_ns is not None else 0)

    def vectors(self, topic: str, sample: Any) -> list[np.ndarray]:
        cached = self._cache.get(topic)
        if cached is not None and cached[0] == sample.seq:
            return cached[1]
        msg = self._deser(sample.payload, self._cls[topic])
        out = [g(msg) for g in self.plan.sources[topic].getters]
        self._cache[topic] = (sample.seq, out)
        return out

    def add(self, frame: Any) -> None:
        if any(s is None for s in frame.samples.values()):
            if self.frames:                 # cannot happen: a held sample is never dropped
                raise ExportError(f'frame {frame.index}: a stream lost its held sample')
            return                          # leading frames before every stream has a sample
        if self.first_time_ns is None:
            self.first_time_ns = frame.time_ns
        self.last_time_ns = frame.time_ns
        state = None
        for topic, src in self.plan.sources.items():
            for key, vec in zip(src.features, self.vectors(topic, frame.samples[topic]), strict=True):
                if key == 'observation.state':
                    state = vec
                self.columns[key].append(vec)
        action = self.columns['action'][-1]
        if state is not None and np.isnan(action).any():  # a joint never commanded: it holds
            self.columns['action'][-1] = np.where(np.isnan(action), state, action)
        for topic, key in self.plan.cameras.items():
            self.videos[key].add(frame.samples[topic].payload)
        self.frames += 1


class DatasetWriter:
    """Stages episodes into the aside copy: data file, episode rows, videos, tasks, stats."""

    def __init__(self, staging: Path, state: store.DatasetState, features: dict[str, dict[str, Any]],
                 fps: int, codec: str) -> None:
        import pyarrow as pa
        self.root, self.state, self.features, self.fps = staging, state, features, fps
        self.tasks = list(state.tasks)
        self.episode_index = state.total_episodes
        self.frame_index = state.total_frames
        self.rows: list[dict[str, Any]] = []
        self.stats: list[dict[str, lay.Stats]] = [state.stats] if state.stats else []
        self._data = state.next_data
        self._data_writer = None
        self._data_frames = 0
        vector_keys = [k for k, f in features.items() if f['dtype'] != 'video']
        self.schema = pa.schema(
            [(k, pa.list_(pa.float32(), features[k]['shape'][0])) for k in vector_keys]
            + [('timestamp', pa.float32()), ('frame_index', pa.int64()), ('episode_index', pa.int64()),
               ('index', pa.int64()), ('task_index', pa.int64())])
        temp = staging / '.encoding'
        temp.mkdir(exist_ok=True)
        self.temp = temp
        self.videos = {k: CameraVideo(staging, k, fps, state.next_video.get(k, (0, 0)), codec=codec,
                                      size_limit_mb=lay.VIDEO_FILES_SIZE_IN_MB,
                                      chunks_size=lay.CHUNKS_SIZE, temp_dir=temp)
                       for k, f in features.items() if f['dtype'] == 'video'}

    def task_index(self, task: str) -> int:
        if task not in self.tasks:
            self.tasks.append(task)
        return self.tasks.index(task)

    def _data_file(self, table_bytes: int) -> tuple[int, int]:
        import pyarrow.parquet as pq
        path = self.root / lay.DATA_PATH.format(chunk_index=self._data[0], file_index=self._data[1])
        limit = lay.DATA_FILES_SIZE_IN_MB * 2**20
        if self._data_writer is not None and path.stat().st_size + table_bytes >= limit:
            self._data_writer.close()
            self._data_writer = None
            self._data = lay.next_file(*self._data)
            path = self.root / lay.DATA_PATH.format(chunk_index=self._data[0], file_index=self._data[1])
        if self._data_writer is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, self.schema, compression='snappy')
        return self._data

    def write(self, ep: EpisodeFrames, task: str, marks: dict[str, Any]) -> int:
        """Stage a kept episode; returns its episode index."""
        import pyarrow as pa
        n, index = ep.frames, self.episode_index
        task_idx = self.task_index(task)
        arrays = {k: np.stack(v).astype(np.float32) for k, v in ep.columns.items()}
        frame_index = np.arange(n, dtype=np.int64)
        defaults = {'timestamp': (frame_index / self.fps).astype(np.float32), 'frame_index': frame_index,
                    'episode_index': np.full(n, index, np.int64),
                    'index': np.arange(self.frame_index, self.frame_index + n, dtype=np.int64),
                    'task_index': np.full(n, task_idx, np.int64)}
        cols = []
        for f in self.schema:
            if f.name in arrays:
                flat = pa.array(arrays[f.name].reshape(-1))
                cols.append(pa.FixedSizeListArray.from_arrays(flat, f.type.list_size))
            else:
                cols.append(pa.array(defaults[f.name], f.type))
        table = pa.Table.from_arrays(cols, schema=self.schema)
        chunk, file = self._data_file(table.nbytes // 4)
        self._data_writer.write_table(table)                  # one row group per episode
        stats = {k: lay.vector_stats(v) for k, v in {**arrays, **defaults}.items()}
        row: dict[str, Any] = {'episode_index': index, 'tasks': [task], 'length': n,
                               'data/chunk_index': chunk, 'data/file_index': file,
                               'dataset_from_index': self.frame_index,
                               'dataset_to_index': self.frame_index + n}
        for key, video in self.videos.items():
            span = video.end_episode(keep=True)
            if span is None or round((span.to_timestamp - span.from_timestamp) * self.fps) != n:
                raise ExportError(f'{key}: {video.episode_frames} video frames for {n} data frames')
            row.update({f'videos/{key}/chunk_index': span.chunk_index,
                        f'videos/{key}/file_index': span.file_index,
                        f'videos/{key}/from_timestamp': span.from_timestamp,
                        f'videos/{key}/to_timestamp': span.to_timestamp})
            stats[key] = lay.pixel_stats(video.histogram, n)
        row.update(lay.flat_stats(stats))
        row.update({'meta/episodes/chunk_index': self.state.next_meta[0],
                    'meta/episodes/file_index': self.state.next_meta[1]})
        row.update({f'field_deploy/{k}': v for k, v in marks.items()})
        self.rows.append(row)
        self.stats.append(stats)
        self.episode_index += 1
        self.frame_index += n
        return index

    def drop(self) -> None:
        for video in self.videos.values():
            video.end_episode(keep=False)

    def finish(self, robot: str, provenance: dict[str, Any]) -> dict[str, Any]:
        """Close the files and write the metadata (new files: never into a hard-linked original)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        if self._data_writer is not None:
            self._data_writer.close()
        for video in self.videos.values():
            video.close()
        for p in self.temp.iterdir():
            p.unlink()
        self.temp.rmdir()
        if self.rows:
            path = self.root / lay.EPISODES_PATH.format(chunk_index=self.state.next_meta[0],
                                                        file_index=self.state.next_meta[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(self.rows), path, compression='snappy')
        features = {k: dict(v) for k, v in self.features.items()}
        old = (self.state.info or {}).get('features', {})
        for key, video in self.videos.items():
            features[key]['info'] = old.get(key, {}).get('info') or (
                video_info(video.first_path) if video.first_path else {})
        info = lay.info_dict(fps=self.fps, features=features, robot_type=robot,
                             total_episodes=self.episode_index, total_frames=self.frame_index,
                             total_tasks=len(self.tasks), has_video=bool(self.videos))
        lay.write_json_atomic(store.fresh(self.root / lay.INFO_PATH), info)
        lay.write_json_atomic(store.fresh(self.root / lay.STATS_PATH),
                              lay.stats_to_json(lay.aggregate(self.stats)) if self.stats else {})
        lay.write_tasks(store.fresh(self.root / lay.TASKS_PATH), self.tasks)
        lay.write_json_atomic(store.fresh(self.root / lay.PROVENANCE_PATH), provenance)
        return info

    def abandon(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
        for video in self.videos.values():
            with contextlib.suppress(ExportError):
                video.close()
