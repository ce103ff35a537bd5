"""The skill API (version :data:`API_VERSION`): what a vendor's skill class sees and returns.

A skill is a subclass of :class:`Skill`. The runtime builds it with a :class:`SkillContext`
(robot profile, validated parameters, logger, clock, the joints it claimed), calls
:meth:`Skill.configure` once the parameters are valid, :meth:`Skill.start` when it is activated,
then :meth:`Skill.step` at the skill's control rate with the latest :class:`RobotState`.
``step`` returns :class:`Targets` for the claimed joints (keep going), :class:`Done` (success,
the skill node deactivates itself) or :class:`Failed` (the skill node goes to ErrorProcessing).

Everything a skill returns goes through the safety gate: targets are clamped to the profile's
limits, the change per step is bounded, NaN/inf stops the skill. A skill therefore never needs
to be trusted, and should not try to be clever about limits; it should say what it wants.

Compatibility rule: a pack declares ``api_version: 'MAJOR.MINOR'``; the runtime accepts it when
MAJOR equals this module's major and MINOR is not above this module's minor. Additions bump
the minor, anything that could break an existing pack bumps the major.

No rclpy import here: a skill can be unit-tested with plain numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from field_deploy.profile import RobotProfile

API_VERSION = '1.0'


class Logger(Protocol):
    """The part of an rclpy logger a skill may use (a plain ``logging.Logger`` fits too)."""

    def info(self, msg: str) -> Any: ...
    def warning(self, msg: str) -> Any: ...
    def error(self, msg: str) -> Any: ...


@dataclass
class RobotState:
    """The latest measured robot state, in the profile's joint order.

    ``q``, ``dq``, ``tau``: rad, rad/s, N·m, one entry per profile joint (``profile.joint_names``).
    ``imu``: 10 values: orientation quaternion x, y, z, w; angular velocity x, y, z (rad/s);
    linear acceleration x, y, z (m/s²). ``wrenches``: site -> 6 values (force xyz, torque xyz).
    ``stamp_ns``: time of the joint state. Arrays are the runtime's own copies for this step.
    """

    q: np.ndarray
    dq: np.ndarray
    tau: np.ndarray
    imu: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 0.0, 1.0] + [0.0] * 6))
    wrenches: dict[str, np.ndarray] = field(default_factory=dict)
    stamp_ns: int = 0


@dataclass
class SkillContext:
    """What a skill gets at construction."""

    profile: RobotProfile
    params: dict[str, Any]
    logger: Logger
    clock: Callable[[], float]
    """Seconds, monotonic (``time.monotonic`` of the runtime: steady, not sim time)."""
    joints: tuple[str, ...]
    """The joints this skill claimed (its manifest ``claims`` groups), in profile order."""
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    """Profile indices of :attr:`joints`: ``state.q[ctx.indices]`` are the claimed joints."""
    rate_hz: float = 500.0

    def pose(self, attr: str) -> np.ndarray:
        """A profile pose (``default`` or ``safe``) for the claimed joints."""
        return self.profile.array(attr)[self.indices]

    def index(self, joint: str) -> int:
        """Position of a claimed joint in the skill's arrays (``Targets.q[ctx.index(name)]``)."""
        try:
            return self.joints.index(joint)
        except ValueError:
            raise KeyError(f'joint {joint!r} is not claimed by this skill') from None

    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper position limits of the claimed joints."""
        return self.profile.array('lower')[self.indices], self.profile.array('upper')[self.indices]


@dataclass
class Targets:
    """Joint targets for the claimed joints, in :attr:`SkillContext.joints` order."""

    q: np.ndarray
    dq: np.ndarray | None = None
    tau: np.ndarray | None = None
    progress: float | None = None
    """0..1 shown in the runtime status; None leaves the previous value."""


@dataclass
class Done:
    reason: str = 'done'


@dataclass
class Failed:
    reason: str


StepResult = Targets | Done | Failed


class Skill:
    """Base class of every skill. Override :meth:`step`; the others are optional.

    Raising from any method is treated as a failure of this skill only: the runtime logs it,
    holds the pose and keeps running.
    """

    def __init__(self, ctx: SkillContext) -> None:
        self.ctx = ctx

    @property
    def params(self) -> dict[str, Any]:
        return self.ctx.params

    def configure(self) -> str | None:
        """Check the parameters beyond their schema ranges; return a reason to refuse, or None."""
        return None

    def start(self, state: RobotState) -> None:
        """Called on activation with the state at that moment (e.g. to plan from here)."""

    def step(self, state: RobotState, t: float) -> StepResult:
        """One control step; ``t`` is seconds since :meth:`start`."""
        raise NotImplementedError(f'{type(self).__name__}.step')

    def stop(self) -> None:
        """Called when the skill stops for any reason (done, failed, stop, e-stop)."""


# --------------------------------------------------------------------------- helpers

def smoothstep(s: float) -> float:
    """Quintic 0→1 blend with zero velocity and acceleration at both ends."""
    s = min(max(s, 0.0), 1.0)
    return s * s * s * (10.0 + s * (-15.0 + 6.0 * s))


class PoseInterpolator:
    """Move from a start pose to a goal pose, smoothly, never faster than ``max_velocity``.

    The duration is the longer of ``min_duration`` and the time the largest joint move needs at
    ``max_velocity`` with the quintic profile (peak speed 1.875 × the average). ``sample(t)``
    gives the pose at ``t`` seconds; ``done(t)`` once the goal is reached.
    """

    PEAK = 1.875

    def __init__(self, start: Sequence[float] | np.ndarray, goal: Sequence[float] | np.ndarray,
                 max_velocity: float | np.ndarray, min_duration: float = 0.0) -> None:
        self.start = np.asarray(start, dtype=np.float64).copy()
        self.goal = np.asarray(goal, dtype=np.float64).copy()
        if self.start.shape != self.goal.shape:
            raise ValueError(f'start has {self.start.size} joints, goal has {self.goal.size}')
        vmax = np.broadcast_to(np.asarray(max_velocity, dtype=np.float64), self.start.shape)
        if np.any(vmax <= 0):
            raise ValueError('max_velocity must be > 0')
        needed = np.abs(self.goal - self.start) * self.PEAK / vmax
        self.duration = float(max(min_duration, float(needed.max(initial=0.0))))

    def sample(self, t: float) -> np.ndarray:
        if self.duration <= 0.0:
            return self.goal.copy()
        return self.start + (self.goal - self.start) * smoothstep(t / self.duration)

    def progress(self, t: float) -> float:
        return 1.0 if self.duration <= 0.0 else min(max(t / self.duration, 0.0), 1.0)

    def done(self, t: float) -> bool:
        return t >= self.duration


@dataclass(frozen=True)
class GaitPattern:
    """A periodic gait: the phase offset of each leg in [0, 1) and the stance fraction."""

    offsets: Mapping[str, float]
    duty: float

    @staticmethod
    def trot() -> GaitPattern:
        """Diagonal pairs in phase: FL+RR, then FR+RL."""
        return GaitPattern({'FL': 0.0, 'RR': 0.0, 'FR': 0.5, 'RL': 0.5}, duty=0.5)


class GaitGenerator:
    """Joint-space periodic gait for a leg with hip / thigh / calf joints (quadruped convention).

    During swing the foot is lifted by bending thigh and calf (``lift`` rad on the calf, half of
    it on the thigh, a sine arc); during stance the leg stays at its nominal pose. The amplitude
    ramps in and out over ``ramp`` seconds so the first and last steps are gentle. ``sample(t)``
    returns the offsets for every leg joint, to add to the nominal pose.
    """

    def __init__(self, legs: Mapping[str, tuple[int, int, int]], pattern: GaitPattern,
                 frequency: float, lift: float, ramp: float = 0.5) -> None:
        if frequency <= 0:
            raise ValueError('frequency must be > 0')
        missing = sorted(set(pattern.offsets) - set(legs))
        if missing:
            raise ValueError(f'gait pattern names legs {missing} that are not given')
        self.legs = dict(legs)
        self.pattern = pattern
        self.frequency = frequency
        self.lift = lift
        self.ramp = ramp
        self.size = 1 + max(i for idx in self.legs.values() for i in idx)

    def swing_height(self, leg: str, t: float) -> float:
        """0 in stance, a sine arc 0→1→0 in swing."""
        phase = (t * self.frequency + self.pattern.offsets[leg]) % 1.0
        if phase < self.pattern.duty:
            return 0.0
        s = (phase - self.pattern.duty) / (1.0 - self.pattern.duty)
        return math.sin(math.pi * s)

    def sample(self, t: float, duration: float | None = None) -> np.ndarray:
        envelope = 1.0
        if self.ramp > 0:
            envelope = min(1.0, t / self.ramp)
            if duration is not None:
                envelope = min(envelope, max(0.0, (duration - t) / self.ramp))
        out = np.zeros(self.size)
        for leg, (_hip, thigh, calf) in self.legs.items():
            if leg not in self.pattern.offsets:
                continue
            h = envelope * self.swing_height(leg, t)
            out[thigh] += 0.5 * self.lift * h
            out[calf] -= self.lift * h
        return out


class MoveToPose(Skill):
    """A skill that moves its claimed joints to :meth:`goal` and is done when it gets there.

    Uses the parameters ``max_velocity`` (rad/s) and ``min_duration`` (s) when the manifest
    declares them. A subclass only writes ``goal()``; the goal is clipped into the position
    limits so a slightly wrong goal does not look like a limit violation.
    """

    def goal(self) -> np.ndarray:
        raise NotImplementedError(f'{type(self).__name__}.goal')

    def start(self, state: RobotState) -> None:
        lower, upper = self.ctx.limits()
        self.interp = PoseInterpolator(state.q[self.ctx.indices], np.clip(self.goal(), lower, upper),
                                       float(self.params.get('max_velocity', 1.0)),
                                       float(self.params.get('min_duration', 0.0)))

    def step(self, state: RobotState, t: float) -> StepResult:
        if self.interp.done(t):
            if not getattr(self, '_goal_sent', False):
                # A late tick may jump past the end: send the goal itself once, then finish.
                self._goal_sent = True
                return Targets(q=self.interp.goal.copy(), progress=1.0)
            return Done(f'pose reached in {self.interp.duration:.2f} s')
        self._goal_sent = False
        return Targets(q=self.interp.sample(t), progress=self.interp.progress(t))
