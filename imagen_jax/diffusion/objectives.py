"""Forward process, posterior, prediction conversions and training losses (variance preserving, log-SNR).

x_t = alpha x0 + sigma eps with alpha^2 = sigmoid(log_snr), sigma^2 = sigmoid(-log_snr); log_snr has shape
[B] (or is a scalar) and is broadcast over the trailing dimensions of x. The network predicts one of
"eps" (the noise), "x0" (the clean image) or "v" = alpha eps - sigma x0 (Salimans & Ho 2022).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from imagen_jax.diffusion.schedules import alpha_sigma

Array = jax.Array

PREDICTIONS = ("eps", "x0", "v")
WEIGHTINGS = ("uniform", "min_snr", "truncated_min_snr")


def check_prediction(prediction: str) -> None:
    """Raise a clear error unless prediction is one of "eps", "x0", "v"."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"Unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


def broadcast_to(v: Array, x: Array) -> Array:
    """v [B] (or scalar) reshaped to [B, 1, ..., 1] so that it broadcasts against x [B, ...]."""
    v = jnp.asarray(v, dtype=x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else None)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _alpha_sigma_like(log_snr: Array, x: Array) -> tuple[Array, Array]:
    alpha, sigma = alpha_sigma(log_snr)
    return broadcast_to(alpha, x), broadcast_to(sigma, x)


def q_sample(x0: Array, log_snr: Array, noise: Array) -> Array:
    """x_t = alpha x0 + sigma noise; x0, noise [B, ...], log_snr [B] -> [B, ...]."""
    alpha, sigma = _alpha_sigma_like(log_snr, x0)
    return alpha * x0 + sigma * noise


def q_posterior(x_t: Array, x0: Array, log_snr_t: Array, log_snr_s: Array) -> tuple[Array, Array]:
    """Mean [B, ...] and variance [B, 1, ..., 1] of q(x_s | x_t, x0) for s earlier (cleaner) than t,
    i.e. log_snr_s >= log_snr_t. With r = SNR_t / SNR_s:
    mean = r alpha_s / alpha_t x_t + alpha_s (1 - r) x0, variance = sigma_s^2 (1 - r).
    log_snr_s = +inf gives (x0, 0)."""
    log_snr_t = broadcast_to(log_snr_t, x_t)
    log_snr_s = broadcast_to(log_snr_s, x_t)
    r = jnp.exp(log_snr_t - log_snr_s)
    alpha_s = jnp.sqrt(jax.nn.sigmoid(log_snr_s))
    # alpha_s / alpha_t in log space: alpha_t is tiny at the noisy end.
    ratio = jnp.exp(0.5 * (jax.nn.log_sigmoid(log_snr_s) - jax.nn.log_sigmoid(log_snr_t)))
    mean = r * ratio * x_t + alpha_s * (-jnp.expm1(log_snr_t - log_snr_s)) * x0
    variance = jax.nn.sigmoid(-log_snr_s) * (-jnp.expm1(log_snr_t - log_snr_s))
    return mean, variance


def q_forward_step(x_s: Array, log_snr_s: Array, log_snr_t: Array, noise: Array) -> Array:
    """A sample of q(x_t | x_s) for t noisier than s: alpha_t/alpha_s x_s + sigma_t sqrt(1 - r) noise,
    r = SNR_t / SNR_s (used to re-noise in RePaint-style resampling)."""
    log_snr_s = broadcast_to(log_snr_s, x_s)
    log_snr_t = broadcast_to(log_snr_t, x_s)
    ratio = jnp.exp(0.5 * (jax.nn.log_sigmoid(log_snr_t) - jax.nn.log_sigmoid(log_snr_s)))
    std = jnp.sqrt(jax.nn.sigmoid(-log_snr_t) * jnp.maximum(-jnp.expm1(log_snr_t - log_snr_s), 0.0))
    return ratio * x_s + std * noise


def x0_from_eps(x_t: Array, eps: Array, log_snr: Array) -> Array:
    """x0 = (x_t - sigma eps) / alpha."""
    alpha, sigma = _alpha_sigma_like(log_snr, x_t)
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: Array, x0: Array, log_snr: Array) -> Array:
    """eps = (x_t - alpha x0) / sigma."""
    alpha, sigma = _alpha_sigma_like(log_snr, x_t)
    return (x_t - alpha * x0) / sigma


def v_from_eps_x0(eps: Array, x0: Array, log_snr: Array) -> Array:
    """v = alpha eps - sigma x0."""
    alpha, sigma = _alpha_sigma_like(log_snr, x0)
    return alpha * eps - sigma * x0


def x0_from_v(x_t: Array, v: Array, log_snr: Array) -> Array:
    """x0 = alpha x_t - sigma v."""
    alpha, sigma = _alpha_sigma_like(log_snr, x_t)
    return alpha * x_t - sigma * v


def eps_from_v(x_t: Array, v: Array, log_snr: Array) -> Array:
    """eps = sigma x_t + alpha v."""
    alpha, sigma = _alpha_sigma_like(log_snr, x_t)
    return sigma * x_t + alpha * v


def v_from_x0(x_t: Array, x0: Array, log_snr: Array) -> Array:
    """v = (alpha x_t - x0) / sigma."""
    alpha, sigma = _alpha_sigma_like(log_snr, x_t)
    return (alpha * x_t - x0) / sigma


def to_x0_eps(pred: Array, x_t: Array, log_snr: Array, prediction: str) -> tuple[Array, Array]:
    """(x0, eps), both [B, ...], from a network output pred [B, ...] of the given prediction type."""
    check_prediction(prediction)
    if prediction == "eps":
        return x0_from_eps(x_t, pred, log_snr), pred
    if prediction == "x0":
        return pred, eps_from_x0(x_t, pred, log_snr)
    return x0_from_v(x_t, pred, log_snr), eps_from_v(x_t, pred, log_snr)


def from_x0(x0: Array, x_t: Array, log_snr: Array, prediction: str) -> Array:
    """The network output of the given prediction type that corresponds to the clean image x0 at x_t."""
    check_prediction(prediction)
    if prediction == "x0":
        return x0
    if prediction == "eps":
        return eps_from_x0(x_t, x0, log_snr)
    return v_from_x0(x_t, x0, log_snr)


def training_targets(x0: Array, noise: Array, log_snr: Array, prediction: str) -> Array:
    """The regression target [B, ...] for x_t = q_sample(x0, log_snr, noise): noise, x0 or v."""
    check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    return v_from_eps_x0(noise, x0, log_snr)


def loss_weight(log_snr: Array, *, prediction: str, weighting: str = "uniform", min_snr_gamma: float = 5.0):
    """Per-example loss weight [B], stated as the weight w_x0 it puts on a squared error in x0 (the weight on the
    prediction's own error is w_x0 / SNR for eps, w_x0 for x0, w_x0 / (SNR + 1) for v).
    "uniform": 1 on the prediction's own error (w_x0 = SNR, 1 or SNR + 1 for eps, x0, v).
    "min_snr" (Hang et al. 2023): w_x0 = min(SNR, gamma), which clamps the easy high-SNR levels but leaves
    w_x0 = SNR -> 0 at low SNR, where an image's lowest frequencies (its mean colour) are decided.
    "truncated_min_snr": w_x0 = clip(SNR, 1, gamma), the same clamp with Salimans & Ho's (2022) truncation
    max(SNR, 1) below: the low-SNR levels keep the weight v-prediction's plain loss gives them."""
    check_prediction(prediction)
    log_snr = jnp.asarray(log_snr, jnp.float32)
    if weighting == "uniform":
        return jnp.ones_like(log_snr)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}")
    if min_snr_gamma <= 0 or (weighting == "truncated_min_snr" and min_snr_gamma < 1):
        raise ValueError(
            f"min_snr_gamma must be positive ({weighting!r}: at least 1, the truncation), got {min_snr_gamma}"
        )
    floor = 1.0 if weighting == "truncated_min_snr" else 0.0
    if prediction == "eps":  # w_x0 / SNR = clip(1, floor / SNR, gamma / SNR), without forming SNR's overflow
        inverse_snr = jnp.exp(-log_snr)
        return jnp.minimum(jnp.maximum(1.0, floor * inverse_snr), min_snr_gamma * inverse_snr)
    x0_weight = jnp.clip(jnp.exp(log_snr), floor, min_snr_gamma)
    if prediction == "x0":
        return x0_weight
    return x0_weight * jax.nn.sigmoid(-log_snr)  # / (SNR + 1)


def diffusion_loss(
    model_pred: Array,
    x0: Array,
    noise: Array,
    log_snr: Array,
    *,
    prediction: str,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
) -> Array:
    """Per-example weighted MSE [B] of model_pred [B, ...] against the target of (x0, noise, log_snr [B])."""
    target = training_targets(x0, noise, log_snr, prediction)
    err = jnp.square(model_pred.astype(jnp.float32) - target.astype(jnp.float32))
    mse = jnp.mean(err.reshape(err.shape[0], -1), axis=1)
    weight = loss_weight(log_snr, prediction=prediction, weighting=weighting, min_snr_gamma=min_snr_gamma)
    return mse * jnp.broadcast_to(weight, mse.shape)


def sample_training_inputs(
    rng: Array, x0: Array, schedule, offset_noise: float = 0.0
) -> tuple[Array, Array, Array]:
    """(x_t, log_snr [B], noise) for a training step: t ~ U(0, 1) per example, noise ~ N(0, I) for x0 [B, H, W, C].

    offset_noise > 0 adds a per-(example, channel) constant of that standard deviation to the noise (offset noise,
    Guttenberg 2023): the noise's spatial mean, otherwise only 1 / sqrt(H W) strong, then varies enough that the
    network learns to set an image's mean colour itself instead of keeping the noise's. The target is the noise
    actually added."""
    if offset_noise < 0:
        raise ValueError(f"offset_noise must be >= 0, got {offset_noise}")
    t_rng, n_rng = jax.random.split(rng)  # as before offset noise existed: the same draws without it
    t = jax.random.uniform(t_rng, (x0.shape[0],))
    log_snr = schedule.log_snr(t)
    noise = jax.random.normal(n_rng, x0.shape, x0.dtype)
    if offset_noise:
        offset_shape = (x0.shape[0],) + (1,) * (x0.ndim - 2) + (x0.shape[-1],)
        offset = jax.random.normal(jax.random.fold_in(n_rng, 1), offset_shape, x0.dtype)
        noise = noise + offset_noise * offset
    return q_sample(x0, log_snr, noise), log_snr, noise
