"""Continuous-time log-SNR noise schedules.

Time t runs over [0, 1]: t = 0 is (nearly) clean data, t = 1 is (nearly) pure noise. A schedule maps t to
log_snr = log(alpha^2 / sigma^2) with alpha^2 = sigmoid(log_snr), sigma^2 = sigmoid(-log_snr) (variance
preserving), and back. Every schedule is finite at both ends so that a network can be conditioned on it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@runtime_checkable
class Schedule(Protocol):
    """What every schedule offers: t in [0, 1] -> log-SNR and its inverse (elementwise, any shape)."""

    def log_snr(self, t: Array) -> Array: ...

    def t_from_log_snr(self, log_snr: Array) -> Array: ...


def alpha_sigma(log_snr: Array) -> tuple[Array, Array]:
    """(alpha, sigma) with alpha^2 = sigmoid(log_snr), sigma^2 = sigmoid(-log_snr); same shape as log_snr."""
    log_snr = jnp.asarray(log_snr)
    return jnp.sqrt(jax.nn.sigmoid(log_snr)), jnp.sqrt(jax.nn.sigmoid(-log_snr))


def log_snr_from_alpha_sigma(alpha: Array, sigma: Array) -> Array:
    """log(alpha^2 / sigma^2)."""
    return 2.0 * (jnp.log(alpha) - jnp.log(sigma))


def edm_sigma(log_snr: Array) -> Array:
    """The Karras/EDM noise level sigma / alpha = exp(-log_snr / 2) (0 for log_snr = +inf)."""
    return jnp.exp(-0.5 * jnp.asarray(log_snr))


def log_snr_from_edm_sigma(sigma: Array) -> Array:
    """Inverse of edm_sigma: -2 log(sigma) (+inf for sigma = 0)."""
    return -2.0 * jnp.log(jnp.asarray(sigma))


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
    """The iDDPM cosine schedule with offset s: alpha_bar = cos^2((t + s) / (1 + s) * pi / 2), as in
    imagen-pytorch (log_snr = -2 log tan(angle)), clipped to [log_snr_min, log_snr_max]."""

    offset: float = 0.008
    log_snr_min: float = -20.0
    log_snr_max: float = 20.0

    def log_snr(self, t: Array) -> Array:
        # -2 log tan(angle) = 2 log tan(pi/2 - angle), written with the complement so that t = 1 gives
        # log(0) = -inf (then clipped) instead of the tangent of a float32 pi/2, which can be negative.
        complement = (1.0 - jnp.asarray(t, jnp.float32)) / (1.0 + self.offset) * (math.pi / 2)
        return jnp.clip(2.0 * jnp.log(jnp.tan(complement)), self.log_snr_min, self.log_snr_max)

    def t_from_log_snr(self, log_snr: Array) -> Array:
        complement = jnp.arctan(jnp.exp(0.5 * jnp.asarray(log_snr, jnp.float32)))
        return jnp.clip(1.0 - complement * (2 / math.pi) * (1.0 + self.offset), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
    """imagen-pytorch's continuous linear schedule: log_snr = -log(expm1(beta_start + scale * t^2)),
    i.e. alpha_bar = exp(-(1e-4 + 10 t^2)); about +9.2 at t = 0 and -10 at t = 1."""

    beta_start: float = 1e-4
    scale: float = 10.0

    def log_snr(self, t: Array) -> Array:
        t = jnp.asarray(t, jnp.float32)
        return -jnp.log(jnp.expm1(self.beta_start + self.scale * t**2))

    def t_from_log_snr(self, log_snr: Array) -> Array:
        u = jax.nn.softplus(-jnp.asarray(log_snr, jnp.float32)) - self.beta_start
        return jnp.clip(jnp.sqrt(jnp.maximum(u, 0.0) / self.scale), 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _discrete_log_snr_table(num_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """log-SNR of the discrete DDPM linear-beta chain after steps 1..num_steps, float64, decreasing."""
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    log_alpha_bar = np.cumsum(np.log1p(-betas))
    return log_alpha_bar - np.log(-np.expm1(log_alpha_bar))


@dataclasses.dataclass(frozen=True)
class LinearBetaSchedule:
    """The DDPM discrete linear-beta schedule (the Imagen 1024 stage: 1000 steps, beta 1e-4..0.02).

    Discrete step k = 0..num_steps-1 (alpha_bar_k = prod_{i<=k} (1 - beta_i)) sits at t = k / (num_steps-1);
    log-SNR is linearly interpolated between steps: about +9.2 at t = 0 and -10.1 at t = 1."""

    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        table = _discrete_log_snr_table(self.num_steps, self.beta_start, self.beta_end)
        return np.linspace(0.0, 1.0, self.num_steps), table

    def log_snr(self, t: Array) -> Array:
        ts, table = self._table()
        return jnp.interp(jnp.asarray(t, jnp.float32), ts.astype(np.float32), table.astype(np.float32))

    def t_from_log_snr(self, log_snr: Array) -> Array:
        ts, table = self._table()  # table decreases: interpolate on the reversed (increasing) arrays
        return jnp.interp(
            jnp.asarray(log_snr, jnp.float32), table[::-1].astype(np.float32), ts[::-1].astype(np.float32)
        )

    def timestep(self, t: Array) -> Array:
        """The discrete DDPM step index nearest to t, int32 in [0, num_steps)."""
        return jnp.round(jnp.asarray(t) * (self.num_steps - 1)).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class ShiftedSchedule:
    """A base schedule shifted by a constant in log-SNR ("simple diffusion", Hoogeboom et al. 2023):
    log_snr(t) = base.log_snr(t) + shift, with shift = 2 log(base_resolution / resolution)."""

    base: Schedule
    shift: float

    def log_snr(self, t: Array) -> Array:
        return self.base.log_snr(t) + self.shift

    def t_from_log_snr(self, log_snr: Array) -> Array:
        return self.base.t_from_log_snr(jnp.asarray(log_snr) - self.shift)


_SCHEDULES = {"cosine": CosineSchedule, "linear": LinearSchedule, "linear_beta_1000": LinearBetaSchedule}


def get_schedule(
    name: str, *, resolution: int | None = None, base_resolution: int | None = None, **options
) -> Schedule:
    """A schedule by name ("cosine", "linear", "linear_beta_1000"), built with its dataclass options
    (e.g. offset=0.008, log_snr_min=-20.0 for cosine); with resolution and base_resolution, shifted in
    log-SNR by 2 log(base_resolution / resolution)."""
    if name not in _SCHEDULES:
        raise ValueError(f"Unknown noise schedule {name!r}; choose one of {sorted(_SCHEDULES)}")
    cls = _SCHEDULES[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options) - fields
    if unknown:
        raise ValueError(
            f"Unknown option(s) {sorted(unknown)} for schedule {name!r}; valid: {sorted(fields)}"
        )
    schedule: Schedule = cls(**options)
    if (resolution is None) != (base_resolution is None):
        raise ValueError(
            "Give both resolution and base_resolution for a resolution-shifted schedule, or neither"
        )
    if resolution is not None and resolution != base_resolution:
        if resolution <= 0 or base_resolution <= 0:
            raise ValueError(f"Resolutions must be positive, got {resolution} and {base_resolution}")
        schedule = ShiftedSchedule(schedule, 2.0 * math.log(base_resolution / resolution))
    return schedule


def as_schedule(schedule: str | Schedule) -> Schedule:
    """A schedule object from a name or a schedule object (returned as is)."""
    if isinstance(schedule, str):
        return get_schedule(schedule)
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"Expected a schedule name or an object with log_snr and t_from_log_snr, got {schedule!r}"
        )
    return schedule
