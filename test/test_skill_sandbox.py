"""The worker sandbox, checked from outside: each probe applies it in a child interpreter and
reports what the kernel answered; the parent checks errnos, limits and that the machine is fine.

Raw syscalls go through ctypes (as a hostile pack's C code would); the Python-level calls check
that the failure names the rule. x86_64 syscall numbers (this project's robots and CI).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from field_deploy.testing import wait_until
from skill_runtime import seccomp_rules
from skill_runtime.sandbox import SandboxPolicy

pytestmark = pytest.mark.skipif(platform.machine() != 'x86_64' or sys.platform != 'linux',
                                reason='syscall numbers and capset are wired for x86_64 Linux')

PACK = Path(__file__).parent / 'fixtures' / 'packs' / 'acme_test'
REALTIME_PARENT = ('os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5)); '
                   'os.setpriority(os.PRIO_PROCESS, 0, -5)')
"""What a worker inherits from a SCHED_FIFO runtime at a negative nice."""

PRELUDE = textwrap.dedent('''
    import ctypes, errno, json, os, sys, time
    PID = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def raw(n, *args):
        """A raw syscall; 0 or the errno's name. A child that a fork let through exits at once."""
        ctypes.set_errno(0)
        res = libc.syscall(ctypes.c_long(n), *[ctypes.c_long(a) if isinstance(a, int) else a
                                                for a in args])
        if os.getpid() != PID:
            os._exit(0)
        return 'ok' if res >= 0 else errno.errorcode[ctypes.get_errno()]

    def py(fn):
        try:
            fn()
            return 'ok'
        except BaseException as exc:
            return f'{type(exc).__name__}: {exc}'

    def status(key):
        return next(line.split(':', 1)[1].strip() for line in open('/proc/self/status')
                    if line.startswith(key + ':'))

    SETUP = json.loads(sys.argv[1])
    _REPORT = os.fdopen(SETUP.pop('report_fd'), 'w')

    def report(out):
        """The probe's result, on a file of its own: Fast DDS's log thread writes to stdout
        at any moment and could cut a JSON line there in two."""
        _REPORT.write(json.dumps(out) + '\\n')
        _REPORT.flush()

    exec(SETUP.pop('before', ''))
    from skill_runtime.sandbox import apply_sandbox
    out = {'log': apply_sandbox(SETUP['policy'])}
''')


def run_sandboxed(body: str, policy: dict | None = None, *, before: str = '', timeout: float = 30.0,
                  env: dict[str, str] | None = None) -> tuple[dict, subprocess.CompletedProcess]:
    """Run ``body`` after ``apply_sandbox(policy)`` in a fresh interpreter; ``out`` is the last
    dict the probe gave ``report()`` (called at the end, when the body gets there), read from a
    file descriptor of its own - stdout is shared with the libraries the probe loads."""
    code = PRELUDE + textwrap.dedent(body) + '\nreport(out)\n'
    with tempfile.TemporaryFile() as reports:
        setup = json.dumps({'policy': policy or {}, 'before': textwrap.dedent(before),
                            'report_fd': reports.fileno()})
        proc = subprocess.run([sys.executable, '-c', code, setup], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})},
                              pass_fds=(reports.fileno(),))
        reports.seek(0)
        lines = reports.read().decode().splitlines()
    return (json.loads(lines[-1]) if lines else {}), proc


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    return tmp_path / 'scratch'


@pytest.fixture
def bystander() -> subprocess.Popen:
    """A process outside the sandbox that a pack must not be able to signal."""
    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    yield proc
    proc.kill()
    proc.wait()


def test_forbidden_syscalls_fail_with_an_errno(scratch: Path, bystander: subprocess.Popen,
                                               tmp_path: Path) -> None:
    outside = tmp_path / 'outside.txt'
    keep = tmp_path / 'x'
    keep.write_text('not for the pack to remove')
    out, proc = run_sandboxed(f'''
        other = {bystander.pid}
        r = out['raw'] = {{}}
        for name, family in (('AF_INET', 2), ('AF_INET6', 10), ('AF_PACKET', 17), ('AF_NETLINK', 16),
                             ('AF_UNIX', 1)):
            r['socket ' + name] = raw(41, family, 2, 0)
        r['fork'] = raw(57)
        r['vfork'] = raw(58)
        r['clone process'] = raw(56, 17, 0, 0, 0, 0)          # SIGCHLD: fork semantics
        r['clone3'] = raw(435, 0, 0)
        r['execve'] = raw(59, b'/bin/true', None, None)
        r['execveat'] = raw(322, -100, b'/bin/true', None, None, 0)
        r['kill other'] = raw(62, other, 15)
        r['kill parent'] = raw(62, os.getppid(), 0)
        r['kill group 0'] = raw(62, 0, 0)
        r['kill all -1'] = raw(62, -1, 0)
        r['tgkill other'] = raw(234, other, other, 15)
        r['tkill other'] = raw(200, other, 15)
        r['pidfd_open other'] = raw(434, other, 0)
        r['ptrace attach'] = raw(101, 16, other, 0, 0)
        r['mount'] = raw(165, b'none', b'{scratch}', b'tmpfs', 0, None)
        r['unshare'] = raw(272, 0x00020000)
        r['setns'] = raw(308, 0, 0)
        r['bpf'] = raw(321, 0, None, 0)
        r['perf_event_open'] = raw(298, None, 0, -1, -1, 0)
        r['keyctl'] = raw(250, 0, 0, 0, 0, 0)
        r['io_uring_setup'] = raw(425, 8, None)
        param = ctypes.c_int(10)
        r['sched_setscheduler FIFO'] = raw(144, 0, 1, ctypes.byref(param))
        r['setpriority nice 0'] = raw(141, 0, 0, 0)
        lim = (ctypes.c_uint64 * 2)(2**62, 2**62)
        r['setrlimit AS up'] = raw(160, 9, ctypes.byref(lim))
        r['prlimit64 AS up'] = raw(302, 0, 9, ctypes.byref(lim), None)
        r['open write outside scratch'] = raw(2, b'{outside}', 0o101, 0o644)
        r['open write in pack'] = raw(2, b'{PACK}/new.py', 0o101, 0o644)
        r['mkdir outside'] = raw(83, b'{tmp_path}/d', 0o755)
        r['unlink outside'] = raw(87, b'{tmp_path}/x')
    ''', {'scratch': str(scratch)})
    assert proc.returncode == 0, proc.stderr
    raw = out['raw']
    families = ('AF_INET', 'AF_INET6', 'AF_PACKET', 'AF_NETLINK', 'AF_UNIX')
    expected = {f'socket {f}': 'EACCES' for f in families}
    expected |= {k: 'EPERM' for k in ('fork', 'vfork', 'clone process', 'execve', 'execveat', 'kill other',
                                      'kill parent', 'kill group 0', 'kill all -1', 'tgkill other',
                                      'tkill other', 'pidfd_open other', 'ptrace attach', 'mount',
                                      'unshare', 'setns', 'bpf', 'perf_event_open', 'keyctl',
                                      'io_uring_setup', 'sched_setscheduler FIFO',
                                      'setpriority nice 0', 'setrlimit AS up', 'prlimit64 AS up')}
    expected['clone3'] = 'ENOSYS'
    expected |= {k: 'EACCES' for k in ('open write outside scratch', 'open write in pack',
                                       'mkdir outside', 'unlink outside')}
    assert raw == expected
    assert bystander.poll() is None, 'the sandboxed child signalled a process outside it'
    assert not outside.exists() and not (PACK / 'new.py').exists() and keep.exists()


def test_python_calls_fail_naming_the_rule(scratch: Path) -> None:
    out, proc = run_sandboxed('''
        import socket, subprocess
        out['socket'] = py(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        out['socket6'] = py(lambda: socket.create_connection(('::1', 7400), timeout=1))
        out['fork'] = py(os.fork)
        out['subprocess'] = py(lambda: subprocess.run(['true']))
        out['system'] = py(lambda: os.system('true'))
        out['exec'] = py(lambda: os.execv('/bin/true', ['true']))
        out['kill parent'] = py(lambda: os.kill(os.getppid(), 0))
        out['write etc'] = py(lambda: open('/etc/field_deploy_sandbox_probe', 'w'))
        out['raise priority'] = py(lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50)))
    ''', {'scratch': str(scratch)})
    assert proc.returncode == 0, proc.stderr
    assert out['socket'] == 'PermissionError: [Errno 13] sandbox: a pack may not open sockets (AF_INET)'
    assert out['socket6'].startswith('PermissionError: [Errno 13] sandbox: a pack may not open sockets')
    for key in ('fork', 'subprocess', 'system', 'exec'):
        assert out[key].startswith('PermissionError: [Errno 1] sandbox: a pack may not create processes'), key
    assert out['kill parent'].startswith('PermissionError: [Errno 1] sandbox: a pack may signal only its own')
    assert out['write etc'] == ('PermissionError: [Errno 13] sandbox: a pack may write only in its scratch '
                                'directory, not /etc/field_deploy_sandbox_probe')
    assert out['raise priority'] == 'PermissionError: [Errno 1] Operation not permitted'


def test_allowed_work_goes_on(scratch: Path) -> None:
    """Threads, numpy, reading the pack, writing scratch, socketpair, signalling itself; and the
    limits, priority and kernel layers are in force — even for a child that inherited SCHED_FIFO
    and a negative nice."""
    out, proc = run_sandboxed(f'''
        import socket, tempfile, threading, resource, signal
        import numpy as np
        seen = []
        def work():
            seen.append((os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0),
                         float(np.linalg.norm(np.ones(64)))))
        threads = [threading.Thread(target=work) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        out['threads'] = seen
        out['pack'] = len(open('{PACK}/skills.py').read())
        out['listdir'] = sorted(os.listdir('{PACK}'))
        with open('notes.txt', 'w') as f:
            f.write('x' * 1000)
        out['cwd'] = os.getcwd()
        fd, path = tempfile.mkstemp()
        out['tmp'] = path
        out['socketpair'] = py(socket.socketpair)
        out['kill self'] = py(lambda: os.kill(os.getpid(), 0))
        got = []
        signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
        signal.raise_signal(signal.SIGUSR1)
        out['raise'] = got
        out['limits'] = {{n: resource.getrlimit(getattr(resource, n)) for n in
                          ('RLIMIT_AS', 'RLIMIT_NOFILE', 'RLIMIT_CORE', 'RLIMIT_FSIZE', 'RLIMIT_RTPRIO')}}
        out['sched'] = os.sched_getscheduler(0)
        out['nice'] = os.getpriority(os.PRIO_PROCESS, 0)
        out['status'] = {{k: status(k) for k in ('NoNewPrivs', 'Seccomp', 'CapEff', 'CapPrm', 'CapBnd')}}
    ''', {'scratch': str(scratch), 'nice': 10},
        before=REALTIME_PARENT)
    assert proc.returncode == 0, proc.stderr
    assert out['threads'] == [[0, 10, 8.0]] * 8        # SCHED_OTHER, nice 10, numpy works
    assert out['pack'] > 0 and 'skills.py' in out['listdir']
    assert (scratch / 'notes.txt').stat().st_size == 1000
    assert out['cwd'] == str(scratch) and out['tmp'].startswith(str(scratch))
    assert out['socketpair'] == 'ok' and out['kill self'] == 'ok' and out['raise'] == [1]
    gib = 1 << 30
    assert out['limits'] == {'RLIMIT_AS': [2 * gib, 2 * gib], 'RLIMIT_NOFILE': [256, 256],
                             'RLIMIT_CORE': [0, 0], 'RLIMIT_FSIZE': [64 << 20, 64 << 20],
                             'RLIMIT_RTPRIO': [0, 0]}
    assert out['sched'] == 0 and out['nice'] == 10
    assert out['status'] == {'NoNewPrivs': '1', 'Seccomp': '2', 'CapEff': '0' * 16,
                             'CapPrm': '0' * 16, 'CapBnd': '0' * 16}
    log = '\n'.join(out['log'])
    assert 'landlock ABI' in log and 'seccomp:' in log and 'capabilities: all dropped' in log


def test_fork_bomb_is_contained(scratch: Path) -> None:
    """A fork bomb from Python and one from C: no process is created, the bomb fails at once with
    the rule named, the machine's process count does not grow."""
    before = len(os.listdir('/proc'))
    t0 = time.monotonic()
    out, proc = run_sandboxed('''
        out['raw_created'] = sum(raw(57) == 'ok' or raw(56, 17, 0, 0, 0, 0) == 'ok' for _ in range(2000))
        report(out)
        while True:
            os.fork()
    ''', {'scratch': str(scratch)}, timeout=30)
    elapsed = time.monotonic() - t0
    assert out['raw_created'] == 0, proc.stderr
    assert proc.returncode == 1
    assert 'PermissionError: [Errno 1] sandbox: a pack may not create processes (os.fork)' in proc.stderr
    assert elapsed < 25
    assert len(os.listdir('/proc')) < before + 20   # other helpers' processes come and go


def test_memory_bomb_is_contained(scratch: Path) -> None:
    """Allocation past the address-space limit is a MemoryError in the bomb, not the OOM killer
    choosing a victim on the robot."""
    t0 = time.monotonic()
    out, proc = run_sandboxed('''
        import numpy as np
        out['numpy'] = py(lambda: np.ones(1 << 40))
        hoard = []
        try:
            while True:
                hoard.append(bytearray(32 << 20))
        except MemoryError:
            out['hoarded_mib'] = 32 * len(hoard)
            out['vmpeak_kib'] = int(status('VmPeak').split()[0])
            report(out)
            raise
    ''', {'scratch': str(scratch), 'address_space': 768 << 20}, timeout=30)
    assert time.monotonic() - t0 < 25
    assert out['numpy'].startswith('MemoryError')
    assert 256 <= out['hoarded_mib'] <= 768
    assert out['vmpeak_kib'] <= 768 * 1024
    assert proc.returncode == 1 and proc.stderr.rstrip().endswith('MemoryError')


def test_a_pack_cannot_join_dds(scratch: Path) -> None:
    """rclpy in the sandbox: creating a node fails cleanly (no participant: no socket, and
    /dev/shm is read-only for Fast DDS's shared-memory transport), in well under a second."""
    out, proc = run_sandboxed('''
        os.environ['ROS_LOG_DIR'] = os.getcwd()   # a hostile pack would: the log dir is not the point
        import rclpy
        from sensor_msgs.msg import JointState
        rclpy.init()
        t0 = time.monotonic()
        try:
            node = rclpy.create_node('vendor_writer')
            node.create_publisher(JointState, 'joint_commands', 10).publish(JointState())
            out['node'] = 'created'
        except Exception as exc:
            out['node'] = f'{type(exc).__name__}: {exc}'
        out['seconds'] = time.monotonic() - t0
    ''', {'scratch': str(scratch)}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert 'node' in out, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert out['node'].startswith('RCLError: error creating node') and 'participant' in out['node']
    assert out['seconds'] < 5


def test_seccomp_alone_keeps_a_pack_off_dds(scratch: Path, ros: None) -> None:
    """Without Landlock (an older kernel) Fast DDS still builds a participant on its
    shared-memory transport, but with no socket it never discovers anyone: a subscriber in this
    process sees neither the writer nor a message, where the same child without the sandbox is
    seen at once (the control)."""
    import rclpy
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import JointState

    from field_deploy.ros import Spinner

    node = rclpy.create_node('sandbox_dds_listener')
    got: list[str] = []
    node.create_subscription(JointState, 'sandbox_probe', lambda m: got.append(m.header.frame_id),
                             QoSProfile(depth=100))
    body = '''
        os.environ['ROS_LOG_DIR'] = os.getcwd()
        import rclpy
        from sensor_msgs.msg import JointState
        rclpy.init()
        node = rclpy.create_node('vendor_writer_' + os.environ['PROBE_TAG'])
        pub = node.create_publisher(JointState, 'sandbox_probe', 10)
        msg = JointState()
        msg.header.frame_id = os.environ['PROBE_TAG']
        deadline = time.monotonic() + 6
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        out['matched'] = pub.get_subscription_count()
        for _ in range(20):
            pub.publish(msg)
            time.sleep(0.02)
        out['published'] = True
    '''
    try:
        with Spinner([node]):
            control, proc = run_sandboxed(body, {'seccomp': False, 'landlock': False, 'audit_hook': False,
                                                 'scratch': str(scratch)}, env={'PROBE_TAG': 'control'})
            assert proc.returncode == 0 and control['published'], proc.stderr
            assert control['matched'] == 1, 'the control writer never matched: no DDS here?'
            assert wait_until(lambda: 'control' in got, 5), 'control writer never heard: no DDS here?'
            boxed, proc = run_sandboxed(body, {'landlock': False, 'audit_hook': False,
                                               'scratch': str(scratch)}, env={'PROBE_TAG': 'boxed'})
            assert proc.returncode == 0 and boxed['published'], proc.stderr
            time.sleep(0.5)
            names = {i.node_name for i in node.get_publishers_info_by_topic('sandbox_probe')}
    finally:
        node.destroy_node()
    assert boxed['matched'] == 0
    assert 'boxed' not in got
    assert 'vendor_writer_boxed' not in names


def test_each_layer_degrades_with_a_logged_reason(scratch: Path) -> None:
    out, proc = run_sandboxed('''
        out['socket'] = raw(41, 2, 2, 0)
    ''', {'scratch': str(scratch)}, before='''
        sys.modules['pyseccomp'] = None          # as on a machine without the library
        from skill_runtime import landlock
        landlock.abi_version = lambda: 0         # as on a kernel without Landlock
    ''')
    assert proc.returncode == 0, proc.stderr
    assert 'seccomp not applied: pyseccomp / libseccomp not installed' in out['log']
    assert 'landlock not applied: the kernel offers no Landlock' in out['log']
    assert any(line.startswith('limits: address space 2.0 GiB') for line in out['log'])
    assert out['socket'] == 'ok'                 # honestly: without seccomp the socket opens


def test_policy_round_trips_and_reports_unknown_keys() -> None:
    policy = SandboxPolicy(scratch='/tmp/x', address_space=1 << 30, writable=('/dev/null', '/tmp/y'))
    assert SandboxPolicy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    newer = SandboxPolicy.from_dict({**policy.to_dict(), 'gpu': True})
    assert newer.extra == {'gpu': True}
    # every denial is an errno (never a kill), and threads are not among them
    rules = seccomp_rules.rules(own_pid=1234)
    assert {r.err for r in rules} <= {1, 13, 38}
    clone = [r for r in rules if r.syscall == 'clone']
    assert clone[0].when == (0, 'MASKED_EQ', seccomp_rules.CLONE_THREAD, 0)


def test_the_workers_policy_spelling_is_understood(scratch: Path) -> None:
    """skill_runtime.worker.sandbox_policy's keys (scratch_dir, address_space_bytes, ...)."""
    out, proc = run_sandboxed('''
        import resource
        out['as'] = resource.getrlimit(resource.RLIMIT_AS)[0]
        out['nofile'] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        out['cwd'] = os.getcwd()
        out['socket'] = raw(41, 2, 2, 0)
    ''', {'scratch_dir': str(scratch), 'pack_dir': str(PACK), 'address_space_bytes': 1 << 30,
          'max_open_files': 128, 'network': False, 'core_dumps': False})
    assert proc.returncode == 0, proc.stderr
    assert (out['as'], out['nofile'], out['cwd'], out['socket']) == (1 << 30, 128, str(scratch), 'EACCES')
    assert not any('not known' in line for line in out['log'])


def test_the_workers_own_nice_is_kept_but_never_above_normal(scratch: Path) -> None:
    """Without a ``nice`` in the policy the runtime's choice stands (worker_nice), raised to 0 at
    least; SCHED_FIFO inherited from a real-time runtime is dropped either way."""
    out, proc = run_sandboxed('''
        out['kept'] = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    ''', {'scratch': str(scratch)}, before='os.setpriority(os.PRIO_PROCESS, 0, 5)')
    assert proc.returncode == 0, proc.stderr
    assert out['kept'] == [0, 5]
    out, proc = run_sandboxed('''
        out['raised'] = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    ''', {'scratch': str(scratch)},
        before=REALTIME_PARENT)
    assert proc.returncode == 0, proc.stderr
    assert out['raised'] == [0, 0]
