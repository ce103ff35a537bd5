"""``field_deploy bag play | info | verify | export | plot`` and the report of ``recover`` (the
recorder's ``record`` and ``recover`` flags are in ``record_cli``). Each fails with one line and
a non-zero status (:class:`field_deploy.cli.CliError`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from field_deploy.cli import CliError


def register(sub: argparse._SubParsersAction) -> None:
    from data_recorder.replay.node import add_play_arguments

    play = sub.add_parser('play', help='play a bag with faithful timing (like ros2 bag play)',
                          description='Play a rosbag2 MCAP bag (directory or .mcap) with the '
                                      'recorded timing and QoS. Services: /bag_player/pause, '
                                      '/resume, /toggle_paused, /step; parameters rate, seek.')
    add_play_arguments(play).set_defaults(func=_play)

    info = sub.add_parser('info', help='duration, topics, counts, rates, QoS, episodes, loss',
                          description='Print what ros2 bag info prints, plus episodes and the '
                                      "recorder's loss accounting.")
    info.add_argument('bag', help='rosbag2 directory or .mcap file')
    info.add_argument('--json', action='store_true', help='machine-readable output')
    info.set_defaults(func=_info)

    verify = sub.add_parser('verify', help='check every chunk CRC, the data section and summary; '
                            'exit 0 only when intact',
                            description='Check every chunk CRC (and the data-section and summary '
                                        'CRCs, the footer) of every MCAP file of a bag. Exit '
                                        'status: 0 intact, 1 damaged (`bag recover` salvages it), '
                                        '2 not an MCAP file / nothing to check.')
    verify.add_argument('bag', help='rosbag2 directory or .mcap file')
    verify.add_argument('--json', action='store_true', help='machine-readable output')
    verify.set_defaults(func=_verify)

    export = sub.add_parser(
        'export', help='bag(s) -> a LeRobot v3.0 dataset (default) or Parquet + MP4 per episode',
        description='--format lerobot (default): every skill run of the bags becomes an episode of '
                    'one LeRobot v3.0 dataset (meta/, data/, videos/) that LeRobotDataset loads; '
                    'exporting into an existing dataset appends. --format parquet: time-aligned '
                    'Parquet + MP4/PNG and a manifest.json per episode (the --rate, --topics and '
                    '--images options select it when --format is not given).')
    export.add_argument('bag', nargs='+', help='bags, or folders of bags')
    export.add_argument('-o', '--output', required=True, help='dataset folder (lerobot) / output folder')
    export.add_argument('--format', choices=('lerobot', 'parquet'), default=None,
                        help='lerobot (default) or parquet')
    lerobot = export.add_argument_group('--format lerobot')
    lerobot.add_argument('--fps', type=int, default=None,
                         help="frames per second (default: the cameras' rate; an existing dataset's)")
    lerobot.add_argument('--task', default=None,
                         help='task text of every episode (default: the skill and its parameters)')
    lerobot.add_argument('--include-failed', action='store_true',
                         help='keep episodes whose skill failed or whose streams lost messages '
                              '(marked in meta/episodes field_deploy/status)')
    lerobot.add_argument('--robot', default=None, metavar='NAME|PROFILE.yaml',
                         help='robot profile (default: the shipped one whose joints the bag has)')
    lerobot.add_argument('--vcodec', default=None, metavar='CODEC',
                         help="video codec (default LeRobot's: libsvtav1; h264 / libx264 also load)")
    parquet = export.add_argument_group('--format parquet')
    parquet.add_argument('--topics', nargs='+', default=None, metavar='TOPIC',
                         help='topics to export (default: every exportable one)')
    parquet.add_argument('--rate', type=float, default=None, metavar='HZ',
                         help='common clock of the table (default 50 Hz)')
    parquet.add_argument('--images', choices=('mp4', 'png', 'none'), default=None,
                         help='how to write camera images (default mp4)')
    export.set_defaults(func=_export)

    plot = sub.add_parser('plot', help='PNG of signals over time (joints, efforts, forces)',
                          description='Plot signals to a PNG. SIGNAL = TOPIC.FIELD[:SELECT], '
                                      '"+" overlays series in one panel, e.g. '
                                      '/joint_states.position:left_knee_joint+'
                                      '/joint_commands.position:left_knee_joint')
    plot.add_argument('bag', help='rosbag2 directory or .mcap file')
    plot.add_argument('-o', '--output', required=True, help='PNG file to write')
    plot.add_argument('--signals', nargs='+', default=(), metavar='SIGNAL',
                      help='one panel per SIGNAL (default: command vs measured, efforts, forces)')
    plot.add_argument('--size', default='1200x800', metavar='WxH', help='pixels (default 1200x800)')
    plot.set_defaults(func=_plot)


def _play(args: argparse.Namespace) -> int:
    from data_recorder.replay.node import options_from_args, play
    options = options_from_args(args)
    stats = play(options, args.bag, qos_overrides_path=args.qos_profile_overrides_path)
    print(f'published {stats.published} messages' + (f', {stats.loops} loops' if stats.loops else ''))
    return 0


def _info(args: argparse.Namespace) -> int:
    from data_recorder.bag.info import render, summary
    from data_recorder.bag.reader import Bag
    bag = Bag(args.bag)
    print(json.dumps(summary(bag), indent=2, default=str) if args.json else render(bag))
    return 0


def _verify(args: argparse.Namespace) -> int:
    import sys

    from data_recorder.bag.assess import assess, render
    from data_recorder.bag.recover import bag_files
    from data_recorder.bag.scan import scan
    try:
        bag, files = bag_files(args.bag)
        results = [assess(scan(f)) for f in files]
    except (ValueError, OSError) as exc:     # not MCAP, no such file, nothing to check
        print(f'field_deploy bag verify: error: {exc}', file=sys.stderr)
        return 2
    missing = _missing_listed(bag) if Path(args.bag).is_dir() else []
    if args.json:
        print(json.dumps([a.as_dict() for a in results]
                         + [{'file': str(m), 'missing': True} for m in missing], indent=2))
    else:
        for a in results:
            print('\n'.join(render(a)))
        for m in missing:
            print(f'{m}: MISSING (listed in {bag / "metadata.yaml"})')
    return 0 if all(a.intact for a in results) and not missing else 1


def _missing_listed(bag: Path) -> list[Path]:
    """Files metadata.yaml lists that are not there (an unreadable metadata.yaml lists none)."""
    from data_recorder.bag import metadata as md
    try:
        listed = md.load(bag).get('relative_file_paths') or []
    except (OSError, ValueError):
        return []
    return [bag / p for p in listed if not (bag / p).is_file()]


def run_recover(args: argparse.Namespace) -> int:
    """``bag recover``: salvage, then say per file what was kept, lost and where the original is."""
    from data_recorder.bag.assess import render
    from data_recorder.bag.recover import recover

    report = recover(args.bag)
    for f in report.files:
        if not f.recovered:
            print(f'{f.path}: intact ({f.messages} messages), left as is')
            continue
        print(f'{f.path}: rebuilt with {f.messages} messages; original kept as {f.kept_as}')
        if f.assessment is not None:
            print('\n'.join('  ' + line for line in render(f.assessment)))
    if report.metadata_path is not None:
        print(f'{report.metadata_path}: written ({report.messages} messages in the bag)')
    return 0


def _export(args: argparse.Namespace) -> int:
    parquet_only = [o for o, v in (('--topics', args.topics), ('--rate', args.rate),
                                   ('--images', args.images)) if v is not None]
    lerobot_only = [o for o, v in (('--fps', args.fps), ('--task', args.task), ('--robot', args.robot),
                                   ('--vcodec', args.vcodec),
                                   ('--include-failed', args.include_failed or None)) if v is not None]
    fmt = args.format or ('parquet' if parquet_only else 'lerobot')
    wrong = lerobot_only if fmt == 'parquet' else parquet_only
    if wrong:
        raise CliError(f'{", ".join(wrong)}: not an option of --format {fmt}')
    return _export_lerobot(args) if fmt == 'lerobot' else _export_parquet(args)


def _export_lerobot(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from data_recorder.export.lerobot.dataset import export_lerobot
    from data_recorder.export.lerobot.video import DEFAULT_CODEC

    with tqdm(unit='msg', unit_scale=True, desc='export', leave=False) as bar:
        def planned(n: int) -> None:
            bar.total = n
            bar.refresh()
        report = export_lerobot(args.bag, args.output, fps=args.fps, task=args.task,
                                include_failed=args.include_failed, robot=args.robot,
                                codec=args.vcodec or DEFAULT_CODEC, progress=bar.update, planned=planned)
    for e in report.episodes:
        head = f'episode {e.episode_index}' if e.exported else 'left out'
        print(f'{head}: {e.name} ({Path(e.bag).name}) {e.frames} frames'
              + (f' [{e.reason}]' if e.reason else '') + (f' task {e.task!r}' if e.exported else ''))
    kept = sum(e.exported for e in report.episodes)
    print(f'{report.root}: LeRobot v3.0 dataset, robot {report.robot}, {report.fps} fps: '
          f'+{kept} episodes ({len(report.episodes) - kept} left out), now {report.total_episodes} '
          f'episodes, {report.total_frames} frames ({report.seconds:.1f} s)')
    if kept < len(report.episodes) and not args.include_failed:
        print('  (--include-failed keeps the episodes left out, marked in meta/episodes)')
    return 0


def _export_parquet(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from data_recorder.bag.reader import Bag
    from data_recorder.export.parquet import export, find_bags
    results = []
    for path in args.bag:
        out = Path(args.output) if len(args.bag) == 1 else Path(args.output) / Path(path).name
        total = sum(Bag(b).size_bytes for b in find_bags(Path(path)))
        with tqdm(total=total, unit='B', unit_scale=True, desc='export', leave=False) as bar:
            results += export(path, out, topics=args.topics, rate_hz=args.rate or 50.0,
                              images=args.images or 'mp4', progress=bar.update)
    for r in results:
        videos = ', '.join(f'{k}: {n} frames' for k, n in r.videos.items())
        print(f'{r.folder}: {r.rows} rows' + (f'; {videos}' if videos else ''))
        for w in r.warnings:
            print(f'  warning: {w}')
    return 0


def _plot(args: argparse.Namespace) -> int:
    from data_recorder.export.plot import plot
    try:
        w, h = (int(v) for v in args.size.lower().split('x'))
    except ValueError:
        raise CliError(f'--size {args.size!r} is not WIDTHxHEIGHT') from None
    out = plot(args.bag, args.output, args.signals, width=w, height=h)
    print(out)
    return 0
