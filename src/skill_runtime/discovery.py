"""Discovery without vendor code in the runtime: entry-point locators and the import check of
every accepted pack run in a short-lived child process (``python -m skill_runtime.worker
discover``). The runtime gets paths and refusals back as JSON lines; a locator or a pack import
that hangs or crashes refuses only what it concerns. No rclpy here.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skill_runtime.loader import ENTRY_POINT_GROUP, PackCandidate
from skill_runtime.manifest import Manifest, PackError
from skill_runtime.proxy import worker_env

MAX_ANSWER = 1 << 20
START_TIMEOUT_S = 20.0  # our own interpreter + numpy (not vendor code): 0.2 s idle, 5 s+ at load 40


class ChildError(Exception):
    pass


class DiscoveryChild:
    """One child, asked one JSON question at a time, each answer bounded in time and size."""

    def __init__(self, timeout: float, stderr: Path | None = None) -> None:
        self.timeout = timeout
        self._first = True
        self._buf = bytearray()
        err = stderr.open('ab') if stderr is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', 'skill_runtime.worker', 'discover', '--parent', str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=worker_env(),
                close_fds=True, start_new_session=True)
        finally:
            if stderr is not None:
                err.close()

    def ask(self, question: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """The answer to ``question`` within ``timeout`` (default: the vendor call timeout),
        counted once the child is up (its own start-up: :data:`START_TIMEOUT_S`)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self._first:
            self._first = False
            if not self._read_line(START_TIMEOUT_S, 'start').get('ready'):
                raise ChildError('discovery child did not say it is ready')
        try:
            self.proc.stdin.write(json.dumps(question).encode() + b'\n')
            self.proc.stdin.flush()
        except OSError as exc:
            raise ChildError(f'discovery child gone ({exc})') from None
        return self._read_line(self.timeout if timeout is None else timeout, 'answer')

    def _read_line(self, timeout: float, what: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = self._buf
        deadline = time.monotonic() + timeout
        while b'\n' not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f'no {what} within {timeout:g} s')
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            data = os.read(fd, 65536)
            if not data:
                rc = self.proc.wait()
                raise ChildError(f'discovery child exited with code {rc}' if rc >= 0
                                 else f'discovery child killed by signal {-rc}')
            buf += data
            if len(buf) > MAX_ANSWER:
                raise ChildError(f'answer over {MAX_ANSWER} bytes')
        line = bytes(buf[:buf.index(b'\n')])
        del buf[:len(line) + 1]
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise ChildError('answer is not a JSON object')
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


class ChildDiscovery:
    """``locate`` and ``probe`` for :func:`skill_runtime.loader.discover`, in child processes."""

    def __init__(self, timeout: float, stderr: Path | None = None,
                 spawn: Callable[[Callable[[], DiscoveryChild]], DiscoveryChild] | None = None) -> None:
        """``spawn``: how to start the child (the runtime passes its supervisor's ``call``, so
        that the child starts at normal priority from a long-lived thread)."""
        self.timeout = timeout
        self.stderr = stderr
        self._spawn = spawn or (lambda make: make())
        self._child: DiscoveryChild | None = None

    def warm(self) -> ChildDiscovery:
        """Start the child now (its start-up overlaps whatever comes before discovery)."""
        if self._child is None:
            try:
                self._child = self._spawn(lambda: DiscoveryChild(self.timeout, self.stderr))
            except Exception as exc:
                raise ChildError(f'cannot start the discovery child: {exc}') from None
        return self

    def _ask(self, question: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        self.warm()
        assert self._child is not None
        try:
            return self._child.ask(question, timeout)
        except (ChildError, ValueError):
            self.close()  # a child that failed once is not asked again
            raise

    def locate(self) -> list[PackCandidate]:
        try:
            answer = self._ask({'entry_points': ENTRY_POINT_GROUP})
            return [PackCandidate(path=Path(str(c['path'])), source=str(c['source']))
                    for c in answer.get('candidates', [])]
        except (ChildError, ValueError, KeyError, TypeError) as exc:
            return [PackCandidate(path=Path(f'<entry points not resolved: {exc}>'),
                                  source='entry_point:*')]

    def probe(self, manifests: list[Manifest]) -> dict[str, PackError]:
        """Import every skill class of the packs; the refusals by pack. A batch that fails is
        retried one pack per child, so one hanging import refuses only its own pack."""
        try:
            question = {'packs': [_pack(m) for m in manifests]}
            return self._refusals(self._ask(question, self.timeout * max(1, len(manifests))), manifests)
        except (ChildError, ValueError) as exc:
            if len(manifests) == 1:
                m = manifests[0]
                return {m.name: PackError(m.name, str(m.path.parent), '<import>',
                                          f'import check failed: {exc}')}
        out: dict[str, PackError] = {}
        for m in manifests:
            out.update(self.probe([m]))
        return out

    @staticmethod
    def _refusals(answer: dict[str, Any], manifests: list[Manifest]) -> dict[str, PackError]:
        names = {m.name for m in manifests}
        out = {}
        for name, err in dict(answer.get('refused', {})).items():
            if name in names and isinstance(err, dict):
                out[name] = PackError(name, str(err.get('file', '')), str(err.get('field', '')),
                                      str(err.get('message', ''))[:2000])
        return out

    def close(self) -> None:
        if self._child is not None:
            self._child.close()
            self._child = None


def _pack(m: Manifest) -> dict[str, Any]:
    return {'name': m.name, 'dir': str(m.path.parent), 'skills': {s.name: s.entry for s in m.skills}}
