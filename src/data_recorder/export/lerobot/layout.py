"""The LeRobot v3.0 dataset layout, written without LeRobot: paths, info.json, stats, tasks, episodes.

Read from LeRobot's own writer (``lerobot`` 0.4.4 and 0.6.1 on PyPI, which write the same v3.0
layout): ``lerobot/datasets/utils.py`` (paths, chunk sizes, ``create_empty_dataset_info``,
``update_chunk_file_indices``), ``dataset_metadata.py`` / ``dataset_writer.py`` (episode rows,
tasks, totals), ``compute_stats.py`` (per-episode stats, ``aggregate_stats``), ``io_utils.py``
(``write_tasks``: a pandas frame indexed by the task string). Only numpy and pyarrow here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CODEBASE_VERSION = 'v3.0'
CHUNKS_SIZE = 1000                 # files per chunk folder
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
_CHUNK_FILE = 'chunk-{chunk_index:03d}/file-{file_index:03d}'
DATA_PATH = 'data/' + _CHUNK_FILE + '.parquet'
VIDEO_PATH = 'videos/{video_key}/' + _CHUNK_FILE + '.mp4'
EPISODES_PATH = 'meta/episodes/' + _CHUNK_FILE + '.parquet'
INFO_PATH = 'meta/info.json'
STATS_PATH = 'meta/stats.json'
TASKS_PATH = 'meta/tasks.parquet'
#: Ours, beside LeRobot's files (LeRobot reads only its own): the robot profile and every source bag.
PROVENANCE_PATH = 'meta/field_deploy.json'
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    'timestamp': {'dtype': 'float32', 'shape': [1], 'names': None},
    'frame_index': {'dtype': 'int64', 'shape': [1], 'names': None},
    'episode_index': {'dtype': 'int64', 'shape': [1], 'names': None},
    'index': {'dtype': 'int64', 'shape': [1], 'names': None},
    'task_index': {'dtype': 'int64', 'shape': [1], 'names': None},
}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f'q{int(q * 100):02d}' for q in QUANTILES)


class LayoutError(ValueError):
    """An existing dataset this exporter cannot append to; says which file and why."""


def next_file(chunk_index: int, file_index: int, chunks_size: int = CHUNKS_SIZE) -> tuple[int, int]:
    """LeRobot's ``update_chunk_file_indices``: the file after ``(chunk, file)``."""
    return (chunk_index + 1, 0) if file_index == chunks_size - 1 else (chunk_index, file_index + 1)


def info_dict(*, fps: int, features: dict[str, dict[str, Any]], robot_type: str,
              total_episodes: int = 0, total_frames: int = 0, total_tasks: int = 0,
              has_video: bool = True) -> dict[str, Any]:
    """``meta/info.json`` in ``create_empty_dataset_info``'s key order, totals filled in."""
    return {
        'codebase_version': CODEBASE_VERSION, 'robot_type': robot_type,
        'total_episodes': total_episodes, 'total_frames': total_frames, 'total_tasks': total_tasks,
        'chunks_size': CHUNKS_SIZE, 'data_files_size_in_mb': DATA_FILES_SIZE_IN_MB,
        'video_files_size_in_mb': VIDEO_FILES_SIZE_IN_MB, 'fps': fps,
        'splits': {'train': f'0:{total_episodes}'} if total_episodes else {},
        'data_path': DATA_PATH, 'video_path': VIDEO_PATH if has_video else None,
        'features': {**features, **DEFAULT_FEATURES},
    }


# ----------------------------------------------------------------------------- stats
Stats = dict[str, np.ndarray]


def vector_stats(values: np.ndarray) -> Stats:
    """Per-dimension stats of an episode's ``(frames, dims)`` (or ``(frames,)``) array, as
    ``compute_episode_stats`` gives them: min, max, mean, std, count, q01..q99 (exact here)."""
    x = np.asarray(values)
    x = x.reshape(len(x), -1).astype(np.float64)
    out: Stats = {'min': x.min(axis=0), 'max': x.max(axis=0), 'mean': x.mean(axis=0),
                  'std': x.std(axis=0), 'count': np.array([len(x)])}
    qs = np.quantile(x, QUANTILES, axis=0)
    for key, q in zip(QUANTILE_KEYS, qs, strict=True):
        out[key] = q
    return out


def pixel_stats(histogram: np.ndarray, frames: int) -> Stats:
    """Per-channel stats of a camera from a ``(channels, 256)`` histogram of uint8 pixel values,
    normalised to 0..1 and shaped ``(channels, 1, 1)`` as LeRobot stores image / video stats.
    ``count`` is the number of frames the pixels came from (LeRobot: the frames it sampled)."""
    h = np.asarray(histogram, dtype=np.float64)
    levels = np.arange(h.shape[1], dtype=np.float64) / 255.0
    n = h.sum(axis=1)
    mean = (h * levels).sum(axis=1) / n
    var = (h * (levels[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
    nonzero = h > 0
    lo = np.array([levels[np.argmax(r)] for r in nonzero])
    hi = np.array([levels[len(r) - 1 - np.argmax(r[::-1])] for r in nonzero])
    cdf = np.cumsum(h, axis=1)
    out: Stats = {'min': lo, 'max': hi, 'mean': mean, 'std': np.sqrt(var)}
    for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True):
        out[key] = np.array([levels[np.searchsorted(c, q * c[-1])] for c in cdf])
    shaped = {k: v.reshape(-1, 1, 1) for k, v in out.items()}
    shaped['count'] = np.array([frames])
    return shaped


def aggregate(stats_list: Sequence[dict[str, Stats]]) -> dict[str, Stats]:
    """LeRobot's ``aggregate_stats``: min of mins, max of maxes, count-weighted mean, the pooled
    std, count-weighted quantiles (LeRobot's approximation), summed counts."""
    out: dict[str, Stats] = {}
    for key in sorted({k for s in stats_list for k in s}):
        parts = [s[key] for s in stats_list if key in s]
        means = np.stack([p['mean'] for p in parts])
        counts = np.stack([p['count'] for p in parts]).astype(np.float64)
        total = counts.sum(axis=0)
        while counts.ndim < means.ndim:
            counts = counts[..., None]
        mean = (means * counts).sum(axis=0) / total
        var = ((np.stack([p['std'] for p in parts]) ** 2 + (means - mean) ** 2) * counts).sum(axis=0) / total
        agg: Stats = {'min': np.min(np.stack([p['min'] for p in parts]), axis=0),
                      'max': np.max(np.stack([p['max'] for p in parts]), axis=0),
                      'mean': mean, 'std': np.sqrt(var),
                      'count': np.stack([p['count'] for p in parts]).sum(axis=0)}
        for q in QUANTILE_KEYS:
            if all(q in p for p in parts):
                agg[q] = (np.stack([p[q] for p in parts]) * counts).sum(axis=0) / total
        out[key] = agg
    return out


def stats_to_json(stats: dict[str, Stats]) -> dict[str, dict[str, Any]]:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def stats_from_json(doc: dict[str, dict[str, Any]]) -> dict[str, Stats]:
    return {k: {s: np.atleast_1d(np.asarray(v)) for s, v in d.items()} for k, d in doc.items()}


def flat_stats(stats: dict[str, Stats]) -> dict[str, Any]:
    """Episode-row columns ``stats/<feature>/<stat>`` (LeRobot flattens with ``/``)."""
    return {f'stats/{k}/{s}': np.asarray(v).tolist() for k, d in stats.items() for s, v in d.items()}


# ----------------------------------------------------------------------------- files
def write_json_atomic(path: Path, doc: Any) -> None:
    """Write then rename: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    tmp.write_text(json.dumps(doc, indent=4, ensure_ascii=False) + '\n')
    os.replace(tmp, path)


def write_tasks(path: Path, tasks: Sequence[str]) -> None:
    """``meta/tasks.parquet`` as LeRobot's ``write_tasks`` leaves it (``DataFrame.to_parquet`` of a
    frame with column ``task_index`` indexed by ``task``): the pandas metadata makes
    ``pd.read_parquet`` give the task strings back as the index, which LeRobot looks tasks up by."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    pandas_meta = {
        'index_columns': ['task'],
        'column_indexes': [{'name': None, 'field_name': None, 'pandas_type': 'unicode',
                            'numpy_type': 'object', 'metadata': {'encoding': 'UTF-8'}}],
        'columns': [
            {'name': 'task_index', 'field_name': 'task_index', 'pandas_type': 'int64',
             'numpy_type': 'int64', 'metadata': None},
            {'name': 'task', 'field_name': 'task', 'pandas_type': 'unicode',
             'numpy_type': 'object', 'metadata': None}],
        'creator': {'library': 'pyarrow', 'version': pa.__version__},
        'pandas_version': '2.2.3'}
    table = pa.table({'task_index': pa.array(range(len(tasks)), pa.int64()),
                      'task': pa.array(list(tasks), pa.string())})
    table = table.replace_schema_metadata({b'pandas': json.dumps(pandas_meta).encode()})
    pq.write_table(table, path)


def read_tasks(path: Path) -> list[str]:
    """Task strings in task-index order."""
    import pyarrow.parquet as pq
    table = pq.read_table(path)
    if 'task' not in table.column_names or 'task_index' not in table.column_names:
        raise LayoutError(f'{path}: expected columns task and task_index, found {table.column_names}')
    pairs = sorted(zip(table.column('task_index').to_pylist(), table.column('task').to_pylist(),
                       strict=True))
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise LayoutError(f'{path}: task_index is not 0..{len(pairs) - 1}')
    return [t for _, t in pairs]
