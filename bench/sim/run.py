"""sim_robot benchmark: per-topic achieved rate, loss and CPU, sim and subscriber in two processes.

    .venv/bin/python bench/sim/run.py                       # both profiles, profile QoS, 10 s
    .venv/bin/python bench/sim/run.py --seconds 15 --profile humanoid_29dof
    .venv/bin/python bench/sim/run.py --matrix              # the QoS / transport experiment

The sim runs as the real ``sim_robot`` executable; this process subscribes raw (no
deserialisation) on an EventsExecutor and counts loss from the header stamps (see
``sim_robot.streamcheck``). ``--reliability/--depth`` rewrite the profile's QoS for every stream
(publisher and subscriber alike) to reproduce the issue's best-effort figures; ``--transport``
sets ``FASTDDS_BUILTIN_TRANSPORTS`` for both processes. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from field_deploy.testing import NodeProcess, RawCollector, isolate_ros_env, wait_until

isolate_ros_env()

import psutil  # noqa: E402
import rclpy  # noqa: E402
import yaml  # noqa: E402

from field_deploy.profile import QosSpec, load_profile, profile_path  # noqa: E402
from field_deploy.ros import Spinner, message_class, qos_profile  # noqa: E402
from field_deploy.rosenv import config_dir  # noqa: E402
from sim_robot.streamcheck import cdr_header_stamp_ns, stats_from_raw  # noqa: E402


def _profile_with_qos(name: str, reliability: str | None, depth: int | None, folder: Path) -> Path:
    """A copy of profile ``name`` with every stream's QoS overridden (for the experiment)."""
    source = profile_path(name)
    if reliability is None and depth is None:
        return source
    data = yaml.safe_load(source.read_text())
    for topic in data['topics']:
        if reliability is not None:
            topic['qos']['reliability'] = reliability
        if depth is not None:
            topic['qos']['depth'] = depth
    out = folder / f'{name}.yaml'
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def measure(profile: str, seconds: float, *, reliability: str | None = None,
            depth: int | None = None, transport: str | None = None,
            topics: list[str] | None = None, xml: str | None = None, warmup: float = 3.0) -> dict:
    """Run the sim, subscribe to all its topics for ``seconds``, return per-topic figures."""
    if transport:
        os.environ['FASTDDS_BUILTIN_TRANSPORTS'] = transport
    else:
        os.environ.pop('FASTDDS_BUILTIN_TRANSPORTS', None)
    # The sim sets FASTRTPS_DEFAULT_PROFILES_FILE to config/fastdds.xml when it is unset; 'none'
    # (an empty value) keeps Fast DDS defaults, for the comparison.
    default = str(config_dir() / 'fastdds.xml')
    os.environ['FASTRTPS_DEFAULT_PROFILES_FILE'] = '' if xml == 'none' else (xml or default)
    folder = Path(tempfile.mkdtemp(prefix='sim-bench-'))
    path = _profile_with_qos(profile, reliability, depth, folder)
    prof = load_profile(path)
    specs = [t for t in prof.topics if t.params.get('source') != 'safety_gate'
             and (not topics or t.name in topics)]
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('sim_bench_probe', context=context)
    collectors = {}
    for spec in specs:
        qos = qos_profile(QosSpec(spec.qos.reliability, spec.qos.durability,
                                  max(spec.qos.depth, 10)))
        collectors[spec.name] = RawCollector(node, [(spec.name, message_class(spec.type))], qos=qos)
    spinner = Spinner([node], context=context).start()
    sim = NodeProcess('sim_robot', ['--ros-args', '-p', f'profile:={path}'], log_dir=folder)
    try:
        wait_until(lambda: all(c.count(s.name) > 0 for s, c in
                               zip(specs, collectors.values(), strict=True)), 15.0)
        time.sleep(warmup)
        sim_ps, me = psutil.Process(sim.pid), psutil.Process()
        sim_ps.cpu_percent(), me.cpu_percent()
        start = {s.name: collectors[s.name].count(s.name) for s in specs}
        time.sleep(seconds)
        end = {s.name: collectors[s.name].count(s.name) for s in specs}
        cpu_sim, cpu_sub = sim_ps.cpu_percent(), me.cpu_percent()
    finally:
        sim.stop()
        spinner.stop()
        node.destroy_node()
        rclpy.shutdown(context=context)
    rows = {}
    for spec in specs:
        window = collectors[spec.name].messages[spec.name][start[spec.name]:end[spec.name]]
        stats = stats_from_raw(window, spec.rate_hz)
        latency = max(((recv - cdr_header_stamp_ns(data)) * 1e-9 for recv, data in window),
                      default=0.0)
        rows[spec.name] = {'latency': latency, 'horizon': spec.qos.depth / spec.rate_hz,
                           'nominal': spec.rate_hz, 'rate': stats.rate_hz,
                           'received': stats.received, 'expected': stats.expected,
                           'lost': stats.lost, 'non_monotonic': stats.non_monotonic}
    return {'profile': prof.name, 'cpu_sim': cpu_sim, 'cpu_sub': cpu_sub, 'topics': rows,
            'qos': f'{reliability or "profile"}/{depth or "profile"}',
            'transport': transport or 'default',
            'xml': os.environ['FASTRTPS_DEFAULT_PROFILES_FILE'] or 'none (Fast DDS defaults)'}


def print_result(result: dict) -> None:
    print(f"\n== {result['profile']}  qos={result['qos']}  transport={result['transport']}  "
          f"sim CPU {result['cpu_sim']:.0f} %  subscriber CPU {result['cpu_sub']:.0f} % "
          f"(% of one core, {psutil.cpu_count()} cores)")
    print(f"{'topic':34s} {'nominal':>8s} {'rate':>8s} {'received':>9s} {'lost':>7s} {'loss%':>7s}"
          f" {'max latency':>12s} {'QoS horizon':>12s}")
    for topic, r in result['topics'].items():
        total = max(r['expected'], 1)
        print(f"{topic:34s} {r['nominal']:8.1f} {r['rate']:8.1f} {r['received']:9d} "
              f"{r['lost']:7d} {100.0 * r['lost'] / total:7.2f}"
              f" {r['latency']:10.3f} s {r['horizon']:10.2f} s"
              + ('  NON-MONOTONIC' if r['non_monotonic'] else ''))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--profile', action='append', help='robot profile(s); default: both')
    parser.add_argument('--seconds', type=float, default=10.0)
    parser.add_argument('--reliability', choices=('reliable', 'best_effort'))
    parser.add_argument('--depth', type=int)
    parser.add_argument('--transport', help='FASTDDS_BUILTIN_TRANSPORTS (DEFAULT, UDPv4, SHM, '
                                            'LARGE_DATA)')
    parser.add_argument('--topics', nargs='+', help='subscribe to these topics only')
    parser.add_argument('--xml', help="Fast DDS XML profile file, or 'none' for Fast DDS defaults "
                                      '(default: config/fastdds.xml)')
    parser.add_argument('--matrix', action='store_true',
                        help='QoS x transport experiment on the quadruped')
    args = parser.parse_args(argv)
    if args.matrix:
        for reliability, depth, xml in (
                ('best_effort', 10, 'none'), ('best_effort', 10, None),
                ('reliable', 10, 'none'), ('reliable', 100, 'none'),
                (None, None, 'none'), (None, None, None)):
            print_result(measure('quadruped_12dof', args.seconds, reliability=reliability,
                                 depth=depth, transport=args.transport, topics=args.topics,
                                 xml=xml))
        return 0
    for profile in args.profile or ['quadruped_12dof', 'humanoid_29dof']:
        print_result(measure(profile, args.seconds, reliability=args.reliability,
                             depth=args.depth, transport=args.transport, topics=args.topics,
                             xml=args.xml))
    return 0


if __name__ == '__main__':
    sys.exit(main())
