"""``field_deploy demo --fleet``: the demo, seen from the fleet's side.

The robot's stack runs as in every demo; what a fleet sees of it runs beside it as real
processes on this machine (:mod:`fleet.local`): an S3-compatible store (moto's server) the stack's
``bag_uploader`` sends the bag to, a Prometheus server scraping the health monitor's metrics
endpoint, and a viewer speaking the Foxglove protocol to the stack's ``live_view``. At the end
each is checked from outside the stack: Prometheus's query API returns the robot's series, the
viewer decoded what it received, and every file of the bag is downloaded back from the store and
compared with the file on disk (SHA-256). Nothing is simulated but the robot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from field_deploy.stack import Stack
from field_deploy.testing import free_port, wait_until

BUCKET = 'field-deploy-demo'
PREFIX = 'robots'
ROBOT_ID = 'demo-robot'
#: Topics the viewer subscribes to (all on the live view's default allow-list).
VIEWED = ['/joint_states', '/imu', '/odom', '/diagnostics_agg']
#: Local, throw-away credentials for the local store (the uploader reads them as the AWS CLI does).
CREDENTIALS = {'AWS_ACCESS_KEY_ID': 'field-deploy-demo', 'AWS_SECRET_ACCESS_KEY': 'field-deploy-demo',
               'AWS_DEFAULT_REGION': 'us-east-1'}


class FleetDemo:
    """The far ends of the fleet for one demo run (start before the stack, close after it)."""

    def __init__(self, run_dir: Path, say: Callable[[str], None]) -> None:
        from fleet.local import MotoS3, Prometheus
        from fleet.upload import make_client

        self.run_dir, self.say = run_dir, say
        self.metrics_port, self.live_port = free_port(), free_port()
        self.env = {**CREDENTIALS, 'FIELD_DEPLOY_METRICS_PORT': str(self.metrics_port),
                    'FIELD_DEPLOY_LIVE_PORT': str(self.live_port)}
        os.environ.update(CREDENTIALS)                   # this process's checks read the store too
        self.store = MotoS3(log=run_dir / 'moto.log')
        make_client(self.store.endpoint).create_bucket(Bucket=BUCKET)
        self.prometheus = Prometheus.start([f'127.0.0.1:{self.metrics_port}'], run_dir / 'prometheus')
        self.viewer: Any = None
        self.state = run_dir / 'uploads.sqlite'
        # what the end of the run showed (each set by the check that looks at it)
        self.metrics_ok = self.live_ok = self.upload_ok = False
        say(f'fleet: S3 store {self.store.endpoint} (moto server), '
            + (f'Prometheus {self.prometheus.url} scraping :{self.metrics_port}'
               if self.prometheus else 'no Prometheus installed (apt-get install prometheus): '
               f'the endpoint :{self.metrics_port} is read directly')
            + f', live view ws://127.0.0.1:{self.live_port}')

    def configure(self, stack: Stack) -> Stack:
        """The stack with its uploader pointed at the local store (scanning every 2 s)."""
        params = {'upload_url': f's3://{BUCKET}/{PREFIX}', 'endpoint_url': self.store.endpoint,
                  'robot_id': ROBOT_ID, 'state': str(self.state), 'scan_period': 2.0}
        nodes = tuple(dataclasses.replace(n, parameters={**n.parameters, **params})
                      if n.name == 'bag_uploader' else n for n in stack.nodes)
        if not any(n.name == 'bag_uploader' for n in nodes):
            raise RuntimeError(f'{stack.path}: no bag_uploader node in the stack: nothing would '
                               'upload the bag')
        return dataclasses.replace(stack, nodes=nodes)

    def watch(self) -> None:
        """Connect the viewer (it retries until the live view listens)."""
        from fleet.local import LiveViewer

        self.viewer = LiveViewer(f'ws://127.0.0.1:{self.live_port}/', VIEWED).start()

    def metrics(self) -> list[str]:
        """What the fleet's Prometheus has of the robot now (lines for the summary)."""
        if self.prometheus is None:
            return self._metrics_direct()
        up = self.prometheus.query('up{job="robot"}')
        names = self.prometheus.query('count by (__name__) ({__name__=~"field_deploy_.+"})')
        rate = self.prometheus.query('field_deploy_topic_rate_hertz{topic=~"/?joint_states"}')
        temps = self.prometheus.query('field_deploy_component_temperature_celsius')
        lines = [f'Prometheus scraped the robot: up={up[0]["value"][1] if up else "no answer"}, '
                 f'{len(names)} field_deploy_* metric names']
        if rate:
            lines.append(f'  field_deploy_topic_rate_hertz{{topic="/joint_states"}} = '
                         f'{float(rate[0]["value"][1]):.0f}')
        if temps:
            hottest = max(temps, key=lambda r: float(r['value'][1]))
            lines.append(f'  field_deploy_component_temperature_celsius: {len(temps)} components, '
                         f'hottest {hottest["metric"].get("component", "?")} '
                         f'{float(hottest["value"][1]):.1f} °C')
        self.metrics_ok = bool(up and up[0]['value'][1] == '1' and names)
        return lines

    def _metrics_direct(self) -> list[str]:
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = urllib.request.urlopen(f'http://127.0.0.1:{self.metrics_port}/metrics',
                                          timeout=5).read().decode()
        except OSError as exc:
            self.metrics_ok = False
            return [f'metrics endpoint :{self.metrics_port} did not answer: {exc}']
        names = [f.name for f in text_string_to_metric_families(text) if f.name.startswith('field_deploy_')]
        self.metrics_ok = bool(names)
        return [f'metrics endpoint read (no Prometheus here): {len(names)} field_deploy_* metrics']

    def live(self) -> list[str]:
        """What the viewer received (lines for the summary); stops it."""
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import JointState

        viewer = self.viewer
        viewer.stop()
        counts = ', '.join(f'{t} {viewer.counts[t]}' for t in VIEWED if viewer.counts[t])
        lines = [f'live viewer (Foxglove protocol) received: {counts or "nothing"}'
                 + (f' ({viewer.error})' if viewer.error and not counts else '')]
        raw = viewer.first.get('/joint_states')
        if raw is not None:
            js = deserialize_message(raw, JointState)
            lines.append(f'  a /joint_states decoded: {len(js.name)} joints, '
                         f'{js.name[0]} at {js.position[0]:+.3f} rad')
        self.live_ok = raw is not None
        return lines

    def upload(self, stop_recorder: Callable[[], None], bag_dir: Path) -> list[str]:
        """Close the bag (stop the recorder), let the stack's uploader send it, then check every
        file against the store from here."""
        from fleet.store import UploadStore

        stop_recorder()
        started = time.monotonic()

        def verified() -> bool:
            if not self.state.exists():
                return False
            store = UploadStore(self.state)
            try:
                return str(bag_dir.resolve()) in store.verified_bags()
            finally:
                store.close()
        if not wait_until(verified, 120.0, 0.5):
            self.upload_ok = False
            return [f'the stack uploader did not verify {bag_dir} within 120 s '
                    f'(see {self.run_dir / "stack.log"})']
        took = time.monotonic() - started
        return self._check_stored(bag_dir, took)

    def _check_stored(self, bag_dir: Path, took: float) -> list[str]:
        from fleet.upload import file_sha256, make_client

        client = make_client(self.store.endpoint)
        objects = {o['Key']: o['Size'] for page in client.get_paginator('list_objects_v2').paginate(
            Bucket=BUCKET, Prefix=f'{PREFIX}/{ROBOT_ID}/') for o in page.get('Contents', [])}
        files = sorted(p for p in bag_dir.iterdir() if p.is_file())
        same = 0
        for path in files:
            key = next((k for k in objects if k.endswith(f'/{bag_dir.name}/{path.name}')), None)
            if key is None:
                continue
            stored = hashlib.sha256()
            for chunk in client.get_object(Bucket=BUCKET, Key=key)['Body'].iter_chunks(4 << 20):
                stored.update(chunk)
            same += stored.hexdigest() == file_sha256(path)
        folder = next((k.rsplit('/', 1)[0] for k in objects if f'/{bag_dir.name}/' in k), '?')
        self.upload_ok = same == len(files) > 0
        size = sum(p.stat().st_size for p in files) / 1e6
        return [f'bag uploaded by the stack and verified {took:.1f} s after it closed: '
                f's3://{BUCKET}/{folder}/ ({len(objects)} objects)',
                f'  downloaded back and compared: {same} of {len(files)} files identical '
                f'(SHA-256, {size:.1f} MB)']

    @property
    def ok(self) -> bool:
        return self.metrics_ok and self.live_ok and self.upload_ok

    def close(self) -> None:
        if self.viewer is not None:
            self.viewer.stop()
        if self.prometheus is not None:
            self.prometheus.close()
        self.store.close()
