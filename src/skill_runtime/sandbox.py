"""The sandbox a skill worker applies to itself before it imports any vendor code. Pure, no rclpy.

``apply_sandbox(policy)`` is called once by the worker process (``skill_runtime.worker``) right
after it has taken its pipes and shared memory and before the pack's modules are imported. Every
layer is irrevocable for the process and all its threads; each one degrades on its own, with the
reason in the returned log lines, where the machine lacks it (no libseccomp, an old kernel):

1. resource limits, soft = hard so a pack cannot raise them: address space (a memory bomb gets
   ``MemoryError``), open files, processes/threads, no core dumps, file size;
2. scheduling: SCHED_OTHER on every thread, never above nice 0 (the policy's ``nice``, or the
   nice the runtime started the worker with), below the gate's SCHED_FIFO control thread even
   when the worker inherited SCHED_FIFO; the pack can never raise it again (seccomp, no
   capabilities, RLIMIT_RTPRIO 0). The runtime may still grant the worker's stepping thread a
   bounded SCHED_FIFO from outside (it keeps its capabilities; ``skill_runtime.proxy``);
3. ``PR_SET_NO_NEW_PRIVS`` and every capability dropped (the stack runs as root: a root worker
   without capabilities cannot raise its limits or priority, load modules, mount, trace...);
4. Landlock (:mod:`skill_runtime.landlock`): read-only filesystem except the scratch directory;
5. seccomp (:mod:`skill_runtime.seccomp_rules`): no sockets, no new processes, no signals to
   other processes, no priority or limit changes, ... — each an errno, never a kill;
6. a Python audit hook that turns the common ways of doing the forbidden things from Python
   (``socket.socket``, ``os.fork``, ``subprocess``, ``os.exec*``, ``os.kill`` of another pid)
   into a ``PermissionError`` whose message names the rule, so the skill's failure reason says
   what the pack tried. The kernel layers are the enforcement; the hook only names it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from skill_runtime import landlock, seccomp_rules

GIB = 1 << 30
MIB = 1 << 20

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_CAPSET = 126  # x86_64; other architectures fall back to "capabilities kept" with a log line


_ALIASES = {'scratch_dir': 'scratch', 'address_space_bytes': 'address_space', 'max_open_files': 'open_files'}


class SandboxReport(list):
    """The lines :func:`apply_sandbox` returns; ``str()`` gives them as one log line."""

    def __str__(self) -> str:
        return ' | '.join(self)


@dataclass(frozen=True)
class SandboxPolicy:
    """What a worker may use. JSON-shaped (:meth:`to_dict` / :meth:`from_dict`) so the runtime can
    hand it to the worker on its control pipe.

    ``address_space``: bytes of virtual memory (CPython + numpy + a pack take ~0.4 GiB of
    mappings; each thread reserves its stack, 8 MiB). ``processes``: RLIMIT_NPROC, which counts
    the uid's tasks (threads) and does not bind root: the seccomp rules stop fork for root.
    """

    scratch: str | None = None
    """The pack's scratch directory: cwd, TMPDIR, the only writable place. Created if missing."""
    writable: tuple[str, ...] = ('/dev/null',)
    """Further writable paths (devices a pack may write to)."""
    address_space: int = 2 * GIB
    open_files: int = 256
    processes: int = 4096
    file_size: int = 64 * MIB
    nice: int | None = None
    """Raise every thread's nice to at least this; None: keep the worker's (never below 0). The
    runtime picks it (``worker_nice``: 0 below a SCHED_FIFO gate — nice 10 left workers
    unscheduled for 250 ms on a loaded host —, 5 otherwise)."""
    core: int = 0
    """RLIMIT_CORE in bytes; -1 leaves it as it is."""
    network: bool = False
    """True lets the pack open sockets (the seccomp socket rule is left out). Never for vendors."""
    seccomp: bool = True
    landlock: bool = True
    drop_capabilities: bool = True
    audit_hook: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys of a newer runtime this worker does not know (kept, reported, ignored)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d['writable'] = list(self.writable)
        d.pop('extra')
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SandboxPolicy:
        """Also reads the worker's spelling (``skill_runtime.worker.sandbox_policy``):
        ``scratch_dir``, ``address_space_bytes``, ``max_open_files``, ``network`` (False: no
        sockets), ``core_dumps`` (False: core limit 0); ``pack_dir`` is read-only like the rest."""
        data = dict(data)
        for alias, name in _ALIASES.items():
            if alias in data:
                data.setdefault(name, data.pop(alias))
        data.pop('pack_dir', None)
        if data.pop('core_dumps', False):
            data.setdefault('core', -1)
        known = {f.name for f in fields(cls)} - {'extra'}
        kwargs = {k: v for k, v in data.items() if k in known}
        if 'writable' in kwargs:
            kwargs['writable'] = tuple(kwargs['writable'])
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})


def apply_sandbox(policy: SandboxPolicy | Mapping[str, Any] | None = None) -> SandboxReport:
    """Sandbox this process, irrevocably. Returns one line per layer: what was applied, or why
    not. Call it in the worker only — never in the runtime (it would forbid DDS sockets there)."""
    if policy is None:
        policy = SandboxPolicy()
    elif not isinstance(policy, SandboxPolicy):
        policy = SandboxPolicy.from_dict(policy)
    log = SandboxReport()
    if policy.extra:
        log.append(f'policy keys not known to this worker, ignored: {", ".join(sorted(policy.extra))}')
    writable = list(policy.writable)
    if policy.scratch:
        os.makedirs(policy.scratch, exist_ok=True)
        os.chdir(policy.scratch)
        os.environ['TMPDIR'] = policy.scratch
        tempfile.tempdir = policy.scratch
        writable.insert(0, policy.scratch)
    sys.dont_write_bytecode = True   # the pack folder is read-only: no __pycache__ attempts
    log.append(_limits(policy))
    log.append(_scheduling(policy.nice))
    log.append(_no_new_privs())
    if policy.drop_capabilities:
        log.append(_drop_capabilities())
    landlocked = False
    if policy.landlock:
        try:
            log.append(landlock.restrict(writable, network=policy.network).describe())
            landlocked = True
        except OSError as exc:
            log.append(f'landlock not applied: {exc.strerror or exc}')
    else:
        log.append('landlock off by policy')
    if policy.seccomp:
        try:
            loaded, skipped = seccomp_rules.install(network=policy.network)
            note = f' ({skipped} syscalls unknown here, skipped)' if skipped else ''
            what = 'processes' if policy.network else 'sockets, processes'
            log.append(f'seccomp: {loaded} deny rules ({what}, signals to others, '
                       f'priorities, limits, mounts, tracing){note}')
        except ImportError:
            log.append('seccomp not applied: pyseccomp / libseccomp not installed')
        except OSError as exc:
            log.append(f'seccomp not applied: {exc.strerror or exc}')
    else:
        log.append('seccomp off by policy')
    if policy.audit_hook:
        sys.addaudithook(_AuditHook(os.getpid(), tuple(writable) if landlocked else None,
                                    sockets=policy.network))
        log.append('audit hook: forbidden Python calls fail with the rule named')
    return log


def _set_limit(which: int, value: int) -> str | None:
    """Lower ``which`` to ``value`` (soft and hard); never raise it. None when it held."""
    _soft, hard = resource.getrlimit(which)
    new = value if hard == resource.RLIM_INFINITY else min(value, hard)
    try:
        resource.setrlimit(which, (new, new))
    except (ValueError, OSError) as exc:
        return str(exc)
    return None


def _limits(p: SandboxPolicy) -> str:
    wanted = [('address space', resource.RLIMIT_AS, p.address_space, f'{p.address_space / GIB:.1f} GiB'),
              ('open files', resource.RLIMIT_NOFILE, p.open_files, str(p.open_files)),
              ('processes', resource.RLIMIT_NPROC, p.processes,
               str(p.processes) + (' (does not bind root)' if os.geteuid() == 0 else '')),
              *([('core', resource.RLIMIT_CORE, p.core, str(p.core))] if p.core >= 0 else []),
              ('file size', resource.RLIMIT_FSIZE, p.file_size, f'{p.file_size / MIB:.0f} MiB'),
              ('realtime priority', resource.RLIMIT_RTPRIO, 0, '0')]
    done, failed = [], []
    for name, which, value, shown in wanted:
        err = _set_limit(which, value)
        if err is None:
            done.append(f'{name} {shown}')
        else:
            failed.append(f'{name}: {err}')
    return 'limits: ' + ', '.join(done) + (f'; not set: {"; ".join(failed)}' if failed else '')


def _scheduling(nice: int | None) -> str:
    """SCHED_OTHER at ``nice`` for every thread of the process (policy and nice are per thread
    on Linux; threads started later inherit the starting thread's)."""
    problems = []
    tids = [int(t) for t in os.listdir('/proc/self/task')]
    for tid in tids:
        try:
            if os.sched_getscheduler(tid) != os.SCHED_OTHER:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            floor = max(0, nice if nice is not None else 0)
            if os.getpriority(os.PRIO_PROCESS, tid) < floor:
                os.setpriority(os.PRIO_PROCESS, tid, floor)
        except OSError as exc:
            problems.append(f'thread {tid}: {exc.strerror}')
    now = os.getpriority(os.PRIO_PROCESS, 0)
    line = f'scheduling: SCHED_OTHER nice {now} ({len(tids)} thread{"s" if len(tids) > 1 else ""})'
    return line + (f'; {", ".join(problems)}' if problems else '')


def _no_new_privs() -> str:
    if landlock.LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f'no_new_privs not set: {os.strerror(ctypes.get_errno())}'
    return 'no_new_privs'


class _CapHeader(ctypes.Structure):
    _fields_ = [('version', ctypes.c_uint32), ('pid', ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [('effective', ctypes.c_uint32), ('permitted', ctypes.c_uint32),
                ('inheritable', ctypes.c_uint32)]


def _drop_capabilities() -> str:
    """Empty the bounding, ambient, effective, permitted and inheritable sets (root stays uid 0:
    it owns its files, but cannot override permissions, raise limits or priorities, mount...)."""
    try:
        with open('/proc/sys/kernel/cap_last_cap') as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 40
    for cap in range(last + 1):
        landlock.LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)   # EPERM without CAP_SETPCAP: nothing to drop
    landlock.LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if os.uname().machine != 'x86_64':
        return f'capabilities: bounding set dropped; capset not wired for {os.uname().machine}'
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    try:
        landlock.raw_syscall(SYS_CAPSET, ctypes.byref(header), data)
    except OSError as exc:
        return f'capabilities not dropped: {exc.strerror}'
    return 'capabilities: all dropped'


_SPAWN = frozenset({'os.fork', 'os.forkpty', 'os.posix_spawn', 'os.spawn', 'os.system',
                    'subprocess.Popen', 'os.exec', 'pty.spawn'})
_WATCHED = _SPAWN | {'socket.__new__', 'os.kill', 'os.killpg', 'open'}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_SOCKET_FAMILIES = {1: 'AF_UNIX', 2: 'AF_INET', 10: 'AF_INET6', 16: 'AF_NETLINK', 17: 'AF_PACKET'}


class _AuditHook:
    """Names the rule when vendor Python code does what the kernel layers forbid.

    Raising from an audit hook aborts the audited call with that exception; hooks cannot be
    removed, so a pack cannot take this one out (it could only reach the kernel's bare errno
    through ctypes, which still fails)."""

    def __init__(self, pid: int, writable: tuple[str, ...] | None, sockets: bool = False) -> None:
        self.pid = pid
        self.sockets = sockets
        self.writable = None if writable is None else tuple(os.path.realpath(p) for p in writable)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event not in _WATCHED:
            return   # the hook runs for every audit event (ctypes calls, imports, ...): be quick
        if event in _SPAWN:
            raise PermissionError(errno.EPERM, f'sandbox: a pack may not create processes ({event})')
        if event == 'socket.__new__' and not self.sockets:
            family = args[1] if len(args) > 1 else None
            if family == 1:
                return   # AF_UNIX: socketpair() (asyncio's self-pipe) works; socket() gets EACCES
            name = _SOCKET_FAMILIES.get(int(family), str(family)) if isinstance(family, int) else str(family)
            raise PermissionError(errno.EACCES, f'sandbox: a pack may not open sockets ({name})')
        if event == 'os.kill' and args and args[0] != self.pid:
            raise PermissionError(errno.EPERM, f'sandbox: a pack may signal only its own process '
                                               f'(os.kill({args[0]}, {args[1] if len(args) > 1 else "?"}))')
        if event == 'open' and self.writable is not None and len(args) > 2 \
                and isinstance(args[2], int) and args[2] & _WRITE_FLAGS and isinstance(args[0], (str, bytes)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if not any(path == w or path.startswith(w.rstrip('/') + '/') for w in self.writable):
                raise PermissionError(errno.EACCES, f'sandbox: a pack may write only in its scratch '
                                                    f'directory, not {path}')
        if event == 'os.killpg':
            raise PermissionError(errno.EPERM, 'sandbox: a pack may not signal a process group')


