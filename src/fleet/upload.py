"""Upload a closed bag to S3-compatible storage: multipart, resumable, every byte verified.

Why it is built this way:

* **Resumable.** A robot's link drops and its power is cut. Every part the store confirmed is
  written to :class:`~fleet.store.UploadStore` (SQLite, synchronous) before the next is sent; a
  restarted upload asks the server which parts of its multipart upload it holds and sends only the
  others.
* **Verified.** Each part goes with its SHA-256 (``ChecksumSHA256``); the server's own checksum of
  what it received must come back equal, else the part was corrupted in transit and is sent again
  (AWS S3 refuses such a part itself; servers that do not still report what they computed). After
  completion the object's checksum (composite over the parts) and size are compared with the local
  file's before the file counts as verified; only a bag whose every file and manifest are verified
  may be rotated off the disk (:mod:`fleet.rotation`).
* **Closed bags only.** A file without the MCAP end magic is being written, or was cut by a crash
  (``field_deploy bag recover`` first): refused, nothing sent.
* **Credentials** come from boto3's chain, the one the AWS CLI reads (environment,
  ``~/.aws/credentials``, ``~/.aws/config``, ``AWS_PROFILE``); they never appear in a message,
  a log line or the manifest.

Layout in the bucket: ``<prefix>/<robot_id>/<YYYY-MM-DD>/<bag>/<file>`` plus ``manifest.json``
(robot, files with sizes and SHA-256, episodes, the recorder's loss accounting), written last: its
presence says the bag is complete.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleet.store import UploadStore

MCAP_MAGIC = b'\x89MCAP0\r\n'
MIN_PART = 5 * 1024 * 1024          # S3: every part but the last is at least 5 MiB
DEFAULT_PART = 8 * 1024 * 1024
#: S3 error codes that no retry will mend: said at once.
FATAL_CODES = {'NoSuchBucket', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'AccessDenied',
               'InvalidBucketName', 'AllAccessDisabled', 'AccountProblem'}

HEAD_ERRORS = {'404': ('NoSuchBucket', 'the bucket does not exist'),
               '403': ('AccessDenied', 'wrong credentials, or no permission on the bucket')}


class UploadError(Exception):
    """One line for the operator: which bag or file, what is wrong, and whether a retry may help."""


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str

    @staticmethod
    def parse(url: str) -> S3Url:
        if not url.startswith('s3://') or not url[5:].split('/', 1)[0]:
            raise UploadError(f'{url}: expected s3://BUCKET/PREFIX')
        bucket, _, prefix = url[5:].partition('/')
        return S3Url(bucket, prefix.strip('/'))

    def key(self, *parts: str) -> str:
        return '/'.join(p.strip('/') for p in (self.prefix, *parts) if p.strip('/'))

    def __str__(self) -> str:
        return f's3://{self.bucket}/{self.prefix}'


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def file_sha256(path: Path, block: int = 4 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def bag_files(bag: Path) -> list[Path]:
    """The files of a closed bag (metadata.yaml last); refuses a bag that is not closed."""
    meta_path = bag / 'metadata.yaml'
    if not bag.is_dir():
        raise UploadError(f'{bag}: not a bag folder')
    if not meta_path.is_file():
        raise UploadError(f'{bag}: no metadata.yaml: still being recorded, or cut by a crash '
                          f'(field_deploy bag recover {bag})')
    info = yaml.safe_load(meta_path.read_text()).get('rosbag2_bagfile_information', {})
    files = [bag / rel for rel in info.get('relative_file_paths') or []]
    for path in files:
        if not path.is_file():
            raise UploadError(f'{bag}: {path.name}: listed in metadata.yaml but missing')
        with path.open('rb') as handle:
            handle.seek(max(0, path.stat().st_size - len(MCAP_MAGIC)))
            if handle.read() != MCAP_MAGIC:
                raise UploadError(f'{bag}: {path.name}: not closed (no MCAP end magic): still being '
                                  f'written, or cut (field_deploy bag recover {bag})')
    return [*files, meta_path]


def bag_date(bag: Path) -> str:
    info = yaml.safe_load((bag / 'metadata.yaml').read_text()).get('rosbag2_bagfile_information', {})
    ns = int(((info.get('starting_time') or {}).get('nanoseconds_since_epoch')) or 0)
    seconds = ns / 1e9 if ns > 0 else (bag / 'metadata.yaml').stat().st_mtime
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime('%Y-%m-%d')


def bag_manifest(bag: Path, robot_id: str, files: dict[str, tuple[int, str]]) -> dict[str, Any]:
    """What a fleet service needs without opening the bag: robot, files, episodes, loss."""
    from data_recorder.bag.info import summary
    from data_recorder.bag.reader import Bag

    s = summary(Bag(bag))
    return {'robot_id': robot_id, 'bag': bag.name, 'start_ns': s['start_ns'], 'end_ns': s['end_ns'],
            'message_count': s['message_count'],
            'topics': {t['topic']: {'type': t['type'], 'count': t['count']} for t in s['topics']},
            'episodes': s['episodes'], 'loss': s['loss'],
            'files': {name: {'bytes': size, 'sha256': sha} for name, (size, sha) in files.items()},
            'uploaded_at': dt.datetime.now(tz=dt.timezone.utc).isoformat(timespec='seconds')}


class Throttle:
    """Keeps the average send rate at or under ``bytes_per_s`` (None: no cap)."""

    def __init__(self, bytes_per_s: float | None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = bytes_per_s
        self.sleep = sleep
        self.start = time.monotonic()
        self.sent = 0

    def spend(self, n: int) -> None:
        self.sent += n
        if self.rate:
            ahead = self.sent / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                self.sleep(ahead)


@dataclass
class UploadReport:
    bag: Path
    url: str
    files: int = 0
    bytes_sent: int = 0
    parts_sent: int = 0
    parts_resumed: int = 0
    parts_rejected: int = 0
    skipped_files: int = 0
    notes: list[str] = field(default_factory=list)


class Uploader:
    """Uploads bags with one S3 client; see the module docstring for the rules."""

    def __init__(self, client: Any, store: UploadStore, *, part_size: int = DEFAULT_PART,
                 bandwidth: float | None = None, retries: int = 5, backoff: float = 0.5,
                 log: Callable[[str], None] = print,
                 tamper: Callable[[int, bytes], bytes] | None = None) -> None:
        if part_size < MIN_PART:
            raise UploadError(f'part size {part_size} B is below the S3 minimum of {MIN_PART} B')
        self.client = client
        self.store = store
        self.part_size = part_size
        self.throttle = Throttle(bandwidth)
        self.retries = retries
        self.backoff = backoff
        self.log = log
        self._tamper = tamper
        """Test hook: alters a part's bytes after its checksum was taken (corruption in transit)."""

    # ------------------------------------------------------------------ S3 calls with retries
    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return fn(**kwargs)
            except ClientError as exc:
                code = exc.response.get('Error', {}).get('Code', '')
                status = exc.response.get('ResponseMetadata', {}).get('HTTPStatusCode', 0)
                if code in FATAL_CODES or (400 <= status < 500 and code not in ('SlowDown',
                                                                                'RequestTimeout')):
                    message = exc.response.get('Error', {}).get('Message', '')
                    if code in HEAD_ERRORS and message in ('', 'Not Found', 'Forbidden'):
                        code, message = HEAD_ERRORS[code]   # a HEAD answer has no error body
                    raise UploadError(f'{what}: {code or status}: {message}') from None
                problem = f'{code or status}'
            except (BotoCoreError, OSError) as exc:
                problem = type(exc).__name__ + (f': {exc}' if 'Endpoint' in type(exc).__name__ else '')
            if attempt == self.retries:
                raise UploadError(f'{what}: {problem} (gave up after {self.retries + 1} attempts; '
                                  'run again to resume)')
            self.log(f'  {what}: {problem}; retrying in {delay:.1f} s')
            time.sleep(delay)
            delay = min(delay * 2.0, 30.0)
        raise AssertionError('unreachable')

    # ------------------------------------------------------------------ one bag
    def upload_bag(self, bag: Path, target: S3Url, robot_id: str) -> UploadReport:
        bag = bag.resolve()
        files = bag_files(bag)
        base = target.key(robot_id, bag_date(bag), bag.name)
        report = UploadReport(bag=bag, url=f's3://{target.bucket}/{base}/')
        self._call(f's3://{target.bucket}', self.client.head_bucket, Bucket=target.bucket)
        sums: dict[str, tuple[int, str]] = {}
        for path in files:
            sums[path.name] = self.upload_file(path, target.bucket, f'{base}/{path.name}', report)
            report.files += 1
        manifest = json.dumps(bag_manifest(bag, robot_id, sums), indent=1, sort_keys=True).encode()
        self._put_verified(target.bucket, f'{base}/manifest.json', manifest, report)
        self.store.bag_verified(str(bag), report.url, len(files),
                                sum(size for size, _ in sums.values()))
        return report

    # ------------------------------------------------------------------ one file
    def upload_file(self, path: Path, bucket: str, key: str, report: UploadReport) -> tuple[int, str]:
        """Upload (or resume) one file and verify it; returns (size, sha256 hex)."""
        size, sha = path.stat().st_size, file_sha256(path)
        local, url = str(path), f's3://{bucket}/{key}'
        record = self.store.file(local, url)
        if record and record.verified_at and record.sha256 == sha and self._remote_matches(
                bucket, key, size, sha_hex=sha):
            report.skipped_files += 1
            return size, sha
        if size <= self.part_size:
            data = path.read_bytes()
            self._put_verified(bucket, key, data, report, sha)
            self.store.begin_file(local, url, size, sha, None, self.part_size)
            self.store.file_verified(local, url, b64_sha256(data))
            return size, sha
        upload_id = None
        if record and record.upload_id and record.sha256 == sha and record.part_size == self.part_size:
            upload_id = record.upload_id
        done: dict[int, tuple[str, str]] = {}
        if upload_id is not None:
            done = self._parts_on_server(bucket, key, upload_id, self.store.parts(local, url, upload_id))
            if done is None:       # the server forgot it (expired or aborted): start again
                upload_id, done = None, {}
            else:
                report.parts_resumed += len(done)
                self.log(f'  {path.name}: resuming, {len(done)} part(s) already stored')
        if upload_id is None:
            upload_id = self._call(f'{url}: create multipart upload', self.client.create_multipart_upload,
                                   Bucket=bucket, Key=key, ChecksumAlgorithm='SHA256',
                                   Metadata={'sha256': sha})['UploadId']
            self.store.begin_file(local, url, size, sha, upload_id, self.part_size)
        digests = self._send_parts(path, bucket, key, upload_id, done, report)
        parts = [{'PartNumber': n, 'ETag': done[n][0], 'ChecksumSHA256': done[n][1]}
                 for n in sorted(done)]
        self._call(f'{url}: complete', self.client.complete_multipart_upload, Bucket=bucket, Key=key,
                   UploadId=upload_id, MultipartUpload={'Parts': parts})
        composite = base64.b64encode(hashlib.sha256(b''.join(digests)).digest()).decode()
        if not self._remote_matches(bucket, key, size, composite):
            self.store.begin_file(local, url, size, sha, None, self.part_size)  # start afresh
            raise UploadError(f'{url}: the stored object does not match {path} (size or SHA-256); '
                              'it will be uploaded again next time')
        self.store.file_verified(local, url, composite)
        return size, sha

    def _send_parts(self, path: Path, bucket: str, key: str, upload_id: str,
                    done: dict[int, tuple[str, str]], report: UploadReport) -> list[bytes]:
        """Send every part not in ``done`` (filled in as parts are confirmed); all parts' digests."""
        local, url = str(path), f's3://{bucket}/{key}'
        digests: list[bytes] = []
        with path.open('rb') as handle:
            number = 0
            while data := handle.read(self.part_size):
                number += 1
                digest = hashlib.sha256(data).digest()
                digests.append(digest)
                checksum = base64.b64encode(digest).decode()
                if number in done and done[number][1] == checksum:
                    continue
                for _attempt in range(self.retries + 1):
                    body = self._tamper(number, data) if self._tamper else data
                    reply = self._call(f'{url}: part {number}', self.client.upload_part, Bucket=bucket,
                                       Key=key, UploadId=upload_id, PartNumber=number, Body=body,
                                       ChecksumSHA256=checksum, ChecksumAlgorithm='SHA256')
                    self.throttle.spend(len(body))
                    report.bytes_sent += len(body)
                    problem = arrived_corrupted(reply, checksum, data)
                    if problem is None:
                        break
                    report.parts_rejected += 1
                    self.log(f'  {path.name}: part {number} arrived corrupted ({problem}): rejected, '
                             'sending it again')
                else:
                    raise UploadError(f'{url}: part {number} arrived corrupted {self.retries + 1} times')
                done[number] = (reply['ETag'], checksum)
                self.store.part_done(local, url, upload_id, number, reply['ETag'], checksum)
                report.parts_sent += 1
        return digests

    def _parts_on_server(self, bucket: str, key: str, upload_id: str,
                         ours: dict[int, tuple[str, str]]) -> dict[int, tuple[str, str]] | None:
        """Parts both the server holds and we recorded with the same ETag; None: upload unknown."""
        from botocore.exceptions import ClientError

        try:
            listed = self.client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if exc.response.get('Error', {}).get('Code') == 'NoSuchUpload':
                return None
            raise UploadError(f's3://{bucket}/{key}: list parts: '
                              f'{exc.response.get("Error", {}).get("Code")}') from None
        server = {p['PartNumber']: p['ETag'] for p in listed.get('Parts', [])}
        return {n: ours[n] for n in ours if server.get(n) == ours[n][0]}

    def _put_verified(self, bucket: str, key: str, data: bytes, report: UploadReport,
                      sha_hex: str | None = None) -> None:
        checksum = b64_sha256(data)
        for _ in range(self.retries + 1):
            body = self._tamper(1, data) if self._tamper else data
            reply = self._call(f's3://{bucket}/{key}', self.client.put_object, Bucket=bucket, Key=key,
                               Body=body, ChecksumSHA256=checksum, ChecksumAlgorithm='SHA256',
                               Metadata={'sha256': sha_hex or hashlib.sha256(data).hexdigest()})
            self.throttle.spend(len(body))
            report.bytes_sent += len(body)
            if arrived_corrupted(reply, checksum, data) is None and self._remote_matches(
                    bucket, key, len(data), checksum):
                return
            report.parts_rejected += 1
            self.log(f'  {key}: stored object does not match what was sent: sending it again')
        raise UploadError(f's3://{bucket}/{key}: corrupted {self.retries + 1} times')

    def _remote_matches(self, bucket: str, key: str, size: int, checksum: str | None = None,
                        sha_hex: str | None = None) -> bool:
        """The stored object has ``size`` bytes and the S3 ``checksum`` (base64, composite for a
        multipart object), or, for a file an earlier run verified, our SHA-256 in its metadata."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode='ENABLED')
        except ClientError:
            return False
        stored = (head.get('ChecksumSHA256') or '').split('-')[0]
        if checksum is None:
            return head.get('ContentLength') == size and head.get('Metadata', {}).get('sha256') == sha_hex
        return head.get('ContentLength') == size and stored == checksum


def arrived_corrupted(reply: dict[str, Any], checksum: str, data: bytes) -> str | None:
    """Why the server's answer to a part shows it received other bytes than ``data``, or None.

    AWS S3 refuses a part whose bytes do not match ``ChecksumSHA256`` itself; other S3-compatible
    servers may only echo the checksum. So the part's ETag, the MD5 of what the server stored
    (for unencrypted objects), is compared too.
    """
    stored = reply.get('ChecksumSHA256')
    if stored not in (None, checksum):
        return f'server SHA-256 {stored}, sent {checksum}'
    etag = str(reply.get('ETag', '')).strip('"')
    if len(etag) == 32 and all(c in '0123456789abcdef' for c in etag) and \
            etag != hashlib.md5(data, usedforsecurity=False).hexdigest():
        return f'server MD5 {etag}, sent {hashlib.md5(data, usedforsecurity=False).hexdigest()}'
    return None


def make_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A boto3 S3 client on the AWS CLI's credential chain; path-style for S3-compatible servers."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=region)
    if session.get_credentials() is None:
        raise UploadError('no S3 credentials: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or '
                          '~/.aws/credentials (as the AWS CLI reads them)')
    config = Config(connect_timeout=5, read_timeout=60, retries={'max_attempts': 1},
                    s3={'addressing_style': 'path'} if endpoint_url else None)
    return session.client('s3', endpoint_url=endpoint_url, config=config,
                          region_name=region or session.region_name or 'us-east-1')


def default_robot_id() -> str:
    return os.environ.get('FIELD_DEPLOY_ROBOT_ID') or socket.gethostname()
