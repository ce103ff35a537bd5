"""The recorder's queue memory taken before the streams begin (``field_deploy.heap_reserve``).

Counted in fresh processes from the kernel (RSS, minor page faults): a backlog of images inside
the reserve faults next to no pages, the same backlog without it faults every one; the node's
heap trimmer keeps the reserve and :func:`release` gives it back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_recorder.capture.recorder import Recorder, RecorderConfig
from field_deploy import heap_reserve

SRC = str(Path(__file__).resolve().parents[1] / 'src')

_BACKLOG = '''
import ctypes, json, resource, sys
sys.path.insert(0, sys.argv[1])
from field_deploy import heap_reserve, memory
memory.set_allocator('reuse')                  # the recorder's policy
base = memory.resident_bytes()
got = heap_reserve.reserve(int(sys.argv[2]) << 20)
reserved = memory.resident_bytes()
source = ctypes.create_string_buffer(921_641)
backlog = [None] * 80
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(80):                            # 74 MB of images queued behind a slow writer
    backlog[i] = ctypes.string_at(source, 921_641)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
del backlog                                    # drained
memory.HeapTrimmer(free_bytes=0).trim_if_worth_it()             # the node's trimmer, next
kept = memory.resident_bytes()
heap_reserve.release()
print(json.dumps({'got': got, 'base': base, 'reserved': reserved, 'faults': faults,
                  'kept': kept, 'released': memory.resident_bytes()}))
'''


def _backlog(reserve_mb: int) -> dict:
    out = subprocess.run([sys.executable, '-c', _BACKLOG, SRC, str(reserve_mb)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def test_a_backlog_inside_the_reserve_takes_pages_that_exist_and_the_trimmer_keeps_them() -> None:
    """96 MiB reserved: the reserve is resident at once, 80 queued images (225 pages each)
    fault next to none, the trimmer leaves the reserve, :func:`release` gives it back. Without
    a reserve the same backlog faults in every page: the control that shows the test can fail."""
    mib = 2**20
    with_reserve, without = _backlog(96), _backlog(0)
    assert with_reserve['got'] == 96 * mib, with_reserve
    assert with_reserve['reserved'] - with_reserve['base'] > 90 * mib, with_reserve
    assert with_reserve['faults'] < 80 * 10, with_reserve
    assert without['faults'] > 80 * 200, without
    assert with_reserve['kept'] - with_reserve['base'] > 90 * mib, with_reserve
    assert with_reserve['kept'] - with_reserve['released'] > 80 * mib, with_reserve


def test_the_recorder_reserves_at_most_its_queue_bound_and_releases_at_close(
        tmp_path: Path) -> None:
    """The reserve is the queue's: never more than ``queue_max_bytes``, ended by ``close``."""
    recorder = Recorder(RecorderConfig(str(tmp_path / 'bag'), min_free_space=0,
                                       queue_max_bytes=4 * 2**20, queue_reserve_bytes=64 * 2**20))
    try:
        assert recorder.reserved == heap_reserve.reserved() == 4 * 2**20
    finally:
        recorder.close()
    assert recorder.reserved == heap_reserve.reserved() == 0


def test_a_negative_reserve_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='queue_reserve_bytes: -1 must be >= 0'):
        RecorderConfig(str(tmp_path / 'bag'), queue_reserve_bytes=-1).validate()
