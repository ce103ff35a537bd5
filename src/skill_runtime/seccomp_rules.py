"""The seccomp filter of a skill worker: which syscalls fail, with which errno. Pure, no rclpy.

Default allow, then deny lists (a default-deny list of the hundreds of syscalls CPython, numpy
and glibc use is brittle across versions and would fail vendor code for no safety gain). Every
denial returns an errno, never kills: the vendor call fails with ``PermissionError`` (or
``OSError``) that the worker reports as the skill's failure reason, and nothing hangs.

Built with ``pyseccomp`` (ctypes over the system's libseccomp). When the library is missing the
caller logs it and the worker runs without this layer.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass

CLONE_THREAD = 0x00010000
TIOCSTI = 0x5412


@dataclass(frozen=True)
class Rule:
    """One denial: ``syscall`` fails with ``err`` (when ``when`` holds, if given)."""

    syscall: str
    err: int
    why: str
    when: tuple[int, str, int, int] | None = None
    """(argument index, operator name in pyseccomp: 'NE', 'MASKED_EQ', ..., value, mask/second)."""


def rules(own_pid: int | None = None, network: bool = False) -> list[Rule]:
    """The worker's denials. ``own_pid``: the only process a signal may go to (the worker);
    ``network``: leave sockets allowed (a trusted, first-party worker only)."""
    pid = os.getpid() if own_pid is None else own_pid
    out: list[Rule] = []

    def deny(names: str, err: int, why: str, when: tuple[int, str, int, int] | None = None) -> None:
        out.extend(Rule(n, err, why, when) for n in names.split())

    # Network: no socket of any family (the worker talks to the runtime over inherited pipes and
    # shared memory only), so no DDS participant, no TCP/UDP, no netlink, no raw packets, no UNIX
    # socket to a daemon. socketpair (an in-process pair) stays allowed. io_uring could create
    # sockets and open files without these syscalls: denied too.
    if not network:
        deny('socket', errno.EACCES, 'a pack may not open sockets (network, DDS, netlink, UNIX)')
    deny('io_uring_setup io_uring_enter io_uring_register', errno.EPERM, 'io_uring is not available to packs')
    # Processes: threads yes, new processes no (we run as root, where RLIMIT_NPROC does not bind).
    deny('fork vfork', errno.EPERM, 'a pack may not create processes')
    deny('clone', errno.EPERM, 'a pack may not create processes (threads are allowed)',
         (0, 'MASKED_EQ', CLONE_THREAD, 0))
    # clone3 passes its flags in a struct seccomp cannot read: ENOSYS makes glibc fall back to
    # clone, whose flags the rule above checks.
    deny('clone3', errno.ENOSYS, 'clone3 is checked as clone')
    deny('execve execveat', errno.EPERM, 'a pack may not execute programs')
    # Signals only to itself: never the runtime, the sim, or kill(0)/kill(-1) on a process group.
    deny('kill rt_sigqueueinfo', errno.EPERM, 'a pack may signal only its own process', (0, 'NE', pid, 0))
    deny('tgkill rt_tgsigqueueinfo', errno.EPERM, 'a pack may signal only its own process', (0, 'NE', pid, 0))
    deny('tkill', errno.EPERM, 'a pack may signal only its own process', (0, 'NE', pid, 0))
    deny('pidfd_open', errno.EPERM, 'a pack may not hold other processes', (0, 'NE', pid, 0))
    deny('pidfd_send_signal pidfd_getfd', errno.EPERM, 'a pack may signal only its own process')
    # Other processes' memory and the kernel's own machinery.
    deny('ptrace process_vm_readv process_vm_writev kcmp', errno.EPERM,
         'a pack may not inspect other processes')
    deny('mount umount2 pivot_root chroot unshare setns open_tree move_mount fsopen fsmount fsconfig fspick',
         errno.EPERM, 'a pack may not change mounts or namespaces')
    deny('bpf perf_event_open userfaultfd', errno.EPERM, 'a pack may not load kernel programs or trace')
    deny('keyctl add_key request_key', errno.EPERM, 'a pack may not use the kernel keyring')
    deny('init_module finit_module delete_module kexec_load kexec_file_load reboot swapon swapoff acct '
         'settimeofday clock_settime clock_adjtime adjtimex sethostname setdomainname iopl ioperm syslog '
         'open_by_handle_at name_to_handle_at fanotify_init quotactl lookup_dcookie',
         errno.EPERM, 'a pack may not administer the machine')
    # Priorities and limits: the worker runs below the gate and inside its limits; as root it
    # could otherwise raise both (SCHED_FIFO above the control thread, RLIMIT_AS back up).
    deny('sched_setscheduler sched_setparam sched_setattr setpriority', errno.EPERM,
         'a pack may not change scheduling priorities')
    deny('sched_setaffinity', errno.EPERM, 'a pack may not move other tasks between cores', (0, 'NE', 0, 0))
    deny('setrlimit', errno.EPERM, 'a pack may not change resource limits')
    deny('prlimit64', errno.EPERM, 'a pack may not change resource limits', (2, 'NE', 0, 0))
    deny('ioctl', errno.EPERM, 'a pack may not inject terminal input', (1, 'EQ', TIOCSTI, 0))
    return out


def install(own_pid: int | None = None, network: bool = False) -> tuple[int, int]:
    """Load the filter into this process (all its threads, irrevocably).

    Returns (rules loaded, syscalls this kernel/libseccomp does not know, skipped). Raises
    ImportError / OSError when libseccomp is missing or refuses.
    """
    import pyseccomp as sc

    flt = sc.SyscallFilter(sc.ALLOW)
    # Apply to every thread already running (a vendor thread started before the filter would
    # otherwise escape it); the worker starts none before, this is belt and braces.
    tsync = getattr(sc.Attr, 'CTL_TSYNC', None)
    if tsync is not None:
        flt.set_attr(tsync, 1)
    # A binary tree of syscall numbers instead of a linear list (libseccomp >= 2.5): the filter
    # runs on every syscall of the worker, a few per control tick.
    optimize = getattr(sc.Attr, 'CTL_OPTIMIZE', None)
    if optimize is not None:
        with contextlib.suppress(OSError):
            flt.set_attr(optimize, 2)
    loaded = skipped = 0
    for rule in rules(own_pid, network):
        args = []
        if rule.when is not None:
            index, op, value, second = rule.when
            args.append(sc.Arg(index, getattr(sc, op), value, second))
        try:
            flt.add_rule(sc.ERRNO(rule.err), rule.syscall, *args)
        except (OSError, ValueError, RuntimeError):
            skipped += 1   # a syscall this architecture / libseccomp version does not have
            continue
        loaded += 1
    flt.load()
    return loaded, skipped
