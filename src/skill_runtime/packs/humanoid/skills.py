"""Reference humanoid skills: stand up, crouch, wave the right arm, hold a pose."""

from __future__ import annotations

import math

import numpy as np

from skill_runtime.api import Done, MoveToPose, PoseInterpolator, RobotState, Skill, StepResult, Targets


class StandUp(MoveToPose):
    """Whole body to the profile's default (standing) pose."""

    def goal(self) -> np.ndarray:
        return self.ctx.pose('default')


class Crouch(MoveToPose):
    """Bend hips, knees and ankles together by ``depth`` (feet flat, body lowered)."""

    def goal(self) -> np.ndarray:
        q = self.ctx.pose('default')
        d = self.params['depth']
        for side in ('left', 'right'):
            q[self.ctx.index(f'{side}_hip_pitch_joint')] = -d
            q[self.ctx.index(f'{side}_knee_joint')] = 2.0 * d
            q[self.ctx.index(f'{side}_ankle_pitch_joint')] = -d
        return q


class Wave(Skill):
    """Raise the right arm, wave the forearm ``cycles`` times, lower the arm to the default pose."""

    def start(self, state: RobotState) -> None:
        c = self.ctx
        self.rest = c.pose('default')
        self.up = self.rest.copy()
        self.up[c.index('right_shoulder_pitch_joint')] = -1.2
        self.up[c.index('right_shoulder_roll_joint')] = -1.0
        self.up[c.index('right_elbow_joint')] = 1.1
        self.elbow = c.index('right_elbow_joint')
        self.raise_ = PoseInterpolator(state.q[c.indices], self.up, 1.5, 0.8)
        self.wave_time = self.params['cycles'] / self.params['frequency']
        self.lower = PoseInterpolator(self.up, self.rest, 1.5, 0.8)
        self.at_rest = False

    def step(self, state: RobotState, t: float) -> StepResult:
        t1 = self.raise_.duration
        t2 = t1 + self.wave_time
        total = t2 + self.lower.duration
        if t < t1:
            return Targets(q=self.raise_.sample(t), progress=t / total)
        if t < t2:
            q = self.up.copy()
            phase = 2 * math.pi * self.params['frequency'] * (t - t1)
            q[self.elbow] += self.params['amplitude'] * math.sin(phase)
            return Targets(q=q, progress=t / total)
        if t < total:
            return Targets(q=self.lower.sample(t - t2), progress=t / total)
        if not self.at_rest:
            self.at_rest = True  # the last target is the rest pose, however late this tick is
            return Targets(q=self.rest, progress=1.0)
        return Done(f'waved {self.params["cycles"]} times')


class HoldPose(Skill):
    """Hold the whole body where it is for ``duration`` seconds (0: until stopped)."""

    def start(self, state: RobotState) -> None:
        self.pose = state.q[self.ctx.indices].copy()

    def step(self, state: RobotState, t: float) -> StepResult:
        duration = self.params['duration']
        if duration > 0 and t >= duration:
            return Done(f'held {duration:g} s')
        return Targets(q=self.pose, progress=min(t / duration, 1.0) if duration > 0 else 0.0)
