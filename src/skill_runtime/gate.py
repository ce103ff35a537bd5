"""The safety gate and the per-skill runner: the rules between a skill and ``joint_commands``. Pure.

:class:`SafetyGate` owns the one joint command of the robot. Every control tick it merges the
targets of the running skills (each on the joints it claimed), holds every other joint at its last
command, clamps to the profile's position / velocity / effort limits and bounds the change per
tick by the joint's velocity limit. In e-stop it ignores skills and walks every joint to the
profile's safe pose at ``safe_velocity``; nothing else runs until :meth:`SafetyGate.reset`.

:class:`SkillRun` wraps one skill instance: calls it at its own rate, checks its output (shape,
NaN/inf), its step time (watchdog budget) and its total time (timeout), and turns any exception
into a failure of that skill alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from field_deploy.profile import RobotProfile
from skill_runtime.api import Done, Failed, RobotState, Skill, Targets

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
    """Why a step result cannot be used (wrong type, shape, NaN/inf), or None."""
    if not isinstance(t, Targets):
        return (f'step returned {type(t).__name__}, expected Targets, Done or Failed')
    for name in ('q', 'dq', 'tau'):
        value = getattr(t, name)
        if value is None:
            if name == 'q':
                return 'Targets.q is None'
            continue
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
    """One active skill: its rate divider, watchdog budget, timeout and last output."""

    key: str
    skill: Skill
    indices: np.ndarray
    every: int
    """Step the skill every ``every`` gate ticks (its rate divides the gate rate)."""
    budget: float
    timeout: float
    clock: Callable[[], float] = time.monotonic
    started: float = 0.0
    ticks: int = 0
    steps: int = 0
    targets: Targets | None = None
    progress: float = 0.0
    outcome: str = ''
    """'' while running; then 'done', 'failed' or 'stopped'."""
    reason: str = ''
    max_step_time: float = 0.0
    step_times: list[float] = field(default_factory=list)

    def start(self, state: RobotState) -> None:
        self.started = self.clock()
        self.skill.start(state)
        self.targets = Targets(q=state.q[self.indices].copy())

    def finish(self, outcome: str, reason: str) -> None:
        if self.outcome:
            return
        self.outcome, self.reason = outcome, reason
        try:
            self.skill.stop()
        except Exception as exc:  # the skill is finished anyway; note it
            self.reason += f' (stop() raised {type(exc).__name__}: {exc})'

    def tick(self, state: RobotState) -> None:
        """Advance one gate tick; sets :attr:`outcome` when the skill ends for any reason."""
        if self.outcome:
            return
        now = self.clock()
        t = now - self.started
        if t > self.timeout:
            self.finish('failed', f'timeout: still running after {self.timeout:g} s')
            return
        self.ticks += 1
        if (self.ticks - 1) % self.every:
            return
        t0 = time.perf_counter()
        try:
            result = self.skill.step(state, t)
        except Exception as exc:
            self.finish('failed', f'step raised {type(exc).__name__}: {exc}')
            return
        elapsed = time.perf_counter() - t0
        self.steps += 1
        self.max_step_time = max(self.max_step_time, elapsed)
        if elapsed > self.budget:
            self.finish('failed', f'watchdog: step took {elapsed * 1e3:.1f} ms, budget '
                                  f'{self.budget * 1e3:.1f} ms')
            return
        if isinstance(result, Done):
            self.progress = 1.0
            self.finish('done', result.reason or 'done')
            return
        if isinstance(result, Failed):
            self.finish('failed', result.reason or 'failed')
            return
        problem = check_targets(result, len(self.indices))
        if problem is not None:
            self.finish('failed', problem)
            return
        assert isinstance(result, Targets)
        if result.progress is not None and math.isfinite(result.progress):
            self.progress = min(max(float(result.progress), 0.0), 1.0)
        self.targets = result
