"""What a keep-last history dropped before a writer's first sample
(:mod:`data_recorder.capture.first_samples`), fed as the take feeds it: pure, no DDS."""

from __future__ import annotations

from data_recorder.capture.first_samples import FirstSamples

MS = 1_000_000
A, B = b'a' * 16, b'b' * 16


def _take(starts: FirstSamples, gid: bytes, seqs: range, t0_ns: int, period_ns: int,
          first: bool = True) -> None:
    """As the drain feeds it: a writer's first sample, its later ones, then the count."""
    for k, seq in enumerate(seqs):
        if first and k == 0:
            starts.first(gid, seq, t0_ns)
        elif starts.open:
            starts.follow(gid, seq, t0_ns + k * period_ns)
    starts.taken(len(seqs))


def test_a_stretch_shorter_than_the_depth_dropped_nothing() -> None:
    """A writer first seen at 500 in a stretch of 20 takes (depth 100): it sent 1-499 before
    it matched - not ours, nothing counted (exact: a history drops only when it is full)."""
    starts = FirstSamples(depth=100, now_ns=0)
    _take(starts, A, range(500, 520), t0_ns=10 * MS, period_ns=MS)
    assert starts.emptied(30 * MS) == 0
    assert starts.lost == 0 and starts.unresolved == 0


def test_a_writer_that_started_in_an_overflowing_stretch_lost_all_before_its_first() -> None:
    """The bench's case: the history (depth 100) overflowed before the first take; the writer
    started after the stretch began (its number 1 at 5 ms, the stretch at 0), so 1..N-1 were
    all dropped: N - 1 counted."""
    starts = FirstSamples(depth=100, now_ns=0)
    # numbers 1..249 were sent at 5 ms + (n - 1) ms and dropped; 250..349 are in the history
    _take(starts, A, range(250, 350), t0_ns=5 * MS + 249 * MS, period_ns=MS)
    assert starts.emptied(400 * MS) == 249
    assert starts.lost == 249


def test_a_writer_older_than_the_stretch_counts_only_what_it_sent_during_it() -> None:
    """A writer running for a long time (first number seen 100,000) in a stretch that began
    120 ms before its first sample, at 1 kHz: 120 of its numbers may have been dropped, not
    99,999."""
    starts = FirstSamples(depth=100, now_ns=1_000 * MS)
    _take(starts, A, range(100_000, 100_150), t0_ns=1_120 * MS, period_ns=MS)
    assert starts.emptied(1_300 * MS) == 120


def test_a_lone_first_sample_waits_for_a_second_one_across_stretches() -> None:
    """One sample of B in an overflowing stretch: its period is unknown until a second one
    comes - in a later, short stretch - and only then is its start counted; a short stretch of
    its own would not have counted it."""
    starts = FirstSamples(depth=10, now_ns=0)
    _take(starts, A, range(1, 20), t0_ns=MS, period_ns=MS)               # 19 takes: overflowed
    starts.first(B, 41, 50 * MS)
    starts.taken(1)
    assert starts.emptied(60 * MS) == 0
    assert starts.unresolved == 1
    starts.follow(B, 42, 51 * MS)                                         # a short stretch
    starts.taken(1)
    assert starts.emptied(70 * MS) == 40                                  # 50 ms at 1 ms: > 40
    assert starts.unresolved == 0 and starts.lost == 40


def test_keep_all_histories_and_numbers_from_one_count_nothing() -> None:
    keep_all = FirstSamples(depth=0, now_ns=0)
    _take(keep_all, A, range(300, 600), t0_ns=MS, period_ns=MS)
    assert keep_all.emptied(MS) == 0
    starts = FirstSamples(depth=10, now_ns=0)
    _take(starts, A, range(1, 40), t0_ns=MS, period_ns=MS)               # its first is 1
    assert starts.emptied(50 * MS) == 0


def test_a_writer_that_started_in_the_stretch_at_a_varying_rate_counts_all_before_it() -> None:
    """Its numbers 1-80 came faster than 81-100 (a sleep-paced loop): the period of its later
    samples puts only 60 in the stretch, three quarters of 80 - taken as a start within the
    stretch, all 80 counted; a writer whose period puts fewer there counts what it says."""
    starts = FirstSamples(depth=10, now_ns=0)
    _take(starts, A, range(81, 101), t0_ns=60 * MS, period_ns=MS)
    assert starts.emptied(100 * MS) == 80
    older = FirstSamples(depth=10, now_ns=0)
    _take(older, A, range(81, 101), t0_ns=59 * MS, period_ns=MS)
    assert older.emptied(100 * MS) == 59
