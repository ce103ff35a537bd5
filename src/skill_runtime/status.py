"""``~/status`` of the runtime: one DiagnosticStatus per skill, one for the gate, one for the packs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from field_deploy.ros import set_stamp
from skill_runtime.gate import MODE_ESTOP

if TYPE_CHECKING:
    from skill_runtime.node import SkillRuntimeNode
    from skill_runtime.proxy import WorkerProcess

_LEVEL = {'': DiagnosticStatus.OK, 'done': DiagnosticStatus.OK, 'stopped': DiagnosticStatus.WARN,
          'refused': DiagnosticStatus.WARN, 'failed': DiagnosticStatus.ERROR}


def _values(pairs: tuple[tuple[str, object], ...]) -> list[KeyValue]:
    return [KeyValue(key=k, value=str(v)) for k, v in pairs]


def _round_trips(worker: WorkerProcess | None) -> tuple[tuple[str, str], ...]:
    """p50 / p99 / max of the worker's last step round trips (request sent → answer taken)."""
    rtts = np.array(worker.rtts_ns, dtype=np.float64) / 1e6 if worker is not None else np.zeros(0)
    if rtts.size == 0:
        return (('rtt_p50_ms', ''), ('rtt_p99_ms', ''), ('rtt_max_ms', ''))
    p50, p99 = np.percentile(rtts, [50, 99])
    return (('rtt_p50_ms', f'{p50:.3f}'), ('rtt_p99_ms', f'{p99:.3f}'), ('rtt_max_ms', f'{rtts.max():.3f}'))


def status_array(rt: SkillRuntimeNode) -> DiagnosticArray:
    arr = DiagnosticArray()
    set_stamp(arr.header.stamp, rt.get_clock().now().nanoseconds)
    for node in list(rt.skill_nodes.values()):
        run = rt.runs.get(node.key) or node.run
        progress = run.progress if run is not None else 0.0
        outcome, reason = node.outcome, node.reason
        if run is not None and run.outcome and node.phase == 'active':
            outcome, reason = run.outcome, run.reason
        worker = node.worker
        st = DiagnosticStatus(level=_LEVEL.get(outcome, DiagnosticStatus.OK),
                              name=f'skills/{node.key}', hardware_id=node.manifest.name,
                              message=f'{node.phase}{": " + outcome if outcome else ""}'
                                      f'{" (" + reason + ")" if reason else ""}')
        st.values = _values((
            ('pack', node.manifest.name), ('pack_version', node.manifest.version),
            ('skill', node.spec.name), ('phase', node.phase), ('progress', f'{progress:.3f}'),
            ('params', json.dumps(node.params())), ('outcome', outcome), ('reason', reason),
            ('worker_pid', worker.pid if worker is not None and not worker.dead else ''),
            ('late_ticks', run.late if run is not None else 0),
            ('max_step_ms', f'{run.max_step_time * 1e3:.3f}' if run is not None else ''),
            *_round_trips(worker)))
        arr.status.append(st)
    gate = rt.gate
    st = DiagnosticStatus(name='skill_runtime/safety_gate', hardware_id='skill_runtime')
    if gate is None:
        st.level, st.message = DiagnosticStatus.WARN, 'not configured'
    else:
        jit = rt.loop.jitter_stats() if rt.loop is not None else {}
        st.level = DiagnosticStatus.ERROR if gate.mode == MODE_ESTOP else DiagnosticStatus.OK
        st.message = f'{gate.mode}{": " + gate.estop_reason if gate.estop_reason else ""}'
        st.values = _values((
            ('mode', gate.mode), ('estop_reason', gate.estop_reason),
            ('owners', ','.join(sorted(gate.owners()))), ('rate_hz', rt.rate_hz),
            ('clamped_total', gate.clamp_total), ('commands_sent', rt.commands_sent),
            ('jitter_p50_ms', f'{jit.get("p50_ms", 0.0):.3f}'),
            ('jitter_p99_ms', f'{jit.get("p99_ms", 0.0):.3f}'),
            ('jitter_max_ms', f'{jit.get("max_ms", 0.0):.3f}'),
            ('overruns', jit.get('overruns', 0)),
            ('scheduling', rt.loop.realtime if rt.loop is not None else ''),
            ('workers', len(rt.pool.supervisor.workers))))
    arr.status.append(st)
    refused = [r for r in rt.packs if not r.accepted]
    st = DiagnosticStatus(name='skill_runtime/packs', hardware_id='skill_runtime',
                          level=DiagnosticStatus.WARN if refused else DiagnosticStatus.OK,
                          message=f'{len(rt.packs) - len(refused)} accepted, {len(refused)} refused')
    st.values = [KeyValue(key=r.name, value=r.reason) for r in rt.packs]
    arr.status.append(st)
    return arr
