"""The fleet's far ends on this machine: an S3-compatible store, a Prometheus server, a viewer.

A robot's fleet pieces talk to servers it does not own (object storage, Prometheus, the Foxglove
app). To show them working - ``field_deploy demo --fleet`` - and to test them, those servers run
here as real processes speaking the real protocols: moto's S3 server (``moto[server]``), Debian's
``prometheus``, and a viewer that speaks the Foxglove WebSocket protocol itself (``websockets``,
not the SDK that serves it). Never in-process mocks: a test against a mock checks the mock.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from field_deploy.testing import free_port, wait_until

#: The Foxglove WebSocket protocol's subprotocol as the SDK's server names it.
FOXGLOVE_SUBPROTOCOL = 'foxglove.sdk.v1'


class LocalServerError(RuntimeError):
    """A local server did not start (names the server and what it printed)."""


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(('127.0.0.1', port)) == 0


def _wait_serving(proc: subprocess.Popen, port: int, close: Any, what: str) -> None:
    """Until ``proc`` listens on ``port`` (30 s); else ``close()`` and raise naming ``what``."""
    if not wait_until(lambda: _listening(port) or proc.poll() is not None, 30.0) \
            or proc.poll() is not None:
        close()
        raise LocalServerError(what)


class MotoS3:
    """moto's S3-compatible HTTP server as a process on loopback (``endpoint`` is its URL)."""

    def __init__(self, port: int = 0, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f'http://127.0.0.1:{self.port}'
        out = log.open('wb') if log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(self.port)],
            stdout=out, stderr=subprocess.STDOUT)
        _wait_serving(self.proc, self.port, self.close, f'moto S3 server did not start on port '
                      f'{self.port}' + (f' (see {log})' if log else ''))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Prometheus:
    """A real Prometheus server scraping ``targets`` every second (``None`` from :meth:`start`
    when the ``prometheus`` binary is not installed: Debian's ``apt-get install prometheus``)."""

    def __init__(self, targets: list[str], folder: Path, binary: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        listed = ', '.join(f"'{t}'" for t in targets)
        (folder / 'prometheus.yml').write_text(
            'global: {scrape_interval: 1s, evaluation_interval: 1s}\n'
            'scrape_configs:\n- job_name: robot\n  static_configs:\n'
            f'  - targets: [{listed}]\n')
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.log = folder / 'prometheus.log'
        self.proc = subprocess.Popen(
            [binary, f'--config.file={folder / "prometheus.yml"}',
             f'--storage.tsdb.path={folder / "data"}', f'--web.listen-address=127.0.0.1:{self.port}'],
            stdout=self.log.open('wb'), stderr=subprocess.STDOUT)
        _wait_serving(self.proc, self.port, self.close, f'prometheus did not start (see {self.log})')

    @classmethod
    def start(cls, targets: list[str], folder: Path) -> Prometheus | None:
        binary = shutil.which('prometheus')
        return cls(targets, folder, binary) if binary else None

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query over the HTTP API; ``[]`` while the server has no answer yet."""
        url = f'{self.url}/api/v1/query?query={urllib.parse.quote(expr)}'
        try:
            reply = json.loads(urllib.request.urlopen(url, timeout=5).read())
        except OSError:
            return []
        return list(reply.get('data', {}).get('result', []))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LiveViewer:
    """A Foxglove WebSocket client in a thread: subscribes to every advertised channel of
    ``topics`` and counts the messages it receives per topic (the first one of each is kept
    raw, CDR, for the caller to decode)."""

    def __init__(self, url: str, topics: list[str], token: str = '') -> None:
        self.url = url + (f'?token={urllib.parse.quote(token)}' if token else '')
        self.topics = set(topics)
        self.counts: Counter[str] = Counter()
        self.first: dict[str, bytes] = {}
        self.advertised: dict[str, dict[str, Any]] = {}
        self.error = ''
        self.connected_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='live-viewer', daemon=True)

    def start(self) -> LiveViewer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        from websockets.sync.client import connect

        deadline = time.monotonic() + 60.0
        while not self._stop.is_set():
            try:
                with connect(self.url, subprotocols=[FOXGLOVE_SUBPROTOCOL], open_timeout=5) as ws:
                    self.connected_at = time.monotonic()
                    self._serve(ws)
                    return
            except (OSError, TimeoutError) as exc:     # the view is not up yet: try again
                self.error = f'{type(exc).__name__}: {exc}'
                if time.monotonic() > deadline:
                    return
                self._stop.wait(0.5)
            except Exception as exc:  # a refusal, a protocol error: said, not raised in a thread
                self.error = f'{type(exc).__name__}: {exc}'
                return

    def _serve(self, ws: Any) -> None:
        by_channel: dict[int, str] = {}
        by_sub: dict[int, str] = {}
        while not self._stop.is_set():
            try:
                msg = ws.recv(timeout=0.5)
            except TimeoutError:
                continue
            if isinstance(msg, str):
                body = json.loads(msg)
                if body.get('op') != 'advertise':
                    continue
                subscribe = []
                for channel in body['channels']:
                    self.advertised[channel['topic']] = channel
                    if channel['topic'] in self.topics and channel['id'] not in by_channel:
                        by_channel[channel['id']] = channel['topic']
                        sub_id = len(by_sub) + 1
                        by_sub[sub_id] = channel['topic']
                        subscribe.append({'id': sub_id, 'channelId': channel['id']})
                if subscribe:
                    ws.send(json.dumps({'op': 'subscribe', 'subscriptions': subscribe}))
            elif msg[:1] == b'\x01':                     # message data: sub id, stamp, payload
                sub_id, _stamp = struct.unpack_from('<IQ', msg, 1)
                topic = by_sub.get(sub_id)
                if topic is not None:
                    self.counts[topic] += 1
                    self.first.setdefault(topic, bytes(msg[13:]))
