"""``field_deploy``: the one user command; each module adds its sub-commands.

A module listed in :data:`field_app.cli.COMMAND_MODULES` provides ``register(subparsers)`` and
sets ``func=`` on its parsers; this module is the shared part every module's commands use (the
errors, the exit codes, :func:`run`) and adds ``field_deploy profile``. A command fails by
raising :class:`CliError` (or any exception it expects, listed in :data:`USER_ERRORS`): the user
sees one line with the reason and a non-zero exit status, never a traceback.

Exit codes a script can rely on: 0 done; 1 the command ran and what it drove failed (a skill
failed, was stopped or refused; a bad file); 2 usage or validation (a bad argument, an unknown
skill or parameter, a mission that does not validate); 3 the stack is not running or a service
did not answer in time; 130 interrupted before anything ran.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

import yaml

import field_deploy
from field_deploy.profile import ProfileError, available_profiles, load_profile

EXIT_FAILED, EXIT_USAGE, EXIT_NO_STACK = 1, 2, 3


class CliError(Exception):
    """A failure the user can act on; printed as one line; exits with :attr:`code`."""

    code = EXIT_FAILED


class UsageError(CliError):
    """A bad argument, unknown name or a file that does not validate (exit 2)."""

    code = EXIT_USAGE


class StackUnavailable(CliError):
    """The stack is not running, or a service did not answer in time (exit 3)."""

    code = EXIT_NO_STACK


USER_ERRORS: tuple[type[BaseException], ...] = (CliError, ProfileError, FileNotFoundError,
                                                 FileExistsError, PermissionError, ValueError)


def register(subparsers: argparse._SubParsersAction) -> None:
    profile = subparsers.add_parser('profile', help='list, show and validate robot profiles')
    sub = profile.add_subparsers(dest='profile_command', required=True)
    sub.add_parser('list', help='the shipped robot profiles').set_defaults(func=_profile_list)
    show = sub.add_parser('show', help='validate a profile and print its joints, groups and topics')
    show.add_argument('profile', help='profile name (e.g. quadruped_12dof) or path to a YAML file')
    show.set_defaults(func=_profile_show)


def _profile_list(_args: argparse.Namespace) -> int:
    for name in available_profiles():
        p = load_profile(name)
        print(f'{name:20s} {p.kind:10s} {p.dof:3d} joints  {p.description}')
    return 0


def _profile_show(args: argparse.Namespace) -> int:
    p = load_profile(args.profile)
    print(f'{p.name} ({p.kind}, {p.dof} joints) from {p.path}')
    print(yaml.safe_dump({'groups': {k: list(v) for k, v in p.groups.items()},
                          'topics': {t.name: f'{t.type} @ {t.rate_hz:g} Hz, {t.qos.reliability} '
                                              f'depth {t.qos.depth}' for t in p.topics}},
                         sort_keys=False, width=120), end='')
    return 0


def build_parser(modules: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='field_deploy', description=__doc__.splitlines()[0])
    parser.add_argument('--version', action='version', version=field_deploy.__version__)
    subparsers = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def interruptible() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt in this process, whatever it inherited.

    A non-interactive shell starts a background job (``cmd &`` in a script, a CI runner's
    steps) with SIGINT ignored, and Python then installs no handler of its own: found
    2026-11-30, ``status --watch`` started so ran on after SIGINT, printing, for as long as
    nobody killed it (its ``/proc/<pid>/status`` SigIgn had SIGINT) - the console test's
    "does not exit after SIGINT" of the background suite runs. A command that owns its
    signals (``up``, ``bag record``) installs its own handlers after this."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def run(modules: Sequence[str], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` against the sub-commands of ``modules`` and run the chosen one: one line
    and an exit code for every failure the user can act on. The full command is
    :func:`field_app.cli.main`; a module's stand-alone entry (``python -m data_recorder.record_cli``)
    passes its own modules only."""
    args = build_parser(modules).parse_args(argv)
    interruptible()
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f'field_deploy {args.command}: error: {exc}', file=sys.stderr)
        return int(getattr(exc, 'code', EXIT_FAILED))
    except KeyboardInterrupt:
        return 130
