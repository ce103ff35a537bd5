"""The uploader's memory: which parts of which file went where, and what was verified.

Kept in the robot's ledger file (SQLite, WAL, ``synchronous=FULL``) so that a kill or a reboot in
the middle of a multipart upload resumes with the parts the store already holds, and so that disk
rotation can ask "is this bag verified in object storage?" of the same record the uploader wrote.
Tables of their own (``upload_files``, ``upload_parts``, ``rotations``): the ledger's component
tables are not touched.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS upload_files (
    local_path TEXT NOT NULL, url TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    upload_id TEXT, part_size INTEGER, verified_at REAL, checksum TEXT,
    PRIMARY KEY (local_path, url));
CREATE TABLE IF NOT EXISTS upload_parts (
    local_path TEXT NOT NULL, url TEXT NOT NULL, upload_id TEXT NOT NULL, part INTEGER NOT NULL,
    etag TEXT NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (local_path, url, upload_id, part));
CREATE TABLE IF NOT EXISTS upload_bags (
    bag TEXT NOT NULL, prefix_url TEXT NOT NULL, verified_at REAL NOT NULL, files INTEGER,
    bytes INTEGER, PRIMARY KEY (bag, prefix_url));
CREATE TABLE IF NOT EXISTS rotations (
    bag TEXT NOT NULL, deleted_at REAL NOT NULL, bytes INTEGER NOT NULL, uploaded_to TEXT NOT NULL,
    reason TEXT NOT NULL);
"""


@dataclass(frozen=True)
class FileRecord:
    upload_id: str | None
    part_size: int | None
    verified_at: float | None
    sha256: str
    size: int


class UploadStore:
    """SQLite state of uploads and rotations; every write is committed before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self.db.execute('PRAGMA journal_mode=WAL')
        self.db.execute('PRAGMA synchronous=FULL')
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ files and parts
    def file(self, local: str, url: str) -> FileRecord | None:
        row = self.db.execute('SELECT upload_id, part_size, verified_at, sha256, size FROM upload_files '
                              'WHERE local_path=? AND url=?', (local, url)).fetchone()
        return FileRecord(*row) if row else None

    def begin_file(self, local: str, url: str, size: int, sha256: str, upload_id: str | None,
                   part_size: int) -> None:
        self.db.execute('INSERT OR REPLACE INTO upload_files VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)',
                        (local, url, size, sha256, upload_id, part_size))

    def part_done(self, local: str, url: str, upload_id: str, part: int, etag: str, sha256: str) -> None:
        self.db.execute('INSERT OR REPLACE INTO upload_parts VALUES (?, ?, ?, ?, ?, ?)',
                        (local, url, upload_id, part, etag, sha256))

    def parts(self, local: str, url: str, upload_id: str) -> dict[int, tuple[str, str]]:
        rows = self.db.execute('SELECT part, etag, sha256 FROM upload_parts WHERE local_path=? AND '
                               'url=? AND upload_id=?', (local, url, upload_id))
        return {part: (etag, sha) for part, etag, sha in rows}

    def file_verified(self, local: str, url: str, checksum: str) -> None:
        with self.db:
            self.db.execute('UPDATE upload_files SET verified_at=?, checksum=?, upload_id=NULL '
                            'WHERE local_path=? AND url=?', (time.time(), checksum, local, url))
            self.db.execute('DELETE FROM upload_parts WHERE local_path=? AND url=?', (local, url))

    def verified_files(self, folder: Path) -> list[tuple[str, int]]:
        """(local path, size) of the verified files directly in ``folder``."""
        rows = self.db.execute('SELECT local_path, size FROM upload_files WHERE verified_at IS NOT '
                               'NULL AND local_path LIKE ?', (f'{folder}/%',))
        return [(p, size) for p, size in rows if Path(p).parent == Path(folder)]

    # ------------------------------------------------------------------ bags
    def bag_verified(self, bag: str, prefix_url: str, files: int, size: int) -> None:
        self.db.execute('INSERT OR REPLACE INTO upload_bags VALUES (?, ?, ?, ?, ?)',
                        (bag, prefix_url, time.time(), files, size))

    def verified_bags(self) -> dict[str, str]:
        """Bag folder (resolved path) -> where it was verified uploaded (the newest)."""
        rows = self.db.execute('SELECT bag, prefix_url FROM upload_bags ORDER BY verified_at')
        return {bag: url for bag, url in rows}

    def rotated(self, bag: str, size: int, uploaded_to: str, reason: str) -> None:
        self.db.execute('INSERT INTO rotations VALUES (?, ?, ?, ?, ?)',
                        (bag, time.time(), size, uploaded_to, reason))

    def rotations(self) -> list[tuple[str, float, int, str, str]]:
        return list(self.db.execute('SELECT bag, deleted_at, bytes, uploaded_to, reason FROM rotations '
                                    'ORDER BY deleted_at'))
