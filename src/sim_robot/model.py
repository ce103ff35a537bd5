"""Pure simulation core of ``sim_robot``: joints, motors, battery, base, sensors and faults.

No rclpy import: the node shell (:mod:`sim_robot.node`) steps a :class:`SimModel` at the
profile's control rate and copies its arrays into messages. Everything here is deterministic
for a given seed, so the unit tests can check the physics directly.

Models, and why they are this simple:

* **Joints** — each joint's motor driver runs a PD loop on the last commanded target
  (``kp = I wn²``, ``kd = 2 ζ I wn``); the motor torque follows the PD demand with a first-order
  lag (``motor_time_constant``) and is clamped to the profile's effort limit; velocity is clamped
  to the velocity limit, position to the position limits (velocity zeroed at a stop). The
  robot starts in the profile's *safe* pose (lying / crouched) and, with no ``joint_commands``,
  holds it. That is what a hardware driver in position mode does, and what a safety gate
  upstream has to deal with (saturation, lag, limits).
* **Motors** — current ``i = τ / k_t``; copper loss ``P = R i²`` heats a first-order thermal
  mass: ``dT/dt = (T_amb + R_th P − T) / τ_th`` (profile ``motor:`` parameters).
* **Battery** — a pack at the profile's ``motor.voltage`` drains by the electrical power
  (idle load + mechanical power + copper losses); voltage sags with the state of charge.
* **Base** — a planar odometry integrator of a body twist (zero unless ``drive`` is set).
* **IMU** — gravity rotated into the body frame plus white noise; **wrenches** — the body
  weight shared by the feet, growing as the legs go from the safe to the default pose, and a
  small payload at the wrists.
* **Faults** — ``overheat`` (a joint's temperature ramps past the error threshold),
  ``freeze`` (a joint's reported position stops updating), ``noise`` (extra white noise on
  every measured value). A silent topic is a publishing decision, kept in :class:`Faults`
  so that the node and the tests share one description.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from field_deploy.profile import RobotProfile

GRAVITY = 9.81
MAX_STEP = 0.002
"""Longest integration step (s): the PD loop at wn = 20 rad/s is well inside stability."""

#: Typical body masses (kg), used only for the foot forces.
BODY_MASS = {'quadruped': 15.0, 'humanoid': 35.0}

#: Error codes reported per motor in ``/diagnostics`` (key ``error_code``).
ERROR_OK = 0
ERROR_OVER_TEMPERATURE_WARN = 1
ERROR_OVER_TEMPERATURE = 2


@dataclass
class Faults:
    """Injected faults; the node maps its ``fault_*`` parameters onto this."""

    overheat: set[str] = field(default_factory=set)
    """Joints whose temperature ramps at ``overheat_rate`` °C/s to 15 °C above the error threshold."""
    overheat_rate: float = 15.0
    freeze: set[str] = field(default_factory=set)
    """Joints whose reported position (and velocity) stops updating."""
    silent: set[str] = field(default_factory=set)
    """Topics (as named in the profile) that are not published."""
    noise: float = 0.0
    """Extra white-noise standard deviation on every measured value (rad, rad/s, N·m, m/s², N)."""


@dataclass(frozen=True)
class Gains:
    natural_frequency: float = 20.0
    damping_ratio: float = 0.9
    motor_time_constant: float = 0.004
    max_acceleration: float = 400.0
    """Effort / inertia: the joint's acceleration at full torque (rad/s²) sets the inertia."""


class SimModel:
    """State of one simulated robot; :meth:`step` advances it by ``dt`` seconds."""

    def __init__(self, profile: RobotProfile, *, seed: int = 0, gains: Gains = Gains(),
                 battery_fraction: float = 0.95, battery_capacity_ah: float = 15.0,
                 sensor_noise: float = 0.002) -> None:
        self.profile = profile
        self.names = profile.joint_names
        self.n = profile.dof
        self._index = {name: i for i, name in enumerate(self.names)}
        self.rng = np.random.default_rng(seed)
        self.gains = gains
        self.faults = Faults()
        self.sensor_noise = sensor_noise

        self.lower = profile.array('lower')
        self.upper = profile.array('upper')
        self.vmax = profile.array('velocity')
        self.effort_limit = profile.array('effort')
        self.safe = profile.array('safe')
        self.default = profile.array('default')
        self.inertia = self.effort_limit / gains.max_acceleration
        wn = gains.natural_frequency
        self.kp = self.inertia * wn * wn
        self.kd = 2.0 * gains.damping_ratio * self.inertia * wn

        motor = profile.motor
        self.r_th = motor.get('thermal_resistance', 1.0)
        self.tau_th = motor.get('thermal_time_constant', 60.0)
        self.ambient = motor.get('ambient', 25.0)
        self.r_cu = motor.get('copper_loss', 0.3)
        self.voltage_nominal = motor.get('voltage', 48.0)
        self.k_t = motor.get('torque_constant', 1.0)

        self.time = 0.0
        self.q = self.safe.copy()
        self.dq = np.zeros(self.n)
        self.tau = np.zeros(self.n)
        self.target = self.safe.copy()
        self.temperature = np.full(self.n, self.ambient)
        self.current = np.zeros(self.n)
        self._frozen_q = self.q.copy()

        self.battery_capacity_ah = battery_capacity_ah
        self.battery_charge_ah = battery_capacity_ah * float(np.clip(battery_fraction, 0.0, 1.0))
        self.battery_current = 0.0
        self.idle_power = 40.0 if profile.kind == 'quadruped' else 80.0

        # Plain floats: three scalars are cheaper in Python than in numpy.
        self.pose = [0.0, 0.0, 0.0]  # x, y, yaw
        self.twist = [0.0, 0.0, 0.0]  # vx, vy, wz in the body frame
        self.drive = [0.0, 0.0, 0.0]
        self._buf = np.zeros(self.n)
        self._buf2 = np.zeros(self.n)
        self._mask = np.zeros(self.n, dtype=bool)
        self._neg_effort = -self.effort_limit
        self._neg_vmax = -self.vmax
        self._inv_kt = 1.0 / self.k_t
        self._dt_cache: tuple[float, float, np.ndarray] = (0.0, 0.0, self._buf)

        self.mass = BODY_MASS.get(profile.kind, 20.0)
        self._span = float(np.mean(np.abs(self.safe - self.default))) or 1.0
        self.sites = [str(t.params.get('site') or t.name.rsplit('/', 1)[-1])
                      for t in profile.topics if t.type == 'geometry_msgs/msg/WrenchStamped']
        self._feet = sum(1 for site in self.sites if 'foot' in site)
        sigma = sensor_noise
        self._noise_scale = np.concatenate([
            np.full(self.n, 0.1 * sigma), np.full(2 * self.n, sigma),
            np.full(3, sigma), np.full(3, 10 * sigma), np.full(6 * len(self.sites), 50 * sigma)])
        self._noise_size = self._noise_scale.size
        self.wrenches: dict[str, np.ndarray] = {}
        self._measure(None)

    # ------------------------------------------------------------------ commands
    def command(self, names: list[str] | tuple[str, ...], positions: list[float] | np.ndarray) -> int:
        """Set targets for the named joints (unknown names and non-finite values are ignored).

        Returns how many joints were set; the motor drivers clamp the target to the limits,
        as hardware does, but the safety gate upstream is the one that is meant to.
        """
        applied = 0
        index = self._index
        for name, value in zip(names, positions, strict=False):
            i = index.get(name)
            if i is None or not math.isfinite(value):
                continue
            self.target[i] = min(max(value, self.lower[i]), self.upper[i])
            applied += 1
        return applied

    # ------------------------------------------------------------------ dynamics
    def step(self, dt: float) -> None:
        """Advance by ``dt`` s; long steps are split so the explicit integration stays stable."""
        if dt <= 0.0:
            return
        count = max(1, math.ceil(dt / MAX_STEP - 1e-9))
        for _ in range(count):
            self._step(dt / count)

    def _step(self, dt: float) -> None:
        # In-place numpy on small vectors: ~30 ufunc calls per step, no allocation.
        q, dq, tau, buf, buf2 = self.q, self.dq, self.tau, self._buf, self._buf2
        if self._dt_cache[0] != dt:
            alpha = 1.0 - math.exp(-dt / self.gains.motor_time_constant)  # exact first-order lag
            self._dt_cache = (dt, alpha, dt / self.inertia)
        _, alpha, accel_gain = self._dt_cache
        # PD demand, clamped to the effort limit; the motor torque lags it (stays within limits).
        np.subtract(self.target, q, out=buf)
        buf *= self.kp
        np.multiply(self.kd, dq, out=buf2)
        buf -= buf2
        np.minimum(buf, self.effort_limit, out=buf)
        np.maximum(buf, self._neg_effort, out=buf)
        buf -= tau
        buf *= alpha
        tau += buf
        # Semi-implicit Euler: stable for wn*dt << 1 (0.04 at 500 Hz).
        np.multiply(tau, accel_gain, out=buf)
        dq += buf
        np.minimum(dq, self.vmax, out=dq)
        np.maximum(dq, self._neg_vmax, out=dq)
        np.multiply(dq, dt, out=buf)
        q += buf
        mask = self._mask
        np.less(q, self.lower, out=mask)
        if mask.any():
            q[mask] = self.lower[mask]
            dq[mask & (dq < 0)] = 0.0
        np.greater(q, self.upper, out=mask)
        if mask.any():
            q[mask] = self.upper[mask]
            dq[mask & (dq > 0)] = 0.0

        # Motors: current and copper-loss heating.
        np.multiply(tau, self._inv_kt, out=self.current)
        power = self.heat(self.current, dt)
        if self.faults.overheat:
            ceiling = self.profile.motor_temperature.error + 15.0
            for name in self.faults.overheat:
                i = self._index.get(name)
                if i is not None and self.temperature[i] < ceiling:
                    self.temperature[i] = min(ceiling, self.temperature[i]
                                              + self.faults.overheat_rate * dt)

        # Battery: idle load + mechanical power + copper losses.
        np.multiply(tau, dq, out=buf)
        np.abs(buf, out=buf)
        electrical = self.idle_power + float(buf.sum()) + float(power.sum())
        self.battery_current = electrical / max(self.battery_voltage, 1.0)
        self.battery_charge_ah = max(0.0, self.battery_charge_ah - self.battery_current * dt / 3600.0)

        # Base: first-order approach of the body twist to the drive command, planar integration.
        twist, drive, pose = self.twist, self.drive, self.pose
        k = min(1.0, dt / 0.2)
        for j in range(3):
            twist[j] += k * (float(drive[j]) - twist[j])
        yaw = pose[2]
        c, s = math.cos(yaw), math.sin(yaw)
        pose[0] += dt * (c * twist[0] - s * twist[1])
        pose[1] += dt * (s * twist[0] + c * twist[1])
        pose[2] = math.remainder(yaw + dt * twist[2], math.tau)

        # A frozen encoder keeps reporting the position it had when the fault started.
        if self.faults.freeze:
            frozen = self._frozen_mask()
            self._frozen_q[~frozen] = q[~frozen]
        else:
            frozen = None
            np.copyto(self._frozen_q, q)
        self.time += dt
        self._measure(frozen)

    def heat(self, current: np.ndarray, dt: float) -> np.ndarray:
        """Advance the motor temperatures for ``current`` (A) over ``dt``; returns the copper loss (W).

        First-order thermal mass: ``dT/dt = (T_amb + R_th R_cu i² − T) / τ_th``.
        """
        power = current * current
        power *= self.r_cu
        steady = power * self.r_th
        steady += self.ambient
        steady -= self.temperature
        steady *= dt / self.tau_th
        self.temperature += steady
        return power

    def _frozen_mask(self) -> np.ndarray:
        mask = np.zeros(self.n, dtype=bool)
        for name in self.faults.freeze:
            i = self._index.get(name)
            if i is not None:
                mask[i] = True
        return mask

    # ------------------------------------------------------------------ measurements
    def _measure(self, frozen: np.ndarray | None) -> None:
        """Sample every sensor once per step, with one noise draw (cheap at 500 Hz).

        Base noise: encoders 0.1·σ rad, velocity / effort σ, gyro σ rad/s, accelerometer 10·σ m/s²,
        force/torque 50·σ N (σ = ``sensor_noise``); ``faults.noise`` adds to each.
        """
        n = self.n
        extra = self.faults.noise
        z = self.rng.standard_normal(self._noise_size)
        z *= self._noise_scale
        if extra > 0.0:
            z += extra * self.rng.standard_normal(self._noise_size)
        self.position_measured = self._frozen_q + z[:n]
        self.velocity_measured = self.dq + z[n:2 * n]
        if frozen is not None:
            self.velocity_measured[frozen] = 0.0
            self.position_measured[frozen] = self._frozen_q[frozen]
        self.effort_measured = self.tau + z[2 * n:3 * n]
        k = 3 * n
        self.gyro = z[k:k + 3]
        self.gyro[2] += self.twist[2]
        self.accel = z[k + 3:k + 6]
        self.accel[2] += GRAVITY
        k += 6
        dist = float(np.abs(self.q - self.default).mean())
        self.stand_fraction = min(1.0, max(0.0, 1.0 - dist / self._span))
        foot_load = self.mass * GRAVITY * self.stand_fraction / max(self._feet, 1)
        for j, site in enumerate(self.sites):
            w = z[k + 6 * j:k + 6 * j + 6]
            w[2] += foot_load if 'foot' in site else -0.5 * GRAVITY
            self.wrenches[site] = w

    def joint_measurement(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reported (position, velocity, effort): encoder noise, frozen encoders, injected noise."""
        return self.position_measured, self.velocity_measured, self.effort_measured

    def imu(self) -> tuple[tuple[float, float, float, float], np.ndarray, np.ndarray]:
        """(orientation quaternion xyzw, angular velocity, linear acceleration) in the body frame."""
        yaw = self.pose[2]
        quat = (0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0))
        return quat, self.gyro, self.accel

    def wrench(self, site: str) -> np.ndarray:
        """(fx, fy, fz, tx, ty, tz) at a site: feet share the weight (0 lying, all standing),
        wrists hold a 0.5 kg payload."""
        try:
            return self.wrenches[site]
        except KeyError:
            raise KeyError(f'robot {self.profile.name!r} has no wrench site {site!r} '
                           f'(sites: {", ".join(self.sites)})') from None

    @property
    def battery_fraction(self) -> float:
        return self.battery_charge_ah / self.battery_capacity_ah

    @property
    def battery_voltage(self) -> float:
        return self.voltage_nominal * (0.88 + 0.17 * self.battery_fraction)

    def motor_levels(self) -> list[tuple[int, int, str]]:
        """Per joint (diagnostic level 0/1/2, error code, message) from the temperature thresholds."""
        th = self.profile.motor_temperature
        out = []
        for temp in self.temperature:
            if temp >= th.error:
                out.append((2, ERROR_OVER_TEMPERATURE, f'over temperature ({temp:.1f} °C)'))
            elif temp >= th.warn:
                out.append((1, ERROR_OVER_TEMPERATURE_WARN, f'hot ({temp:.1f} °C)'))
            else:
                out.append((0, ERROR_OK, 'ok'))
        return out
