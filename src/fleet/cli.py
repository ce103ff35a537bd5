"""``field_deploy bag upload`` and ``field_deploy bag rotate``: a robot's bags to the fleet's storage."""

from __future__ import annotations

import argparse
from pathlib import Path

from field_deploy.cli import CliError


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser('upload', help='upload closed bags to S3-compatible storage, verified, resumable',
                        description='Multipart upload of each bag to s3://BUCKET/PREFIX/<robot_id>/'
                                    '<date>/<bag>/ with a manifest.json; SHA-256 of every part and '
                                    'file checked against the stored object; an interrupted upload '
                                    'resumes where it stopped. Credentials and region as the AWS CLI '
                                    'reads them.')
    up.add_argument('bags', nargs='+', metavar='BAG', help='bag folders, then the s3:// URL last')
    up.add_argument('--endpoint-url', help='S3-compatible server (MinIO, Ceph, …); default AWS')
    up.add_argument('--region', help='region (default: as the AWS CLI resolves it)')
    up.add_argument('--robot-id', help='robot id in the key (default: $FIELD_DEPLOY_ROBOT_ID, else the '
                                       'host name)')
    _state_arguments(up)
    up.add_argument('--part-size', type=float, default=8.0, metavar='MiB', help='part size (≥ 5 MiB)')
    up.add_argument('--bandwidth', type=float, default=0.0, metavar='MB/s', help='cap (0: none)')
    up.add_argument('--retries', type=int, default=5, help='attempts per request beyond the first')
    up.set_defaults(func=_upload)

    rot = sub.add_parser('rotate', help='delete the oldest bags verified uploaded until KEEP_FREE is free',
                         description='Never deletes a bag that is not verified uploaded.')
    rot.add_argument('root', help='folder holding the bags')
    rot.add_argument('--keep-free', type=float, required=True, metavar='GB', help='free space to keep')
    rot.add_argument('--dry-run', action='store_true', help='say what would go, delete nothing')
    _state_arguments(rot)
    rot.set_defaults(func=_rotate)


def _state_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--state', help='SQLite file of the upload state (default: the robot\'s '
                                        'component ledger, config/health/default.yaml ledger.path)')
    parser.add_argument('--robot', default='quadruped_12dof', help='robot profile (for the default --state)')


def _store(args: argparse.Namespace):
    from fleet.store import UploadStore

    if args.state:
        return UploadStore(Path(args.state))
    from health_monitor.config import load_config
    return UploadStore(load_config(None, args.robot).ledger_path)


def _upload(args: argparse.Namespace) -> int:
    from fleet.upload import S3Url, Uploader, UploadError, default_robot_id, make_client

    if len(args.bags) < 2:
        raise CliError('give one or more bag folders, then s3://BUCKET/PREFIX')
    *bags, url = args.bags
    try:
        target = S3Url.parse(url)
        uploader = Uploader(make_client(args.endpoint_url, args.region), _store(args),
                            part_size=int(args.part_size * 1024 * 1024),
                            bandwidth=args.bandwidth * 1e6 or None, retries=args.retries)
        robot_id = args.robot_id or default_robot_id()
        for bag in bags:
            report = uploader.upload_bag(Path(bag), target, robot_id)
            print(f'{report.bag}: verified in {report.url} ({report.files} files, '
                  f'{report.bytes_sent / 1e6:.1f} MB sent, {report.parts_sent} parts sent, '
                  f'{report.parts_resumed} resumed, {report.parts_rejected} rejected and resent, '
                  f'{report.skipped_files} already there)')
    except UploadError as exc:
        raise CliError(str(exc)) from None
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from fleet.rotation import rotate

    root = Path(args.root)
    if not root.is_dir():
        raise CliError(f'{root}: no such folder')
    deleted, shortfall = rotate(root, int(args.keep_free * 1e9), _store(args), dry_run=args.dry_run)
    print(f'{len(deleted)} bag(s) {"would be " if args.dry_run else ""}deleted, '
          f'{sum(b.bytes for b in deleted) / 1e6:.1f} MB')
    return 1 if shortfall else 0
