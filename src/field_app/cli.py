"""``field_deploy``, the one user command: every module's sub-commands in one parser.

The shared part (errors, exit codes, the runner) is :mod:`field_deploy.cli`, so that a module's
commands import nothing above them; this list is the only place that names them all.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from field_deploy.cli import run

COMMAND_MODULES: tuple[str, ...] = (
    'field_deploy.cli',
    'health_monitor.cli',
    'data_recorder.cli',
    'field_app.bringup',
    'field_app.demo',
    'skill_runtime.cli',
    'field_app.console.commands',
)


def main(argv: Sequence[str] | None = None) -> int:
    return run(COMMAND_MODULES, argv)


if __name__ == '__main__':
    sys.exit(main())
