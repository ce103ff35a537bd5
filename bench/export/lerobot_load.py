"""Load a dataset with LeRobot itself and decode frames: the check behind ``make check-lerobot``.

Runs in the separate venv that holds ``lerobot[dataset]`` (never in the project's venv: LeRobot
and torch are not run-time dependencies). Exits non-zero, with the reason, if LeRobot cannot load
the dataset, an item does not decode, or what it returns disagrees with ``meta/info.json``.
Usage: ``.venv-lerobot/bin/python bench/export/lerobot_load.py DATASET_DIR``
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> int:
    root = Path(sys.argv[1]).resolve()
    info = json.loads((root / 'meta' / 'info.json').read_text())
    import lerobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    print(f'lerobot {getattr(lerobot, "__version__", "?")}: loading {root}')
    kwargs = {}
    try:
        import torchcodec  # noqa: F401
    except Exception:                      # no FFmpeg for torchcodec here: LeRobot's PyAV path
        kwargs['video_backend'] = 'pyav'
    t0 = time.perf_counter()
    ds = LeRobotDataset('field_deploy/export_check', root=root, **kwargs)
    print(f'  loaded in {time.perf_counter() - t0:.1f} s: {ds.num_episodes} episodes, '
          f'{ds.num_frames} frames, fps {ds.fps}, cameras {ds.meta.camera_keys}, '
          f'video backend {getattr(ds, "video_backend", None) or kwargs.get("video_backend", "default")}')
    problems = []
    if ds.num_episodes != info['total_episodes'] or ds.num_frames != info['total_frames']:
        problems.append(f'totals {ds.num_episodes}/{ds.num_frames} != info.json '
                        f'{info["total_episodes"]}/{info["total_frames"]}')
    decoded = 0
    t0 = time.perf_counter()
    for ep in range(ds.num_episodes):
        start = ds.meta.episodes[ep]['dataset_from_index']
        end = ds.meta.episodes[ep]['dataset_to_index']
        for idx in sorted({start, (start + end) // 2, end - 1}):
            item = ds[idx]
            for key in ds.meta.camera_keys:
                frame = item[key]
                h, w, c = info['features'][key]['shape']
                if tuple(frame.shape) != (c, h, w):
                    problems.append(f'episode {ep} frame {idx}: {key} shape {tuple(frame.shape)} '
                                    f'!= {(c, h, w)}')
                decoded += 1
            for key in ('observation.state', 'action'):
                if tuple(item[key].shape) != tuple(info['features'][key]['shape']):
                    problems.append(f'{key} shape {tuple(item[key].shape)}')
            if int(item['episode_index']) != ep:
                problems.append(f'frame {idx}: episode_index {int(item["episode_index"])} != {ep}')
        print(f'  episode {ep}: frames {start}..{end - 1}, task {item["task"]!r}')
    print(f'  decoded {decoded} video frames in {time.perf_counter() - t0:.1f} s')
    # as a policy trains: an action chunk ahead and the previous camera frame, across episode ends
    fps = info['fps']
    deltas = {'action': [i / fps for i in range(10)], **{k: [-1 / fps, 0.0] for k in ds.meta.camera_keys}}
    chunked = LeRobotDataset('field_deploy/export_check', root=root, delta_timestamps=deltas, **kwargs)
    for idx in (0, len(chunked) // 2, len(chunked) - 1):
        item = chunked[idx]
        if tuple(item['action'].shape) != (10, info['features']['action']['shape'][0]):
            problems.append(f'frame {idx}: action chunk shape {tuple(item["action"].shape)}')
        for key in ds.meta.camera_keys:
            if item[key].shape[0] != 2:
                problems.append(f'frame {idx}: {key} history shape {tuple(item[key].shape)}')
    print('  delta_timestamps (10-step action chunks, 2 camera frames): items 0, middle, last decoded')
    for p in problems:
        print('  PROBLEM:', p)
    print('LeRobotDataset: ' + ('FAILED' if problems else 'loaded, frames decoded, totals match'))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
