"""Topic monitoring cores (health_monitor.topics): staleness from evidence on synthetic
timelines, the STALE hold and its stretch, writers told apart by sequence runs, frozen joints,
rate and stamp sanity; and the cameras watched on their camera_info (health_monitor.config)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import yaml

from field_deploy.profile import load_profile
from field_deploy.testing import wait_until
from health_monitor.config import HealthConfigError, parse_config
from health_monitor.config import default_config_path as _default_path
from health_monitor.core import OK, STALE, WARN
from health_monitor.evidence import DeliveryGaps, Punctuality
from health_monitor.topics import (
    FreezeWatch,
    TopicLimits,
    TopicMonitor,
    joint_state_positions,
)

# --------------------------------------------------------------------------- topic monitor

def _feed(mon: TopicMonitor, t0: float, t1: float, rate: float, stamp_offset: float = 0.0):
    t = t0
    while t < t1:
        wall = int(1e18 + t * 1e9)
        mon.on_message(t, wall, wall + int(stamp_offset * 1e9))
        t += 1.0 / rate
    return t


def test_topic_stale_within_two_periods_and_clears() -> None:
    mon = TopicMonitor('imu', 'sensors/imu/imu', TopicLimits(rate_hz=100.0))
    assert mon.status(0.0).level == STALE  # never seen
    t = _feed(mon, 0.0, 2.0, 100.0)
    assert mon.status(t).level == OK
    last = mon.last_rx
    assert mon.limits.stale_after_s == pytest.approx(0.02)  # 2 periods
    assert mon.limits.stale_raise_s == pytest.approx(0.09)  # + the 70 ms STALE hold
    assert mon.status(last + 0.085).level == OK and not mon.stale(last + 0.085)
    s = mon.status(last + 0.091)
    assert s.level == STALE and 'no message for' in s.message and mon.stale(last + 0.091)
    t = _feed(mon, last + 1.0, last + 1.1, 100.0)  # 10 messages: 25 (250 ms) needed to clear
    assert mon.status(t).level == STALE and 'again' in mon.status(t).message
    t = _feed(mon, t, t + 0.2, 100.0)
    assert mon.status(t).level == OK
    assert mon.stale_raised == 1 and mon.delivery_gaps == 0
    slow = TopicMonitor('cam', 'c', TopicLimits(rate_hz=10.0, stale_hold_s=0.0))
    _feed(slow, 0.0, 1.0, 10.0)
    assert slow.status(slow.last_rx + 0.19).level == OK
    assert slow.status(slow.last_rx + 0.21).level == STALE  # 2 periods of 100 ms


def _seq_feed(mon: TopicMonitor, t0: float, t1: float, rate: float, seq: int,
              every: float = 0.01) -> tuple[float, int]:
    """Checks every ``every`` s, each taking the newest of the samples published since."""
    t = t0
    while t < t1 - 1e-9:
        t += every
        seq += round(rate * every)
        wall = int(1e18 + t * 1e9)
        mon.on_message(t, wall, wall, seq=seq)
    return t, seq


def test_late_check_with_no_gap_is_not_stale() -> None:
    """Synthetic timeline: the monitor starved 300 ms (its check fired late); the samples it
    takes when it wakes, and those its DDS threads deliver just after, show no gap."""
    punct = Punctuality(period_s=0.01, tolerance_s=0.02)
    mon = TopicMonitor('imu', 'sensors/imu', TopicLimits(rate_hz=1000.0))
    t, seq = 0.0, 0
    for i in range(100):                       # 1 s of on-time checks, 10 samples each
        t, seq = _seq_feed(mon, t, t + 0.01, 1000.0, seq)
        assert punct.check(t) == pytest.approx(0.0, abs=1e-9)
        assert mon.stale(t, punct.blind_since) is (i == 0)   # one sample: not flowing yet
    last_rx = mon.last_rx
    t_wake = t + 0.3                            # starved: the next check comes 300 ms late
    assert punct.check(t_wake) == pytest.approx(0.29)
    assert punct.late_checks == 1
    assert punct.blind_since(last_rx) == pytest.approx(0.29)   # not looking for 290 ms
    # the DDS threads of the starved process have not delivered yet: nothing newer was taken
    assert mon.silence(t_wake) > 0.29          # silent by the clock ...
    assert not mon.stale(t_wake, punct.blind_since)     # ... but not watched: not STALE
    assert mon.status(t_wake, punct.blind_since).level == OK
    # 10 ms later (on time) the backlog arrives: 310 publications in a run, no gap
    t2 = t_wake + 0.01
    assert punct.check(t2) == pytest.approx(0.0, abs=1e-9)
    seq += 310
    mon.on_message(t2, int(1e18 + t2 * 1e9), int(1e18 + t2 * 1e9), seq=seq)
    assert mon.count == seq - 9 and mon.last_rx > last_rx  # (the first sample counts 1)
    assert not mon.stale(t2, punct.blind_since)
    assert mon.stale_raised == 0


def test_status_between_checks_knows_silence_only_up_to_the_last_look() -> None:
    """The 5 Hz status timer can run while the 100 Hz check (which takes the samples) is
    starved: its STALE would count 0.5 s nobody looked (seen in the e2e test beside two busy
    loops, before the blind stretch was recorded). Silence runs to the last take, then the
    late check's blindness is left out, and a real silence is still caught on time."""
    punct = Punctuality(period_s=0.01, tolerance_s=0.02)
    mon = TopicMonitor('camera_info', 'sensors/camera/front', TopicLimits(rate_hz=30.0))
    t, seq = 0.0, 0
    for _ in range(100):
        t += 0.01
        mon.looked_at = t
        if round(t * 100) % 3 == 0:
            seq += 1
            mon.on_message(t, int(1e18 + t * 1e9), int(1e18 + t * 1e9), seq=seq)
        punct.check(t)
    last = mon.last_rx
    # the check is starved for 0.5 s; the status timer runs meanwhile
    assert mon.status(t + 0.5, punct.blind_since).level == OK
    assert not mon.stale(t + 0.5, punct.blind_since) and mon.stale_raised == 0
    assert mon.silence(t + 0.5) == pytest.approx(t - last)
    # the late check takes what the publisher sent meanwhile: no gap, nothing raised
    t += 0.5
    punct.check(t)
    mon.looked_at = t
    seq += 15
    mon.on_message(t, int(1e18 + t * 1e9), int(1e18 + t * 1e9), seq=seq)
    assert not mon.stale(t, punct.blind_since) and mon.status(t, punct.blind_since).level == OK
    # a real silence watched on time: STALE after 2 periods + the hold, at the next check
    last = mon.last_rx
    while not mon.stale(t, punct.blind_since):
        t += 0.01
        mon.looked_at = t
        punct.check(t)
    assert t - last == pytest.approx(mon.limits.stale_raise_s, abs=0.0101)


def test_sample_delivered_late_is_a_delivery_gap() -> None:
    """Its writer wrote it 300 ms before the monitor's reader got it (a starved reader or
    writer thread): for that long the monitor could not have seen it, nothing was lost at
    the source. The host's hold covers such a delay next time; a prompt sample does not."""
    gaps = DeliveryGaps()
    mon = TopicMonitor('joint_commands', 'skills/safety_gate',
                       TopicLimits(rate_hz=500.0, stale_hold_max_s=0.5), gaps)
    wall = int(1e18)
    mon.on_message(1.0, wall, wall, source_wall_ns=wall - 1_000_000)
    assert gaps.seen == 0
    mon.on_message(1.3, wall + int(3e8), wall, source_wall_ns=wall)
    assert gaps.seen == 1 and gaps.longest(1.3) == pytest.approx(0.3)
    assert mon.raise_after(1.3) == pytest.approx(1.25 * 0.3)


def test_on_time_check_with_real_silence_is_stale_after_the_hold() -> None:
    punct = Punctuality(period_s=0.01, tolerance_s=0.02)
    lim = TopicLimits(rate_hz=1000.0, stale_floor_s=0.06, stale_hold_s=0.05)
    mon = TopicMonitor('imu', 'sensors/imu', lim)
    t, _ = _seq_feed(mon, 0.0, 1.0, 1000.0, 0)
    last = mon.last_rx
    levels = []
    while t < last + 0.2:                      # the publisher stops; checks stay on time
        t += 0.01
        punct.check(t)
        levels.append((round(t - last, 3), mon.stale(t, punct.blind_since)))
    first = next(dt for dt, stale in levels if stale)
    assert lim.stale_raise_s == pytest.approx(0.11)
    assert 0.11 <= first <= 0.11 + 0.01 + 1e-9  # 60 ms stale time + 50 ms hold, next check
    s = mon.status(t, punct.blind_since)
    assert s.level == STALE and 'no message for' in s.message and mon.stale_raised == 1
    # a late check during the silence: its 90 ms of blindness are not counted as silence
    mon2 = TopicMonitor('imu', 'sensors/imu', lim)
    p2 = Punctuality(period_s=0.01, tolerance_s=0.02)
    t, _ = _seq_feed(mon2, 0.0, 1.0, 1000.0, 0)
    p2.check(t)
    p2.check(t + 0.1)                           # 90 ms late
    assert not mon2.stale(t + 0.1, p2.blind_since)
    assert not mon2.stale(t + 0.19, p2.blind_since)          # 190 ms quiet, 100 ms watched
    assert mon2.stale(t + 0.09 + 0.111, p2.blind_since)      # 111 ms watched
    # a monitor late at every check (a saturated host) still sees a real silence, later
    mon3 = TopicMonitor('imu', 'sensors/imu', lim)
    p3 = Punctuality(period_s=0.01, tolerance_s=0.02)
    t, _ = _seq_feed(mon3, 0.0, 1.0, 1000.0, 0)
    p3.check(t)
    last, caught = mon3.last_rx, None
    while caught is None:
        t += 0.035                              # every check 25 ms late
        p3.check(t)
        if mon3.stale(t, p3.blind_since):
            caught = t - last
    assert 0.11 < caught < 0.11 * 3.5 + 0.035, caught   # watched 10 ms in every 35 ms


def test_stale_that_lost_nothing_clears_at_once_and_says_so() -> None:
    """Raised (the samples were late on an on-time check), then every publication of the
    silent time arrives in a burst: it clears on that evidence, counted as a delivery gap."""
    mon = TopicMonitor('imu', 'sensors/imu', TopicLimits(rate_hz=1000.0))
    t, seq = _seq_feed(mon, 0.0, 1.0, 1000.0, 0)
    assert mon.status(t + 0.1).level == STALE
    t, seq = t + 0.11, seq + 110               # all 110 publications, in one run
    mon.on_message(t, int(1e18 + t * 1e9), int(1e18 + t * 1e9), seq=seq)
    assert mon.status(t + 0.001).level == OK and mon.delivery_gaps == 1
    assert mon.stale_raised == 1


def test_hold_stretches_after_gaps_that_lost_nothing_up_to_the_cap() -> None:
    """A loaded host: a stream goes quiet 250 ms and then delivers all 250 publications.
    Afterwards (shared by every topic of the monitor) the hold covers a gap that long, so the
    next such gap raises nothing, while a real silence is still STALE within the cap."""
    gaps = DeliveryGaps(horizon_s=30.0)
    lim = TopicLimits(rate_hz=1000.0, stale_hold_max_s=0.35)
    imu = TopicMonitor('imu', 'sensors/imu', lim, gaps)
    other = TopicMonitor('wrench', 'sensors/wrench', TopicLimits(rate_hz=500.0, stale_hold_max_s=0.35),
                         gaps)
    t, seq = _seq_feed(imu, 0.0, 1.0, 1000.0, 0)
    assert imu.raise_after(t) == pytest.approx(0.072)        # quiet host: 2 ms + 70 ms
    assert imu.stale(t + 0.09)                                  # (this one is raised)
    t, seq = t + 0.25, seq + 250                               # ... then all 250 arrive
    imu.on_message(t, int(1e18 + t * 1e9), int(1e18 + t * 1e9), seq=seq)
    assert gaps.seen == 1 and not imu.stale(t + 0.001)
    assert imu.raise_after(t) == pytest.approx(1.25 * 0.25)   # covers that gap, with margin
    assert other.raise_after(t) == pytest.approx(1.25 * 0.25)  # the host's, not one stream's
    t, seq = _seq_feed(imu, t, t + 1.0, 1000.0, seq)
    last = imu.last_rx
    assert not imu.stale(last + 0.25)                          # the same gap again: no alarm
    assert imu.stale(last + 0.32)                              # a real silence: still caught
    gaps.record(t, 5.0)                                         # a very long no-loss gap
    assert imu.raise_after(t) == pytest.approx(0.002 + 0.35)   # capped: detection stays bounded
    assert imu.raise_after(t + 31.0) == pytest.approx(0.072)   # forgotten after the horizon
    t, seq = _seq_feed(imu, t + 1.0, t + 1.01, 1000.0, seq)
    t, seq = t + 0.3, seq + 3                                   # quiet 300 ms, 3 published: a
    imu.on_message(t, int(1e18 + t * 1e9), 0, seq=seq)          # real gap, not learnt
    assert gaps.seen == 2


def test_images_watched_on_their_camera_info(tmp_path: Path) -> None:
    data = yaml.safe_load(_default_path().read_text())
    profile = load_profile('quadruped_12dof')
    assert data['topics']['images_via_camera_info'] is True
    cfg = parse_config(data, 'h.yaml', profile)
    names = {w.name for w in cfg.topics}
    assert 'camera/front/camera_info' in names and 'camera/front/image_raw' not in names
    assert 'sensors/camera/front/image_raw' not in cfg.expected
    data['topics']['images_via_camera_info'] = False
    assert 'camera/front/image_raw' in {w.name for w in parse_config(data, 'h.yaml', profile).topics}
    data['topics']['images_via_camera_info'] = True
    data['topics']['ignore'] = ['camera/front/camera_info']   # no info watched: take the images
    assert 'camera/front/image_raw' in {w.name for w in parse_config(data, 'h.yaml', profile).topics}
    data['topics']['images_via_camera_info'] = 'yes'
    with pytest.raises(HealthConfigError, match=r'topics\.images_via_camera_info: expected true'):
        parse_config(data, 'h.yaml', profile)


def test_a_second_writer_before_the_graph_lists_it_counts_no_phantom_publications() -> None:
    """Writer B's first samples arrive while the graph still lists one publisher (it lags DDS
    by seconds under load). The monitor's former copy of the runs retired A's live run for B's,
    so A's next number continued B's run: each A sample then stood for ~100 publications (a
    rate of thousands on a 100 Hz topic). The shared tracker keeps both runs."""
    mon = TopicMonitor('odom', 'robot/odom', TopicLimits(rate_hz=100.0, rate_hold_s=0.3))
    mon.sequence.set_writers(1)
    t, fed = 0.0, 0
    for i in range(300):
        t += 0.01
        mon.on_message(t, int(1e18 + t * 1e9), None, seq=1000 + i)     # A, long running
        fed += 1
        if i >= 100:                                                   # B from t = 1 s, unlisted
            mon.on_message(t + 0.001, int(1e18 + t * 1e9), None, seq=i - 99)
            fed += 1
        if i == 200:
            mon.sequence.set_writers(1)                                # a poll: both live
    assert mon.count == fed
    assert len(mon.sequence.runs) == 2 and mon.sequence.lost == 0
    mon.sequence.set_writers(2)                                        # the graph catches up
    s = mon.status(t + 0.002)
    assert s.level == OK and s.values['writers'] == '2', s.message


def test_topic_rate_and_staleness_per_writer() -> None:
    """Two writers at 100 Hz each on a 100 Hz topic: the rate is right per writer, and one
    writer going silent is STALE though the topic still flows."""
    mon = TopicMonitor('odom', 'robot/odom', TopicLimits(rate_hz=100.0, rate_hold_s=0.3))
    mon.sequence.set_writers(2)
    t = 0.0
    sb = 1000
    levels = []
    for i in range(300):
        t += 0.01
        mon.on_message(t, int(1e18 + t * 1e9), None, seq=i + 1)
        if i < 200:
            sb += 1
            mon.on_message(t + 0.001, int(1e18 + t * 1e9), None, seq=sb)
        if i % 10 == 0:
            levels.append(mon.status(t + 0.002).level)
    assert levels[5:20] == [OK] * 15, levels          # 200 Hz on the topic, 100 Hz a writer
    s = mon.status(t + 0.002)
    assert s.level == STALE and '1 of 2 writers silent' in s.message, s.message
    assert s.values['writers'] == '2'


def test_frozen_joint_from_real_joint_state_bytes() -> None:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState
    msg = JointState(name=['hip', 'knee'], position=[0.5, -1.25], velocity=[0.0, 0.0])
    msg.header.frame_id = 'base'
    data = serialize_message(msg)
    names, off = joint_state_positions(data)
    assert names == ['hip', 'knee']
    assert struct.unpack_from('<2d', data, off) == (0.5, -1.25)
    mon = TopicMonitor('joint_states', 'robot/joints',
                       TopicLimits(rate_hz=500.0, freeze_after_s=0.05))
    watch = FreezeWatch(0.05)
    t = 0.0
    for i in range(100):                        # knee frozen from the start, hip moving
        t += 0.01
        msg.position = [0.5 + 0.001 * i, -1.25]
        data = serialize_message(msg)
        n, off = joint_state_positions(data)
        watch.observe(n, data, off, t, mon.frozen)
        mon.on_message(t, int(1e18 + t * 1e9), int(1e18 + t * 1e9), seq=5 * i + 5)
        if i == 3:
            assert not mon.frozen
    assert set(mon.frozen) == {'knee'}
    s = mon.status(t)
    assert s.level == STALE and 'knee frozen' in s.message
    msg.position = [0.6, -1.2]
    data = serialize_message(msg)
    n, off = joint_state_positions(data)
    watch.observe(n, data, off, t + 0.01, mon.frozen)
    assert not mon.frozen


def test_topic_rate_band_with_hold_and_clear() -> None:
    mon = TopicMonitor('j', 'p', TopicLimits(rate_hz=100.0, rate_hold_s=0.5, clear_s=1.0))
    t, levels = 0.0, []
    for _ in range(30):  # 3 s at half rate, evaluated every 100 ms
        t = _feed(mon, t, t + 0.1, 50.0)
        levels.append(mon.status(t).level)
    assert levels[-1] == WARN and 'rate' in mon.status(t).message
    assert levels[:5] == [OK] * 5  # the hold: no instant trip
    for _ in range(5):  # back to nominal: still WARN until the clear time passed
        t = _feed(mon, t, t + 0.1, 100.0)
        mon.status(t)
    for _ in range(25):
        t = _feed(mon, t, t + 0.1, 100.0)
        level = mon.status(t).level
    assert level == OK


def test_topic_stamp_sanity_future_backwards_lagging() -> None:
    lim = TopicLimits(rate_hz=100.0, future_tolerance_s=0.05, max_lag_s=0.5, clear_s=0.5)
    for offset, word in ((0.2, 'future'), (-1.0, 'lagging')):
        mon = TopicMonitor('j', 'p', lim)
        t = _feed(mon, 0.0, 1.0, 100.0)
        assert mon.status(t).level == OK
        t = _feed(mon, t, t + 0.2, 100.0, stamp_offset=offset)
        s = mon.status(t)
        assert s.level == WARN and word in s.message
        for _ in range(10):  # back to good stamps (one goes 'backwards' after the future ones)
            t = _feed(mon, t, t + 0.1, 100.0)
            mon.status(t)
        assert mon.status(t + 0.001).level == OK
    mon = TopicMonitor('j', 'p', lim)
    mon.on_message(0.0, int(1e18), int(1e18))
    mon.on_message(0.01, int(1e18) + 10_000_000, int(1e18) - 5_000_000)
    assert mon.backwards == 1 and 'backwards' in mon.status(0.02).message


# --------------------------------------------------------------------------- receive threads

def test_receive_threads_busy_from_proc(tmp_path: Path) -> None:
    """A /proc/<pid>/task layout: only Fast DDS's receive threads count, runnable = busy."""
    from health_monitor.receiving import ReceiveThreads

    def task(tid: int, comm: str, state: str) -> None:
        (tmp_path / str(tid)).mkdir(exist_ok=True)
        (tmp_path / str(tid) / 'comm').write_text(comm + '\n')
        (tmp_path / str(tid) / 'stat').write_text(f'{tid} ({comm}) {state} 1 2 3\n')

    task(1, 'health_monitor', 'R')          # the main thread: not a receive thread
    task(2, 'dds.shm.7412', 'S')
    task(3, 'dds.udp.7413', 'S')
    task(4, 'dds.shm.wdog', 'R')            # the SHM watchdog receives nothing
    task(5, 'a (weird) name', 'R')
    threads = ReceiveThreads(str(tmp_path))
    assert not threads.busy() and sorted(threads.tids) == ['2', '3']
    task(2, 'dds.shm.7412', 'R')            # working through samples, or waiting for a CPU
    assert threads.busy() and threads.busy_checks == 1
    assert not ReceiveThreads(str(tmp_path / 'none')).busy()   # no /proc: no evidence either way


def test_receive_threads_that_waited_for_a_cpu_between_checks_are_blind_time(
        tmp_path: Path) -> None:
    """A listener that waited 30 ms on the run queue since the previous check and was asleep
    again at this one held its samples back 30 ms: the state alone (S) said nothing."""
    from health_monitor.receiving import ReceiveThreads

    def task(tid: int, comm: str, state: str, waited_ns: int) -> None:
        (tmp_path / str(tid)).mkdir(exist_ok=True)
        (tmp_path / str(tid) / 'comm').write_text(comm + '\n')
        (tmp_path / str(tid) / 'stat').write_text(f'{tid} ({comm}) {state} 1 2 3\n')
        (tmp_path / str(tid) / 'schedstat').write_text(f'123456 {waited_ns} 42\n')

    task(2, 'dds.shm.7412', 'S', 5_000_000)
    task(3, 'dds.udp.7413', 'S', 1_000_000)
    threads = ReceiveThreads(str(tmp_path))
    assert threads.blind(1.00, 1.01, consecutive=False) is None      # the baseline
    task(2, 'dds.shm.7412', 'S', 35_000_000)                         # waited 30 ms meanwhile
    assert threads.blind(1.01, 1.05, consecutive=True) == pytest.approx((1.02, 1.05))
    assert threads.blind(1.05, 1.06, consecutive=True) is None       # no wait since
    task(3, 'dds.udp.7413', 'S', 101_000_000)                        # 100 ms, in a 10 ms check
    assert threads.blind(1.06, 1.07, consecutive=True) == pytest.approx((1.06, 1.07))
    task(2, 'dds.shm.7412', 'S', 45_000_000)
    assert threads.blind(2.0, 2.01, consecutive=False) is None       # waits from before: not here
    task(2, 'dds.shm.7412', 'R', 45_000_000)
    assert threads.blind(2.01, 2.02, consecutive=True) == (2.01, 2.02)   # runnable now


def test_receive_threads_of_this_process() -> None:
    """Real threads named as Fast DDS names them: one spinning is busy, asleep it is not."""
    import ctypes
    import threading

    from health_monitor.receiving import ReceiveThreads

    spin, stop = threading.Event(), threading.Event()

    def listener() -> None:
        ctypes.CDLL(None).prctl(15, b'dds.shm.65000', 0, 0, 0)   # PR_SET_NAME
        while not stop.is_set():
            if spin.is_set():
                sum(range(1000))
            else:
                stop.wait(0.01)

    t = threading.Thread(target=listener, daemon=True)
    t.start()
    try:
        threads = ReceiveThreads()
        threads.REFRESH_S = 0.0
        assert wait_until(lambda: not threads.busy() and threads.tids != [], 5.0)
        spin.set()
        assert wait_until(threads.busy, 5.0)
    finally:
        stop.set()
        t.join(5.0)


def test_receive_side_blindness_is_left_out_of_a_silence() -> None:
    """The listener starved 2 s (probed busy at every check) while the check timer ran on time:
    a 5 Hz stream whose samples were dropped meanwhile is not STALE when it resumes; a silence
    after that, watched, is."""
    punct = Punctuality(period_s=0.01, tolerance_s=0.02)
    mon = TopicMonitor('battery', 'power/battery', TopicLimits(rate_hz=5.0))
    t = 0.0
    for _ in range(100):
        t += 0.01
        mon.looked_at = t
        if round(t * 100) % 20 == 0:
            mon.on_message(t, int(1e18 + t * 1e9), int(1e18 + t * 1e9))
        punct.check(t)
    last = mon.last_rx
    for _ in range(200):                       # 2 s, receive threads busy at every check
        prev, t = t, t + 0.01
        mon.looked_at = t
        punct.check(t)
        punct.add_blind(prev, t)
        assert not mon.stale(t, punct.blind_since)
    assert punct.blind_since(last) == pytest.approx(2.0)
    late = t + 0.1                             # a late check inside: merged, not counted twice
    punct.check(late)
    punct.add_blind(t, late)
    assert punct.blind_since(last) == pytest.approx(2.1)
    t = late
    while not mon.stale(t, punct.blind_since):
        t += 0.01
        mon.looked_at = t
        punct.check(t)
    watched = t - last - 2.1
    assert watched == pytest.approx(mon.limits.stale_raise_s, abs=0.011)


def test_a_stream_is_watched_once_it_flows_not_from_its_first_sample() -> None:
    """The safety gate publishes one hold command at configure and its 500 Hz loop only from
    activation (0.2 s to seconds later): one sample and a silence is a stream not started yet
    (STALE from start: never raised, no policy), not a stream lost. The demo raised this STALE
    on joint_commands in 1 of 3 runs on a quiet host (2026-11-30 21:20)."""
    mon = TopicMonitor('joint_commands', 'skills/safety_gate', TopicLimits(rate_hz=500.0))
    wall = int(1e18)
    mon.on_message(0.0, wall, wall, seq=1)                          # the hold command
    assert mon.stale(0.18) and not mon.flowing
    status = mon.status(0.18)
    assert status.level == STALE and 'not flowing yet' in status.message
    assert mon.stale_raised == 0
    t, _seq = _seq_feed(mon, 0.18, 0.3, 500.0, 1)                     # the loop starts
    assert mon.flowing and not mon.stale(t) and mon.status(t).level == OK
    assert mon.stale_raised == 0
    assert mon.stale(t + 0.2) and mon.status(t + 0.2).level == STALE  # a real silence now
    assert mon.stale_raised == 1
