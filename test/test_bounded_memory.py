"""Issue 19: every per-message or per-event history kept in memory has a bound.

Structural, not timing: each history is driven far past its bound and its size checked, so a
node that runs a whole shift keeps the same memory at hour 8 as at minute 10. What is kept
beyond the bound goes to a file (the bag, the ledger, the log); see docs/soak.md.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from data_recorder.bag.writer import BagWriter
from data_recorder.capture.accounting import _WINDOW, TopicStats
from data_recorder.capture.snapshot import SnapshotBuffer
from field_deploy.history import History
from field_deploy.rosenv import config_dir
from field_deploy.testing import wait_until
from health_monitor.config import PolicySpec
from health_monitor.core import ERROR, Status
from health_monitor.manager import EVENTS_MAX
from test_health_core import _manager
from test_health_node import _fake

ROOT = Path(__file__).resolve().parents[1]


def test_history_keeps_the_newest_entries_and_counts_all() -> None:
    history: History[int] = History(50)
    for i in range(10_000):
        history.append(i)
    assert len(history) == 50 and history.total == 10_000
    assert list(history) == list(range(9_950, 10_000)) and history[-1] == 9_999
    with pytest.raises(ValueError, match='at least one'):
        History(0)


def test_lifecycle_manager_events_bounded_over_many_restarts() -> None:
    mgr, _, _, _ = _manager(['sim_robot', 'data_recorder', 'skill_runtime'])
    for _ in range(200):                  # a shift of bring-ups and shut-downs: ~2400 events
        assert mgr.startup()[0]
        assert mgr.shutdown()[0]
    assert mgr.events.total > 4 * EVENTS_MAX
    assert len(mgr.events) == EVENTS_MAX
    assert mgr.events[-1][1] == 'sim_robot'   # the newest kept: the last shutdown's end


def test_health_monitor_policy_log_bounded(ros: None, tmp_path: Path) -> None:
    from rclpy.parameter import Parameter

    from health_monitor.node import POLICY_LOG_MAX, HealthMonitor

    data = yaml.safe_load((config_dir() / 'health' / 'default.yaml').read_text())
    data['lifecycle']['nodes'] = []
    data['ledger']['path'] = str(tmp_path / 'ledger.sqlite')
    config = tmp_path / 'health.yaml'
    config.write_text(yaml.safe_dump(copy.deepcopy(data)))
    hm = HealthMonitor(parameter_overrides=[Parameter('config', value=str(config))])
    try:
        policy = PolicySpec('soak', '/sensors/imu', ERROR, None, ('mark_degraded',))
        fired = 5 * POLICY_LOG_MAX
        for i in range(fired):
            hm._fire(policy, '/sensors/imu', Status('sensors/imu', ERROR, f'silent #{i}'))
        assert len(hm.policy_log) == POLICY_LOG_MAX
        assert hm.policy_log.total == fired
        assert f'silent #{fired - 1}' in hm.policy_log[-1]
    finally:
        hm.close()
        hm.destroy_node()


def test_recorder_gap_detector_keeps_a_fixed_window_of_intervals() -> None:
    stats = TopicStats()
    for i in range(1, 100_000):
        stats.observe_stamp(i * 2_000_000)            # 500 Hz for 200 s
    assert len(stats._intervals) == _WINDOW
    assert stats.period() == 2_000_000


def test_snapshot_buffer_bounded_by_bytes_and_age() -> None:
    by_bytes = SnapshotBuffer(max_duration=0, max_bytes=100_000)
    by_age = SnapshotBuffer(max_duration=1.0)
    for i in range(20_000):
        by_bytes.add('/t', b'x' * 100, i * 1_000_000)
        by_age.add('/t', b'x' * 100, i * 1_000_000)   # 1 kHz for 20 s
    assert by_bytes.bytes <= 100_000 and len(by_bytes) == 1_000
    assert len(by_age) == 1_000


def _chunk_indexes(writer: BagWriter) -> int:
    """The MCAP writer keeps one ChunkIndex per chunk of the open file for its summary."""
    return len(writer._mcap._Writer__chunk_indices)  # type: ignore[union-attr]


def test_mcap_chunk_indexes_are_bounded_by_the_split(tmp_path: Path) -> None:
    """A file's summary grows by one chunk index per flush (~1.6 kB with 20 channels) until the
    file is closed; a size or duration split bounds it. 2000 flushes, a split every 1 MB."""
    writer = BagWriter(tmp_path / 'bag', chunk_size=64 * 1024, flush_interval=1e9,
                       max_bag_size=1024 * 1024)
    writer.add_topic('/joint_states', 'std_msgs/msg/String')
    payload = b'\x00\x01\x00\x00' + b'x' * 2_000
    most = 0
    for i in range(2_000):
        writer.write('/joint_states', payload, 1 + i * 1_000_000)
        writer.flush()                                 # one chunk per message: the worst case
        most = max(most, _chunk_indexes(writer))
    writer.close()
    assert len(writer.files) > 3
    assert most <= 1024 * 1024 // len(payload) + 1


def test_field_stack_recorder_splits_its_files() -> None:
    """The field stack records unattended: its files must be split by size or duration, or the
    open file's chunk indexes (and the metadata records' indexes) grow for the whole shift."""
    params = yaml.safe_load((ROOT / 'config' / 'params' / 'data_recorder.yaml').read_text())
    values = params['/**']['ros__parameters']
    assert values.get('max_bag_size', 0) > 0 or values.get('max_bag_duration', 0) > 0



def test_lifecycle_heartbeats_leave_no_tasks_behind(ros: None, tmp_path: Path) -> None:
    """The manager asks each managed node its state twice a second for the whole shift. Waiting
    with ``spin_until_future_complete`` left two never-run tasks per call in the executor's task
    list (rclpy 7.1.6: 600 after 300 calls, ~3.5 kB each call); the calls now wait on an event
    while the client's executor spins on its own thread, which runs and drops them."""
    from rclpy.node import Node

    from health_monitor.lifecycle_ros import RosLifecycleClient

    target = subprocess.Popen(_fake('soak_target', tmp_path / 'events.log'))
    node = Node('soak_heartbeats')
    client = RosLifecycleClient(node)
    try:
        assert wait_until(lambda: client.available('/soak_target'), 30.0)
        calls = 300
        states = [client.get_state('/soak_target', 5.0) for _ in range(calls)]
        assert states == ['unconfigured'] * calls
        assert len(client.executor._tasks) <= 2      # not one per call
        get_state = client._get['/soak_target']
        assert not get_state._pending_requests
    finally:
        client.close()
        node.destroy_node()
        target.terminate()
        target.wait(10)


_FREED_SMALL_BLOCKS = '''
import json, sys
sys.path.insert(0, sys.argv[1])
from field_deploy.memory import HeapTrimmer, resident_bytes
trimmer = HeapTrimmer(free_bytes=4 * 2**20)
assert trimmer.available
base = resident_bytes()
blocks = [bytes(1500) for _ in range(60_000)]   # ~1.5 kB each: malloc's heap, not mmap
pin = bytes(1500)                                # allocated after them: the heap's top stays
grown = resident_bytes()
del blocks
freed = resident_bytes()
untouched = trimmer.trim_if_worth_it()
print(json.dumps({'base': base, 'grown': grown, 'freed': freed, 'trimmed': resident_bytes(),
                  'did': untouched, 'released': trimmer.released}))
'''


def test_heap_pages_small_freed_samples_leave_go_back_to_the_os() -> None:
    """A dead reader's unacknowledged small samples, freed when its lease ends, stayed in
    glibc's heap (sim_robot +10 MB for good at a kill -9 in the soak). The trimmer every node
    runs gives such pages back: ~90 MB of 1.5 kB blocks freed below a live one stay resident
    until the trim, and go after it. Measured in a fresh process, from its kernel RSS."""
    import json
    import subprocess
    import sys
    src = str(Path(__file__).resolve().parents[1] / 'src')
    out = subprocess.run([sys.executable, '-c', _FREED_SMALL_BLOCKS, src], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    mb = {k: v / 2**20 if isinstance(v, int) and not isinstance(v, bool) else v
          for k, v in json.loads(out).items()}
    assert mb['grown'] - mb['base'] > 80, mb
    assert mb['freed'] - mb['base'] > 60, mb          # freed, still resident: glibc keeps it
    assert mb['did'] and mb['freed'] - mb['trimmed'] > 60 and mb['released'] > 60, mb


_IMAGE_COPIES = '''
import collections, ctypes, json, resource, sys
sys.path.insert(0, sys.argv[1])
from field_deploy import memory
if sys.argv[2] == 'reuse':
    assert memory.reuse_large_buffers()
else:
    assert memory.return_large_buffers()                   # the default
source = ctypes.create_string_buffer(921_641)
stream = collections.deque(maxlen=3)       # freed three images later: a recorder keeping up
for _ in range(20):
    stream.append(ctypes.string_at(source, 921_641))
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    stream.append(ctypes.string_at(source, 921_641))
copied = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
stream.clear()
backlog, kept = [], []
for i in range(100):                                  # 92 MB behind, small objects between
    backlog.append(ctypes.string_at(source, 921_641))
    kept.append(bytes(range(200)) * 3)
grown = memory.resident_bytes()
del backlog                                           # drained; the small objects stay
memory.HeapTrimmer().trim_if_worth_it()               # what the node's trimmer does next
print(json.dumps({'faults': copied, 'grown': grown, 'trimmed': memory.resident_bytes()}))
'''


def test_images_reuse_the_heaps_pages_and_a_drained_backlog_goes_back() -> None:
    """The two allocator policies of ``field_deploy.memory``: with ``reuse_large_buffers`` (the
    recorder's) a stream of 921 kB copies freed soon after reuses the heap's pages - no page
    fault per copy - and a drained backlog of images still goes back to the OS; ``fixed`` (every
    other node's: the threshold fixed at 128 kB) maps each copy afresh (225 faults an image: a
    third of the recorder's CPU at 2x the reference load). Counted in fresh processes."""
    import json
    import subprocess
    import sys
    src = str(Path(__file__).resolve().parents[1] / 'src')
    got = {mode: json.loads(subprocess.run(
        [sys.executable, '-c', _IMAGE_COPIES, src, mode], check=True, capture_output=True,
        text=True, timeout=60).stdout) for mode in ('reuse', 'fixed')}
    assert got['fixed']['faults'] > 200 * 200, got          # the old policy: every page, again
    assert got['reuse']['faults'] < 200 * 10, got            # reused: next to none
    reuse = got['reuse']
    assert reuse['grown'] - reuse['trimmed'] > 80 * 2**20, got


_THREAD_IMAGES = '''
import ctypes, json, os, re, sys, tempfile, threading
sys.path.insert(0, sys.argv[1])
from field_deploy import memory
policy = memory.set_allocator('reuse')       # before any thread, as field_deploy.ros.init does
libc = ctypes.CDLL('libc.so.6')
libc.fopen.restype = ctypes.c_void_p

def arenas():
    path = tempfile.mktemp()
    out = libc.fopen(path.encode(), b'w')
    libc.malloc_info(0, ctypes.c_void_p(out))
    libc.fclose(ctypes.c_void_p(out))
    text = open(path).read()
    os.unlink(path)
    return len(re.findall('<heap nr=', text))

source = ctypes.create_string_buffer(921_641)
held, taken, drained = [], threading.Event(), threading.Event()

def receive():              # a DDS receive thread: a few images (under the trim threshold), kept
    held.extend(ctypes.string_at(source, 921_641) for _ in range(7))
    taken.set()
    drained.wait()          # written and freed while the thread lives on
    held.clear()
thread = threading.Thread(target=receive)
thread.start()
taken.wait()
grown, count = memory.resident_bytes(), arenas()
drained.set()
thread.join()
memory.HeapTrimmer(free_bytes=0).trim_if_worth_it()       # what the node's trimmer does
print(json.dumps({'policy': policy, 'arenas': count, 'grown': grown,
                  'trimmed': memory.resident_bytes()}))
'''


def test_the_recorders_policy_gives_every_thread_the_arena_the_trimmer_empties() -> None:
    """``reuse`` (the recorder's policy) puts every thread's blocks in the main arena: glibc's
    arena per thread keeps a free top under the trim threshold that ``malloc_trim`` does not reach
    (the recorder's 81-111 MB, +12.9 MB/h in the soak of 2026-12-03 08:16). Images taken by a
    live thread and freed come back at the next trim; with ``MALLOC_ARENA_MAX=8`` (an operator's
    setting wins) the same thread's arena keeps them - the control that shows the test can fail."""
    import json
    import os
    import subprocess
    import sys
    src = str(Path(__file__).resolve().parents[1] / 'src')

    def run(arena_max: str | None) -> dict:
        env = {k: v for k, v in os.environ.items() if k != 'MALLOC_ARENA_MAX'}
        if arena_max:
            env['MALLOC_ARENA_MAX'] = arena_max
        return json.loads(subprocess.run([sys.executable, '-c', _THREAD_IMAGES, src], check=True,
                                         capture_output=True, text=True, timeout=60, env=env).stdout)
    one, per_thread = run(None), run('8')
    assert one['policy'] == 'reuse' and one['arenas'] == 1, one
    assert one['grown'] - one['trimmed'] > 5 * 2**20, one            # 6.4 MB back
    assert per_thread['arenas'] == 2, per_thread
    assert per_thread['grown'] - per_thread['trimmed'] < 2**20, per_thread   # kept by its arena


_PEER_SEGMENT = '''
import json, mmap, os, sys
sys.path.insert(0, sys.argv[1])
from field_deploy.memory import SegmentPrefaulter

def shared():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith('RssShmem:'))

size = 16 << 20
path = f'/dev/shm/fastrtps_prefault_test_{os.getpid()}'
fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
try:
    os.write(fd, bytes(size))          # written through at creation, as Fast DDS does
    segment = mmap.mmap(fd, size)      # mapped, not touched: a reader's view of a peer
    other = mmap.mmap(-1, size)        # not a Fast DDS file: left alone
    prefaulter = SegmentPrefaulter()
    before = shared()
    first = prefaulter.scan()
    after = shared()
    second = prefaulter.scan()
    print(json.dumps({'before': before, 'first': first, 'after': after, 'second': second,
                      'failed': prefaulter.failed}))
finally:
    os.unlink(path)
'''


def test_peer_segments_are_counted_in_full_once_mapped() -> None:
    """A reader's RSS rose in steps through the soak as it touched more of its writers' Fast
    DDS segments (shared pages that exist from the start). The prefaulter every node runs maps
    each such segment's pages at once, so the RSS counts the segment in full and stays level;
    a second pass does nothing, and other mappings are left alone. From the kernel's
    ``RssShmem`` of a fresh process holding a 16 MiB segment file it never touched."""
    import json
    import subprocess
    import sys
    src = str(Path(__file__).resolve().parents[1] / 'src')
    out = subprocess.run([sys.executable, '-c', _PEER_SEGMENT, src], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    mb = {k: v / 2**20 for k, v in json.loads(out).items()}
    assert mb['failed'] == 0, mb
    assert mb['before'] < 1 and mb['first'] == 16 and mb['second'] == 0, mb
    assert 16 <= mb['after'] < 17, mb


_ALLOCATOR_BOOKS = '''
import json, os, sys
sys.path.insert(0, sys.argv[1])
from field_deploy.memory import STATS_ENV, AllocatorReport
assert not AllocatorReport(folder='').available       # opt-in: no folder, no thread
os.environ[STATS_ENV] = sys.argv[2]
report = AllocatorReport()
def books():
    report.write()
    return json.loads(report.path.read_text())
base = books()
blocks = [bytes(200) for _ in range(100_000)]    # ~23 MB of small objects: pymalloc's
grown = books()
del blocks[1::1]                                 # all but one block: its arena stays
one = books()
pins = [bytes(200) for _ in range(100_000)][::400]  # one live block every ~400: arenas pinned
pinned = books()
print(json.dumps({'base': base, 'grown': grown, 'one': one, 'pinned': pinned,
                  'name': report.path.name}))
'''


def test_allocator_books_tell_live_objects_from_pinned_arenas(tmp_path: Path) -> None:
    """The soak places a step of anonymous memory by the allocators' own books: a backlog of
    small messages freed but for a few blocks leaves pymalloc's arenas resident while its
    blocks in use fall back. Checked in a fresh process through the file the nodes write."""
    import json
    import subprocess
    import sys
    src = str(Path(__file__).resolve().parents[1] / 'src')
    out = subprocess.run([sys.executable, '-c', _ALLOCATOR_BOOKS, src, str(tmp_path)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    doc = json.loads(out)
    base, grown, one, pinned = doc['base'], doc['grown'], doc['one'], doc['pinned']
    assert doc['name'].endswith('.json') and (tmp_path / doc['name']).is_file(), doc
    assert grown['py_used_mb'] - base['py_used_mb'] > 20, doc
    assert one['py_used_mb'] - base['py_used_mb'] < 2, doc
    assert pinned['py_used_mb'] - base['py_used_mb'] < 2, doc          # 250 blocks live...
    assert pinned['py_arenas_mb'] - base['py_arenas_mb'] > 15, doc     # ...hold the arenas
    assert all(k in base for k in ('c_used_mb', 'c_free_mb', 'c_heap_mb')), doc


def test_an_unknown_allocator_policy_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """``FIELD_DEPLOY_ALLOCATOR`` takes ``fixed`` or ``reuse``; anything else stops the node's
    start with the variable and the value named, before a chore thread starts."""
    from field_deploy import memory
    monkeypatch.setenv(memory.ALLOCATOR_ENV, 'jemalloc')
    with pytest.raises(ValueError, match="FIELD_DEPLOY_ALLOCATOR='jemalloc'"):
        memory.ProcessMemory()
