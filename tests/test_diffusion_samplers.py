"""Samplers on Gaussian data, where the exact denoiser and the exact probability-flow ODE solution are known.

Data x0 ~ N(M, diag(S^2)): E[x0 | x_t] = M + alpha S^2 / (alpha^2 S^2 + sigma^2) (x_t - alpha M), and the
probability-flow ODE keeps (x_t - alpha M) / sqrt(alpha^2 S^2 + sigma^2) fixed, so a deterministic sampler
started from x = noise at log_snr l0 should return M + S (noise - alpha(l0) M) / sqrt(alpha^2 S^2 + sigma^2).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.diffusion import objectives as O
from imagen_jax.diffusion.samplers import SAMPLERS, ddim_invert, sample, sampling_grid
from imagen_jax.diffusion.schedules import alpha_sigma, get_schedule

M = jnp.array([0.5, -0.5, 0.0, 0.25])
S = jnp.array([0.5, 0.25, 1.0, 0.1])
N = 16384
NOISE = jax.random.normal(jax.random.PRNGKey(0), (N, 4))
KEY = jax.random.PRNGKey(1)
DETERMINISTIC = ("ddim", "dpmpp_2m", "heun")


def gaussian_x0(x, log_snr):
    alpha, sigma = alpha_sigma(log_snr)
    alpha, sigma = alpha[:, None], sigma[:, None]
    return M + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x - alpha * M)


def gaussian_model(prediction):
    return lambda x, log_snr: O.from_x0(gaussian_x0(x, log_snr), x, log_snr, prediction)


def run(sampler, steps, noise=NOISE, rng=KEY, prediction="eps", schedule="cosine", **options):
    fn = lambda n, r: sample(
        gaussian_model(prediction), n, r, sampler=sampler, steps=steps, schedule=schedule,
        prediction=prediction, **options,
    )  # fmt: skip
    return jax.jit(fn)(noise, rng)


def ode_error(x, steps, noise=NOISE, schedule="cosine", **grid_options):
    """Largest per-dimension RMS distance to the exact ODE solution, in units of the data std."""
    alpha, sigma = alpha_sigma(sampling_grid(schedule, steps, **grid_options)[0])
    exact = M + S * (noise - alpha * M) / jnp.sqrt(alpha**2 * S**2 + sigma**2)
    return float(jnp.max(jnp.sqrt(jnp.mean((x - exact) ** 2, axis=0)) / S))


def stats_errors(x):
    """(largest |mean - M| / S, largest |var / S^2 - 1|) over dimensions."""
    return float(jnp.max(jnp.abs(x.mean(0) - M) / S)), float(jnp.max(jnp.abs(x.var(0) / S**2 - 1)))


# 4 standard errors of the mean (in units of S) and of the relative variance, for N samples
MEAN_TOL, VAR_TOL = 4 / np.sqrt(N), 4 * np.sqrt(2 / N)


@pytest.mark.parametrize(
    "sampler,steps,ode_tol", [("ddim", 200, 0.04), ("dpmpp_2m", 30, 0.02), ("heun", 30, 0.02)]
)
def test_deterministic_samplers_match_the_data(sampler, steps, ode_tol):
    x = run(sampler, steps)
    mean_err, var_err = stats_errors(x)
    assert mean_err < MEAN_TOL + 0.01
    assert var_err < VAR_TOL + 0.02
    assert ode_error(x, steps, spacing="karras") < ode_tol


@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_error_falls_as_steps_grow(sampler):
    errors = [ode_error(run(sampler, steps), steps, spacing="karras") for steps in (8, 16, 32)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.4 * errors[0]


@pytest.mark.parametrize("spacing", ["karras", "time"])
def test_dpmpp_2m_beats_ddim_at_20_steps(spacing):
    err_ddim = ode_error(run("ddim", 20, spacing=spacing), 20, spacing=spacing)
    err_dpm = ode_error(run("dpmpp_2m", 20, spacing=spacing), 20, spacing=spacing)
    assert err_dpm < (0.5 if spacing == "karras" else 0.9) * err_ddim


def _ancestral_chain_moments(grid):
    """Exact mean and variance of the ancestral sampler's output on Gaussian data (float64 recursion of
    x_s = A x_t + B x0_hat(x_t) + std z, from the posterior q(x_s | x_t, x0) written out by hand)."""
    m, s = np.asarray(M, np.float64), np.asarray(S, np.float64)
    sig = lambda v: 1 / (1 + np.exp(-v))
    mean, var = np.zeros(4), np.ones(4)
    for l_t, l_s in zip(np.asarray(grid[:-1], np.float64), np.asarray(grid[1:], np.float64), strict=True):
        a_t, s_t, a_s = np.sqrt(sig(l_t)), np.sqrt(sig(-l_t)), np.sqrt(sig(l_s))
        r = np.exp(l_t - l_s)  # SNR_t / SNR_s
        gain_x, gain_x0, noise_var = r * a_s / a_t, a_s * (1 - r), sig(-l_s) * (1 - r)
        k = a_t * s**2 / (a_t**2 * s**2 + s_t**2)
        mean = (gain_x + gain_x0 * k) * mean + gain_x0 * m * (1 - k * a_t)
        var = (gain_x + gain_x0 * k) ** 2 * var + noise_var
    return mean, var


@pytest.mark.parametrize("sampler,options", [("ancestral", {}), ("ddim", {"eta": 1.0})])
def test_ancestral_sampler_matches_its_exact_chain_and_converges(sampler, options):
    n = 65536
    noise = jax.random.normal(jax.random.PRNGKey(2), (n, 4))
    var_errors = []
    for steps in (10, 50, 250):
        x = run(sampler, steps, noise=noise, **options)
        mean, var = _ancestral_chain_moments(sampling_grid("cosine", steps, spacing="karras"))
        np.testing.assert_allclose(x.mean(0), mean, atol=4 * float(S.max()) / np.sqrt(n))
        np.testing.assert_allclose(x.var(0), var, rtol=4 * np.sqrt(2 / n))
        var_errors.append(np.max(np.abs(var / np.asarray(S) ** 2 - 1)))
        np.testing.assert_allclose(mean, M, atol=1e-4)  # the chain is unbiased
    assert var_errors[0] > var_errors[1] > var_errors[2]
    assert var_errors[2] < 0.07  # ancestral sampling converges only as O(1 / steps)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_prediction_types_agree(prediction):
    np.testing.assert_allclose(run("dpmpp_2m", 12, prediction=prediction), run("dpmpp_2m", 12), atol=1e-4)


def test_ddim_eta0_is_deterministic_and_invertible():
    x0 = run("ddim", 100)
    np.testing.assert_array_equal(x0, run("ddim", 100, rng=jax.random.PRNGKey(7)))
    np.testing.assert_array_equal(x0, run("ddim", 100, rng=None))
    invert = jax.jit(lambda x: ddim_invert(gaussian_x0, x, steps=100, schedule="cosine", prediction="x0"))
    x_t = invert(x0)
    assert float(jnp.sqrt(jnp.mean((x_t - NOISE) ** 2))) < 1e-3
    assert float(jnp.max(jnp.abs(x_t - NOISE))) < 1e-2


def test_sample_inside_jit_equals_eager():
    model = gaussian_model("v")
    noise = NOISE[:64]
    eager = sample(model, noise, KEY, sampler="dpmpp_2m", steps=6, schedule="linear", prediction="v")
    jitted = jax.jit(
        lambda n: sample(model, n, KEY, sampler="dpmpp_2m", steps=6, schedule="linear", prediction="v")
    )(noise)
    np.testing.assert_allclose(jitted, eager, atol=1e-5)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_thresholding_applies_in_every_sampler(sampler):
    pattern = jnp.array([3.0, -3.0, 0.5, 1.5])
    model = lambda x, log_snr: jnp.broadcast_to(pattern, x.shape)  # predicts x0 = pattern everywhere
    noise = NOISE[:8]
    kwargs = dict(sampler=sampler, steps=5, schedule="cosine", prediction="x0")
    go = lambda **kw: jax.jit(lambda n, r: sample(model, n, r, **kwargs, **kw))(noise, KEY)
    np.testing.assert_allclose(go(), jnp.broadcast_to(pattern, noise.shape), atol=1e-5)
    clipped = go(thresholding="static")
    np.testing.assert_allclose(
        clipped, jnp.broadcast_to(jnp.array([1.0, -1.0, 0.5, 1.0]), noise.shape), atol=1e-5
    )
    # 50th percentile of |pattern| = 2.25: x0 / 2.25 after clipping to +-2.25
    dynamic = go(thresholding="dynamic", threshold_percentile=50.0)
    expected = jnp.array([1.0, -1.0, 0.5 / 2.25, 1.5 / 2.25])
    np.testing.assert_allclose(dynamic, jnp.broadcast_to(expected, noise.shape), atol=1e-5)
    with pytest.raises(ValueError, match="did you mean 99.5"):
        sample(model, noise, KEY, thresholding="dynamic", threshold_percentile=0.995, **kwargs)


@pytest.mark.parametrize("sampler,steps,resample_steps", [("dpmpp_2m", 30, 1), ("heun", 30, 3)])
def test_inpainting_keeps_the_known_region(sampler, steps, resample_steps):
    known = jnp.broadcast_to(jnp.array([0.9, 0.0, -0.7, 0.0]), NOISE.shape)
    mask = jnp.array([1.0, 0.0, 1.0, 0.0])
    x = run(sampler, steps, known=known, mask=mask, resample_steps=resample_steps)
    np.testing.assert_allclose(x[:, 0], 0.9, atol=1e-6)
    np.testing.assert_allclose(x[:, 2], -0.7, atol=1e-6)
    # the dimensions are independent, so the unknown ones keep the data distribution
    free = jnp.array([1, 3])
    np.testing.assert_allclose(x[:, free].mean(0), M[free], atol=MEAN_TOL * float(S[free].max()) + 0.01)
    np.testing.assert_allclose(x[:, free].var(0) / S[free] ** 2, 1.0, atol=VAR_TOL + 0.03)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inpainting_with_resampling_in_every_sampler(sampler):
    known = jnp.broadcast_to(jnp.array([0.9, 0.0, -0.7, 0.0]), (64, 4))
    mask = jnp.array([1.0, 0.0, 1.0, 0.0])
    x = run(sampler, 5, noise=NOISE[:64], known=known, mask=mask, resample_steps=2)
    np.testing.assert_allclose(x[:, 0], 0.9, atol=1e-6)
    np.testing.assert_allclose(x[:, 2], -0.7, atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(x))) and float(jnp.std(x[:, 1])) > 0.1


def test_sampling_grids():
    cosine = get_schedule("cosine")
    time_grid = sampling_grid(cosine, 10, spacing="time")
    assert time_grid.shape == (11,) and float(time_grid[0]) == -20.0 and float(time_grid[-1]) == np.inf
    np.testing.assert_allclose(time_grid[-2], cosine.log_snr(0.0))
    np.testing.assert_allclose(time_grid[1], cosine.log_snr(1 - 1 / 9), rtol=1e-6)
    assert bool(jnp.all(jnp.diff(time_grid) > 0))
    karras = sampling_grid(cosine, 10, spacing="karras", rho=7.0)
    sig = jnp.exp(-0.5 * karras[:-1])
    np.testing.assert_allclose(sig[0], 80.0, rtol=1e-5)
    np.testing.assert_allclose(sig[-1], jnp.exp(-0.5 * cosine.log_snr(0.0)), rtol=1e-5)
    np.testing.assert_allclose(jnp.diff(sig ** (1 / 7)), jnp.diff(sig ** (1 / 7))[0], rtol=1e-3)
    log_grid = sampling_grid("linear", 4, spacing="log_snr", t_start=0.8, t_end=0.2)
    lin = get_schedule("linear")
    np.testing.assert_allclose(log_grid, jnp.linspace(lin.log_snr(0.8), lin.log_snr(0.2), 5), rtol=1e-5)


def test_partial_sampling_stops_at_t_end():
    """From t_start = 0.6 to t_end = 0.3 the DDIM ODE lands on the exact flow map between those times."""
    lin = get_schedule("linear")
    x = run("ddim", 200, schedule="linear", t_start=0.6, t_end=0.3, spacing="log_snr")
    (a0, s0), (a1, s1) = alpha_sigma(lin.log_snr(0.6)), alpha_sigma(lin.log_snr(0.3))
    exact = a1 * M + jnp.sqrt(a1**2 * S**2 + s1**2) * (NOISE - a0 * M) / jnp.sqrt(a0**2 * S**2 + s0**2)
    np.testing.assert_allclose(x, exact, atol=2e-2)


def test_bad_arguments_are_rejected():
    model = gaussian_model("eps")
    noise = NOISE[:4]
    kwargs = dict(steps=4, schedule="cosine", prediction="eps")
    with pytest.raises(ValueError, match="Unknown sampler"):
        sample(model, noise, KEY, sampler="plms", **kwargs)
    with pytest.raises(ValueError, match="steps"):
        sample(model, noise, KEY, sampler="ddim", steps=0, schedule="cosine", prediction="eps")
    with pytest.raises(ValueError, match="Unknown prediction"):
        sample(model, noise, KEY, sampler="ddim", steps=4, schedule="cosine", prediction="score")
    with pytest.raises(ValueError, match="needs an rng"):
        sample(model, noise, None, sampler="ancestral", **kwargs)
    with pytest.raises(ValueError, match="known and mask"):
        sample(model, noise, KEY, sampler="ddim", resample_steps=2, **kwargs)
    with pytest.raises(ValueError, match="t_end"):
        sample(model, noise, KEY, sampler="ddim", t_start=0.2, t_end=0.5, **kwargs)
    with pytest.raises(ValueError, match="spacing"):
        sample(model, noise, KEY, sampler="ddim", spacing="quadratic", **kwargs)
