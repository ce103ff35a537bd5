"""``field_deploy bag …``: the recorder's and the player's command-line tools in one group."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from data_recorder import record_cli, tools_cli
    from fleet import cli as fleet_cli

    bag = subparsers.add_parser('bag', help='record, play, inspect, recover, export, plot, upload '
                                            'and rotate bags')
    sub = bag.add_subparsers(dest='bag_command', required=True, metavar='BAG_COMMAND')
    record_cli.register(sub)   # record, recover
    tools_cli.register(sub)    # play, info, export, plot
    fleet_cli.register(sub)    # upload, rotate
