"""Disk rotation: free room by deleting the oldest bags that are verified in object storage.

A robot records for weeks on a finite disk. Before the recorder's disk guard would stop recording,
the oldest bags go — but only bags whose every file and manifest the uploader verified
(:meth:`fleet.store.UploadStore.verified_bags`) and whose files still have the sizes that were
verified. A bag not verified uploaded is never deleted, however full the disk: the disk guard stays
the last line. Every deletion is logged and written to the ledger's ``rotations`` table.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet.store import UploadStore


@dataclass(frozen=True)
class BagOnDisk:
    path: Path
    bytes: int
    mtime: float


def bags_under(root: Path) -> list[BagOnDisk]:
    """Every bag folder (one with a metadata.yaml) at or below ``root``, oldest first."""
    bags = []
    for meta in sorted(Path(root).rglob('metadata.yaml')):
        folder = meta.parent
        files = [f for f in folder.rglob('*') if f.is_file()]
        bags.append(BagOnDisk(folder.resolve(), sum(f.stat().st_size for f in files),
                              max(f.stat().st_mtime for f in files)))
    return sorted(bags, key=lambda b: (b.mtime, str(b.path)))


def plan_rotation(bags: list[BagOnDisk], free_bytes: int, keep_free: int,
                  verified: set[str]) -> tuple[list[BagOnDisk], int]:
    """Which bags to delete (oldest verified first) to have ``keep_free`` bytes free; and the
    shortfall left (bytes) when the verified bags are not enough."""
    delete: list[BagOnDisk] = []
    for bag in sorted(bags, key=lambda b: (b.mtime, str(b.path))):
        if free_bytes >= keep_free:
            break
        if str(bag.path) in verified:
            delete.append(bag)
            free_bytes += bag.bytes
    return delete, max(0, keep_free - free_bytes)


def rotate(root: Path, keep_free: int, store: UploadStore, *, dry_run: bool = False,
           free_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
           log: Callable[[str], None] = print) -> tuple[list[BagOnDisk], int]:
    """Delete what :func:`plan_rotation` picks; returns (deleted, shortfall bytes)."""
    bags = bags_under(root)
    verified = store.verified_bags()
    unchanged = {path for path in verified if _sizes_unchanged(Path(path), store)}
    delete, shortfall = plan_rotation(bags, free_bytes(Path(root)), keep_free, unchanged)
    for bag in delete:
        if dry_run:
            log(f'would delete {bag.path} ({bag.bytes / 1e6:.1f} MB, verified in {verified[str(bag.path)]})')
            continue
        shutil.rmtree(bag.path)
        store.rotated(str(bag.path), bag.bytes, verified[str(bag.path)], f'keep_free {keep_free} B')
        log(f'deleted {bag.path} ({bag.bytes / 1e6:.1f} MB): verified in {verified[str(bag.path)]}')
    if shortfall:
        waiting = [b for b in bags if str(b.path) not in unchanged]
        log(f'{shortfall / 1e9:.2f} GB short of keep_free: {len(waiting)} bag(s) '
            f'({sum(b.bytes for b in waiting) / 1e9:.2f} GB) are not verified uploaded and stay')
    return delete, shortfall


def _sizes_unchanged(bag: Path, store: UploadStore) -> bool:
    """Every file the uploader verified still has the size it had (a bag appended to since, or
    recovered again, must be uploaded again before it may go)."""
    rows = store.verified_files(bag)
    if not rows:
        return False
    return all(Path(p).is_file() and Path(p).stat().st_size == size for p, size in rows) and \
        {Path(p).name for p, _ in rows} >= {f.name for f in bag.iterdir() if f.is_file()}
