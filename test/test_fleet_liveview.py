"""The live view as a process, beside a real sim_robot, read by a WebSocket client that speaks the
Foxglove protocol itself (``websockets``; not the SDK that serves it)."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import JointState

from field_deploy.testing import free_port, wait_until
from fleet.liveview import LiveViewError, check_config, check_upgrade, topic_allowed

pytestmark = pytest.mark.timeout(120)
SUBPROTOCOL = 'foxglove.sdk.v1'   # the Foxglove WebSocket protocol as the SDK's server names it
TOKEN = 'view-token-42'
UPGRADE = b'GET /?token=%s HTTP/1.1\r\nHost: robot\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'



def test_who_may_connect_and_what_is_served() -> None:
    assert check_upgrade(UPGRADE % TOKEN.encode(), TOKEN, '10.1.2.3') is None
    assert check_upgrade(UPGRADE % b'nope', TOKEN, '10.1.2.3') == 'wrong token'
    assert check_upgrade(UPGRADE % b'', TOKEN, '10.1.2.3') == 'no token'
    bearer = (b'GET / HTTP/1.1\r\nUpgrade: websocket\r\nAuthorization: Bearer ' + TOKEN.encode()
              + b'\r\n\r\n')
    assert check_upgrade(bearer, TOKEN, '192.0.2.7') is None
    assert check_upgrade(UPGRADE % b'', TOKEN, '127.0.0.1') is None            # this machine
    assert check_upgrade(UPGRADE % b'', TOKEN, '127.0.0.1', trust_loopback=False) == 'no token'
    assert check_upgrade(b'POST / HTTP/1.1\r\n\r\n', TOKEN, '10.0.0.1').startswith('method POST')
    assert check_upgrade(b'\x16\x03\x01garbage', TOKEN, '10.0.0.1') == 'not an HTTP request'
    assert TOKEN not in ' '.join(str(check_upgrade(UPGRADE % b'x', TOKEN, '10.0.0.1')))
    with pytest.raises(LiveViewError, match='needs a token'):
        check_config('0.0.0.0', '')
    check_config('127.0.0.1', '')
    assert topic_allowed('/camera/front/image_raw', ['/joint_states', '/camera/*'])
    assert not topic_allowed('/odom', ['/joint_states', '/camera/*'])


def start_view(node_process, port: int, **params: str):
    args = ['--ros-args', '-p', f'port:={port}', '-p', "allow:=['/joint_states', '/camera/*']"]
    for key, value in params.items():
        args += ['-p', f'{key}:={value}']
    return node_process('live_view', args, env={'FIELD_DEPLOY_LIVE_TOKEN': TOKEN})


def advertised(ws, want: str, timeout: float = 30.0) -> dict[str, dict]:
    """Read JSON messages until ``want`` is advertised; every advertised channel by topic."""
    channels: dict[str, dict] = {}
    import time
    deadline = time.monotonic() + timeout
    while want not in channels and time.monotonic() < deadline:
        msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(msg, str):
            body = json.loads(msg)
            if body.get('op') == 'advertise':
                channels.update({c['topic']: c for c in body['channels']})
    return channels


def test_a_client_receives_joint_states_and_nothing_off_the_allow_list(node_process, spin) -> None:
    from rclpy.node import Node
    from websockets.sync.client import connect

    probe = Node('liveview_probe')
    spin(probe)

    node_process('sim_robot', ['--ros-args', '-p', 'profile:=quadruped_12dof'])
    port = free_port()
    view = start_view(node_process, port)
    assert wait_until(lambda: 'live view on ws://' in view.log(), 30.0), view.log()
    with connect(f'ws://127.0.0.1:{port}/', subprotocols=[SUBPROTOCOL], open_timeout=10) as ws:
        channels = advertised(ws, '/joint_states')
        assert '/joint_states' in channels, channels
        assert '/odom' not in channels and '/imu' not in channels     # off the allow-list
        js = channels['/joint_states']
        assert js['encoding'] == 'cdr' and js['schemaEncoding'] == 'ros2msg'
        assert js['schemaName'] == 'sensor_msgs/msg/JointState' and 'MSG: std_msgs/msg/Header' in js['schema']
        ws.send(json.dumps({'op': 'subscribe', 'subscriptions': [{'id': 7, 'channelId': js['id']}]}))
        while True:
            msg = ws.recv(timeout=20)
            if isinstance(msg, bytes) and msg[0] == 0x01:
                sub_id, _stamp = struct.unpack_from('<IQ', msg, 1)
                decoded = deserialize_message(msg[13:], JointState)
                break
        assert sub_id == 7 and len(decoded.name) == 12 and len(decoded.position) == 12
        # Read-only: a client may not publish into the robot or call its services.
        ws.send(json.dumps({'op': 'unsubscribe', 'subscriptionIds': [7]}))
        ws.send(json.dumps({'op': 'advertise', 'channels': [{'id': 1, 'topic': '/joint_commands',
                                                             'encoding': 'cdr',
                                                             'schemaName': 'sensor_msgs/msg/JointState'}]}))
        ws.send(b'\x01' + struct.pack('<I', 1) + b'\x00' * 16)            # client message data
        ws.send(struct.pack('<BII', 0x02, 1, 1) + struct.pack('<I', 3) + b'cdr' + b'\x00' * 8)
        replies = []
        with contextlib.suppress(TimeoutError):
            while True:
                msg = ws.recv(timeout=2.0)
                replies.append(msg if isinstance(msg, str) else msg[:1])
    assert b'\x03' not in replies, 'a service call was answered'          # 0x03: service response
    assert wait_until(lambda: probe.count_publishers('/joint_commands') == 0, 2.0)
    refusals = ' '.join(r for r in replies if isinstance(r, str))
    assert 'does not support clientPublish' in refusals and 'serviceCallFailure' in refusals, refusals


def test_without_the_token_a_client_is_refused_and_the_refusal_logged(node_process) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    port = free_port()
    view = start_view(node_process, port, localhost_without_token='false')
    assert wait_until(lambda: 'live view on ws://' in view.log(), 30.0), view.log()
    with pytest.raises(InvalidStatus) as refused:
        connect(f'ws://127.0.0.1:{port}/', subprotocols=[SUBPROTOCOL], open_timeout=10)
    assert refused.value.response.status_code == 401
    assert wait_until(lambda: 'refused 127.0.0.1: no token' in view.log(), 10.0), view.log()
    assert TOKEN not in view.log()
    with connect(f'ws://127.0.0.1:{port}/?token={TOKEN}', subprotocols=[SUBPROTOCOL],
                 open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))['op'] == 'serverInfo'


def test_beyond_localhost_without_a_token_the_view_does_not_start(node_process) -> None:
    view = node_process('live_view', ['--ros-args', '-p', 'address:=0.0.0.0', '-p', 'port:=0'],
                        env={'FIELD_DEPLOY_LIVE_TOKEN': ''})
    assert wait_until(lambda: not view.alive(), 30.0)
    assert 'needs a token' in view.log()


def test_camera_frames_reach_the_view_at_most_at_image_rate(node_process) -> None:
    """A camera (30 Hz) watched through the view at ``image_rate`` 4: whole 640x480 frames arrive,
    never more than one per 1/4 s tick (the view takes the newest frame on a timer, it does not
    take every frame into Python)."""
    import time

    from sensor_msgs.msg import Image

    from fleet.local import LiveViewer

    node_process('sim_robot', ['--ros-args', '-p', 'profile:=quadruped_12dof'])
    port = free_port()
    view = start_view(node_process, port, image_rate='4.0')
    assert wait_until(lambda: 'live view on ws://' in view.log(), 30.0), view.log()
    viewer = LiveViewer(f'ws://127.0.0.1:{port}/', ['/camera/front/image_raw']).start()
    try:
        assert wait_until(lambda: viewer.counts['/camera/front/image_raw'] >= 1, 60.0), \
            (viewer.error, view.log())
        start, first = time.monotonic(), viewer.counts['/camera/front/image_raw']
        time.sleep(3.0)
        received = viewer.counts['/camera/front/image_raw'] - first
        elapsed = time.monotonic() - start
    finally:
        viewer.stop()
    assert 1 <= received <= 4 * elapsed + 2, (received, elapsed)
    frame = deserialize_message(viewer.first['/camera/front/image_raw'], Image)
    assert (frame.width, frame.height, len(frame.data)) == (640, 480, 640 * 480 * 3)
