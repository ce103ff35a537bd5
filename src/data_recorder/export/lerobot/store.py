"""Where a LeRobot export writes: an aside copy of the dataset, swapped in whole at the end.

An export never writes into the dataset folder itself. It builds the new state in a sibling
``.<name>.export-<pid>``: for an existing dataset every file is hard-linked there first (no bytes
copied), new data / video / episode files are added beside them, and the files that change
(``meta/info.json``, ``stats.json``, ``tasks.parquet``, ``field_deploy.json``) are written as new
files (a hard-linked original is never opened for writing). The last step exchanges the two
folders in one ``renameat2(RENAME_EXCHANGE)`` (Linux; elsewhere two renames) and removes the old
one. Killed or failed at any point before that, the dataset is exactly as it was; the aside copy
of a dead process is removed by the next export.

Appending follows LeRobot's rule when it resumes a dataset: new episodes go to the *next* data,
video and episode-metadata files (``update_chunk_file_indices``); existing files are not rewritten.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_recorder.export.lerobot import layout as lay

_STAGING = re.compile(r'^\.(?P<name>.+)\.export-(?P<pid>\d+)$')


@dataclass
class DatasetState:
    """What an append needs to know of an existing dataset (empty for a new one)."""

    info: dict[str, Any] | None = None
    tasks: list[str] = field(default_factory=list)
    stats: dict[str, lay.Stats] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    next_data: tuple[int, int] = (0, 0)
    next_meta: tuple[int, int] = (0, 0)
    next_video: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def total_episodes(self) -> int:
        return int(self.info['total_episodes']) if self.info else 0

    @property
    def total_frames(self) -> int:
        return int(self.info['total_frames']) if self.info else 0


def _last_index(folder: Path, suffix: str) -> tuple[int, int] | None:
    found = []
    for p in folder.glob(f'chunk-*/file-*{suffix}'):
        chunk = re.fullmatch(r'chunk-(\d+)', p.parent.name)
        file = re.fullmatch(rf'file-(\d+){re.escape(suffix)}', p.name)
        if chunk and file:
            found.append((int(chunk[1]), int(file[1])))
    return max(found) if found else None


def _after(last: tuple[int, int] | None, chunks_size: int) -> tuple[int, int]:
    return (0, 0) if last is None else lay.next_file(*last, chunks_size)


def read_state(root: Path) -> DatasetState:
    """The state of the dataset at ``root``: empty if it does not exist or is an empty folder.

    Refuses (LayoutError) a non-empty folder that is not a dataset, and a LeRobot dataset this
    exporter did not write (its provenance, the robot profile, is unknown)."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return DatasetState()
    if not root.is_dir():
        raise lay.LayoutError(f'{root}: exists and is not a folder')
    info_path = root / lay.INFO_PATH
    if not info_path.exists():
        raise lay.LayoutError(f'{root}: not empty and has no {lay.INFO_PATH} (not a LeRobot dataset); '
                              'give an empty or new folder')
    try:
        info = json.loads(info_path.read_text())
    except ValueError as exc:
        raise lay.LayoutError(f'{info_path}: not valid JSON ({exc})') from None
    if info.get('codebase_version') != lay.CODEBASE_VERSION:
        raise lay.LayoutError(f'{info_path}: codebase_version {info.get("codebase_version")!r}; '
                              f'only {lay.CODEBASE_VERSION} datasets can be appended to')
    prov_path = root / lay.PROVENANCE_PATH
    if not prov_path.exists():
        raise lay.LayoutError(f'{root}: a LeRobot dataset not written by `field_deploy bag export` '
                              f'(no {lay.PROVENANCE_PATH}): its robot profile is unknown, not appending')
    chunks = int(info.get('chunks_size', lay.CHUNKS_SIZE))
    state = DatasetState(info=info, provenance=json.loads(prov_path.read_text()))
    if (root / lay.TASKS_PATH).exists():
        state.tasks = lay.read_tasks(root / lay.TASKS_PATH)
    if (root / lay.STATS_PATH).exists():
        state.stats = lay.stats_from_json(json.loads((root / lay.STATS_PATH).read_text()))
    if len(state.tasks) != int(info.get('total_tasks', 0)):
        raise lay.LayoutError(f'{root}: {lay.TASKS_PATH} has {len(state.tasks)} tasks, info.json says '
                              f'{info.get("total_tasks")}')
    state.next_data = _after(_last_index(root / 'data', '.parquet'), chunks)
    state.next_meta = _after(_last_index(root / 'meta' / 'episodes', '.parquet'), chunks)
    for key, ft in info.get('features', {}).items():
        if ft.get('dtype') == 'video':
            state.next_video[key] = _after(_last_index(root / 'videos' / key, '.mp4'), chunks)
    return state


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(root: Path) -> list[Path]:
    """Remove aside copies left by exports of ``root`` whose process is gone (killed, crashed)."""
    removed = []
    if not root.parent.is_dir():
        return removed
    for p in root.parent.iterdir():
        m = _STAGING.match(p.name)
        if m and m['name'] == root.name and not _pid_alive(int(m['pid'])):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def begin(root: Path) -> Path:
    """Create the aside copy of ``root`` (hard links of every existing file) and return it."""
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(root)
    staging = root.parent / f'.{root.name}.export-{os.getpid()}'
    if staging.exists():
        shutil.rmtree(staging)
    if root.is_dir():
        def link(src: str, dst: str) -> None:
            try:
                os.link(src, dst)
            except OSError:                      # a file system without hard links: copy
                shutil.copy2(src, dst)
        shutil.copytree(root, staging, copy_function=link)
    else:
        staging.mkdir()
    return staging


def fresh(path: Path) -> Path:
    """``path`` ready to be written as a new file: a hard link to the original is unlinked first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def commit(staging: Path, root: Path) -> None:
    """Make ``staging`` the dataset at ``root`` in one step and remove the old state."""
    if root.exists() and not any(root.iterdir()):
        root.rmdir()
    if not root.exists():
        os.rename(staging, root)
        return
    if not _exchange(staging, root):
        old = root.parent / f'.{root.name}.old-{os.getpid()}'
        os.rename(root, old)
        os.rename(staging, root)
        staging = old
    shutil.rmtree(staging, ignore_errors=True)


def abort(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
