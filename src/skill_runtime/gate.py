"""The safety gate and the per-skill runner: the rules between a skill and ``joint_commands``. Pure.

:class:`SafetyGate` owns the one joint command of the robot. Every control tick it merges the
targets of the running skills (each on the joints it claimed), holds every other joint at its last
command, clamps to the profile's position / velocity / effort limits and bounds the change per
tick by the joint's velocity limit. In e-stop it ignores skills and walks every joint to the
profile's safe pose at ``safe_velocity``; nothing else runs until :meth:`SafetyGate.reset`.

:class:`SkillRun` is one running skill as the runtime sees it (the skill runs in its worker
process): its rate, its answers checked again (status, NaN/inf), its step time (watchdog budget)
and its total time (timeout); anything wrong ends that skill alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from field_deploy.profile import RobotProfile
from skill_runtime.api import Targets
from skill_runtime.ipc import ST_DONE, ST_ERROR, ST_FAILED, StepReply, check_reply

MODE_IDLE = 'idle'    # no measured state yet: nothing is published
MODE_RUN = 'run'      # skills may run; unclaimed joints hold
MODE_ESTOP = 'estop'  # safe pose, velocity bounded; only reset leaves it


@dataclass
class Command:
    """One gate output, in profile joint order; ``mode`` goes into the message's frame_id."""

    q: np.ndarray
    dq: np.ndarray
    tau: np.ndarray
    mode: str
    clamped: int = 0
    """How many joints were clamped (limits or rate) in this command."""


class SafetyGate:
    """Joint arbitration, limits and e-stop for one robot profile."""

    def __init__(self, profile: RobotProfile, rate_hz: float, *, safe_velocity: float = 0.5,
                 velocity_scale: float = 1.0) -> None:
        self.profile = profile
        self.names = profile.joint_names
        self.lower = profile.array('lower')
        self.upper = profile.array('upper')
        self.vmax = profile.array('velocity') * velocity_scale
        self.effort = profile.array('effort')
        self.safe = profile.array('safe')
        self.dt = 1.0 / rate_hz
        self.safe_velocity = safe_velocity
        self.mode = MODE_IDLE
        self.command: np.ndarray | None = None
        self.hold = np.full(profile.dof, np.nan)
        """Per joint: the final target of a skill that finished ``done`` (NaN: hold the command).
        The rate bound may not have let the command reach it on the skill's last tick."""
        self.owner: list[str | None] = [None] * profile.dof
        self.estop_reason = ''
        self.clamp_total = 0

    # ----------------------------------------------------------------- arbitration
    def claim(self, owner: str, indices: np.ndarray) -> str | None:
        """Give ``owner`` the joints, or return why not (e-stop, no state, joints held by another)."""
        if self.mode == MODE_ESTOP:
            return f'e-stop is latched ({self.estop_reason}); call reset first'
        if self.mode == MODE_IDLE:
            return 'no joint_states received from the robot yet'
        taken = {self.owner[i] for i in indices if self.owner[i] not in (None, owner)}
        if taken:
            busy = [self.names[i] for i in indices if self.owner[i] in taken]
            return (f'joints already claimed by {", ".join(sorted(t for t in taken if t))}: '
                    f'{", ".join(busy[:4])}{"…" if len(busy) > 4 else ""}')
        for i in indices:
            self.owner[i] = owner
        return None

    def release(self, owner: str, final: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Free ``owner``'s joints; ``final`` (indices, q) keeps driving them to its last target."""
        self.owner = [None if o == owner else o for o in self.owner]
        if final is not None:
            idx, q = final
            self.hold[idx] = np.clip(q, self.lower[idx], self.upper[idx])

    def hold_current(self) -> None:
        """Stop: every free joint holds exactly where it is commanded now."""
        self.hold[:] = np.nan

    def owners(self) -> set[str]:
        return {o for o in self.owner if o is not None}

    # ----------------------------------------------------------------- modes
    def seed(self, q_measured: np.ndarray) -> None:
        """First measured state: start by holding where the robot is (clamped into limits)."""
        if self.command is None:
            self.command = np.clip(np.asarray(q_measured, dtype=np.float64), self.lower, self.upper)
            if self.mode == MODE_IDLE:
                self.mode = MODE_RUN

    def estop(self, reason: str) -> None:
        self.mode = MODE_ESTOP
        self.estop_reason = reason
        self.owner = [None] * len(self.owner)
        self.hold[:] = np.nan

    def reset(self) -> str | None:
        if self.mode != MODE_ESTOP:
            return None
        self.mode = MODE_RUN if self.command is not None else MODE_IDLE
        self.estop_reason = ''
        return None

    # ----------------------------------------------------------------- the tick
    def compute(self, targets: dict[str, tuple[np.ndarray, Targets]]) -> Command | None:
        """The next command. ``targets``: owner -> (profile indices, its latest Targets)."""
        if self.command is None:
            return None
        prev = self.command
        dq = np.zeros_like(prev)
        tau = np.zeros_like(prev)
        if self.mode == MODE_ESTOP:
            step = self.safe_velocity * self.dt
            q = prev + np.clip(self.safe - prev, -step, step)
            q = np.clip(q, self.lower, self.upper)
            self.command = q
            return Command(q=q.copy(), dq=dq, tau=tau, mode=MODE_ESTOP)
        desired = np.where(np.isnan(self.hold), prev, self.hold)
        for owner, (idx, tgt) in targets.items():
            if any(self.owner[i] != owner for i in idx):
                continue  # lost its claim (stop / e-stop raced the tick): ignore
            desired[idx] = tgt.q
            self.hold[idx] = np.nan
            if tgt.dq is not None:
                dq[idx] = tgt.dq
            if tgt.tau is not None:
                tau[idx] = tgt.tau
        clipped = np.clip(desired, self.lower, self.upper)
        step = self.vmax * self.dt
        q = prev + np.clip(clipped - prev, -step, step)
        dq_c = np.clip(dq, -self.vmax, self.vmax)
        tau_c = np.clip(tau, -self.effort, self.effort)
        clamped = int(np.count_nonzero((np.abs(q - desired) > 1e-12) | (dq_c != dq) | (tau_c != tau)))
        self.clamp_total += clamped
        self.command = q
        return Command(q=q.copy(), dq=dq_c, tau=tau_c, mode=MODE_RUN, clamped=clamped)


def check_targets(t: object, n: int) -> str | None:
    """Why a step result cannot be used (wrong type, shape, NaN/inf), or None. Runs in the worker
    (vendor objects are only touched there); it converts the arrays in place to float64."""
    if not isinstance(t, Targets):
        return (f'step returned {type(t).__name__}, expected Targets, Done or Failed')
    for name in ('q', 'dq', 'tau'):
        value = getattr(t, name)
        if value is None:
            if name == 'q':
                return 'Targets.q is None'
            continue
        if isinstance(value, str | bytes):
            return f'Targets.{name} is not numeric'
        try:
            size = len(value)
        except TypeError:
            size = None
        if size is not None and size != n:  # before any conversion: a 10^8-element list is refused at once
            return f'Targets.{name} has {size} entries, expected {n} for the claimed joints'
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return f'Targets.{name} is not numeric'
        if arr.shape != (n,):
            return f'Targets.{name} has shape {arr.shape}, expected ({n},) for the claimed joints'
        if not np.all(np.isfinite(arr)):
            return f'Targets.{name} contains NaN or inf'
        setattr(t, name, arr)
    return None


@dataclass
class SkillRun:
    """One active skill, seen from the runtime: rate divider, watchdog budget, timeout, last output.

    The skill itself runs in its worker process; the control tick asks :meth:`due` whether to
    send it a step request, and hands the answer to :meth:`accept`, which checks it again
    (:func:`skill_runtime.ipc.check_reply`) and ends the run on done / failed / anything invalid.
    """

    key: str
    indices: np.ndarray
    every: int
    """Step the skill every ``every`` gate ticks (its rate divides the gate rate)."""
    budget: float
    timeout: float
    clock: Callable[[], float] = time.monotonic
    on_finish: Callable[[SkillRun], None] | None = None
    """Called once when the run ends (any thread): the runtime asks the worker for ``stop()``."""
    started: float = 0.0
    ticks: int = 0
    steps: int = 0
    late: int = 0
    """Ticks on which the worker's answer had not come within the wait: the joints held."""
    targets: Targets | None = None
    progress: float = 0.0
    outcome: str = ''
    """'' while running; then 'done', 'failed' or 'stopped'."""
    reason: str = ''
    max_step_time: float = 0.0

    def begin(self, q: np.ndarray) -> None:
        """Started: hold the claimed joints where they are until the first answer."""
        self.started = self.clock()
        self.targets = Targets(q=np.asarray(q, dtype=np.float64)[self.indices].copy())

    def finish(self, outcome: str, reason: str) -> bool:
        """End the run (the first outcome wins); True if this call ended it."""
        if self.outcome:
            return False
        self.outcome, self.reason = outcome, reason
        if self.on_finish is not None:
            self.on_finish(self)
        return True

    def due(self) -> float | None:
        """Advance one gate tick: the skill's time ``t`` when a step is due now, else None.
        Ends the run when it is active longer than its timeout."""
        if self.outcome:
            return None
        t = self.clock() - self.started
        if t > self.timeout:
            self.finish('failed', f'timeout: still running after {self.timeout:g} s')
            return None
        self.ticks += 1
        if (self.ticks - 1) % self.every:
            return None
        return t

    def accept(self, reply: StepReply) -> None:
        """A step's answer from the worker; sets :attr:`outcome` when it ends the skill."""
        if self.outcome:
            return
        self.steps += 1
        self.max_step_time = max(self.max_step_time, reply.step_time)
        problem = check_reply(reply, len(self.indices))
        if problem is not None:
            self.finish('failed', problem)
        elif reply.step_time > self.budget:
            self.finish('failed', f'watchdog: step took {reply.step_time * 1e3:.1f} ms, budget '
                                  f'{self.budget * 1e3:.1f} ms')
        elif reply.status == ST_DONE:
            self.progress = 1.0
            self.finish('done', reply.reason or 'done')
        elif reply.status in (ST_FAILED, ST_ERROR):
            self.finish('failed', reply.reason or 'failed')
        else:
            if reply.progress is not None:
                self.progress = min(max(reply.progress, 0.0), 1.0)
            self.targets = Targets(q=reply.q, dq=reply.dq, tau=reply.tau)
