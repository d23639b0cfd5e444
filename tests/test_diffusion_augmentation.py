"""Noise-conditioning augmentation: level 0 is the identity; corrupted statistics match the forward process."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.diffusion.augmentation import noise_condition_augment, sample_aug_levels
from imagen_jax.diffusion.schedules import alpha_sigma, get_schedule

LOWRES = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3), minval=-1, maxval=1)


@pytest.mark.parametrize("key", [jax.random.PRNGKey(1), jax.random.key(1)])
def test_level_zero_is_identity(key):
    out, aug_log_snr = noise_condition_augment(LOWRES, jnp.zeros(4), key, "linear")
    np.testing.assert_array_equal(out, LOWRES)
    np.testing.assert_allclose(aug_log_snr, get_schedule("linear").log_snr(0.0))


def test_given_noise_and_mixed_levels():
    noise = jax.random.normal(jax.random.PRNGKey(2), LOWRES.shape)
    levels = jnp.array([0.0, 0.2, 0.5, 1.0])
    out, aug_log_snr = noise_condition_augment(LOWRES, levels, noise, "cosine")
    expected_log_snr = get_schedule("cosine").log_snr(levels)
    np.testing.assert_allclose(aug_log_snr, expected_log_snr)
    alpha, sigma = alpha_sigma(expected_log_snr)
    expected = alpha[:, None, None, None] * LOWRES + sigma[:, None, None, None] * noise
    np.testing.assert_array_equal(out[0], LOWRES[0])
    np.testing.assert_allclose(out[1:], expected[1:], atol=1e-6)


def test_corrupted_statistics_match():
    image = jnp.full((2, 256, 256, 1), 0.6)
    out, aug_log_snr = noise_condition_augment(image, jnp.array([0.3, 0.7]), jax.random.PRNGKey(3))
    alpha, sigma = alpha_sigma(get_schedule("linear").log_snr(jnp.array([0.3, 0.7])))
    flat = out.reshape(2, -1)  # 65536 pixels each: mean within 4 sigma / 256, variance within 2 %
    np.testing.assert_allclose(flat.mean(1), 0.6 * alpha, atol=4 * float(sigma.max()) / 256)
    np.testing.assert_allclose(flat.var(1), sigma**2, rtol=0.02)


def test_bad_noise_shape_and_levels():
    with pytest.raises(ValueError, match="Noise shape"):
        noise_condition_augment(LOWRES, 0.5, jnp.zeros((4, 8, 8)))
    levels = sample_aug_levels(jax.random.PRNGKey(0), 1000, max_level=0.5)
    assert levels.shape == (1000,) and float(levels.min()) >= 0 and float(levels.max()) <= 0.5
    assert abs(float(levels.mean()) - 0.25) < 0.02
    with pytest.raises(ValueError):
        sample_aug_levels(jax.random.PRNGKey(0), 4, max_level=2.0)
