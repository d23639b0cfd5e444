"""Forward process, posterior, conversions and losses against direct formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.diffusion import objectives as O

B = 6
LOG_SNR = jnp.array([-8.0, -2.0, 0.0, 1.5, 4.0, 9.0])


def _data(seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(k1, (B, 3, 4, 2)), jax.random.normal(k2, (B, 3, 4, 2))


def _alpha_sigma64(log_snr):
    log_snr = np.asarray(log_snr, np.float64)
    a2 = 1 / (1 + np.exp(-log_snr))
    return np.sqrt(a2)[:, None, None, None], np.sqrt(1 - a2)[:, None, None, None]


def test_q_sample():
    x0, noise = _data()
    a, s = _alpha_sigma64(LOG_SNR)
    np.testing.assert_allclose(O.q_sample(x0, LOG_SNR, noise), a * x0 + s * noise, atol=1e-6)


def test_q_posterior_against_bayes_rule():
    x_t, x0 = _data(1)
    log_snr_t = LOG_SNR
    log_snr_s = LOG_SNR + jnp.array([0.1, 1.0, 3.0, 0.5, 2.0, 0.01])
    mean, var = O.q_posterior(x_t, x0, log_snr_t, log_snr_s)
    a_t, s_t = _alpha_sigma64(log_snr_t)
    a_s, s_s = _alpha_sigma64(log_snr_s)
    # prior x_s ~ N(a_s x0, s_s^2); likelihood x_t | x_s ~ N(a_ts x_s, s_ts^2)
    a_ts = a_t / a_s
    s_ts2 = s_t**2 - a_ts**2 * s_s**2
    precision = 1 / s_s**2 + a_ts**2 / s_ts2
    exp_var = 1 / precision
    exp_mean = exp_var * (a_s * np.asarray(x0) / s_s**2 + a_ts * np.asarray(x_t) / s_ts2)
    np.testing.assert_allclose(var, np.broadcast_to(exp_var, var.shape), rtol=1e-4)
    np.testing.assert_allclose(mean, exp_mean, rtol=1e-4, atol=1e-5)
    assert var.shape == (B, 1, 1, 1)


def test_q_posterior_to_clean_is_x0_and_forward_step_statistics():
    x_t, x0 = _data(2)
    mean, var = O.q_posterior(x_t, x0, LOG_SNR, jnp.full((B,), jnp.inf))
    np.testing.assert_allclose(mean, x0, atol=1e-6)
    np.testing.assert_array_equal(var, 0.0)
    # q(x_t | x_s) composed with q(x_s | x0) is q(x_t | x0): variance sigma_t^2 for x0 = 0
    noise = jax.random.normal(jax.random.PRNGKey(3), (2, 200_000))
    x_s = O.q_sample(jnp.zeros((2, 200_000)), jnp.array([2.0, 2.0]), noise[:1].repeat(2, 0))
    x_t = O.q_forward_step(x_s, jnp.array([2.0, 2.0]), jnp.array([-1.0, 1.0]), noise[1:].repeat(2, 0))
    np.testing.assert_allclose(
        jnp.var(x_t, axis=1), [1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(1.0))], rtol=1e-2
    )


def test_conversions_against_direct_formulas():
    x0, eps = _data(4)
    x_t = O.q_sample(x0, LOG_SNR, eps)
    a, s = _alpha_sigma64(LOG_SNR)
    v = O.v_from_eps_x0(eps, x0, LOG_SNR)
    np.testing.assert_allclose(v, a * eps - s * x0, atol=1e-6)
    np.testing.assert_allclose(O.x0_from_v(x_t, v, LOG_SNR), x0, atol=1e-5)
    np.testing.assert_allclose(O.eps_from_v(x_t, v, LOG_SNR), eps, atol=1e-5)
    np.testing.assert_allclose(O.eps_from_x0(x_t, x0, LOG_SNR), eps, atol=2e-3)  # 1/sigma at log_snr 9
    np.testing.assert_allclose(O.x0_from_eps(x_t, eps, LOG_SNR), x0, atol=2e-3)  # 1/alpha at log_snr -8
    np.testing.assert_allclose(O.v_from_x0(x_t, x0, LOG_SNR), v, atol=2e-3)
    for prediction in O.PREDICTIONS:
        target = O.training_targets(x0, eps, LOG_SNR, prediction)
        x0_hat, eps_hat = O.to_x0_eps(target, x_t, LOG_SNR, prediction)
        np.testing.assert_allclose(x0_hat, x0, atol=2e-3)
        np.testing.assert_allclose(eps_hat, eps, atol=2e-3)
        np.testing.assert_allclose(O.from_x0(x0, x_t, LOG_SNR, prediction), target, atol=2e-3)


@pytest.mark.parametrize("prediction", O.PREDICTIONS)
@pytest.mark.parametrize("weighting", O.WEIGHTINGS)
def test_perfect_predictor_has_zero_loss(prediction, weighting):
    x0, eps = _data(5)
    target = O.training_targets(x0, eps, LOG_SNR, prediction)
    loss = O.diffusion_loss(target, x0, eps, LOG_SNR, prediction=prediction, weighting=weighting)
    assert loss.shape == (B,)
    np.testing.assert_array_equal(loss, 0.0)
    # the prediction a perfect network would make from x_t alone (through the conversions)
    x_t = O.q_sample(x0, LOG_SNR, eps)
    perfect = O.from_x0(x0, x_t, LOG_SNR, prediction)
    loss = O.diffusion_loss(perfect, x0, eps, LOG_SNR, prediction=prediction, weighting=weighting)
    np.testing.assert_allclose(loss, 0.0, atol=1e-5)
    assert float(O.diffusion_loss(perfect + 0.1, x0, eps, LOG_SNR, prediction=prediction).min()) > 5e-3


def test_uniform_loss_is_mse():
    x0, eps = _data(6)
    pred = eps + 0.5
    loss = O.diffusion_loss(pred, x0, eps, LOG_SNR, prediction="eps")
    np.testing.assert_allclose(loss, 0.25, rtol=1e-6)


@pytest.mark.parametrize(
    "weighting, floor",
    [("min_snr", 0.0), ("truncated_min_snr", 1.0)],
)
def test_min_snr_weightings_are_clipped_snr_in_x0_space(weighting, floor):
    """A fixed error d in x0 costs clip(SNR, floor, gamma) |d|^2, whatever the network predicts: min(SNR, gamma)
    for min-SNR (Hang et al. 2023), clip(SNR, 1, gamma) with Salimans & Ho's (2022) truncation below."""
    x0, eps = _data(7)
    d = 0.1 * jax.random.normal(jax.random.PRNGKey(8), x0.shape)
    x_t = O.q_sample(x0, LOG_SNR, eps)
    gamma = 5.0
    expected = np.clip(np.exp(np.asarray(LOG_SNR, np.float64)), floor, gamma) * np.mean(
        np.asarray(d).reshape(B, -1) ** 2, axis=1
    )
    for prediction in O.PREDICTIONS:
        pred = O.from_x0(x0 + d, x_t, LOG_SNR, prediction)
        loss = O.diffusion_loss(
            pred, x0, eps, LOG_SNR, prediction=prediction, weighting=weighting, min_snr_gamma=gamma
        )
        np.testing.assert_allclose(loss, expected, rtol=2e-3, err_msg=prediction)
    weights = O.loss_weight(
        jnp.array([-60.0, 60.0]), prediction="eps", weighting=weighting, min_snr_gamma=gamma
    )
    assert bool(jnp.all(jnp.isfinite(weights))), weights  # no overflow at the schedule's far ends
    np.testing.assert_allclose(O.loss_weight(LOG_SNR, prediction="x0", weighting="uniform"), 1.0)


def test_bad_names_are_rejected():
    x0, eps = _data()
    with pytest.raises(ValueError, match="Unknown prediction"):
        O.diffusion_loss(x0, x0, eps, LOG_SNR, prediction="noise")
    with pytest.raises(ValueError, match="Unknown loss weighting"):
        O.diffusion_loss(x0, x0, eps, LOG_SNR, prediction="eps", weighting="p2")
    with pytest.raises(ValueError, match="at least 1"):
        O.loss_weight(LOG_SNR, prediction="v", weighting="truncated_min_snr", min_snr_gamma=0.5)


def test_sample_training_inputs():
    x0, _ = _data()
    x_t, log_snr, noise = O.sample_training_inputs(jax.random.PRNGKey(0), x0, _Linear())
    np.testing.assert_allclose(x_t, O.q_sample(x0, log_snr, noise), atol=1e-6)
    assert log_snr.shape == (B,) and bool(jnp.all((log_snr >= -1.0) & (log_snr <= 0.0)))


class _Linear:
    def log_snr(self, t):
        return -t

    def t_from_log_snr(self, log_snr):
        return -log_snr


def test_offset_noise_adds_a_per_channel_constant_of_its_strength():
    """The noise's per-(example, channel) spatial mean has variance 1 / (H W) + offset^2 (Guttenberg 2023); the
    residual after removing it is the plain draw's, and 0 leaves the draws exactly as without the option."""
    x0 = jnp.zeros((4096, 4, 4, 3))
    rng = jax.random.PRNGKey(3)
    plain = O.sample_training_inputs(rng, x0, _Linear())
    for a, b in zip(plain, O.sample_training_inputs(rng, x0, _Linear(), offset_noise=0.0), strict=True):
        np.testing.assert_array_equal(a, b)
    x_t, log_snr, noise = O.sample_training_inputs(rng, x0, _Linear(), offset_noise=0.5)
    np.testing.assert_array_equal(log_snr, plain[1])
    np.testing.assert_allclose(x_t, O.q_sample(x0, log_snr, noise), atol=1e-6)
    means = np.asarray(noise).mean(axis=(1, 2))  # [4096, 3]
    assert np.var(means) == pytest.approx(1 / 16 + 0.25, rel=0.05)
    residual = np.asarray(noise - plain[2])  # the offset alone: constant over space
    np.testing.assert_allclose(residual, np.broadcast_to(residual[:, :1, :1, :], residual.shape), atol=1e-6)
    with pytest.raises(ValueError, match="offset_noise"):
        O.sample_training_inputs(rng, x0, _Linear(), offset_noise=-0.1)
