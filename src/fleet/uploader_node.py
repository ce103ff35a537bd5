"""``bag_uploader``: the stack's uploader — every closed bag to object storage, then disk rotation.

Every ``scan_period`` seconds it looks beside the stack's ``bag_dir`` (in its parent folder) for
bags that are closed (metadata.yaml and every MCAP file ends with its magic: a bag being recorded,
or cut by a crash and not yet recovered, is left alone) and not yet verified in the store, uploads
them one at a time in a worker thread (:class:`fleet.upload.Uploader`: resumable, verified), then,
with ``keep_free_gb`` set, deletes the oldest verified bags until that much disk is free
(:func:`fleet.rotation.rotate`; never a bag that is not verified). A failure (endpoint down, wrong
credentials) is one line in the log and on ``/diagnostics`` (``fleet/uploader``), and is retried at
the next scan with back-off.

Parameters: ``upload_url`` (``s3://bucket/prefix``; empty: uploads off, rotation still needs
verified bags so it deletes nothing), ``endpoint_url``, ``region``, ``robot_id``, ``bag_dir``,
``state`` (SQLite; default the robot's ledger), ``profile``, ``keep_free_gb`` (0: no rotation),
``bandwidth_mbps`` (0: no cap), ``scan_period`` (s).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from field_deploy.ros import init, run_nodes
from fleet.rotation import bags_under, rotate
from fleet.store import UploadStore
from fleet.upload import S3Url, Uploader, UploadError, bag_files, default_robot_id, make_client


class BagUploaderNode(Node):
    def __init__(self) -> None:
        super().__init__('bag_uploader')
        for name, default in (('upload_url', ''), ('endpoint_url', ''), ('region', ''),
                              ('robot_id', ''), ('bag_dir', 'bags/run'), ('state', ''),
                              ('profile', 'quadruped_12dof'), ('keep_free_gb', 0.0),
                              ('bandwidth_mbps', 0.0), ('scan_period', 10.0)):
            self.declare_parameter(name, default)
        p = {n: self.get_parameter(n).value for n in ('upload_url', 'endpoint_url', 'region', 'robot_id',
                                                       'bag_dir', 'state', 'profile', 'keep_free_gb',
                                                       'bandwidth_mbps', 'scan_period')}
        # The stack's recorder writes <bag_dir>, after a restart <bag_dir>_2, …: all beside it.
        self.root = Path(p['bag_dir']).expanduser().resolve().parent
        self.keep_free = int(float(p['keep_free_gb']) * 1e9)
        self.target = S3Url.parse(p['upload_url']) if p['upload_url'] else None
        self.robot_id = p['robot_id'] or default_robot_id()
        if p['state']:
            state = Path(p['state'])
        else:
            from health_monitor.config import load_config
            state = load_config(None, p['profile']).ledger_path
        self.store_path = state
        self.endpoint, self.region = p['endpoint_url'] or None, p['region'] or None
        self.bandwidth = float(p['bandwidth_mbps']) * 1e6 or None
        self.status = ('idle', '')
        self.failures = 0
        self.next_try = 0.0
        self.uploaded = 0
        self._busy = threading.Lock()
        self._diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(float(p['scan_period']), self._scan)
        self.create_timer(2.0, self._publish)   # within the aggregator's 5 s before STALE
        self.get_logger().info(f'bag uploader: {self.target or "uploads off (no upload_url)"}, '
                               f'bags under {self.root}, keep_free {self.keep_free / 1e9:g} GB')

    def _scan(self) -> None:
        if self.target is None and not self.keep_free:
            return      # nothing to do: no store opened, nothing scanned
        if time.monotonic() < self.next_try or not self._busy.acquire(blocking=False):
            return
        threading.Thread(target=self._work, name='bag-upload', daemon=True).start()

    def _work(self) -> None:
        store = UploadStore(self.store_path)
        try:
            if self.target is not None:
                verified = store.verified_bags()
                for bag in bags_under(self.root):
                    if str(bag.path) in verified or not _closed(bag.path):
                        continue
                    self.status = ('uploading', str(bag.path))
                    self._publish()
                    uploader = Uploader(make_client(self.endpoint, self.region), store,
                                        bandwidth=self.bandwidth, retries=2,
                                        log=self.get_logger().info)
                    report = uploader.upload_bag(bag.path, self.target, self.robot_id)
                    self.uploaded += 1
                    self.get_logger().info(f'{bag.path}: verified in {report.url}')
            if self.keep_free and self.root.is_dir():
                rotate(self.root, self.keep_free, store, log=self.get_logger().info)
            self.status, self.failures = ('idle', ''), 0
        except (UploadError, OSError) as exc:
            self.failures += 1
            delay = min(600.0, 10.0 * 2 ** (self.failures - 1))
            self.next_try = time.monotonic() + delay
            self.status = ('error', str(exc))
            self.get_logger().warning(f'upload failed: {exc} (next try in {delay:.0f} s; nothing deleted)')
        finally:
            store.close()
            self._busy.release()
            self._publish()

    def _publish(self) -> None:
        state, detail = self.status
        level = DiagnosticStatus.WARN if state == 'error' else DiagnosticStatus.OK
        st = DiagnosticStatus(level=level, name='fleet/uploader', hardware_id='bag_uploader',
                              message=f'{state}: {detail}' if detail else state)
        st.values = [KeyValue(key='uploaded', value=str(self.uploaded)),
                     KeyValue(key='failures', value=str(self.failures))]
        self._diag.publish(DiagnosticArray(status=[st]))


def _closed(bag: Path) -> bool:
    try:
        bag_files(bag)
        return True
    except UploadError:
        return False


def main(args: list[str] | None = None) -> None:
    init(args, small_segment=True)   # diagnostics only
    run_nodes([BagUploaderNode()])


if __name__ == '__main__':
    main()
