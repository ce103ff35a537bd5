"""``bag plot``: PNG figures of recorded signals over time (matplotlib Agg, no GUI needed).

A figure is a stack of panels; a panel is one or more series joined by ``+``; a series is
``TOPIC.FIELD[:SELECT]``: ``/joint_states.position:left_knee_joint,right_knee_joint``,
``/wrench/left_foot.force:z``, ``/imu.angular_velocity``. ``SELECT`` picks joints by name or index,
or vector components x/y/z/w. Overlaying ``/joint_states.position:J+/joint_commands.position:J``
shows command against measurement (commands dashed). Default panels: command vs measured for the
first three joints, joint efforts, and the z force of every wrench topic.

Long streams are decimated (at most ~4000 points per series) *before* deserialising, so a one-hour
1 kHz bag plots in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_recorder.bag.reader import Bag
from data_recorder.export.parquet import _J, _JOINT_FIELDS, SIGNALS, ExportError

MAX_POINTS = 4000
_COMPONENTS = {'x': 0, 'y': 1, 'z': 2, 'w': 3}
MARK_COLOURS = {'anomaly': 'red', 'disturbance': 'darkorange', 'edge_case': 'purple', 'note': 'grey'}


@dataclass
class Series:
    topic: str
    field: str
    select: list[str]


def parse_panel(spec: str) -> list[Series]:
    series = []
    for part in spec.split('+'):
        part = part.strip()
        head, _, sel = part.partition(':')
        topic, dot, fld = head.rpartition('.')
        if not dot or not topic or not fld:
            raise ExportError(f'signal {part!r} is not of the form TOPIC.FIELD[:SELECT] '
                              '(e.g. /joint_states.position:left_knee_joint)')
        series.append(Series('/' + topic.lstrip('/'), fld,
                             [s for s in sel.split(',') if s] if sel else []))
    return series


def default_panels(bag: Bag) -> list[str]:
    panels = []
    joint_topics = [t for t in ('/joint_states', '/joint_commands')
                    if t in bag.topics and bag.topics[t].type == _J]
    if '/joint_states' in joint_topics:
        js = '/joint_states.position:0,1,2'
        panels.append(js + ('+/joint_commands.position:0,1,2' if '/joint_commands' in joint_topics
                            else ''))
        panels.append('/joint_states.effort:0,1,2,3,4,5')
    wrenches = [t for t, i in bag.topics.items() if i.type == 'geometry_msgs/msg/WrenchStamped']
    if wrenches:
        panels.append('+'.join(f'{t}.force:z' for t in wrenches))
    if not panels:
        for t, i in bag.topics.items():
            if i.type in SIGNALS:
                panels.append(f'{t}.{SIGNALS[i.type][0][0]}')
    if not panels:
        raise ExportError(f'{bag.path}: no plottable topic (JointState, Imu, WrenchStamped, '
                          'Odometry, BatteryState)')
    return panels


def _extract(bag: Bag, s: Series) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Times (s from bag start), values [n, k] and labels of one series."""
    from rclpy.serialization import deserialize_message

    from field_deploy.ros import message_class
    info = bag.topics.get(s.topic)
    if info is None:
        raise ExportError(f'{bag.path}: topic {s.topic} is not in the bag')
    if info.type == _J:
        if s.field not in dict(_JOINT_FIELDS):
            raise ExportError(f'{s.topic}: field {s.field!r} unknown (position, velocity, effort)')
        getter = None
    else:
        fields = {name: g for name, _, g in SIGNALS.get(info.type, [])}
        if s.field not in fields:
            raise ExportError(f'{s.topic} ({info.type}): field {s.field!r} unknown '
                              f'(one of: {", ".join(fields) or "none: type not plottable"})')
        getter = fields[s.field]
    cls = message_class(info.type)
    stride = max(1, info.count // MAX_POINTS)
    times, rows, names = [], [], None
    for i, m in enumerate(bag.messages([s.topic])):
        if i % stride:
            continue
        msg = deserialize_message(m.data, cls)
        if getter is None:
            names = names or list(msg.name)
            vals = list(getattr(msg, s.field))
            if len(vals) != len(names):
                continue
        else:
            vals = list(getter(msg))
        times.append((m.log_time_ns - bag.start_ns) / 1e9)
        rows.append(vals)
    if not rows:
        raise ExportError(f'{s.topic}.{s.field}: no data to plot')
    values = np.asarray(rows, dtype=np.float64)
    labels = names or (['x', 'y', 'z', 'w'][:values.shape[1]] if values.shape[1] <= 4
                       else [str(i) for i in range(values.shape[1])])
    if s.select:
        idx = []
        for sel in s.select:
            if sel in labels:
                idx.append(labels.index(sel))
            elif sel.isdigit() and int(sel) < values.shape[1]:
                idx.append(int(sel))
            elif sel in _COMPONENTS and _COMPONENTS[sel] < values.shape[1] and not names:
                idx.append(_COMPONENTS[sel])
            else:
                raise ExportError(f'{s.topic}.{s.field}: no element {sel!r} '
                                  f'(have: {", ".join(labels[:8])}{" …" if len(labels) > 8 else ""})')
        values = values[:, idx]
        labels = [labels[i] for i in idx]
    return np.asarray(times), values, labels


def plot(bag_path: str | Path, out: str | Path, signals: Sequence[str] = (), *,
         width: int = 1200, height: int = 800, dpi: int = 100) -> Path:
    """Write a PNG of ``width``×``height`` pixels with one panel per signal spec."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    bag = Bag(bag_path)
    panels = [parse_panel(p) for p in (signals or default_panels(bag))]
    data = [[(s, *_extract(bag, s)) for s in panel] for panel in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(width / dpi, height / dpi), dpi=dpi,
                             sharex=True, squeeze=False)
    for ax, panel in zip(axes[:, 0], data, strict=True):
        for s, t, values, labels in panel:
            style = '--' if 'command' in s.topic else '-'
            for k, label in enumerate(labels):
                ax.plot(t, values[:, k], style, linewidth=0.9, label=f'{s.topic} {label}')
        s0 = panel[0][0]
        t0 = bag.topics[s0.topic].type
        units = dict(_JOINT_FIELDS) if t0 == _J else {f: u for f, u, _ in SIGNALS[t0]}
        ax.set_ylabel(f'{s0.field} [{units.get(s0.field, "")}]')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc='upper right', ncol=2)
    for mark in bag.marks:          # operator marks: a labelled vertical line through every panel
        t = (mark.stamp_ns - bag.start_ns) / 1e9
        colour = MARK_COLOURS.get(mark.kind, 'grey')
        for ax in axes[:, 0]:
            ax.axvline(t, color=colour, linestyle=':', linewidth=1.2)
        axes[0, 0].annotate(f'{mark.kind}: {mark.text}'[:48], (t, 1.0), rotation=90, va='top',
                            ha='right', fontsize=7, color=colour,
                            xycoords=('data', 'axes fraction'))
    axes[-1, 0].set_xlabel(f'time since bag start [s]  ({Path(bag.path).name})')
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format='png')
    plt.close(fig)
    return out
