"""``bag export --format lerobot``: bags → one LeRobot v3.0 dataset that LeRobot itself loads.

Each skill run marked in a bag (``data_recorder.episodes``) is one LeRobot episode; its task is
the skill with its parameters (or ``task=``). Frames are ``fps`` apart from the episode's start,
each holding every stream's latest sample at or before the frame by sample stamp
(:mod:`data_recorder.lerobot_sampling`); features come from the robot profile
(:mod:`data_recorder.lerobot_mapping`); the files are LeRobot's (:mod:`data_recorder.lerobot_layout`,
:mod:`data_recorder.lerobot_video`); an export into an existing dataset appends, and an export that
does not finish leaves the dataset as it was (:mod:`data_recorder.lerobot_store`).

An episode whose skill did not end ``done``, or whose streams lost messages (holes in a periodic
stream's sample stamps inside the episode, or losses the recorder counted but could not place in
time), is left out unless ``include_failed``; kept ones carry the mark in ``meta/episodes``
(columns ``field_deploy/*``). Memory per episode: the frames' vectors (small) and the images
the recorder's lag keeps ahead of the pending frame.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_recorder import lerobot_layout as lay
from data_recorder import lerobot_store as store
from data_recorder.accounting import TopicStats
from data_recorder.export import ExportError, find_bags
from data_recorder.lerobot_mapping import Plan, feature_differences, infer_profile, plan
from data_recorder.lerobot_sampling import NS, FrameSampler
from data_recorder.lerobot_video import DEFAULT_CODEC, CameraVideo, image_shape, video_info
from data_recorder.reader import Bag, Episode
from data_recorder.writer import header_stamp_ns
from field_deploy.profile import RobotProfile, load_profile

FORMAT = 'field_deploy bag export → LeRobot v3.0'
PRE_NS = NS                      # read this much before an episode: the samples held at its start
DEFAULT_FPS_NO_CAMERA = 50
#: ``hook(event, detail)``: called after each episode is staged ('episode') and just before the
#: staged dataset replaces the old one ('commit'). Raising from it abandons the export exactly as a
#: kill would (tests use it to interrupt an export at a known point).
Hook = Callable[[str, dict[str, Any]], None]


@dataclass
class EpisodeReport:
    bag: str
    name: str
    exported: bool
    reason: str = ''
    episode_index: int | None = None
    frames: int = 0
    lost: int = 0
    task: str = ''


@dataclass
class ExportReport:
    root: Path
    fps: int
    robot: str
    episodes: list[EpisodeReport] = field(default_factory=list)
    total_episodes: int = 0
    total_frames: int = 0
    seconds: float = 0.0
    frames_encoded: int = 0
    encode_seconds: float = 0.0
    messages: int = 0


def task_text(fields: dict[str, str], fallback: str) -> str:
    """``pack/skill(param=value, …)`` from an episode's skill and parameters."""
    skill = fields.get('skill') or fallback
    try:
        params = json.loads(fields.get('params') or '{}')
    except ValueError:
        params = {}
    if not isinstance(params, dict) or not params:
        return skill
    return f'{skill}(' + ', '.join(f'{k}={v}' for k, v in sorted(params.items())) + ')'


def _first(bag: Bag, topic: str) -> Any:
    from rclpy.serialization import deserialize_message

    from field_deploy.ros import message_class
    raw = next(iter(bag.messages([topic])), None)
    if raw is None:
        raise ExportError(f'{bag.path}: topic {topic} has no message')
    return deserialize_message(raw.data, message_class(raw.type))


def _image_shape(bag: Bag, topic: str) -> tuple[int, int]:
    raw = next(iter(bag.messages([topic])), None)
    if raw is None:
        raise ExportError(f'{bag.path}: camera topic {topic} has no image')
    return image_shape(raw.data)


def _unplaced_losses(bag: Bag, topics: Sequence[str]) -> dict[str, int]:
    """Losses the recorder counted on ``topics`` that stamps cannot place in time (middleware,
    queue); every episode of such a bag is marked."""
    try:
        acc = json.loads(bag.custom_data.get('data_recorder.accounting') or '{}')
    except ValueError:
        return {}
    out = {}
    for t in topics:
        s = acc.get(t) or {}
        middleware, gaps = int(s.get('lost_middleware', 0)), int(s.get('lost_gaps', 0))
        n = max(0, middleware - gaps) + int(s.get('lost_queue', 0))
        if n:
            out[t] = n
    return out


class _Episode:
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


class _Writer:
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

    def write(self, ep: _Episode, task: str, marks: dict[str, Any]) -> int:
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


def _choose_fps(profile: RobotProfile, bag: Bag, pl: Plan, fps: int | None, state: store.DatasetState) -> int:
    """The dataset's fps, else ``fps``, else the cameras' rate (the profile's, else measured)."""
    if state.info is not None:
        if fps is not None and fps != state.info['fps']:
            raise lay.LayoutError(f'the dataset is at {state.info["fps"]} fps; '
                                  f'--fps {fps} cannot be appended')
        return int(state.info['fps'])
    if fps is not None:
        if fps <= 0:
            raise ExportError(f'--fps must be a positive integer (got {fps})')
        return fps
    rates = []
    for topic in pl.cameras:
        spec = next((t for t in profile.topics if topic.endswith('/' + t.name.lstrip('/'))), None)
        info = bag.topics[topic]
        rates.append(spec.rate_hz if spec else (info.count - 1) / max(bag.duration_ns / NS, 1e-9))
    return max(1, round(max(rates))) if rates else DEFAULT_FPS_NO_CAMERA


def export_lerobot(paths: Sequence[str | Path], out: str | Path, *, fps: int | None = None,
                   task: str | None = None, include_failed: bool = False, robot: str | None = None,
                   codec: str = DEFAULT_CODEC, max_delay_s: float = 10.0,
                   progress: Callable[[int], None] | None = None, hook: Hook | None = None,
                   planned: Callable[[int], None] | None = None) -> ExportReport:
    """Export the episodes of ``paths`` (bags, or folders of bags) into the dataset at ``out``
    (created, or appended to). Raises ExportError / LayoutError / MappingError naming the bag or
    file and the reason; the dataset is then unchanged. ``planned(n)`` is told once how many
    messages the export will about read, ``progress(n)`` how many it read since its last call."""
    t0 = time.perf_counter()
    root = Path(out)
    bags = [Bag(b) for p in paths for b in find_bags(Path(p))]
    if not bags:
        raise ExportError('no bag given')
    if robot:
        profile = load_profile(robot)
    else:
        from data_recorder.lerobot_mapping import resolve_topic
        topics0 = {n: t.type for n, t in bags[0].topics.items()}
        js = resolve_topic('joint_states', topics0)
        if js is None:
            raise ExportError(f'{bags[0].path}: no joint_states topic')
        profile = infer_profile(list(_first(bags[0], js).name))
    plans = []
    for bag in bags:
        pl = plan(profile, {n: t.type for n, t in bag.topics.items()},
                  lambda t, b=bag: _first(b, t), lambda t, b=bag: _image_shape(b, t))
        if plans and (diff := feature_differences(plans[0].features, pl.features)):
            raise ExportError(f'{bag.path}: its streams differ from {bags[0].path}: ' + '; '.join(diff))
        plans.append(pl)
    state = store.read_state(root)
    if state.info is not None:
        if state.info.get('robot_type') != profile.name:
            raise lay.LayoutError(f'{root}: a dataset of robot {state.info.get("robot_type")!r}; '
                                  f'these bags are of {profile.name!r}')
        old = {k: v for k, v in state.info['features'].items() if k not in lay.DEFAULT_FEATURES}
        if diff := feature_differences(old, plans[0].features):
            raise lay.LayoutError(f'{root}: features differ from the bags\': ' + '; '.join(diff))
        done = {(b['path'], b['start_ns']) for e in state.provenance.get('exports', []) for b in e['bags']}
        for bag in bags:
            if (str(bag.path.resolve()), bag.start_ns) in done:
                raise lay.LayoutError(f'{bag.path}: already exported into {root} (see '
                                      f'{lay.PROVENANCE_PATH}); not appending its episodes twice')
    rate = _choose_fps(profile, bags[0], plans[0], fps, state)
    report = ExportReport(root, rate, profile.name)
    if planned is not None:
        planned(sum(_planned_messages(bag, pl) for bag, pl in zip(bags, plans, strict=True)))
    staging = store.begin(root)
    writer = None
    try:
        writer = _Writer(staging, state, plans[0].features, rate, codec)
        sources = []
        for bag, pl in zip(bags, plans, strict=True):
            sources.append(_export_bag(bag, pl, writer, report, task=task, include_failed=include_failed,
                                       max_delay_ns=int(max_delay_s * NS), progress=progress, hook=hook))
        if not any(e.exported for e in report.episodes):
            why = '; '.join(f'{e.name}: {e.reason}' for e in report.episodes) or 'no episodes'
            raise ExportError(f'no episode to export ({why}); {root} not changed'
                              + ('' if include_failed else ' (--include-failed keeps failed ones)'))
        prov = dict(state.provenance) or {'format': FORMAT, 'robot_profile': profile.name,
                                          'joints': profile.joint_names, 'exports': []}
        prov['exports'] = [*prov.get('exports', []), {
            'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), 'fps': rate, 'codec': codec,
            'include_failed': include_failed, 'task': task, 'bags': sources}]
        for v in writer.videos.values():
            report.frames_encoded += v.frames_encoded
            report.encode_seconds += v.encode_seconds
        info = writer.finish(profile.name, prov)
        report.total_episodes, report.total_frames = info['total_episodes'], info['total_frames']
        if hook is not None:
            hook('commit', {'staging': staging})
        store.commit(staging, root)
    except BaseException:
        if writer is not None:
            writer.abandon()
        store.abort(staging)
        raise
    report.seconds = time.perf_counter() - t0
    return report


def _planned_messages(bag: Bag, pl: Plan) -> int:
    """Messages of the exported topics inside the bag's episodes (for a progress bar)."""
    topics = [*pl.sources, *pl.cameras]
    per_ns = sum(bag.topics[t].count for t in topics) / max(bag.duration_ns, 1)
    spans = [(e.end_ns - e.start_ns) for e in bag.episodes] or [bag.duration_ns]
    return int(per_ns * sum(spans))


def _export_bag(bag: Bag, pl: Plan, writer: _Writer, report: ExportReport, *, task: str | None,
                include_failed: bool, max_delay_ns: int, progress: Callable[[int], None] | None,
                hook: Hook | None) -> dict[str, Any]:
    episodes = list(bag.episodes) or [Episode(bag.path.name, bag.start_ns, bag.end_ns, {})]
    unplaced = _unplaced_losses(bag, [*pl.sources, *pl.cameras])
    listed = []
    for i, ep in enumerate(episodes):
        fields = ep.fields
        outcome, reason = fields.get('outcome', ''), fields.get('reason', '')
        text = task or task_text(fields, ep.name)
        rep = EpisodeReport(str(bag.path), ep.name, False, task=text)
        failed = f'skill {outcome}' + (f': {reason}' if reason else '') if outcome not in ('', 'done') else ''
        if failed and not include_failed:
            rep.reason = failed
        else:
            _run_episode(bag, pl, ep, writer, rep, failed=failed, unplaced=unplaced, text=text,
                         include_failed=include_failed, max_delay_ns=max_delay_ns, progress=progress)
            if rep.exported and hook is not None:
                hook('episode', {'bag': str(bag.path), 'episode': ep.name, 'index': rep.episode_index})
        report.episodes.append(rep)
        listed.append({'index_in_bag': i, 'name': ep.name, 'outcome': outcome, 'exported': rep.exported,
                       'episode_index': rep.episode_index, 'frames': rep.frames, 'lost': rep.lost,
                       'reason': rep.reason})
    return {'path': str(bag.path.resolve()), 'start_ns': bag.start_ns, 'end_ns': bag.end_ns,
            'episodes': listed}


def _run_episode(bag: Bag, pl: Plan, ep: Episode, writer: _Writer, rep: EpisodeReport, *, failed: str,
                 unplaced: dict[str, int], text: str, include_failed: bool, max_delay_ns: int,
                 progress: Callable[[int], None] | None) -> None:
    topics = [*pl.sources, *pl.cameras]
    sampler = FrameSampler(topics, ep.start_ns, ep.end_ns, writer.fps, max_delay_ns)
    for v in writer.videos.values():
        v.begin_episode()
    frames = _Episode(pl, writer.videos)
    read = 0
    try:
        for m in bag.messages(topics, ep.start_ns - PRE_NS, ep.end_ns + max_delay_ns + 1):
            stamp = header_stamp_ns(m.data) or m.log_time_ns
            frames.observe(m.topic, stamp, ep.start_ns, ep.end_ns)
            for f in sampler.push(m.topic, stamp, m.data, m.log_time_ns):
                frames.add(f)
            read += 1
            if progress is not None and read % 1000 == 0:
                progress(1000)
            if sampler.done:
                break
        for f in sampler.finish():
            frames.add(f)
    except BaseException:
        writer.drop()
        raise
    if progress is not None:
        progress(read % 1000)
    lost = sum(frames.lost(t) for t in frames.gaps)
    rep.lost = lost + sum(unplaced.values())
    why = [failed] if failed else []
    if lost:
        worst = max(frames.gaps, key=frames.lost)
        why.append(f'{lost} messages lost in the episode (holes in sample stamps, or a stream that '
                   f'stopped before its end; most on {worst})')
    if unplaced:
        why.append('the recorder lost ' + ', '.join(f'{n} on {t}' for t, n in unplaced.items())
                   + ' at times it could not place')
    if frames.frames < 2:
        missing = [t for t, g in frames.gaps.items() if not g.last_stamp]
        rep.reason = f'{frames.frames} frame(s): too short for a dataset episode' + (
            f' (no sample of {", ".join(missing)})' if missing else '')
        writer.drop()
        return
    if why and not include_failed:
        rep.reason = '; '.join(why)
        writer.drop()
        return
    rep.reason = '; '.join(why)
    status = 'ok' if not why else ('failed' if failed else 'lost')
    fields = ep.fields
    marks = {'bag': str(bag.path), 'episode': ep.name, 'skill': fields.get('skill', ''),
             'params': fields.get('params', ''), 'outcome': fields.get('outcome', ''),
             'status': status, 'reason': rep.reason, 'lost': int(rep.lost),
             'start_time_ns': int(frames.first_time_ns or ep.start_ns), 'end_time_ns': int(ep.end_ns)}
    rep.episode_index = writer.write(frames, text, marks)
    rep.frames, rep.exported = frames.frames, True
