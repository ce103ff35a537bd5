"""Who may look at the robot live, and what they see. Pure (no rclpy, no foxglove).

Robots work in care homes and shops: their cameras see people. The live view therefore serves only
topics on an allow-list (glob patterns from the stack description), is read-only (the Foxglove
server is started with no capability: no publishing, no service calls, no parameters), and a
client that does not come from this machine must present the configured token, in the URL
(``ws://robot:8765/?token=…``, what the Foxglove app sends as given) or as
``Authorization: Bearer …``. :func:`check_upgrade` decides on the client's HTTP upgrade request
before one byte of robot data flows; :class:`TokenGate` is the TCP front that applies it and then
only copies bytes both ways (no WebSocket parsing: cheap for camera frames).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import ipaddress
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

MAX_REQUEST = 16 * 1024


class LiveViewError(Exception):
    """A configuration the live view refuses to start with (said in one line)."""


def topic_allowed(topic: str, allow: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(topic, pattern) for pattern in allow)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split('%')[0]).is_loopback
    except ValueError:
        return host == 'localhost'


def check_config(address: str, token: str) -> None:
    """Beyond localhost a token is required; refuse to serve the robot to a network without one."""
    if not is_loopback(address) and not token:
        raise LiveViewError(f'live view bound to {address} needs a token (token_file or '
                            '$FIELD_DEPLOY_LIVE_TOKEN): refusing to serve cameras without one')


def check_upgrade(request: bytes, token: str, peer: str, *, trust_loopback: bool = True) -> str | None:
    """Why this client may not connect (one line, never the token itself), or None.

    ``trust_loopback``: a client on this machine needs no token (it could read the topics with ROS
    anyway); off, every client must present it.
    """
    try:
        head = request.split(b'\r\n\r\n', 1)[0].decode('latin-1')
        first, *header_lines = head.split('\r\n')
        method, target, _version = first.split(' ', 2)
    except ValueError:
        return 'not an HTTP request'
    if method != 'GET':
        return f'method {method} (a WebSocket upgrade is a GET)'
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(':')
        headers[name.strip().lower()] = value.strip()
    if headers.get('upgrade', '').lower() != 'websocket':
        return 'not a WebSocket upgrade'
    if not token or (trust_loopback and is_loopback(peer)):
        return None
    offered = parse_qs(urlsplit(target).query).get('token', [''])[0]
    bearer = headers.get('authorization', '')
    if bearer.lower().startswith('bearer '):
        offered = offered or bearer[7:].strip()
    if not offered:
        return 'no token'
    if not hmac.compare_digest(offered.encode(), token.encode()):
        return 'wrong token'
    return None


@dataclass
class TokenGate:
    """A TCP front on ``address:port`` that checks each upgrade request, then splices the
    connection to the Foxglove server on ``127.0.0.1:backend_port``. Runs its own event loop thread."""

    def __init__(self, address: str, port: int, backend_port: int, token: str,
                 log: Callable[[str], None], *, trust_loopback: bool = True) -> None:
        self.address, self.port, self.backend_port = address, port, backend_port
        self.token = token
        self.trust_loopback = trust_loopback
        self.log = log
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name='liveview-gate', daemon=True)

    def start(self) -> TokenGate:
        self._thread.start()
        if not self._ready.wait(10.0) or self._server is None:
            raise LiveViewError(f'live view could not listen on {self.address}:{self.port}')
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._client, self.address, self.port))
        except OSError as exc:
            self.log(f'live view: cannot listen on {self.address}:{self.port}: {exc}')
        finally:
            self._ready.set()
        if self._server is not None:
            self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info('peername', ('?', 0))[0])
        try:
            request = await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), 5.0)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        problem = check_upgrade(request[:MAX_REQUEST], self.token, peer,
                                trust_loopback=self.trust_loopback)
        if problem is not None:
            self.refused += 1
            self.log(f'live view: refused {peer}: {problem}')
            writer.write(b'HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
            await writer.drain()
            writer.close()
            return
        try:
            back_reader, back_writer = await asyncio.open_connection('127.0.0.1', self.backend_port)
        except OSError:
            writer.close()
            return
        back_writer.write(request)
        await asyncio.gather(_pipe(reader, back_writer), _pipe(back_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
