"""Landlock for a skill worker: read-only filesystem except its scratch directory. Pure, no rclpy.

Landlock is the Linux LSM an unprivileged process uses to restrict *itself*, irrevocably and for
every thread and future child. No Python binding is needed: three raw syscalls through ctypes
(``landlock_create_ruleset`` 444, ``landlock_add_rule`` 445, ``landlock_restrict_self`` 446, the
same numbers on every architecture). What is handled depends on the kernel's ABI version:

* ABI 1–3, 5: filesystem rights. Everything beneath ``/`` may be read and executed; write
  rights (write, truncate, create, remove, rename/link, make device/socket/fifo/symlink) only
  beneath the paths given (the pack's scratch directory) and on a few device files
  (``/dev/null``). Files opened before the call (the worker's shared tick memory, its pipes)
  stay usable: Landlock checks at ``open``.
* ABI 4+: TCP ``bind`` and ``connect`` denied (no rule grants them).
* ABI 6+: *scoped* — no signal to, and no connection to an abstract UNIX socket of, any process
  outside the worker's Landlock domain (the runtime, the sim, the rest of the machine).

Root is no exception to Landlock, which matters here: the robot stack runs as root.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1

# Filesystem access rights (include/uapi/linux/landlock.h), with the ABI that introduced each.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13        # ABI 2
TRUNCATE = 1 << 14     # ABI 3
IOCTL_DEV = 1 << 15    # ABI 5 (not handled: ioctls on already-allowed files stay as they are)
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

READ_ONLY = EXECUTE | READ_FILE | READ_DIR
_FS_ABI1 = (1 << 13) - 1


def fs_rights(abi: int) -> int:
    """Every filesystem right this ABI can restrict (IOCTL_DEV left out on purpose)."""
    rights = _FS_ABI1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    return rights


class _RulesetAttr(ctypes.Structure):
    _fields_ = [('handled_access_fs', ctypes.c_uint64), ('handled_access_net', ctypes.c_uint64),
                ('scoped', ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [('allowed_access', ctypes.c_uint64), ('parent_fd', ctypes.c_int32)]


LIBC = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
LIBC.syscall.restype = ctypes.c_long


def raw_syscall(number: int, *args: object) -> int:
    """``syscall(number, *args)`` through libc; OSError with the errno when it fails."""
    res = LIBC.syscall(ctypes.c_long(number), *args)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when the kernel has no Landlock or it is disabled."""
    try:
        return raw_syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(CREATE_RULESET_VERSION))
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


@dataclass(frozen=True)
class LandlockResult:
    abi: int
    writable: tuple[str, ...]
    skipped: tuple[str, ...]
    """Writable paths that do not exist (nothing to grant)."""
    network: bool = False

    def describe(self) -> str:
        parts = [f'landlock ABI {self.abi}: filesystem read-only except '
                 + (', '.join(self.writable) or 'nothing')]
        if self.abi >= 4 and not self.network:
            parts.append('TCP bind/connect denied')
        if self.abi >= 6:
            parts.append('signals and abstract UNIX sockets scoped to the worker')
        if self.skipped:
            parts.append('missing, not granted: ' + ', '.join(self.skipped))
        return '; '.join(parts)


def restrict(writable: Iterable[str], readable: Iterable[str] = ('/',), *, network: bool = False
             ) -> LandlockResult:
    """Restrict this process, irrevocably: read + execute beneath ``readable``, every right
    beneath ``writable``; TCP bind/connect denied unless ``network``. Needs ``no_new_privs``
    set first (or CAP_SYS_ADMIN).

    Raises OSError when the kernel refuses (the caller logs it and goes on without Landlock).
    """
    abi = abi_version()
    if abi <= 0:
        raise OSError(errno.EOPNOTSUPP, 'the kernel offers no Landlock')
    handled = fs_rights(abi)
    attr = _RulesetAttr(handled_access_fs=handled)
    size = 8
    if abi >= 4:
        attr.handled_access_net = 0 if network else NET_BIND_TCP | NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    ruleset = raw_syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    granted, skipped = [], []
    try:
        for path, rights in [(p, READ_ONLY) for p in readable] + [(p, handled) for p in writable]:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                skipped.append(path)
                continue
            try:
                if not os.path.isdir(path):
                    # A rule on a file may only carry file rights.
                    rights &= EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE
                rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
                raw_syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                         ctypes.byref(rule), ctypes.c_uint32(0))
            finally:
                os.close(fd)
            if rights != READ_ONLY:
                granted.append(path)
        raw_syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return LandlockResult(abi, tuple(granted), tuple(skipped), network)
