"""Schedules against their closed forms: end points, alpha^2 + sigma^2 = 1, inverses, resolution shift."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.diffusion import schedules as S

T = jnp.linspace(0.0, 1.0, 101)
NAMES = ("cosine", "linear", "linear_beta_1000")


def test_alpha_sigma_unit_norm_and_log_snr():
    log_snr = jnp.linspace(-20.0, 20.0, 81)
    alpha, sigma = S.alpha_sigma(log_snr)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    inner = jnp.abs(log_snr) <= 10  # float32 resolves sigma^2 = sigmoid(-20) only relatively
    np.testing.assert_allclose(S.log_snr_from_alpha_sigma(alpha, sigma)[inner], log_snr[inner], atol=1e-4)
    np.testing.assert_allclose(S.log_snr_from_edm_sigma(S.edm_sigma(log_snr)), log_snr, atol=1e-5)
    assert S.log_snr_from_edm_sigma(0.0) == jnp.inf


def test_cosine_end_points_and_closed_form():
    sched = S.get_schedule("cosine")
    s = 0.008
    expected_start = -2 * math.log(math.tan(s / (1 + s) * math.pi / 2))  # 8.769
    np.testing.assert_allclose(sched.log_snr(0.0), expected_start, rtol=1e-5)
    assert float(sched.log_snr(1.0)) == -20.0  # clipped, finite
    t = jnp.linspace(0.0, 0.99, 50)
    alpha_bar = np.cos((np.asarray(t, np.float64) + s) / (1 + s) * np.pi / 2) ** 2  # iDDPM cosine
    np.testing.assert_allclose(S.alpha_sigma(sched.log_snr(t))[0] ** 2, alpha_bar, rtol=2e-5, atol=1e-7)


def test_linear_end_points():
    sched = S.get_schedule("linear")
    np.testing.assert_allclose(sched.log_snr(0.0), -math.log(math.expm1(1e-4)), rtol=1e-5)
    np.testing.assert_allclose(sched.log_snr(1.0), -math.log(math.expm1(10.0001)), rtol=1e-5)
    np.testing.assert_allclose(sched.log_snr(0.5), -math.log(math.expm1(1e-4 + 2.5)), rtol=1e-5)


def test_linear_beta_1000_matches_the_discrete_chain():
    sched = S.get_schedule("linear_beta_1000")
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar = np.cumprod(1 - betas)
    for k in (0, 1, 499, 998, 999):
        t = k / 999
        np.testing.assert_allclose(sched.log_snr(t), np.log(alpha_bar[k] / (1 - alpha_bar[k])), rtol=1e-4)
        assert int(sched.timestep(t)) == k
    np.testing.assert_allclose(sched.log_snr(0.0), math.log(9999.0), rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_monotone_finite_and_invertible(name):
    sched = S.get_schedule(name)
    log_snr = sched.log_snr(T)
    assert bool(jnp.all(jnp.isfinite(log_snr)))
    assert bool(jnp.all(jnp.diff(log_snr) < 0))
    inner = T[1:-1]  # the ends may be clipped
    np.testing.assert_allclose(sched.t_from_log_snr(sched.log_snr(inner)), inner, atol=2e-4)


def test_resolution_shift():
    base = S.get_schedule("cosine")
    shifted = S.get_schedule("cosine", resolution=256, base_resolution=64)
    np.testing.assert_allclose(shifted.log_snr(T), base.log_snr(T) + 2 * math.log(64 / 256), atol=1e-5)
    t = jnp.linspace(0.1, 0.9, 9)
    np.testing.assert_allclose(shifted.t_from_log_snr(shifted.log_snr(t)), t, atol=1e-4)
    assert S.get_schedule("cosine", resolution=64, base_resolution=64) == base


def test_bad_names_and_options_are_rejected():
    with pytest.raises(ValueError, match="Unknown noise schedule"):
        S.get_schedule("cosin")
    with pytest.raises(ValueError, match="Unknown option"):
        S.get_schedule("linear", offset=0.1)
    with pytest.raises(ValueError, match="both resolution and base_resolution"):
        S.get_schedule("cosine", resolution=128)
    assert S.as_schedule("linear") == S.LinearSchedule()
    with pytest.raises(TypeError):
        S.as_schedule(3)
