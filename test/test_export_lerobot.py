"""``bag export --format lerobot``: the output read back with pyarrow, pandas and PyAV only, and
checked against the LeRobot v3.0 layout kept below (written from LeRobot's own writer, lerobot 0.4.4
and 0.6.1 on PyPI: ``datasets/utils.py``, ``dataset_metadata.py``, ``dataset_writer.py``,
``compute_stats.py``, ``video_utils.py``). LeRobot itself loads the same output in the opt-in
``make check-lerobot``.

Bags are written here with the independent ``rosbags`` writer and real ROS messages (pure, no DDS):
a humanoid (the profile's 29 joints), with episodes in ``metadata.yaml`` custom data as the recorder
writes them, cameras logged later than they were stamped (the recorder's lag), and, where a test
needs one, a hole in a stream or a quadruped's joints.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rclpy.serialization import serialize_message

from data_recorder.export.lerobot.dataset import export_lerobot
from data_recorder.export.lerobot.layout import LayoutError
from data_recorder.export.lerobot.sampling import FrameSampler
from data_recorder.export.parquet import ExportError
from field_app import cli
from field_deploy.profile import load_profile
from field_deploy.ros import message_class, set_stamp

pytestmark = pytest.mark.timeout(180)

# ----------------------------------------------------------------------------- the v3.0 layout
INFO_KEYS = {'codebase_version', 'robot_type', 'total_episodes', 'total_frames', 'total_tasks',
             'chunks_size', 'data_files_size_in_mb', 'video_files_size_in_mb', 'fps', 'splits',
             'data_path', 'video_path', 'features'}
DATA_PATH = 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'
VIDEO_PATH = 'videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4'
DEFAULT_FEATURES = {'timestamp': 'float32', 'frame_index': 'int64', 'episode_index': 'int64',
                    'index': 'int64', 'task_index': 'int64'}
EPISODE_COLUMNS = {'episode_index', 'tasks', 'length', 'data/chunk_index', 'data/file_index',
                   'dataset_from_index', 'dataset_to_index', 'meta/episodes/chunk_index',
                   'meta/episodes/file_index'}
VIDEO_COLUMNS = ('chunk_index', 'file_index', 'from_timestamp', 'to_timestamp')
STATS = ('min', 'max', 'mean', 'std', 'count', 'q01', 'q10', 'q50', 'q90', 'q99')

HUMANOID = load_profile('humanoid_29dof')
QUADRUPED = load_profile('quadruped_12dof')
T0 = 1_700_000_000_000_000_000
MS = 1_000_000
CAMERA = '/camera/head/image_raw'


# ----------------------------------------------------------------------------- bags
def _msg(type_name: str, stamp: int, **fields):
    msg = message_class(type_name)(**fields)
    set_stamp(msg.header.stamp, stamp)
    return serialize_message(msg)


def write_bag(path: Path, *, seconds: float = 3.0, joints: list[str] | None = None,
              episodes: list[dict] | None = None, hole: tuple[int, int] | None = None,
              camera_lag_ms: int = 45, start_ns: int = T0) -> Path:
    """joint_states / joint_commands / imu / one wrench at 100 Hz, the head camera at 30 Hz
    (96x64 rgb8), logged ``camera_lag_ms`` after its stamp; ``hole`` = joint_states stamps
    ``[from, to)`` ns after the start not recorded; episodes as the recorder's custom data."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    joints = joints or HUMANOID.joint_names
    store = get_typestore(Stores.ROS2_JAZZY)
    events: list[tuple[int, str, str, bytes]] = []
    js, img = 'sensor_msgs/msg/JointState', 'sensor_msgs/msg/Image'
    n = len(joints)
    for k in range(int(seconds * 100)):
        t = start_ns + k * 10 * MS
        s = k / 100
        pos = [0.3 * math.sin(2 * math.pi * 0.5 * s + j) for j in range(n)]
        if not (hole and hole[0] <= t - start_ns < hole[1]):
            events.append((t + MS, '/joint_states', js, _msg(js, t, name=joints, position=pos,
                                                               velocity=[0.1 * j for j in range(n)],
                                                               effort=[float(k % 7)] * n)))
        command = _msg(js, t, name=joints, position=[p + 0.01 for p in pos])
        events.append((t + 2 * MS, '/joint_commands', js, command))
        imu = message_class('sensor_msgs/msg/Imu')()
        set_stamp(imu.header.stamp, t)
        imu.orientation.w, imu.angular_velocity.z, imu.linear_acceleration.z = 1.0, 0.1 * s, 9.81 + 0.01 * k
        events.append((t + MS, '/imu', 'sensor_msgs/msg/Imu', serialize_message(imu)))
        wr = message_class('geometry_msgs/msg/WrenchStamped')()
        set_stamp(wr.header.stamp, t)
        wr.wrench.force.z = 300.0 + k
        events.append((t + MS, '/wrench/left_foot', 'geometry_msgs/msg/WrenchStamped', serialize_message(wr)))
    w, h = 96, 64
    for k in range(int(seconds * 30)):
        t = start_ns + k * 1_000_000_000 // 30
        frame = np.zeros((h, w, 3), np.uint8)
        frame[..., 0] = (k * 8) % 256
        frame[:, : w // 2, 1] = 200
        events.append((t + camera_lag_ms * MS, CAMERA, img,
                       _msg(img, t, height=h, width=w, encoding='rgb8', step=w * 3, data=frame.tobytes())))
    events.sort(key=lambda e: e[0])
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {}
        for log, topic, type_name, data in events:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, type_name, typestore=store)
            writer.write(conns[topic], log, data)
        if episodes:
            writer.set_custom_data('field_deploy.episodes', json.dumps(episodes))
    return path


def episode(index: int, skill: str, start_ms: int, end_ms: int, outcome: str = 'done',
            params: str = '{"speed": 0.5}', start_ns: int = T0) -> dict:
    return {'index': index, 'skill': skill, 'start_ns': start_ns + start_ms * MS,
            'end_ns': start_ns + end_ms * MS, 'params': params, 'outcome': outcome,
            'reason': 'timeout' if outcome == 'failed' else '', 'pack_version': '1.0.0'}


EPISODES = [episode(0, 'pack/stand', 200, 1200), episode(1, 'pack/wave', 1300, 2300),
            episode(2, 'pack/crouch', 2350, 2900, outcome='failed')]


@pytest.fixture(scope='module')
def bag_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bag(tmp_path_factory.mktemp('lr') / 'a', episodes=EPISODES)


@pytest.fixture(scope='module')
def bag_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    eps = [episode(0, 'pack/stand', 100, 900, start_ns=T0 + 10**12),
           episode(1, 'pack/reach', 1000, 1800, params='{}', start_ns=T0 + 10**12)]
    return write_bag(tmp_path_factory.mktemp('lr') / 'b', seconds=2.0, episodes=eps, start_ns=T0 + 10**12)


# ----------------------------------------------------------------------------- reading back
def files_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


def video_frames(path: Path) -> list[float]:
    """Presentation times (s) of every frame of an MP4, decoded with PyAV."""
    import av
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [float(f.pts * s.time_base) for f in c.decode(s)]


def check_layout(root: Path) -> dict:
    """Everything the v3.0 layout promises, read back without LeRobot; returns info.json."""
    import pandas as pd
    info = json.loads((root / 'meta/info.json').read_text())
    assert set(info) == INFO_KEYS
    assert info['codebase_version'] == 'v3.0' and isinstance(info['fps'], int)
    assert info['data_path'] == DATA_PATH and info['video_path'] == VIDEO_PATH
    assert info['splits'] == {'train': f'0:{info["total_episodes"]}'}
    feats = info['features']
    for key, dtype in DEFAULT_FEATURES.items():
        assert feats[key] == {'dtype': dtype, 'shape': [1], 'names': None}
    videos = [k for k, f in feats.items() if f['dtype'] == 'video']
    for k in videos:
        assert feats[k]['names'] == ['height', 'width', 'channels']
        assert feats[k]['info']['video.pix_fmt'] == 'yuv420p'
    import pyarrow as pa
    data = pa.concat_tables([pq.read_table(p) for p in sorted(root.glob('data/chunk-*/file-*.parquet'))])
    assert data.column_names == [k for k, f in feats.items() if f['dtype'] != 'video']
    for k, f in feats.items():
        if f['dtype'] == 'video':
            continue
        t = data.schema.field(k).type
        if f['shape'] == [1]:
            assert str(t) == {'float32': 'float', 'int64': 'int64'}[f['dtype']], k
        else:
            assert t.list_size == f['shape'][0] and str(t.value_type) == 'float', k
    df = data.select(['timestamp', 'frame_index', 'episode_index', 'index', 'task_index']).to_pandas()
    assert len(df) == info['total_frames']
    assert df['index'].tolist() == list(range(info['total_frames']))
    episodes = pa.concat_tables([pq.read_table(p) for p in sorted(root.glob('meta/episodes/*/*.parquet'))])
    assert set(episodes.column_names) >= EPISODE_COLUMNS
    episodes = episodes.to_pylist()
    assert [ep['episode_index'] for ep in episodes] == list(range(info['total_episodes']))
    tasks = pd.read_parquet(root / 'meta/tasks.parquet')
    assert tasks.index.name == 'task' and tasks['task_index'].tolist() == list(range(len(tasks)))
    assert len(tasks) == info['total_tasks']
    frm = 0
    for ep in episodes:
        i, n = ep['episode_index'], ep['length']
        assert (ep['dataset_from_index'], ep['dataset_to_index']) == (frm, frm + n)
        rows = df[df['episode_index'] == i]
        assert rows['index'].tolist() == list(range(frm, frm + n))
        assert rows['frame_index'].tolist() == list(range(n))
        assert np.allclose(rows['timestamp'].to_numpy(), np.arange(n) / info['fps'], atol=1e-6)
        assert list(ep['tasks']) == [tasks.index[rows['task_index'].iloc[0]]]
        assert (rows['task_index'] == rows['task_index'].iloc[0]).all()
        path = DATA_PATH.format(chunk_index=ep['data/chunk_index'], file_index=ep['data/file_index'])
        assert pq.read_table(root / path, columns=['episode_index']).column(0).to_pylist().count(i) == n
        for k in videos:
            c = {x: ep[f'videos/{k}/{x}'] for x in VIDEO_COLUMNS}
            assert c['to_timestamp'] - c['from_timestamp'] == pytest.approx(n / info['fps'])
            times = video_frames(root / VIDEO_PATH.format(video_key=k, chunk_index=c['chunk_index'],
                                                          file_index=c['file_index']))
            mine = [t for t in times if c['from_timestamp'] - 1e-6 <= t < c['to_timestamp'] - 1e-6]
            assert len(mine) == n                                           # video frames = data frames
            assert np.allclose(np.array(mine) - c['from_timestamp'], rows['timestamp'].to_numpy(), atol=1e-4)
        for k in feats:
            mn, mean, mx = (np.asarray(ep[f'stats/{k}/{s}'], dtype=float) for s in ('min', 'mean', 'max'))
            assert np.all(mn <= mean + 1e-6) and np.all(mean <= mx + 1e-6), k
            assert list(ep[f'stats/{k}/count']) == [n], k
        frm += n
    stats = json.loads((root / 'meta/stats.json').read_text())
    assert set(stats) == set(feats)
    for k, s in stats.items():
        assert set(s) == set(STATS), k
        assert s['count'] == [info['total_frames']], k
        mn, mean, mx = (np.asarray(s[x]) for x in ('min', 'mean', 'max'))
        assert np.all(mn <= mean + 1e-6) and np.all(mean <= mx + 1e-6), k
        shape = (3, 1, 1) if feats[k]['dtype'] == 'video' else tuple(feats[k]['shape'])
        assert np.asarray(s['mean']).shape == shape, k
        if feats[k]['dtype'] == 'video':
            assert mn.min() >= 0 and mx.max() <= 1
    return info


# ----------------------------------------------------------------------------- tests
def test_sampler_holds_latest_sample_by_stamp_never_a_later_one() -> None:
    """Frames at 10 Hz from a 100 Hz stream and a 30 Hz stream logged 45 ms late: every frame
    holds, per stream, the newest sample stamped at or before it, whatever the log order."""
    fps, start = 10, 1_000 * MS
    sampler = FrameSampler(['fast', 'cam'], start, start + 1000 * MS, fps)
    pushes = [(start - 5 * MS + k * 10 * MS, 'fast', start - 5 * MS + k * 10 * MS) for k in range(110)]
    cam = [start - 20 * MS + k * 33 * MS for k in range(33)]
    pushes += [(stamp + 45 * MS, 'cam', stamp) for stamp in cam]
    frames = []
    for log, stream, stamp in sorted(pushes):
        frames += sampler.push(stream, stamp, stamp, log)
    frames += sampler.finish()
    assert [f.index for f in frames] == list(range(11))
    for f in frames:
        for stream in ('fast', 'cam'):
            stamps = [s for _, st, s in pushes if st == stream and s <= f.time_ns]
            assert f.samples[stream].stamp_ns == max(stamps)


def test_export_is_a_v30_dataset(bag_a: Path, tmp_path: Path) -> None:
    root = tmp_path / 'ds'
    report = export_lerobot([bag_a], root)
    info = check_layout(root)
    assert info['robot_type'] == 'humanoid_29dof' and info['fps'] == 30     # the camera's rate
    feats = info['features']
    for key in ('observation.state', 'observation.velocity', 'observation.effort', 'action'):
        assert feats[key] == {'dtype': 'float32', 'shape': [29], 'names': HUMANOID.joint_names}
    assert feats['observation.imu']['names'][:4] == ['orientation.x', 'orientation.y', 'orientation.z',
                                                     'orientation.w']
    assert feats['observation.wrench.left_foot']['shape'] == [6]
    assert feats['observation.images.head']['shape'] == [64, 96, 3]
    assert info['total_episodes'] == 2 and info['total_tasks'] == 2       # the failed run left out
    left = [e for e in report.episodes if not e.exported]
    assert [(e.name, e.reason) for e in left] == [('pack/crouch', 'skill failed: timeout')]
    import pandas as pd
    eps = pd.read_parquet(root / 'meta/episodes/chunk-000/file-000.parquet')
    assert list(eps['tasks'].map(list)) == [['pack/stand(speed=0.5)'], ['pack/wave(speed=0.5)']]
    assert list(eps['length']) == [31, 31]                                 # 1 s at 30 fps, both ends
    assert list(eps['field_deploy/status']) == ['ok', 'ok']
    prov = json.loads((root / 'meta/field_deploy.json').read_text())
    assert [e['exported'] for e in prov['exports'][0]['bags'][0]['episodes']] == [True, True, False]
    # observation.state holds joint_states by sample stamp: frame k of episode 0 is at 200 ms + k/30 s
    data = pq.read_table(root / 'data/chunk-000/file-000.parquet').to_pandas()
    state = np.stack(data['observation.state'].to_numpy())
    for k in (0, 7, 30):
        t = 0.200 + k / 30
        s = math.floor(round(t * 100, 6)) / 100                           # newest 100 Hz stamp <= t
        assert state[k, 0] == pytest.approx(0.3 * math.sin(2 * math.pi * 0.5 * s), abs=1e-6)
    assert np.allclose(np.stack(data['action'].to_numpy()), state + 0.01, atol=1e-6)
    # the image held at each frame is the newest stamped at or before it, though logged 45 ms later
    import av
    with av.open(str(root / 'videos/observation.images.head/chunk-000/file-000.mp4')) as c:
        reds = [int(np.median(f.to_ndarray(format='rgb24')[:, 60:, 0])) for f in c.decode(video=0)]
    expected = [(math.floor(round((0.2 + k / 30) * 30, 6)) * 8) % 256 for k in range(31)]
    assert np.abs(np.array(reds[:31]) - np.array(expected)).max() <= 6     # AV1 at crf 30


def test_include_failed_keeps_and_marks_them(bag_a: Path, tmp_path: Path) -> None:
    export_lerobot([bag_a], tmp_path / 'ds', include_failed=True, task='tidy the shelf')
    info = check_layout(tmp_path / 'ds')
    assert info['total_episodes'] == 3 and info['total_tasks'] == 1
    import pandas as pd
    eps = pd.read_parquet(tmp_path / 'ds/meta/episodes/chunk-000/file-000.parquet')
    assert list(eps['field_deploy/status']) == ['ok', 'ok', 'failed']
    assert eps['field_deploy/reason'].iloc[2] == 'skill failed: timeout'


def test_nothing_to_export_creates_nothing(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / 'f', seconds=1.0, episodes=[episode(0, 'pack/a', 100, 900, outcome='failed')])
    with pytest.raises(ExportError, match=r'no episode to export .*skill failed: timeout'):
        export_lerobot([bag], tmp_path / 'ds')
    assert not (tmp_path / 'ds').exists() and not list(tmp_path.glob('.ds.*'))


def test_episode_with_lost_messages_is_left_out(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / 'hole', seconds=2.0, hole=(700 * MS, 750 * MS),
                    episodes=[episode(0, 'pack/a', 100, 600), episode(1, 'pack/b', 650, 1500)])
    report = export_lerobot([bag], tmp_path / 'ds')
    got = [(e.name, e.exported, e.lost) for e in report.episodes]
    assert got == [('pack/a', True, 0), ('pack/b', False, 5)]
    assert 'lost' in report.episodes[1].reason and '/joint_states' in report.episodes[1].reason
    assert check_layout(tmp_path / 'ds')['total_episodes'] == 1
    # a stream that stops inside an episode (its frames would hold a stale sample) is a loss too
    stops = write_bag(tmp_path / 'stops', seconds=2.0, hole=(1200 * MS, 10 * 10**9),
                      episodes=[episode(0, 'pack/c', 200, 1000), episode(1, 'pack/d', 1050, 1800)])
    report = export_lerobot([stops], tmp_path / 'ds2', include_failed=True)
    last_frame_ms = 1050 + 22 * 1000 / 30                              # the grid's last time <= 1800
    assert [e.lost for e in report.episodes] == [0, int(last_frame_ms - 1190) // 10]   # samples owed
    assert check_layout(tmp_path / 'ds2')['total_episodes'] == 2


def test_sampler_waits_for_a_lagging_stream_and_not_for_a_stopped_one() -> None:
    """A stream logged 5 s after its stamps (a recorder that fell behind) is waited for, so its
    samples are the right ones; a stream that stops is given up after ``quiet_ns``."""
    start = 10 * 10**9
    sampler = FrameSampler(['lag', 'stops', 'ok'], start, start + 3 * 10**9, 10, quiet_ns=10**9)
    pushes = [(t + 5 * 10**9, 'lag', t) for t in range(start - 10**8, start + 4 * 10**9, 10 * MS)]
    pushes += [(t, 'stops', t) for t in range(start - 10**8, start + 10**9, 10 * MS)]
    pushes += [(t + MS, 'ok', t) for t in range(start - 10**8, start + 9 * 10**9, 10 * MS)]
    frames = []
    for log, stream, stamp in sorted(pushes):
        frames += sampler.push(stream, stamp, stamp, log)
    assert sampler.done and len(frames) == 31
    for f in frames:
        assert f.samples['lag'].stamp_ns == f.time_ns                  # exact, though 5 s late
        assert f.samples['stops'].stamp_ns == min(f.time_ns, start + 10**9 - 10 * MS)


def test_two_bags_append_into_one_dataset(bag_a: Path, bag_b: Path, tmp_path: Path) -> None:
    root = tmp_path / 'ds'
    export_lerobot([bag_a], root)
    before = files_digest(root)
    inodes = {p: (root / p).stat().st_ino for p in before}
    first = check_layout(root)
    report = export_lerobot([bag_b], root)
    info = check_layout(root)
    assert (info['total_episodes'], info['total_frames']) == (4, first['total_frames'] + 25 + 25)
    assert info['total_tasks'] == 3                    # pack/stand shared, pack/reach new
    assert [e.episode_index for e in report.episodes] == [2, 3]
    after = files_digest(root)
    changed = {p for p in before if after[p] != before[p]}
    assert changed == {'meta/info.json', 'meta/stats.json', 'meta/tasks.parquet', 'meta/field_deploy.json'}
    unchanged = set(before) - changed
    assert all((root / p).stat().st_ino == inodes[p] for p in unchanged)    # not even rewritten
    assert set(after) - set(before) == {'data/chunk-000/file-001.parquet',
                                        'meta/episodes/chunk-000/file-001.parquet',
                                        'videos/observation.images.head/chunk-000/file-001.mp4'}
    with pytest.raises(LayoutError, match='already exported'):
        export_lerobot([bag_b], root)


def test_mismatched_robot_or_streams_refused_dataset_unchanged(bag_a: Path, tmp_path: Path) -> None:
    root = tmp_path / 'ds'
    export_lerobot([bag_a], root)
    before = files_digest(root)
    quad = write_bag(tmp_path / 'quad', seconds=1.0, joints=QUADRUPED.joint_names,
                     episodes=[episode(0, 'pack/trot', 100, 900)])
    refused = "a dataset of robot 'humanoid_29dof'; these bags are of 'quadruped_12dof'"
    with pytest.raises(LayoutError, match=refused):
        export_lerobot([quad], root)
    assert cli.main(['bag', 'export', str(quad), '-o', str(root)]) == 1
    with pytest.raises(LayoutError, match='--fps 15 cannot be appended'):
        export_lerobot([write_bag(tmp_path / 'c', seconds=1.0)], root, fps=15)
    assert files_digest(root) == before
    assert not list(tmp_path.glob('.ds.export-*'))


def test_interrupted_export_leaves_the_dataset_as_it_was(bag_a: Path, bag_b: Path, tmp_path: Path) -> None:
    root = tmp_path / 'ds'
    export_lerobot([bag_a], root)
    before = files_digest(root)

    def fail_at(event: str):
        def hook(ev: str, _detail: dict) -> None:
            if ev == event:
                raise KeyboardInterrupt(f'interrupted at {ev}')
        return hook

    for event in ('episode', 'commit'):
        with pytest.raises(KeyboardInterrupt):
            export_lerobot([bag_b], root, hook=fail_at(event))
        assert files_digest(root) == before
        assert not list(tmp_path.glob('.ds.export-*'))
    # killed for real (SIGKILL, from outside) while it writes: the dataset is as it was, and the
    # next export removes the dead process's aside copy and appends
    long_bag = write_bag(tmp_path / 'long', seconds=10.0, start_ns=T0 + 2 * 10**12,
                         episodes=[episode(0, 'pack/walk', 100, 9900, start_ns=T0 + 2 * 10**12)])
    env = {**os.environ, 'AMENT_PREFIX_PATH': os.environ.get('AMENT_PREFIX_PATH', sys.prefix)}
    proc = subprocess.Popen([sys.executable, '-m', 'field_app.cli', 'bag', 'export', str(long_bag),
                             '-o', str(root)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    staged = None
    while time.monotonic() < deadline and proc.poll() is None:
        staged = next(iter(tmp_path.glob(f'.ds.export-{proc.pid}/.encoding/*.mp4')), None)
        if staged:
            break
        time.sleep(0.005)
    assert staged is not None, 'the export finished before it could be killed'
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert files_digest(root) == before
    assert list(tmp_path.glob('.ds.export-*'))                         # the dead one's leftovers
    export_lerobot([long_bag], root)
    assert not list(tmp_path.glob('.ds.export-*'))
    assert check_layout(root)['total_episodes'] == 3


def test_cli_default_is_lerobot_and_parquet_stays(bag_a: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(['bag', 'export', str(bag_a), '-o', str(tmp_path / 'lr')]) == 0
    out = capsys.readouterr().out
    assert 'left out: pack/crouch' in out and 'now 2 episodes' in out
    assert (tmp_path / 'lr/meta/info.json').exists()
    assert cli.main(['bag', 'export', str(bag_a), '-o', str(tmp_path / 'pq'), '--format', 'parquet',
                     '--images', 'none']) == 0
    assert len(list((tmp_path / 'pq').glob('episode_*/data.parquet'))) == 3
    assert cli.main(['bag', 'export', str(bag_a), '-o', str(tmp_path / 'x'), '--format', 'parquet',
                     '--fps', '10']) == 1
    assert '--fps: not an option of --format parquet' in capsys.readouterr().err
