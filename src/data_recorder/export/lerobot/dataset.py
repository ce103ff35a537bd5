"""``bag export --format lerobot``: bags → one LeRobot v3.0 dataset that LeRobot itself loads.

Each skill run marked in a bag (``data_recorder.capture.episodes``) is one LeRobot episode; its task is
the skill with its parameters (or ``task=``). Frames are ``fps`` apart from the episode's start,
each holding every stream's latest sample at or before the frame by sample stamp
(:mod:`data_recorder.export.lerobot.sampling`); features come from the robot profile
(:mod:`data_recorder.export.lerobot.mapping`); the files are LeRobot's
(:mod:`data_recorder.export.lerobot.layout`, :mod:`data_recorder.export.lerobot.writer`,
:mod:`data_recorder.export.lerobot.video`); an export into an existing dataset appends, and an
export that does not finish leaves the dataset as it was (:mod:`data_recorder.export.lerobot.store`).

An episode whose skill did not end ``done``, or whose streams lost messages (holes in a periodic
stream's sample stamps inside the episode, a stream that stopped before its end, or losses the
recorder counted but could not place in time), is left out unless ``include_failed``; kept ones
carry the mark in ``meta/episodes`` (columns ``field_deploy/*``). Memory per episode: the frames'
vectors (small) and the images the recorder's lag keeps ahead of the pending frame.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_recorder.bag.marks import marks_between
from data_recorder.bag.reader import Bag, Episode
from data_recorder.bag.writer import header_stamp_ns
from data_recorder.export.lerobot import layout as lay
from data_recorder.export.lerobot import store as store
from data_recorder.export.lerobot.mapping import Plan, feature_differences, infer_profile, plan
from data_recorder.export.lerobot.sampling import NS, FrameSampler
from data_recorder.export.lerobot.video import DEFAULT_CODEC, image_shape
from data_recorder.export.lerobot.writer import DatasetWriter, EpisodeFrames
from data_recorder.export.parquet import ExportError, find_bags
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


def _bag_profile(bag: Bag) -> RobotProfile:
    """The profile the bag was recorded with: the one its hardware record names (the recorder's
    ``field_deploy.rohs`` custom data) if its joints are the bag's, else the shipped profile whose
    joints are exactly those of ``joint_states``."""
    from data_recorder.export.lerobot.mapping import resolve_topic
    js = resolve_topic('joint_states', {n: t.type for n, t in bag.topics.items()})
    if js is None:
        raise ExportError(f'{bag.path}: no joint_states topic')
    joints = list(_first(bag, js).name)
    try:
        named = json.loads(bag.custom_data.get('field_deploy.rohs') or '{}').get('robot')
        if named and set(load_profile(named).joint_names) == set(joints):
            return load_profile(named)
    except (ValueError, AttributeError, OSError):
        pass                              # no usable record: the joints decide
    return infer_profile(joints)


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
    profile = load_profile(robot) if robot else _bag_profile(bags[0])
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
        writer = DatasetWriter(staging, state, plans[0].features, rate, codec)
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


def _export_bag(bag: Bag, pl: Plan, writer: DatasetWriter, report: ExportReport, *, task: str | None,
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


def _run_episode(bag: Bag, pl: Plan, ep: Episode, writer: DatasetWriter, rep: EpisodeReport, *, failed: str,
                 unplaced: dict[str, int], text: str, include_failed: bool, max_delay_ns: int,
                 progress: Callable[[int], None] | None) -> None:
    topics = [*pl.sources, *pl.cameras]
    sampler = FrameSampler(topics, ep.start_ns, ep.end_ns, writer.fps, max_delay_ns)
    for v in writer.videos.values():
        v.begin_episode()
    frames = EpisodeFrames(pl, writer.videos)
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
             'start_time_ns': int(frames.first_time_ns or ep.start_ns), 'end_time_ns': int(ep.end_ns),
             'operator_marks': json.dumps(marks_between(bag.marks, ep.start_ns, ep.end_ns))}
    rep.episode_index = writer.write(frames, text, marks)
    rep.frames, rep.exported = frames.frames, True
