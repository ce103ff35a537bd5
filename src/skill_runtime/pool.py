"""Where and how the runtime starts its skills' workers: folders, limits, the configure request.

One :class:`WorkerPool` per runtime: its :class:`~skill_runtime.proxy.Supervisor` thread, a work
folder (``worker_dir``, else a temporary one removed at shutdown) with per skill a ``scratch``
folder (the worker's working directory, the one place the sandbox lets it write) and its last
the workers' ``workers/worker-<n>.log`` files (stdout + stderr, capped; the last few kept).
Two spare workers wait, started, for the next configures. No rclpy here.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skill_runtime.loop import can_realtime
from skill_runtime.manifest import Manifest, SkillSpec
from skill_runtime.proxy import WorkerError, WorkerProcess, WorkerSpec
from skill_runtime.supervisor import Supervisor
from skill_runtime.worker import sandbox_policy


def auto_nice(worker_nice: int, rt_priority: int) -> int:
    """``worker_nice``, or by default (-1): 0 where the control thread gets SCHED_FIFO (workers are
    below it by class; a higher nice starved them for 250 ms and more on a loaded host), 5 where
    it does not (the gate's SCHED_OTHER thread then gets the larger share against a busy worker)."""
    if worker_nice >= 0:
        return worker_nice
    return 0 if rt_priority > 0 and can_realtime() else 5


@dataclass
class PoolSettings:
    """The runtime's ``worker_*`` parameters."""

    start_timeout: float = 4.0
    nice: int = 0
    memory_mb: int = 1024
    max_files: int = 64
    log_mb: int = 8
    work_dir: str = ''
    spares: int = 2


class WorkerPool:
    def __init__(self, log: Callable[[str, str, str], None]) -> None:
        self.supervisor = Supervisor(log)
        self.settings = PoolSettings()
        self._work_dir: Path | None = None
        self._own_work_dir = False
        self._spawned = 0
        self._spares: list[WorkerProcess] = []
        self._keep_spares = False

    def skill_dir_root(self) -> Path:
        if self._work_dir is None:
            self._own_work_dir = not self.settings.work_dir
            self._work_dir = Path(self.settings.work_dir or tempfile.mkdtemp(prefix='skill_runtime-'))
        return self._work_dir

    def skill_dir(self, manifest: Manifest, spec: SkillSpec) -> Path:
        return self.skill_dir_root() / manifest.name / spec.name

    def _start(self) -> WorkerProcess:
        base = self.skill_dir_root() / 'workers'
        base.mkdir(parents=True, exist_ok=True)
        self._spawned += 1
        (base / f'worker-{self._spawned - 8}.log').unlink(missing_ok=True)  # keep the last few
        return self.supervisor.spawn(WorkerSpec(
            key='(spare)', log_path=base / f'worker-{self._spawned}.log',
            cwd=base, nice=self.settings.nice, log_cap_bytes=self.settings.log_mb << 20))

    def prepare(self) -> None:
        """Start the spare workers now: a skill's configure then finds an interpreter with numpy
        already imported (measured: a cold worker takes 0.2 s on an idle host, 1.5-4 s at load
        20-30 on 2 cores) instead of waiting for one. Two, so that configures in a row do too."""
        self._keep_spares = True
        self._spares = [w for w in self._spares if not w.dead and not w.closed]
        while len(self._spares) < self.settings.spares:
            self._spares.append(self._start())

    def spawn(self, key: str, manifest: Manifest, spec: SkillSpec) -> WorkerProcess:
        """A fresh worker for a skill (the oldest ready spare, else the oldest spare), ready for
        its configure request; a new spare is started behind it."""
        (self.skill_dir(manifest, spec) / 'scratch').mkdir(parents=True, exist_ok=True)
        live = [w for w in self._spares if not w.dead and not w.closed]
        worker = next((w for w in live if w.ready.is_set()), live[0] if live else None)
        self._spares = [w for w in live if w is not worker]
        if worker is None:
            worker = self._start()
        worker.key = key
        try:
            worker.wait_ready(self.settings.start_timeout)
        except WorkerError as exc:
            worker.kill(str(exc))
            raise
        finally:
            if self._keep_spares:
                self.prepare()
        return worker

    def configure_request(self, manifest: Manifest, spec: SkillSpec, *, profile: Path,
                          params: dict[str, Any], indices: np.ndarray, rate_hz: float,
                          sites: tuple[str, ...]) -> dict[str, Any]:
        """The fields of a worker's ``configure`` request (JSON)."""
        base = self.skill_dir(manifest, spec)
        return {'pack_dir': str(manifest.path.parent), 'pack': manifest.name, 'skill': spec.name,
                'entry': spec.entry, 'profile': str(profile.resolve()), 'params': params,
                'indices': indices.tolist(), 'rate_hz': rate_hz, 'sites': list(sites),
                'policy': sandbox_policy(scratch_dir=str(base / 'scratch'),
                                         pack_dir=str(manifest.path.parent),
                                         memory_mb=self.settings.memory_mb,
                                         max_files=self.settings.max_files)}

    def close(self) -> None:
        """Kill and reap every worker; remove the temporary work folder."""
        self._keep_spares, self._spares = False, []
        self.supervisor.stop()
        if self._own_work_dir and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
