"""Our samplers against literal NumPy transcriptions of the reference algorithms, in EDM variables
(x_edm = x / alpha, sigma_edm = sigma / alpha, denoiser D(x_edm; sigma_edm) = the x0 prediction):
k-diffusion's get_sigmas_karras, sample_dpmpp_2m (DPM-Solver++(2M), Lu et al. 2022) and sample_heun
(Karras et al. 2022, Algorithm 1 without churn). The model is the exact Gaussian-data denoiser with dynamic
thresholding on top, so that the check also covers a nonlinear x0 map; the step counts are the benchmark's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.diffusion import objectives as O
from imagen_jax.diffusion.guidance import dynamic_threshold
from imagen_jax.diffusion.samplers import sample, sampling_grid
from imagen_jax.diffusion.schedules import alpha_sigma, get_schedule

M, S = 0.3, 1.5  # wide enough that dynamic thresholding bites
NOISE = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (4, 6, 6, 3)), np.float64)


def denoiser_vp(x, log_snr):
    """Thresholded exact x0 prediction for data N(M, S^2) at VP input x [B, ...], log_snr [B]."""
    alpha, sigma = alpha_sigma(log_snr)
    alpha, sigma = O.broadcast_to(alpha, x), O.broadcast_to(sigma, x)
    return dynamic_threshold(M + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x - alpha * M), 99.5)


def model_fn(x, log_snr):  # v-prediction, as the quickstart
    return O.from_x0(denoiser_vp(x, log_snr), x, log_snr, "v")


def denoiser_edm(x_edm, sigma_edm):
    """The same denoiser seen in EDM variables (float64 in, float64 out)."""
    log_snr = -2.0 * np.log(sigma_edm)
    alpha = np.sqrt(1.0 / (1.0 + np.exp(-log_snr)))
    x = jnp.asarray(alpha * x_edm, jnp.float32)
    return np.asarray(denoiser_vp(x, jnp.full((x.shape[0],), log_snr, jnp.float32)), np.float64)


def karras_sigmas(n, sigma_min, sigma_max, rho=7.0):
    """k-diffusion get_sigmas_karras: n levels from sigma_max to sigma_min, then 0."""
    ramp = np.linspace(0, 1, n)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.append(sigmas, 0.0)


def reference_dpmpp_2m(x, sigmas):
    """k-diffusion sample_dpmpp_2m."""
    t_fn = lambda s: -np.log(s)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoiser_edm(x, sigmas[i])
        if sigmas[i + 1] == 0:  # t_fn(0) = inf: the update reduces to x = denoised
            x = denoised
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
            h = t_next - t
            if old_denoised is None:
                x = (sigmas[i + 1] / sigmas[i]) * x - np.expm1(-h) * denoised
            else:
                r = (t - t_fn(sigmas[i - 1])) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
                x = (sigmas[i + 1] / sigmas[i]) * x - np.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


def reference_heun(x, sigmas):
    """k-diffusion sample_heun (EDM Algorithm 1, s_churn = 0); returns (x, model evaluations)."""
    evals = 0
    for i in range(len(sigmas) - 1):
        d = (x - denoiser_edm(x, sigmas[i])) / sigmas[i]
        evals += 1
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - denoiser_edm(x_2, sigmas[i + 1])) / sigmas[i + 1]
            evals += 1
            x = x + (d + d_2) / 2 * dt
    return x, evals


def reference_start(steps):
    """(EDM sigmas with the trailing 0, x_edm at the first level) for our default grid on the cosine schedule."""
    schedule = get_schedule("cosine")
    sigma_max = min(float(np.exp(-0.5 * schedule.log_snr(1.0))), 80.0)
    sigma_min = float(np.exp(-0.5 * schedule.log_snr(0.0)))
    sigmas = karras_sigmas(steps, sigma_min, sigma_max)
    alpha0 = np.sqrt(1.0 / (1.0 + sigmas[0] ** 2))
    return sigmas, NOISE / alpha0


def ours(sampler, steps):
    fn = lambda n: sample(model_fn, n, None, sampler=sampler, steps=steps, schedule="cosine", prediction="v")
    return np.asarray(jax.jit(fn)(jnp.asarray(NOISE, jnp.float32)), np.float64)


def test_karras_grid_matches_k_diffusion():
    sigmas, _ = reference_start(20)
    grid = np.asarray(sampling_grid("cosine", 20), np.float64)
    np.testing.assert_allclose(np.exp(-0.5 * grid), sigmas, rtol=2e-5, atol=0)


@pytest.mark.parametrize("steps", [20, 25])
def test_dpmpp_2m_matches_k_diffusion(steps):
    sigmas, x = reference_start(steps)
    expected = reference_dpmpp_2m(x, sigmas)
    assert np.abs(expected).max() <= 1.0 + 1e-6  # the last step returns a thresholded x0 prediction
    np.testing.assert_allclose(ours("dpmpp_2m", steps), expected, atol=1e-4)


def test_dpmpp_2m_is_not_first_order():
    """The comparison above can tell second order from first: they differ by far more than its tolerance."""
    sigmas, x = reference_start(20)
    first_order = x
    for i in range(len(sigmas) - 1):  # DPM-Solver++(1) = DDIM
        denoised = denoiser_edm(first_order, sigmas[i])
        first_order = denoised + (sigmas[i + 1] / sigmas[i]) * (first_order - denoised)
    assert np.abs(first_order - reference_dpmpp_2m(x, sigmas)).max() > 1e-2  # 100x the tolerance


def test_heun_matches_edm_algorithm_1():
    sigmas, x = reference_start(18)
    expected, evals = reference_heun(x, sigmas)
    assert evals == 35  # 18 levels: 17 Heun steps of 2 evaluations and a last Euler step
    np.testing.assert_allclose(ours("heun", 18), expected, atol=1e-4)
