"""How often the sequence tracker reports holes nobody lost, for several writers on one topic.

    .venv/bin/python bench/recorder/writers_sim.py [--orderings 300] [--writers 5] [--lag 2]

Simulates N writers publishing every 0.5-2 s on one topic (as the stack's nodes do on
``/diagnostics``), each starting at a random moment in the first 5 s, a quarter of them matched
late (the first number received is their 6th), with up to 50 ms of delivery jitter; the ROS
graph lists a writer ``--lag`` s after its first sample and is polled every second, as the
recorder polls it. Nothing is lost, so every hole the tracker reports is false. Prints how many
orderings (random seeds) had any, and the worst. Pure: no DDS, a figure for the design of
``field_deploy.sequence`` (the message info has no writer id, so writers are told apart by their
number runs), not a test.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'src'))

from field_deploy.sequence import SequenceTracker


def false_holes(seed: int, writers: int, lag: float, duration: float = 30.0) -> int:
    rng = random.Random(seed)
    events: list[tuple[float, str, int]] = []
    starts = [rng.uniform(0.0, 5.0) for _ in range(writers)]
    for start in starts:
        t, number = start, rng.choice([1, 1, 1, 6])
        period = rng.choice([1.0, 1.0, 0.5, 2.0])
        while t < duration:
            events.append((t + rng.uniform(0.0, 0.05), 'sample', number))
            number += 1
            t += period
    poll = rng.uniform(0.0, 1.0)
    while poll < duration:
        events.append((poll, 'poll', sum(1 for s in starts if s + lag <= poll)))
        poll += 1.0
    tracker = SequenceTracker()
    for _t, kind, value in sorted(events):
        if kind == 'sample':
            tracker.observe(value)
        else:
            tracker.set_writers(value)
    tracker.sync()
    return tracker.lost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--orderings', type=int, default=300)
    ap.add_argument('--writers', type=int, default=5)
    ap.add_argument('--lag', type=float, default=2.0, help='seconds before the graph lists a writer')
    args = ap.parse_args()
    holes = [false_holes(seed, args.writers, args.lag) for seed in range(args.orderings)]
    bad = [h for h in holes if h]
    print(f'{args.writers} writers, graph lag {args.lag:g} s: {len(bad)} of {args.orderings} '
          f'orderings reported holes nobody lost (worst {max(bad, default=0)}, '
          f'{sum(bad)} in all)')


if __name__ == '__main__':
    main()
