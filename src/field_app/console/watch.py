"""``field_deploy status``: print the board once, or keep it on screen (rich Live) with keys.

Keys in ``--watch`` on a terminal: ``m`` asks for a mark's text and kind and writes it into the
running recording; ``q`` (or Ctrl-C) quits. Without a terminal (a pipe, a test) the screen simply
refreshes; ``--watch --json`` prints one JSON document per line per refresh instead.
"""

from __future__ import annotations

import contextlib
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator

from rich.console import Console
from rich.live import Live

from field_app.console.feed import MarkSender, StatusFeed
from field_app.console.session import Session
from field_app.console.view import render, to_json
from field_deploy.cli import StackUnavailable

KINDS = ('anomaly', 'disturbance', 'edge_case', 'note')


def _console() -> Console:
    """The terminal's width, or 120 columns into a pipe or file (rich's 80 cut the skill names)."""
    return Console() if sys.stdout.isatty() else Console(width=120)


def print_once(session: Session, *, listen: float, as_json: bool = False) -> int:
    """Listen ``listen`` s (two recorder statuses give its rates), longer until every source is
    heard or the session's timeout has passed (discovery on a loaded host takes seconds)."""
    feed = StatusFeed(session.node, session.namespace)
    started = time.monotonic()
    while True:
        time.sleep(0.1)
        snap = feed.snapshot()
        elapsed = time.monotonic() - started
        heard = [p['last_heard_s'] is not None for p in snap['nodes'].values()]
        if elapsed >= max(listen, session.timeout) or (all(heard) and elapsed >= listen):
            break
    if not any(heard):
        raise StackUnavailable(f'stack not running: no status from skill_runtime, data_recorder or '
                               f'health_monitor within {elapsed:.1f} s (start it with '
                               '`field_deploy up`)')
    if as_json:
        print(to_json(snap), flush=True)
    else:
        _console().print(render(snap))
    return 0


class _Keys:
    """Single key presses from a terminal (cbreak mode), restored on exit."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

    def read(self, timeout: float) -> str | None:
        ready, _, _ = select.select([sys.stdin], [], [], timeout)
        return sys.stdin.read(1) if ready else None

    @contextlib.contextmanager
    def cooked(self) -> Iterator[None]:
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        try:
            yield
        finally:
            tty.setcbreak(self.fd)

    def close(self) -> None:
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def _ask_mark(console: Console, sender: MarkSender, timeout: float) -> str:
    text = console.input('[bold]mark text[/] (empty: cancel): ').strip()
    if not text:
        return 'mark cancelled'
    kind = console.input(f'kind {"/".join(KINDS)} [note]: ').strip() or 'note'
    kind = next((k for k in KINDS if k.startswith(kind)), kind)
    console.print('sending the mark, waiting for the recorder to confirm it ...')
    try:
        status = sender.send(text, kind, timeout)
    except (ValueError, StackUnavailable) as exc:
        return f'mark NOT written: {exc}'
    return f'mark [{kind}] {text!r} written ({status.get("marks", "?")} in {status.get("path", "?")})'


def watch(session: Session, *, interval: float, as_json: bool = False) -> int:
    feed = StatusFeed(session.node, session.namespace)
    if as_json:
        try:
            while True:
                time.sleep(interval)
                print(to_json(feed.snapshot()), flush=True)
        except (KeyboardInterrupt, BrokenPipeError):
            return 0
    console = _console()
    keys = _Keys() if sys.stdin.isatty() else None
    sender: MarkSender | None = None
    footer = ('keys: m mark the recording, q quit' if keys else 'Ctrl-C quits') + \
        f'  (refresh {interval:g} s)'
    note = ''
    try:
        with Live(render(feed.snapshot(), footer), console=console, auto_refresh=False) as live:
            while True:
                key = keys.read(interval) if keys is not None else time.sleep(interval)
                if key == 'q':
                    break
                if key == 'm' and keys is not None:
                    live.stop()
                    sender = sender or MarkSender(session.node, session.namespace)
                    with keys.cooked():
                        note = _ask_mark(console, sender, session.timeout)
                    live.start()
                live.update(render(feed.snapshot(), f'{note}\n{footer}' if note else footer),
                            refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        if keys is not None:
            keys.close()
    return 0
