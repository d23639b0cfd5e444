"""Noise-conditioning augmentation for super-resolution stages (Imagen, Ho et al. 2021 "cascaded diffusion").

The low-resolution conditioning image is corrupted by the forward process at an augmentation level
aug_level in [0, 1] (a time on a schedule), drawn per example in training and fixed (e.g. 0 or 0.2) at
sampling; the model is told the level through its log-SNR. Level 0 leaves the image exactly untouched.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from imagen_jax.diffusion.objectives import broadcast_to, q_sample
from imagen_jax.diffusion.schedules import Schedule, as_schedule

Array = jax.Array


def _is_key(x: Array) -> bool:
    x = jnp.asarray(x) if not hasattr(x, "dtype") else x
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) or (x.dtype == jnp.uint32 and x.shape == (2,))


def noise_condition_augment(
    lowres: Array, aug_level: Array | float, rng_or_noise: Array, schedule: str | Schedule = "linear"
) -> tuple[Array, Array]:
    """(corrupted lowres [B, ...], aug_log_snr [B]) for lowres [B, ...] and aug_level [B] (or a scalar) in
    [0, 1]: corrupted = alpha lowres + sigma noise at log_snr = schedule.log_snr(aug_level), except where
    aug_level == 0, which returns lowres unchanged. rng_or_noise: a PRNG key or the noise [B, ...] itself.
    Feed aug_log_snr (or aug_level) to the model as its augmentation condition."""
    schedule = as_schedule(schedule)
    b = lowres.shape[0]
    aug_level = jnp.broadcast_to(jnp.asarray(aug_level, jnp.float32), (b,))
    if _is_key(rng_or_noise):
        noise = jax.random.normal(rng_or_noise, lowres.shape, lowres.dtype)
    else:
        noise = jnp.asarray(rng_or_noise, lowres.dtype)
        if noise.shape != lowres.shape:
            raise ValueError(f"Noise shape {noise.shape} differs from the low-res image shape {lowres.shape}")
    aug_log_snr = schedule.log_snr(aug_level)
    corrupted = q_sample(lowres, aug_log_snr, noise)
    return jnp.where(broadcast_to(aug_level > 0, lowres), corrupted, lowres), aug_log_snr


def sample_aug_levels(rng: Array, batch_size: int, max_level: float = 1.0) -> Array:
    """Training augmentation levels [B] ~ U(0, max_level)."""
    if not 0.0 <= max_level <= 1.0:
        raise ValueError(f"max_level must be in [0, 1], got {max_level}")
    return jax.random.uniform(rng, (batch_size,), minval=0.0, maxval=max_level)
