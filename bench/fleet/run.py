"""Fleet benchmarks: bag upload throughput and CPU, and the live view's CPU with one client.

    .venv/bin/python bench/fleet/run.py [--seconds 20] [--bag-seconds 2]

1. Upload: a synthetic reference bag (the humanoid load: three 640x480 cameras, 1 kHz streams) to
   a moto S3 server process on loopback, 8 MiB parts, SHA-256 per part: MB/s and the uploader's
   CPU seconds per 100 MB (the server's CPU is moto's, not ours, and is printed apart).
2. Live view: the same bag played in a loop by ``bag_player`` (the reference load on DDS), the
   ``live_view`` process serving every topic, one WebSocket client subscribed to all channels:
   the live view's CPU share and the messages and MB/s the client received (images capped at the
   view's ``image_rate``). Figures, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'src'))

from field_deploy.testing import executable, free_port, isolate_ros_env, wait_until  # noqa: E402


def bench_upload(bag: Path, work: Path) -> None:
    import psutil

    from fleet.local import MotoS3
    from fleet.store import UploadStore
    from fleet.upload import S3Url, Uploader, make_client

    os.environ.update({'AWS_ACCESS_KEY_ID': 'bench', 'AWS_SECRET_ACCESS_KEY': 'bench',
                       'AWS_DEFAULT_REGION': 'us-east-1'})
    store = MotoS3()
    try:
        client = make_client(store.endpoint)
        client.create_bucket(Bucket='bench')
        me, srv = psutil.Process(), psutil.Process(store.proc.pid)
        cpu0, srv0, t0 = me.cpu_times(), srv.cpu_times(), time.monotonic()
        report = Uploader(client, UploadStore(work / 'state.sqlite'), log=lambda _l: None).upload_bag(
            bag, S3Url.parse('s3://bench/robots'), 'bench')
        seconds = time.monotonic() - t0
        cpu1, srv1 = me.cpu_times(), srv.cpu_times()
        mb = report.bytes_sent / 1e6
        ours = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        theirs = (srv1.user + srv1.system) - (srv0.user + srv0.system)
        print(f'upload: {mb:.0f} MB in {seconds:.1f} s = {mb / seconds:.1f} MB/s; uploader CPU '
              f'{ours:.2f} s ({100 * ours / mb:.2f} s per 100 MB, SHA-256 + MD5 + HTTP); moto server '
              f'CPU {theirs:.2f} s; {report.parts_sent} parts')
    finally:
        store.close()


def bench_live_view(bag: Path, seconds: float, work: Path) -> None:
    import psutil
    from websockets.sync.client import connect

    isolate_ros_env()
    env = dict(os.environ)
    player = subprocess.Popen([executable('field_deploy'), 'bag', 'play', str(bag), '--loop'],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    port = free_port()
    log = (work / 'live_view.log').open('w')
    view = subprocess.Popen([executable('live_view'), '--ros-args', '-p', f'port:={port}', '-p',
                             "allow:=['*']"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: 'live view on' in (work / 'live_view.log').read_text(), 30)
        with connect(f'ws://127.0.0.1:{port}/', subprotocols=['foxglove.sdk.v1'], open_timeout=10,
                     max_size=None) as ws:
            channels: dict[int, str] = {}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with __import__('contextlib').suppress(TimeoutError):
                    msg = ws.recv(timeout=1)
                    if isinstance(msg, str) and json.loads(msg).get('op') == 'advertise':
                        channels.update({c['id']: c['topic'] for c in json.loads(msg)['channels']})
            ws.send(json.dumps({'op': 'subscribe', 'subscriptions': [
                {'id': i, 'channelId': cid} for i, cid in enumerate(channels)]}))
            proc = psutil.Process(view.pid)
            time.sleep(2.0)
            cpu0, t0, n, size = proc.cpu_times(), time.monotonic(), 0, 0
            while time.monotonic() - t0 < seconds:
                with __import__('contextlib').suppress(TimeoutError):
                    msg = ws.recv(timeout=1)
                    if isinstance(msg, bytes):
                        n, size = n + 1, size + len(msg)
            cpu1, dt = proc.cpu_times(), time.monotonic() - t0
        share = 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / dt
        print(f'live view: {len(channels)} channels, one client: {n / dt:.0f} msg/s, {size / dt / 1e6:.1f} '
              f'MB/s to the client; live_view CPU {share:.0f} % of a core')
    finally:
        for p in (view, player):
            p.terminate()
            p.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--seconds', type=float, default=20.0, help='live view measuring window')
    ap.add_argument('--bag-seconds', type=float, default=2.0, help='length of the synthetic bag')
    args = ap.parse_args()
    from data_recorder.synthetic import reference_streams, write_bag

    print(f'load average before: {os.getloadavg()}')
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bag = write_bag(work / 'reference', reference_streams(), args.bag_seconds)
        bench_upload(bag, work)
        bench_live_view(bag, args.seconds, work)
    print(f'load average after: {os.getloadavg()}')


if __name__ == '__main__':
    main()
