"""Process environment helpers: the Fast DDS shared-memory files of dead processes are removed,
those of living ones never."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import rclpy
from std_msgs.msg import String

from field_deploy.rosenv import (
    FASTDDS_PROFILES_ENV,
    SHM_DIR,
    SMALL_SEGMENT_BYTES,
    clean_stale_shm,
    config_dir,
    use_project_fastdds_profile,
)
from field_deploy.testing import wait_until


def test_only_unlocked_segments_and_ports_are_removed(tmp_path: Path) -> None:
    dead, live, port = 'fastrtps_0123456789abcdef', 'fastrtps_fedcba9876543210', 'fastrtps_port7411'
    for base in (dead, live, port):
        (tmp_path / base).write_bytes(b'\0' * 8192)
        (tmp_path / f'{base}_el').touch()
    (tmp_path / f'sem.{port}_mutex').touch()
    (tmp_path / 'unrelated_el').touch()
    with (tmp_path / f'{live}_el').open('ab') as owner:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)    # a living owner holds its lock
        freed = clean_stale_shm(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [live, f'{live}_el', 'unrelated_el']
    assert freed >= 2 * 8192
    assert clean_stale_shm(tmp_path / 'missing') == 0


def test_a_lock_file_gone_since_the_listing_is_not_recreated(tmp_path: Path, monkeypatch) -> None:
    """Fast DDS removes a dead port's lock file when its writers find the port dead and puts a
    segment of its own (no lock file) at the port's name; a cleaner that listed the old lock file
    just before must not re-create it and delete the writers' live segment."""
    port = 'fastrtps_port7413'
    (tmp_path / port).write_bytes(b'\0' * 8192)            # the writers' new port segment
    (tmp_path / f'sem.{port}_mutex').touch()
    listed = [port, f'sem.{port}_mutex', f'{port}_el']      # the listing still had the lock file
    monkeypatch.setattr('field_deploy.rosenv.os.listdir', lambda _path: listed)
    assert clean_stale_shm(tmp_path) == 0
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [port, f'sem.{port}_mutex']


def test_a_killed_ros_process_leaves_a_segment_that_is_cleaned(ros: None) -> None:
    """Real Fast DDS: kill -9 a process with a node; its 32 MiB segment goes, ours stays."""
    keeper = rclpy.create_node('shm_keeper')          # this process's own participant and segment
    keeper.create_publisher(String, 'shm_test', 10)
    proc = _node_process('shm_victim', 'shm_test')
    try:
        # What the victim owns: the files whose lock it holds (/proc/locks), and their segments.
        # (Other processes on the machine create and remove their own files meanwhile.)
        theirs = {n for lock in _locked_by(proc.pid) for n in (lock, lock[:-len('_el')])}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.2)
    # kill -9: its segments stay (nothing cleans them by itself). Its port files may already be
    # gone: a live participant that sends to a dead port has Fast DDS reclaim it (seen in a CI
    # run: 'fastrtps_port7001_el' gone within 0.2 s).
    segments = {n for n in theirs if not n.startswith('fastrtps_port')}
    assert segments and segments <= set(os.listdir(SHM_DIR))
    # This process's own live files: the locks it holds, and their segments.
    ours = {n for lock in _locked_by(os.getpid()) for n in (lock, lock[:-len('_el')])}
    assert ours, "the keeper node's participant holds its segment's lock"
    assert clean_stale_shm() > 0
    left = set(os.listdir(SHM_DIR))
    # Gone: all of it, but a port a live writer of ours found dead and put back as its own
    # segment, with no lock file (Fast DDS does; seen in a CI run of 2026-12-03: the keeper's
    # publisher re-created 'fastrtps_port15163' after the clean) - the clean must leave that one.
    leftover = theirs & left
    assert all(n.startswith('fastrtps_port') and not n.endswith('_el') and f'{n}_el' not in left
               for n in leftover), leftover
    assert ours <= left, f'live segments of this process were removed: {sorted(ours - left)}'
    keeper.destroy_node()


def test_the_profile_a_process_asks_for_replaces_only_the_projects_own(monkeypatch) -> None:
    """A user's file (or an empty value: Fast DDS defaults) wins; the project's file inherited
    from a parent is swapped for the variant this process asks for, both ways."""
    project = str(config_dir() / 'fastdds.xml')
    monkeypatch.setenv(FASTDDS_PROFILES_ENV, project)
    small = use_project_fastdds_profile(small_segment=True)
    assert small is not None and small != project
    text = Path(small).read_text()
    assert f'<segment_size>{SMALL_SEGMENT_BYTES}</segment_size>' in text
    assert text.replace(f'<segment_size>{SMALL_SEGMENT_BYTES}</segment_size>', '') == \
        Path(project).read_text().replace('<segment_size>33554432</segment_size>', '')
    assert os.environ[FASTDDS_PROFILES_ENV] == small
    assert use_project_fastdds_profile() == project                # a child that needs the big one
    monkeypatch.setenv(FASTDDS_PROFILES_ENV, '/etc/robot/fastdds.xml')
    assert use_project_fastdds_profile(small_segment=True) == '/etc/robot/fastdds.xml'
    monkeypatch.setenv(FASTDDS_PROFILES_ENV, '')
    assert use_project_fastdds_profile(small_segment=True) is None
    assert os.environ[FASTDDS_PROFILES_ENV] == ''


def test_no_writable_temporary_directory_keeps_the_full_segment(monkeypatch, tmp_path: Path,
                                                              capsys) -> None:
    """The derived file cannot be written: the node still starts, on the project's file, and
    says why."""
    not_a_dir = tmp_path / 'file'
    not_a_dir.write_text('')
    monkeypatch.setattr('tempfile.gettempdir', lambda: str(not_a_dir))
    monkeypatch.delenv(FASTDDS_PROFILES_ENV, raising=False)
    assert use_project_fastdds_profile(small_segment=True) == str(config_dir() / 'fastdds.xml')
    assert 'using' in capsys.readouterr().err


def test_a_small_segment_process_maps_a_small_segment_of_its_own(ros: None) -> None:
    """Real Fast DDS, read from outside: the segment a process creates (the file whose lock it
    holds) is 32 MiB with the project's profile and 4 MiB with ``small_segment``."""
    sizes = {}
    for small in (False, True):
        proc = _node_process('shm_size', 'shm_size', small_segment=small)
        try:
            segments = [lock[:-len('_el')] for lock in _locked_by(proc.pid)
                        if not lock.startswith('fastrtps_port')]
            sizes[small] = max((SHM_DIR / name).stat().st_size for name in segments)
        finally:
            proc.terminate()
            proc.wait()
    assert sizes[False] >= 32 * 1024 * 1024, sizes
    assert SMALL_SEGMENT_BYTES <= sizes[True] < 2 * SMALL_SEGMENT_BYTES, sizes


def _node_process(node: str, topic: str, small_segment: bool = False) -> subprocess.Popen:
    """A process with one node publishing on ``topic``, up and holding its shared-memory locks."""
    code = (f'from field_deploy.ros import init; import rclpy, time; '
            f'init([], small_segment={small_segment}); n = rclpy.create_node("{node}"); '
            f'n.create_publisher(__import__("std_msgs.msg").msg.String, "{topic}", 10); '
            'print("up", flush=True); time.sleep(60)')
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b'up'
    assert wait_until(lambda: bool(_locked_by(proc.pid)), 10)
    return proc


def _locked_by(pid: int) -> set[str]:
    """Names of the ``/dev/shm`` lock files ``pid`` holds a flock on (from ``/proc/locks``)."""
    inodes = {entry.inode(): entry.name for entry in os.scandir(SHM_DIR)}
    names = set()
    for line in Path('/proc/locks').read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == 'FLOCK' and fields[4] == str(pid):
            name = inodes.get(int(fields[5].rsplit(':', 1)[-1]))
            if name and name.endswith('_el'):
                names.add(name)
    return names


_IMAGE_WRITER = '''
from field_deploy.ros import init; import rclpy, time, sys
from field_deploy.memory import ProcessMemory
from rclpy.qos import QoSProfile, ReliabilityPolicy
ProcessMemory()     # as every node (run_nodes): freed frames go back to the OS
from sensor_msgs.msg import Image
init([]); n = rclpy.create_node(sys.argv[1])
qos = QoSProfile(depth=90, reliability=ReliabilityPolicy.RELIABLE)
if sys.argv[1] == 'pool_writer':
    p = n.create_publisher(Image, 'pool_images', qos)
    m = Image(height=480, width=640, encoding='rgb8', step=1920, data=bytes(921600))
    print('up', flush=True)
    while True:
        p.publish(m); time.sleep(1 / 30)
else:
    n.create_subscription(Image, 'pool_images', lambda m: None, qos)
    print('up', flush=True); rclpy.spin(n)
'''


def _rss_mb(pid: int) -> float:
    """The process's private resident memory (``RssAnon``): its heap, where a writer's history
    lives; not the peers' shared-memory segments, which :class:`SegmentPrefaulter` maps in full
    a few seconds after start."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('RssAnon:'):
            return int(line.split()[1]) / 1024
    raise AssertionError(f'no RssAnon for {pid}')


def test_a_writer_returns_the_history_a_stalled_reader_made_it_keep(ros: None) -> None:
    """Real Fast DDS with the project's profile: a camera writer (reliable, depth 90) whose reader
    stops acknowledging keeps up to 90 frames (~80 MB); once the reader acknowledges again the
    writer's memory goes back down. With rmw_fastrtps's own pool policy (PREALLOCATED_WITH_REALLOC)
    it stayed at the high-water mark for the life of the process (docs/soak.md)."""
    procs = [subprocess.Popen([sys.executable, '-c', _IMAGE_WRITER, name], stdout=subprocess.PIPE)
             for name in ('pool_writer', 'pool_reader')]
    writer, reader = procs
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b'up'
        time.sleep(3)                                  # matched, frames flowing and acknowledged
        before = _rss_mb(writer.pid)
        reader.send_signal(signal.SIGSTOP)             # acknowledges nothing: the history fills
        assert wait_until(lambda: _rss_mb(writer.pid) > before + 50, timeout=20), \
            f'the writer never held the frames: {before:.0f} -> {_rss_mb(writer.pid):.0f} MB'
        held = _rss_mb(writer.pid)
        reader.send_signal(signal.SIGCONT)             # acknowledges again: the history drains
        assert wait_until(lambda: _rss_mb(writer.pid) < before + 20, timeout=20), \
            f'the writer kept the frames: {before:.0f} -> {held:.0f} -> {_rss_mb(writer.pid):.0f} MB'
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_every_robot_writer_history_is_reserved_at_its_depth() -> None:
    """The profile's ``allocated_samples`` must cover every keep-last depth a robot profile gives
    a stream (Fast DDS reserves min(allocated_samples, depth)): a deeper stream added to a robot
    would again grow its writer's bookkeeping one sample at a time while a reader lags, and leave
    the sim's heap fragmented (config/fastdds.xml). And it may not exceed ``max_samples``
    (Fast DDS's default 5000), or Fast DDS refuses the writer's QoS as inconsistent."""
    import xml.etree.ElementTree as ElementTree

    import yaml
    ns = {'f': 'http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles'}
    root = ElementTree.parse(config_dir() / 'fastdds.xml').getroot()
    writer = root.find('f:profiles/f:data_writer[@is_default_profile="true"]', ns)
    assert writer is not None, 'no default data_writer profile'
    limits = writer.find('f:topic/f:resourceLimitsQos', ns)
    assert limits is not None, 'the default writer profile sets no resourceLimitsQos'
    allocated = int(limits.findtext('f:allocated_samples', '0', ns))
    max_samples = int(limits.findtext('f:max_samples', '5000', ns))
    depths = {}
    for robot in sorted((config_dir() / 'robots').glob('*.yaml')):
        for topic in yaml.safe_load(robot.read_text())['topics']:
            depths[f'{robot.stem}:{topic["name"]}'] = int(topic.get('qos', {}).get('depth', 10))
    assert len(depths) > 10, depths
    deeper = {name: depth for name, depth in depths.items() if depth > allocated}
    assert not deeper, f'config/fastdds.xml allocated_samples {allocated} < these depths: {deeper}'
    assert allocated <= max_samples, (allocated, max_samples)
