"""Cost of the worker sandbox: once per worker, and per syscall afterwards. Prints figures.

Each trial is a fresh interpreter (as a worker is) that imports numpy, then times importing
``skill_runtime.sandbox`` (pyseccomp, ctypes) and ``apply_sandbox``; then times 20 000 pipe
write + read pairs (a control tick's wake-up is one of each) with and without the sandbox,
alternating, best of 10 rounds per process (the minimum is the cost, the rest is the host).

Usage: ``.venv/bin/python bench/skills/sandbox.py [--trials 6]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

CHILD = '''
import json, os, sys, time
import numpy
sandboxed = sys.argv[1] == '1'
t0 = time.perf_counter()
if sandboxed:
    from skill_runtime.sandbox import apply_sandbox
    t1 = time.perf_counter()
    apply_sandbox({'scratch': sys.argv[2]})
    t2 = time.perf_counter()
else:
    t1 = t2 = t0
r, w = os.pipe()
best = 1e9
for _ in range(10):
    s = time.perf_counter()
    for _ in range(20000):
        os.write(w, b'x')
        os.read(r, 1)
    best = min(best, (time.perf_counter() - s) / 20000)
print(json.dumps({'import_ms': 1e3 * (t1 - t0), 'apply_ms': 1e3 * (t2 - t1), 'pair_us': 1e6 * best}))
'''


def run(sandboxed: bool, scratch: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, '-c', CHILD, '1' if sandboxed else '0', scratch],
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def spread(values: list[float], unit: str) -> str:
    a = np.array(values)
    return f'median {np.median(a):.2f} {unit}, min {a.min():.2f}, max {a.max():.2f}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--trials', type=int, default=6)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix='sandbox_bench_')
    boxed, plain = [], []
    for _ in range(args.trials):
        boxed.append(run(True, scratch))
        plain.append(run(False, scratch))
    load = os.getloadavg()
    print(f'worker sandbox, {args.trials} processes each way (load average {load[0]:.1f} {load[1]:.1f} '
          f'{load[2]:.1f}):')
    print(f'  import skill_runtime.sandbox (+ pyseccomp):  {spread([b["import_ms"] for b in boxed], "ms")}')
    print(f'  apply_sandbox (all layers, once):            {spread([b["apply_ms"] for b in boxed], "ms")}')
    print(f'  pipe write + read pair, sandboxed:           {spread([b["pair_us"] for b in boxed], "us")}')
    print(f'  pipe write + read pair, plain:               {spread([p["pair_us"] for p in plain], "us")}')


if __name__ == '__main__':
    main()
