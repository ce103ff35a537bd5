"""Reference quadruped skills: stand up, lie down, trot in place.

Written against the public skill API only, as a vendor would: each skill is a few lines on top of
``MoveToPose`` or the gait generator; the runtime's safety gate does the limit keeping.
"""

from __future__ import annotations

import numpy as np

from skill_runtime.api import (
    Done,
    GaitGenerator,
    GaitPattern,
    MoveToPose,
    PoseInterpolator,
    RobotState,
    Skill,
    StepResult,
    Targets,
)

LEGS = ('FL', 'FR', 'RL', 'RR')


class StandUp(MoveToPose):
    """Rise to the profile's default (standing) pose."""

    def goal(self) -> np.ndarray:
        return self.ctx.pose('default')


class LieDown(MoveToPose):
    """Fold the legs under the body: the profile's safe pose, which is the lying pose."""

    def goal(self) -> np.ndarray:
        return self.ctx.pose('safe')


class TrotInPlace(Skill):
    """Stand, then trot in place (diagonal pairs) for ``duration`` seconds, then stand still."""

    def configure(self) -> str | None:
        missing = [f'{leg}_{j}_joint' for leg in LEGS for j in ('hip', 'thigh', 'calf')
                   if f'{leg}_{j}_joint' not in self.ctx.joints]
        return f'robot lacks joints {missing}' if missing else None

    def start(self, state: RobotState) -> None:
        c = self.ctx
        self.nominal = c.pose('default')
        self.stand = PoseInterpolator(state.q[c.indices], self.nominal, 1.0, 0.3)
        legs = {leg: tuple(c.index(f'{leg}_{j}_joint') for j in ('hip', 'thigh', 'calf'))
                for leg in LEGS}
        self.gait = GaitGenerator(legs, GaitPattern.trot(), frequency=self.params['frequency'],
                                  lift=self.params['lift'], ramp=0.5)
        self.standing = False

    def step(self, state: RobotState, t: float) -> StepResult:
        duration = self.params['duration']
        if not self.stand.done(t):
            return Targets(q=self.stand.sample(t), progress=0.0)
        tg = t - self.stand.duration
        if tg >= duration:
            if not self.standing:
                self.standing = True  # end on the nominal stance, however late this tick is
                return Targets(q=self.nominal, progress=1.0)
            return Done(f'trotted {duration:g} s at {self.params["frequency"]:g} Hz')
        return Targets(q=self.nominal + self.gait.sample(tg, duration), progress=tg / duration)
