"""Bag reader and tools (no DDS needed): rosbag2 metadata variants, split bags, bare .mcap, missing /
corrupt / truncated files, info, export loaded back with pyarrow and cv2, plot PNG size, CLI errors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from mcap.writer import Writer as McapWriter
from rclpy.serialization import deserialize_message, serialize_message

from data_recorder.bag.info import summary
from data_recorder.bag.reader import Bag, BagError, parse_qos
from data_recorder.export.parquet import export, image_to_bgr, parse_image
from data_recorder.export.plot import plot
from data_recorder.synthetic import START_NS, Stream, write_bag
from field_app import cli
from field_deploy.ros import message_class

pytestmark = pytest.mark.timeout(120)

STREAMS = [Stream('/joint_states', 'sensor_msgs/msg/JointState', 100.0),
           Stream('/joint_commands', 'sensor_msgs/msg/JointState', 50.0),
           Stream('/imu', 'sensor_msgs/msg/Imu', 100.0),
           Stream('/wrench/left_foot', 'geometry_msgs/msg/WrenchStamped', 100.0),
           Stream('/odom', 'nav_msgs/msg/Odometry', 20.0),
           Stream('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray', 5.0),
           Stream('/camera/head/image_raw', 'sensor_msgs/msg/Image', 10.0)]


@pytest.fixture(scope='module')
def bag9(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bag(tmp_path_factory.mktemp('tools') / 'v9', STREAMS, 2.0, image_size=(160, 120))


@pytest.fixture(scope='module')
def bag8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bag(tmp_path_factory.mktemp('tools') / 'v8', STREAMS[:3], 1.0, version=8,
                     image_size=(160, 120))


def _js(t_ns: int, pos: float):
    cls = message_class('sensor_msgs/msg/JointState')
    msg = cls(name=['a', 'b'], position=[pos, -pos], velocity=[0.0, 0.0], effort=[1.0, 2.0])
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t_ns, 10**9)
    return serialize_message(msg)


def _mcap_with_episodes(path: Path) -> Path:
    """A single .mcap (no metadata.yaml) written with the mcap library (small chunks), with the
    recorder's start/end ``episode`` Metadata records for two episodes."""
    with path.open('wb') as f:
        w = McapWriter(f, chunk_size=4096)
        w.start(profile='ros2', library='test')
        sid = w.register_schema('sensor_msgs/msg/JointState', 'ros2msg',
                                b'std_msgs/Header header\nstring[] name\nfloat64[] position\n'
                                b'float64[] velocity\nfloat64[] effort\n')
        cid = w.register_channel('/joint_states', 'cdr', sid,
                                 {'offered_qos_profiles': '- history: 1\n  depth: 7\n  reliability: 1\n'
                                                          '  durability: 2\n'})
        for k in range(300):
            t = START_NS + k * 10_000_000
            w.add_message(cid, t, _js(t, k / 100), t, sequence=k)
        base = {'skill': 'demo/wave', 'pack_version': '1.0'}
        w.add_metadata('episode', {**base, 'event': 'start', 'index': '0', 'start_ns': str(START_NS + 10**8),
                                   'end_ns': ''})
        w.add_metadata('episode', {**base, 'event': 'end', 'index': '0', 'start_ns': str(START_NS + 10**8),
                                   'end_ns': str(START_NS + 10**9), 'outcome': 'done'})
        w.add_metadata('episode', {**base, 'event': 'start', 'index': '1',
                                   'start_ns': str(START_NS + 15 * 10**8), 'end_ns': ''})
        w.finish()
    return path


def test_reader_v9_v8_qos_and_counts(bag9: Path, bag8: Path) -> None:
    b9, b8 = Bag(bag9), Bag(bag8)
    assert b9.topics['/joint_states'].count == 200 and b9.topics['/odom'].count == 40
    assert b9.topics['/imu'].qos[0]['reliability'] == 'reliable'           # v9: a list of dicts
    assert b8.topics['/imu'].qos[0]['reliability'] == 1                    # v8: a YAML string
    assert isinstance(yaml.safe_load(bag8.joinpath('metadata.yaml').read_text())
                      ['rosbag2_bagfile_information']['topics_with_message_count'][0]
                      ['topic_metadata']['offered_qos_profiles'], str)
    assert parse_qos(None) == () and parse_qos('[') == ()
    times = [m.log_time_ns for m in b9.messages()]
    assert times == sorted(times) and len(times) == b9.message_count
    window = list(b9.messages(['/imu'], START_NS + 500_000_000, START_NS + 600_000_000))
    assert len(window) == 10 and all(m.topic == '/imu' for m in window)
    assert b9.duration_ns == 1_990_000_000


def test_split_bag_merges_in_time_order(bag9: Path, tmp_path: Path) -> None:
    """Two files (as after a split) with interleaved times: one ordered stream."""
    a = write_bag(tmp_path / 'a', STREAMS[:1], 1.0)
    b = write_bag(tmp_path / 'b', STREAMS[2:3], 1.0, start_ns=START_NS + 5_000_000)
    split = tmp_path / 'split'
    split.mkdir()
    shutil.copy(next(a.glob('*.mcap')), split / 'split_0.mcap')
    shutil.copy(next(b.glob('*.mcap')), split / 'split_1.mcap')
    bag = Bag(split)                                   # no metadata.yaml: globbed
    msgs = list(bag.messages())
    assert len(msgs) == 200 and [m.log_time_ns for m in msgs] == sorted(m.log_time_ns for m in msgs)
    assert [m.topic for m in msgs[:4]] == ['/joint_states', '/imu', '/joint_states', '/imu']


def test_single_mcap_with_episodes_and_info(tmp_path: Path, capsys) -> None:
    path = _mcap_with_episodes(tmp_path / 'ep.mcap')
    bag = Bag(path)
    assert bag.topics['/joint_states'].count == 300
    assert bag.topics['/joint_states'].qos[0]['depth'] == 7
    assert [(e.name, e.start_ns - START_NS, e.end_ns - START_NS) for e in bag.episodes] == [
        ('demo/wave', 10**8, 10**9), ('demo/wave', 15 * 10**8, bag.end_ns - START_NS)]
    assert cli.main(['bag', 'info', str(path)]) == 0
    out = capsys.readouterr().out
    assert 'Topic: /joint_states' in out and 'Count: 300' in out and 'Rate: 100.0 Hz' in out
    assert 'Episodes:          2' in out and 'demo/wave' in out
    assert cli.main(['bag', 'info', str(path), '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['message_count'] == 300 and len(info['episodes']) == 2


def test_info_shows_recorder_loss_accounting(bag9: Path, tmp_path: Path) -> None:
    copy = tmp_path / 'acc'
    shutil.copytree(bag9, copy)
    meta = yaml.safe_load((copy / 'metadata.yaml').read_text())
    meta['rosbag2_bagfile_information']['custom_data'] = {
        'data_recorder.totals': json.dumps({'received': 10, 'written': 9, 'lost': 1}),
        'data_recorder.stop_reason': 'signal'}
    (copy / 'metadata.yaml').write_text(yaml.safe_dump(meta))
    s = summary(Bag(copy))
    assert s['loss'] == {'data_recorder.totals': {'received': 10, 'written': 9, 'lost': 1}}
    assert s['custom_data'] == {'data_recorder.stop_reason': 'signal'}


def test_missing_corrupt_and_truncated_files(bag9: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(FileNotFoundError, match='nope'):
        Bag(tmp_path / 'nope')
    junk = tmp_path / 'junk.mcap'
    junk.write_bytes(b'this is not an mcap file at all' * 10)
    with pytest.raises(BagError, match=r'junk\.mcap'):
        Bag(junk)
    broken = tmp_path / 'listed'
    shutil.copytree(bag9, broken)
    next(broken.glob('*.mcap')).unlink()
    with pytest.raises(BagError, match='missing'):
        Bag(broken)
    full = _mcap_with_episodes(tmp_path / 'full.mcap')
    cut = tmp_path / 'cut.mcap'                       # killed recorder: no summary, no footer
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.7)])
    bag = Bag(cut)
    assert bag.truncated == [cut] and 50 < bag.topics['/joint_states'].count < 300
    assert [m.data for m in bag.messages()] == [m.data for m in Bag(full).messages()][
        : bag.topics['/joint_states'].count]
    assert cli.main(['bag', 'info', str(junk)]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'junk.mcap' in err


def test_image_cdr_parser_matches_rclpy(bag9: Path) -> None:
    m = next(Bag(bag9).messages(['/camera/head/image_raw']))
    ref = deserialize_message(m.data, message_class('sensor_msgs/msg/Image'))
    h, w, enc, step, px = parse_image(m.data)
    assert (h, w, enc, step) == (ref.height, ref.width, ref.encoding, ref.step)
    assert bytes(px) == bytes(ref.data)
    bgr = image_to_bgr(m.data)
    rgb = np.frombuffer(bytes(ref.data), np.uint8).reshape(h, w, 3)
    assert np.array_equal(bgr[:, :, ::-1], rgb)


def test_export_loads_with_pyarrow_and_cv2(bag9: Path, tmp_path: Path) -> None:
    out = tmp_path / 'dataset'
    assert cli.main(['bag', 'export', str(bag9), '-o', str(out), '--rate', '20']) == 0
    ep = out / 'episode_000'
    manifest = json.loads((ep / 'manifest.json').read_text())
    table = pq.read_table(ep / 'data.parquet')
    assert table.num_rows == manifest['rows'] == 40                 # 0 .. 1.95 s at 20 Hz
    assert np.allclose(table.column('timestamp').to_numpy(), np.arange(40) / 20)
    fields = manifest['fields']
    assert fields['joint_states.position']['shape'] == [29]
    assert fields['joint_states.position']['unit'] == 'rad'
    assert len(fields['joint_states.position']['names']) == 29
    assert fields['wrench/left_foot.force']['unit'] == 'N'
    assert 'joint_commands.velocity' not in fields                  # commands carry positions only
    # zero-order hold: the tick at 0.5 s carries the joint_states message stamped at 0.5 s
    bag = Bag(bag9)
    js = next(m for m in bag.messages(['/joint_states']) if m.log_time_ns == START_NS + 500_000_000)
    ref = deserialize_message(js.data, message_class('sensor_msgs/msg/JointState'))
    row = table.slice(10, 1).to_pylist()[0]
    assert np.allclose(row['joint_states.position'], list(ref.position))
    assert np.allclose(row['joint_states.effort'], list(ref.effort))
    odom = pq.read_table(ep / 'data.parquet', columns=['odom.position']).column(0).to_pylist()
    assert all(np.isfinite(odom[0]))
    # video: as many frames as recorded images, decodable by OpenCV, right size
    video = manifest['videos']['camera/head']
    assert video['frames'] == 20
    cap = cv2.VideoCapture(str(ep / video['path']))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames += 1
        assert frame.shape == (120, 160, 3)
    assert frames == 20
    stamps = pq.read_table(ep / video['timestamps']).column('time_ns').to_pylist()
    assert len(stamps) == 20 and stamps == sorted(stamps)
    assert max(table.column('camera/head.frame_index').to_pylist()) == 19


def test_export_per_episode_png_and_folder_of_bags(tmp_path: Path, bag9: Path) -> None:
    folder = tmp_path / 'bags'
    folder.mkdir()
    _mcap_with_episodes(folder / 'ep.mcap')
    shutil.copytree(bag9, folder / 'plain')
    results = export(folder, tmp_path / 'out', rate_hz=10, images='png')
    names = sorted(str(r.folder.relative_to(tmp_path / 'out')) for r in results)
    assert names == ['ep/episode_000_demo_wave', 'ep/episode_001_demo_wave', 'plain/episode_000']
    first = pq.read_table(tmp_path / 'out/ep/episode_000_demo_wave/data.parquet')
    assert first.num_rows == 10                                     # 0.1 .. 1.0 s at 10 Hz
    pngs = sorted((tmp_path / 'out/plain/episode_000/images/camera_head').glob('*.png'))
    assert len(pngs) == 20 and cv2.imread(str(pngs[0])).shape == (120, 160, 3)


def test_plot_png_size_and_signals(bag9: Path, tmp_path: Path, capsys) -> None:
    out = plot(bag9, tmp_path / 'default.png')
    img = cv2.imread(str(out))
    assert img.shape == (800, 1200, 3) and img.std() > 5          # non-empty figure
    assert cli.main(['bag', 'plot', str(bag9), '-o', str(tmp_path / 'k.png'), '--size', '640x480',
                     '--signals', '/joint_states.position:left_knee_joint+/joint_commands.position:'
                     'left_knee_joint', '/wrench/left_foot.force:z']) == 0
    assert cv2.imread(str(tmp_path / 'k.png')).shape == (480, 640, 3)
    assert cli.main(['bag', 'plot', str(bag9), '-o', str(tmp_path / 'x.png'),
                     '--signals', '/joint_states.position:no_such_joint']) == 1
    assert 'no_such_joint' in capsys.readouterr().err


def test_cli_help_and_errors(capsys, bag9: Path, tmp_path: Path) -> None:
    for sub in ('play', 'info', 'export', 'plot'):
        with pytest.raises(SystemExit) as exc:
            cli.main(['bag', sub, '--help'])
        assert exc.value.code == 0
    assert cli.main(['bag', 'export', str(bag9), '-o', str(tmp_path / 'o'), '--topics', '/nope']) == 1
    assert cli.main(['bag', 'play', str(bag9), '--rate', '-1']) == 1
    err = capsys.readouterr().err
    assert '/nope' in err and 'rate must be > 0' in err
