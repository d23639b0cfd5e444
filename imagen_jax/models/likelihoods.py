"""Densities for the VAE family: the KL between diagonal Gaussians, the continuous Gaussian density, and pixel
likelihoods discretised to 256 bins (logistic as in PixelCNN++, or Gaussian), for images in [-1, 1].

Bin k of 256 has centre -1 + 2k/255 and half-width 1/255; the first bin takes all mass below its upper edge and the
last all mass above its lower edge, so the 256 probabilities of a pixel sum to one.
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

LOG_2PI = math.log(2.0 * math.pi)
BIN_HALF_WIDTH = 1.0 / 255.0


def gaussian_kl(
    mean_q: jax.Array, log_var_q: jax.Array, mean_p: jax.Array, log_var_p: jax.Array
) -> jax.Array:
    """KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p))), elementwise (nats), same shape as the inputs."""
    return 0.5 * (
        log_var_p - log_var_q + (jnp.exp(log_var_q) + (mean_q - mean_p) ** 2) * jnp.exp(-log_var_p) - 1.0
    )


def gaussian_log_density(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    """log N(x; mean, exp(log_scale)^2), elementwise (nats)."""
    z = (x - mean) * jnp.exp(-log_scale)
    return -0.5 * z**2 - log_scale - 0.5 * LOG_2PI


def _log_cdf(distribution: str):
    if distribution == "logistic":
        return jax.nn.log_sigmoid
    if distribution == "gaussian":
        return log_ndtr
    raise ValueError(f"distribution must be 'logistic' or 'gaussian', got {distribution!r}")


def _log_diff_exp(a: jax.Array, b: jax.Array) -> jax.Array:
    """log(exp(a) - exp(b)) for a > b, stable (log(-expm1(b - a)) keeps precision for close a, b)."""
    return a + jnp.log(-jnp.expm1(jnp.minimum(b - a, -1e-30)))


def discretized_log_prob(
    x: jax.Array, mean: jax.Array, log_scale: jax.Array, distribution: str = "logistic"
) -> jax.Array:
    """log P(pixel bin of x) under a logistic or Gaussian of (mean, exp(log_scale)) discretised to 256 bins on
    [-1, 1], elementwise (nats); x must lie on the bin centres -1 + 2k/255. Edge bins take the tails.

    Both distributions are symmetric, so a bin's mass is computed from whichever tail it lies in (F(u) - F(l) for
    a bin below the mean, S(l) - S(u) above it, with S(t) = F(-t)): no cancellation far out in a tail.
    """
    log_cdf = _log_cdf(distribution)
    inv_scale = jnp.exp(-log_scale)
    upper = (x - mean + BIN_HALF_WIDTH) * inv_scale
    lower = (x - mean - BIN_HALF_WIDTH) * inv_scale
    below = _log_diff_exp(log_cdf(upper), log_cdf(lower))  # F(upper) - F(lower)
    above = _log_diff_exp(log_cdf(-lower), log_cdf(-upper))  # S(lower) - S(upper)
    middle = jnp.where(x < mean, below, above)
    return jnp.where(
        x < -1.0 + BIN_HALF_WIDTH,
        log_cdf(upper),
        jnp.where(x > 1.0 - BIN_HALF_WIDTH, log_cdf(-lower), middle),
    )


def bits_per_dim(nats_per_example: jax.Array, dims: int) -> jax.Array:
    """Nats per example -> bits per dimension (e.g. dims = H * W * 3)."""
    return nats_per_example / (dims * math.log(2.0))
