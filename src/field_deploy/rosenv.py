"""Process environment that ROS 2 from PyPI wheels needs; no rclpy import here."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
from pathlib import Path


def _prefix_has_ros(prefix: Path) -> bool:
    return (prefix / 'share' / 'ament_index' / 'resource_index').is_dir()


def ensure_ament_prefix() -> None:
    """Add the running interpreter's prefix to ``AMENT_PREFIX_PATH`` when it holds ROS packages.

    A robot with ROS from apt has the variable set by ``setup.bash``; a virtual environment with
    the ``ros-jazzy-*`` wheels does not, and rclpy then fails to load the rmw implementation.
    """
    prefix = Path(sys.prefix)
    if not _prefix_has_ros(prefix):
        return
    current = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    if str(prefix) not in current:
        os.environ['AMENT_PREFIX_PATH'] = os.pathsep.join([str(prefix), *current])


def share_dir(package: str) -> Path:
    """The ``share/<package>`` folder of an installed ROS package (message definitions live there)."""
    for prefix in os.environ.get('AMENT_PREFIX_PATH', sys.prefix).split(os.pathsep):
        candidate = Path(prefix) / 'share' / package
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f'ROS package {package!r} not found in AMENT_PREFIX_PATH')


def config_dir() -> Path:
    """The project's ``config/`` folder: the source tree when run from a checkout, else the install share."""
    source = Path(__file__).resolve().parents[2] / 'config'
    if source.is_dir():
        return source
    return share_dir('field_deploy') / 'config'


FASTDDS_PROFILES_ENV = 'FASTRTPS_DEFAULT_PROFILES_FILE'
USE_QOS_FROM_XML_ENV = 'RMW_FASTRTPS_USE_QOS_FROM_XML'


#: The shared-memory segment of a process that publishes no large messages (diagnostics, status,
#: commands), instead of the project profile's 32 MiB. Fast DDS writes every segment through at
#: creation, so each 32 MiB segment is 32 MiB of RAM for the life of the process; and a writer's
#: allocator walks up to max(segment / 1 KiB, port queue) buffers on every write once killed
#: readers have stranded some (docs/soak.md, "the CPU drift after reader kills"): 32,768 with
#: 32 MiB, 8,192 (the port queue) with this. 4 MiB still holds a 1 MB message several times.
SMALL_SEGMENT_BYTES = 4 * 1024 * 1024
_SEGMENT_SIZE = re.compile(r'<segment_size>\s*\d+\s*</segment_size>')
_SMALL_PROFILE_PREFIX = 'field_deploy-fastdds-small-'


def small_segment_profile(profile: Path) -> Path:
    """``profile`` with its shared-memory segment set to :data:`SMALL_SEGMENT_BYTES`: a derived
    file beside the temporary files, named by its content (every process of a checkout shares
    one; two checkouts never overwrite each other's). Raises ``ValueError`` naming the file when
    it has no ``<segment_size>`` to change."""
    import hashlib
    import tempfile

    text = profile.read_text()
    small, count = _SEGMENT_SIZE.subn(f'<segment_size>{SMALL_SEGMENT_BYTES}</segment_size>', text)
    if count != 1:
        raise ValueError(f'{profile}: expected one <segment_size> element, found {count}')
    digest = hashlib.sha256(small.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f'{_SMALL_PROFILE_PREFIX}{digest}.xml'
    if not path.is_file() or path.read_text() != small:
        partial = path.with_name(f'{path.name}.{os.getpid()}')
        partial.write_text(small)
        os.replace(partial, path)      # atomic: a process starting beside us reads all or nothing
    return path


def use_project_fastdds_profile(small_segment: bool = False) -> str | None:
    """Point Fast DDS at ``config/fastdds.xml`` unless the user chose a file; returns the file used.

    Must run before the process creates its first ROS node (rmw_fastrtps reads the XML when it
    creates the participant), in every process: each receiver's queue and socket sizes come from
    its own settings. A file the user chose wins (an empty value runs with Fast DDS defaults);
    the project's own file, inherited from a parent process (the bring-up, a test), is replaced
    by the variant this process asks for. Why the profile exists (a 640×480 image does not fit
    the default 512 KiB shared-memory segment): see the README, "QoS contract".

    ``small_segment``: the same profile with a :data:`SMALL_SEGMENT_BYTES` segment, for a process
    whose largest message is far below it (the recorder, the runtime, the monitor, the fleet
    nodes); what it receives is unchanged (a reader maps its writers' segments).
    """
    project = config_dir() / 'fastdds.xml'
    chosen = os.environ.get(FASTDDS_PROFILES_ENV)
    if chosen is not None and not _is_project_profile(chosen, project):
        return chosen or None
    if not project.is_file():
        return None
    path = project
    if small_segment:
        try:
            path = small_segment_profile(project)
        except OSError as exc:     # no writable temporary directory: the full segment still works
            print(f'field_deploy: {exc}; using {project} with its full segment', file=sys.stderr)
    os.environ[FASTDDS_PROFILES_ENV] = str(path)
    # Without it rmw_fastrtps overrides the profile's history memory policy with
    # PREALLOCATED_WITH_REALLOC, whose payload pools keep their high-water mark for the life of
    # the process: a camera writer whose reader stopped acknowledging for 3 s kept 90 frames
    # (~80 MB) for good (docs/soak.md). The ROS QoS a node sets (history, depth, reliability,
    # durability) still wins over the XML; only SYSTEM_DEFAULT values come from it.
    os.environ.setdefault(USE_QOS_FROM_XML_ENV, '1')
    return str(path)


def _is_project_profile(chosen: str, project: Path) -> bool:
    """Whether ``chosen`` is the project's profile or its small-segment variant (set by a parent
    process of ours), not a file the user picked."""
    if not chosen:
        return False
    path = Path(chosen)
    return path.resolve() == project.resolve() or path.name.startswith(_SMALL_PROFILE_PREFIX)


SHM_DIR = Path('/dev/shm')
_SHM_LOCK = re.compile(r'^fastrtps_(?:[0-9a-f]{16}|port\d{1,5})_[es]l$')


def clean_stale_shm(shm_dir: Path = SHM_DIR) -> int:
    """Remove the Fast DDS shared-memory files of processes that died; returns the bytes freed.

    A process killed (kill -9, OOM, power supervisor) leaves its segment (32 or 4 MiB with this
    project's profile) and its port files in ``/dev/shm``, which is RAM: a robot whose nodes get
    restarted a few times a day would fill it. Each segment or port has an ``_el`` file that its
    living owner keeps locked (``flock``); a lock we can take means the owner is gone. Same rule
    as eProsima's ``fastdds shm clean``, which is not installed with the PyPI wheels.

    A lock file is only opened, never created, and must still be the listed file once locked:
    Fast DDS removes a dead port's lock file itself when its writers find the port dead, and
    puts a new port segment of its own (no lock file) at the same name. Re-creating the lock file
    there (as an ``open('ab')`` did) made that live segment look stale, and it was deleted under
    the writers that use it.
    """
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return 0
    freed = 0
    for name in names:
        if not _SHM_LOCK.match(name):
            continue
        lock = shm_dir / name
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue   # gone since the listing: whatever is left at its base is not ours to judge
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # raises while the owner lives
            if os.fstat(fd).st_ino != os.stat(lock).st_ino:  # replaced since we opened it
                continue
            base = name[:-len('_el')]   # (or _sl)
            for stale in (shm_dir / base, shm_dir / f'sem.{base}_mutex', lock):
                with contextlib.suppress(OSError):
                    freed += stale.stat().st_blocks * 512
                    stale.unlink()
        except OSError:
            continue
        finally:
            os.close(fd)
    return freed
