"""``field_deploy skills``: list the packs this machine would load, check and digest a pack folder.

The sub-commands that drive skills on a running stack (run, stop, estop, reset, status) are the
operator console's: :mod:`field_app.console.commands` adds them to this group.
"""

from __future__ import annotations

import argparse
import contextlib

from field_deploy.cli import CliError
from field_deploy.profile import load_profile
from skill_runtime.api import API_VERSION
from skill_runtime.loader import DEFAULT_ALLOW, check_pack, discover, import_skills
from skill_runtime.manifest import PackError, compute_digests, read_manifest, write_digests


def register(subparsers: argparse._SubParsersAction) -> None:
    skills = subparsers.add_parser('skills', help='skill packs (list, check, digest) and skills on the '
                                                   'running stack (run, stop, estop, reset, status)')
    sub = skills.add_subparsers(dest='skills_command', required=True)
    lst = sub.add_parser('list', help='discovered packs (entry points + --pack-path) and the verdict')
    lst.add_argument('--profile', default='quadruped_12dof', help='robot profile to check against')
    lst.add_argument('--pack-path', action='append', default=[], help='folder of packs (repeatable)')
    lst.add_argument('--allow', action='append', default=[],
                     help=f'vendor/pack glob allowed (repeatable; default {" ".join(DEFAULT_ALLOW)})')
    lst.set_defaults(func=_list)
    chk = sub.add_parser('check', help='validate a pack folder: manifest, digests, import')
    chk.add_argument('pack_dir')
    chk.add_argument('--profile', default=None, help='also check robot kind and joint groups')
    chk.set_defaults(func=_check)
    dig = sub.add_parser('digest', help='write / refresh the sha256 digests in the manifest')
    dig.add_argument('pack_dir')
    dig.set_defaults(func=_digest)


def _list(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    records = discover(profile, pack_path=args.pack_path, allow=args.allow or list(DEFAULT_ALLOW))
    print(f'skill API {API_VERSION}; robot {profile.name} ({profile.kind})')
    for rec in records:
        if rec.accepted and rec.manifest is not None:
            m = rec.manifest
            print(f'ACCEPTED {m.name} {m.version} ({m.vendor}) from {rec.candidate.source}: '
                  f'{", ".join(s.name for s in m.skills)}')
        else:
            print(f'REFUSED  {rec.name} from {rec.candidate.source}: {rec.reason}')
    return 0


def _check(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile) if args.profile else None
    try:
        manifest = check_pack(args.pack_dir, profile, ['*'])
        classes = import_skills(manifest)
    except PackError as exc:
        raise CliError(str(exc)) from None
    print(f'OK {manifest.name} {manifest.version} ({manifest.vendor}), API {manifest.api_version}, '
          f'{len(manifest.digests)} files verified')
    for spec in manifest.skills:
        params = ', '.join(f'{p.name}:{p.type}={p.default}' for p in spec.params)
        print(f'  {spec.name:16s} {classes[spec.name].__name__:16s} claims {",".join(spec.claims)}  '
              f'{params}')
    return 0


def _digest(args: argparse.Namespace) -> int:
    try:
        read_manifest(args.pack_dir)  # must parse (except for stale digests) before we rewrite it
    except PackError as exc:
        if not exc.field.startswith('digests'):
            raise CliError(str(exc)) from None
    before = {}
    with contextlib.suppress(PackError):
        before = read_manifest(args.pack_dir).digests
    after = write_digests(args.pack_dir)
    for rel, digest in after.items():
        mark = '=' if before.get(rel) == digest else '+' if rel not in before else '*'
        print(f'{mark} {digest}  {rel}')
    for rel in sorted(set(before) - set(after)):
        print(f'- {"":64s}  {rel}')
    assert after == compute_digests(args.pack_dir)
    return 0
