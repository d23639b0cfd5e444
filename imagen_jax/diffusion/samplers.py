"""Samplers over a pure model_fn(x_t [B, ...], log_snr [B]) -> prediction: ancestral (DDPM), DDIM (eta),
DPM-Solver++(2M) and Heun on the Karras sigma grid, each ONE jit-compilable lax.fori_loop.

Public entry point: sample(model_fn, noise, rng, *, sampler, steps, schedule, prediction, ...) -> x0.
Every sampler works on a grid of log-SNR nodes, noisiest first; when t_end = 0 the last node is +inf (clean
data), which the model is never evaluated at: the last step returns the (thresholded) x0 prediction itself.
Thresholding applies to the predicted x0 at every model evaluation; inpainting replaces the known region
after every step (optionally resampling it, RePaint-style).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from imagen_jax.diffusion.guidance import make_threshold_fn
from imagen_jax.diffusion.objectives import (
    check_prediction,
    eps_from_x0,
    q_forward_step,
    q_posterior,
    q_sample,
    to_x0_eps,
)
from imagen_jax.diffusion.schedules import (
    Schedule,
    alpha_sigma,
    as_schedule,
    edm_sigma,
    log_snr_from_edm_sigma,
)

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]
# step(i, x at node i, carry, key) -> (x at node i + 1, carry)
StepFn = Callable[[Array, Array, Any, Array], tuple[Array, Any]]

SAMPLERS = ("ancestral", "ddim", "dpmpp_2m", "heun")


# ----------------------------------------------------------------------------------------------- grids


def _check_times(t_start: float, t_end: float) -> None:
    if not 0.0 <= t_end < t_start <= 1.0:
        raise ValueError(f"Need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")


SPACINGS = ("time", "log_snr", "karras")


def sampling_grid(
    schedule: str | Schedule,
    steps: int,
    *,
    spacing: str = "karras",
    t_start: float = 1.0,
    t_end: float = 0.0,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> Array:
    """log-SNR at a sampler's steps + 1 nodes, float32 [steps + 1], increasing (noisiest first).

    The nodes span [log_snr(t_start), log_snr(t_end)], spaced uniformly in t ("time", as imagen-pytorch),
    uniformly in log-SNR ("log_snr") or on the Karras et al. (2022) grid ("karras": uniform in sigma^(1/rho)
    with sigma = exp(-log_snr / 2) from sigma_max, by default the start's sigma capped at 80, to sigma_min, by
    default the end's). When t_end = 0 the model is evaluated at steps nodes ending at the schedule's cleanest
    finite level log_snr(0), and a last node +inf (clean data) follows: the last step returns the x0
    prediction there, as in DDPM and Karras et al."""
    _check_times(t_start, t_end)
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown grid spacing {spacing!r}; choose one of {SPACINGS}")
    schedule = as_schedule(schedule)
    n = steps if t_end == 0.0 else steps + 1  # nodes the model is evaluated at (plus the end node)
    frac = jnp.linspace(0.0, 1.0, n, dtype=jnp.float32) if n > 1 else jnp.zeros((1,), jnp.float32)
    l_start = schedule.log_snr(jnp.float32(t_start)).astype(jnp.float32)
    l_end = schedule.log_snr(jnp.float32(t_end)).astype(jnp.float32)
    if spacing == "time":
        grid = schedule.log_snr(t_start + frac * (t_end - t_start)).astype(jnp.float32)
    elif spacing == "log_snr":
        grid = l_start + frac * (l_end - l_start)
    else:
        hi = jnp.minimum(edm_sigma(l_start), 80.0) if sigma_max is None else jnp.float32(sigma_max)
        lo = edm_sigma(l_end) if sigma_min is None else jnp.float32(sigma_min)
        sigmas = (hi ** (1 / rho) + frac * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        grid = log_snr_from_edm_sigma(sigmas).astype(jnp.float32)
    if t_end == 0.0:
        grid = jnp.concatenate([grid, jnp.full((1,), jnp.inf, jnp.float32)])
    return grid


# ------------------------------------------------------------------------------------------ denoiser


def _make_denoiser(model_fn: ModelFn, prediction: str, threshold_fn: Callable[[Array], Array]):
    """denoise(x [B, ...], log_snr scalar) -> thresholded x0 prediction [B, ...]."""

    def denoise(x: Array, log_snr: Array) -> Array:
        log_snr_vec = jnp.full((x.shape[0],), log_snr, jnp.float32)
        pred = model_fn(x, log_snr_vec).astype(x.dtype)
        x0, _ = to_x0_eps(pred, x, log_snr_vec, prediction)
        return threshold_fn(x0).astype(x.dtype)

    return denoise


_scalars = alpha_sigma  # (alpha, sigma) of a scalar log-SNR node


# ------------------------------------------------------------------------------------------ steppers


def _ancestral_step(denoise, grid: Array) -> StepFn:
    def step(i, x, carry, key):
        l_t, l_s = grid[i], grid[i + 1]
        x0 = denoise(x, l_t)
        mean, var = q_posterior(x, x0, l_t, l_s)
        return mean + jnp.sqrt(var) * jax.random.normal(key, x.shape, x.dtype), carry

    return step


def _ddim_step(denoise, grid: Array, eta: float) -> StepFn:
    def step(i, x, carry, key):
        l_t, l_s = grid[i], grid[i + 1]
        x0 = denoise(x, l_t)
        eps = eps_from_x0(x, x0, l_t)
        alpha_s, sigma_s = _scalars(l_s)
        x_s = alpha_s * x0
        if eta == 0.0:
            return x_s + sigma_s * eps, carry
        c2 = eta**2 * sigma_s**2 * -jnp.expm1(l_t - l_s)  # eta^2 x the posterior variance
        x_s = x_s + jnp.sqrt(jnp.maximum(sigma_s**2 - c2, 0.0)) * eps
        return x_s + jnp.sqrt(c2) * jax.random.normal(key, x.shape, x.dtype), carry

    return step


def _dpmpp_2m_step(denoise, grid: Array, steps: int) -> StepFn:
    """DPM-Solver++(2M) (Lu et al. 2022) in lambda = log_snr / 2; carry (x0_prev, h_prev, has_history).
    First order on the first and last steps and wherever the history was dropped (inpainting resampling)."""

    def step(i, x, carry, key):
        x0_prev, h_prev, has_history = carry
        l_t, l_s = grid[i], grid[i + 1]
        h = 0.5 * (l_s - l_t)
        x0 = denoise(x, l_t)
        second_order = has_history & (i < steps - 1)
        r = h_prev / h
        c = jnp.where(second_order, 0.5 / jnp.where(second_order, r, 1.0), 0.0)
        d = x0 + c * (x0 - x0_prev)
        alpha_s, sigma_s = _scalars(l_s)
        _, sigma_t = _scalars(l_t)
        x_s = (sigma_s / sigma_t) * x - alpha_s * jnp.expm1(-h) * d
        return x_s, (x0, h, jnp.bool_(True))

    return step


def _heun_step(denoise, grid: Array, correct: bool) -> StepFn:
    """One Euler (correct=False) or Heun step of the probability-flow ODE in EDM variables x / alpha."""

    def step(i, x, carry, key):
        l_t, l_s = grid[i], grid[i + 1]
        alpha_t, _ = _scalars(l_t)
        alpha_s, _ = _scalars(l_s)
        sig_t, sig_s = edm_sigma(l_t), edm_sigma(l_s)
        x_e = x / alpha_t
        x0 = denoise(x, l_t)
        d = (x_e - x0) / sig_t
        x_e_next = x_e + (sig_s - sig_t) * d
        if correct:
            x0_next = denoise(alpha_s * x_e_next, l_s)
            d_next = (x_e_next - x0_next) / sig_s
            x_e_next = x_e + (sig_s - sig_t) * 0.5 * (d + d_next)
        return alpha_s * x_e_next, carry

    return step


# ----------------------------------------------------------------------------------------- the loop


def _integrate(
    step: StepFn,
    x: Array,
    carry: Any,
    grid: Array,
    rng: Array,
    start: int,
    stop: int,
    replace_known: Callable[[Array, Array, Array], Array] | None,
    resample_steps: int,
    forget: Callable[[Any], Any] = lambda carry: carry,
) -> tuple[Array, Any]:
    """Run step over nodes start..stop-1 in one lax.fori_loop, with known-region replacement and
    RePaint-style resampling (re-noise to node i and step again, resample_steps - 1 more times, from the
    carry passed through forget: a multistep history does not belong to the re-noised point)."""

    def body(i, state):
        x, carry = state
        key = jax.random.fold_in(rng, i)
        x_next, carry_next = step(i, x, carry, jax.random.fold_in(key, 0))
        if replace_known is not None:
            x_next = replace_known(x_next, grid[i + 1], jax.random.fold_in(key, 1))
        if resample_steps > 1:

            def resample(u, inner):
                x_s, _ = inner
                k_noise, k_step, k_known = jax.random.split(jax.random.fold_in(key, 2 + u), 3)
                x_t = q_forward_step(
                    x_s, grid[i + 1], grid[i], jax.random.normal(k_noise, x_s.shape, x_s.dtype)
                )
                x_s, c = step(i, x_t, forget(carry), k_step)
                return replace_known(x_s, grid[i + 1], k_known), c

            x_next, carry_next = jax.lax.fori_loop(0, resample_steps - 1, resample, (x_next, carry_next))
        return x_next, carry_next

    if stop <= start:
        return x, carry
    return jax.lax.fori_loop(start, stop, body, (x, carry))


def _make_replace_known(known: Array | None, mask: Array | None):
    """x -> mask * q_sample(known, log_snr, fresh noise) + (1 - mask) * x (mask 1 = known pixel)."""
    if known is None and mask is None:
        return None
    if known is None or mask is None:
        raise ValueError("Inpainting needs both known (the image) and mask (1 where the image is known)")

    def replace(x: Array, log_snr: Array, key: Array) -> Array:
        known_b = jnp.broadcast_to(known, x.shape).astype(x.dtype)
        mask_b = jnp.broadcast_to(mask, x.shape).astype(x.dtype)
        noise = jax.random.normal(key, x.shape, x.dtype)
        noisy_known = q_sample(known_b, jnp.full((x.shape[0],), log_snr), noise)
        noisy_known = jnp.where(jnp.isinf(log_snr), known_b, noisy_known)
        return mask_b * noisy_known + (1.0 - mask_b) * x

    return replace


# ------------------------------------------------------------------------------------------- public


def sample(
    model_fn: ModelFn,
    noise: Array,
    rng: Array | None,
    *,
    sampler: str,
    steps: int,
    schedule: str | Schedule,
    prediction: str,
    thresholding: str | None | Callable[[Array], Array] = None,
    threshold_percentile: float = 99.5,
    t_start: float = 1.0,
    t_end: float = 0.0,
    eta: float = 0.0,
    spacing: str | None = None,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    known: Array | None = None,
    mask: Array | None = None,
    resample_steps: int = 1,
    init: Array | None = None,
) -> Array:
    """Integrate from x = noise [B, ...] at t_start (pure noise for t_start = 1) down to t_end -> x [B, ...]
    (the clean sample when t_end = 0), in one lax.fori_loop; jit-able with model_fn closed over. With init
    [B, ...] (a clean image, broadcastable to noise) the start is init noised to the grid's first node with
    `noise` (SDEdit: t_start < 1 redoes that much of the diffusion).

    sampler: "ancestral" | "ddim" (eta: 0 deterministic, 1 = ancestral) | "dpmpp_2m" | "heun" (2 steps - 1
    model calls; the others one per step). steps: a Python int. Node spacing (see sampling_grid): "karras"
    (default; rho, sigma_min, sigma_max in EDM units sigma / alpha), "time" or "log_snr".
    thresholding: None | "none" | "static" | "dynamic" (threshold_percentile, in percent) | a callable
    x0 -> x0, applied to every x0 prediction. Inpainting: known [B, ...] and mask (1 = known, broadcastable
    to x) replace the known region after every step; resample_steps > 1 re-noises and repeats each step
    (RePaint, jump length 1). rng feeds the stochastic parts (ancestral, eta > 0, inpainting); otherwise
    it may be None.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive Python int, got {steps!r}")
    if not isinstance(resample_steps, int) or resample_steps < 1:
        raise ValueError(f"resample_steps must be a positive Python int, got {resample_steps!r}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    check_prediction(prediction)
    _check_times(t_start, t_end)
    schedule = as_schedule(schedule)
    threshold_fn = make_threshold_fn(thresholding, threshold_percentile)
    replace_known = _make_replace_known(known, mask)
    if resample_steps > 1 and replace_known is None:
        raise ValueError("resample_steps > 1 is RePaint-style inpainting resampling: give known and mask too")
    if rng is None:  # fine for the deterministic samplers, whose steps never draw from it
        if sampler == "ancestral" or (sampler == "ddim" and eta > 0) or replace_known is not None:
            raise ValueError(
                f"sampler {sampler!r} (eta={eta}, inpainting={known is not None}) needs an rng key"
            )
        rng = jax.random.PRNGKey(0)
    denoise = _make_denoiser(model_fn, prediction, threshold_fn)

    if spacing is None:
        spacing = "karras"
    grid = sampling_grid(
        schedule,
        steps,
        spacing=spacing,
        t_start=t_start,
        t_end=t_end,
        rho=rho,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
    )

    x = noise
    if init is not None:
        init_b = jnp.broadcast_to(init, noise.shape).astype(noise.dtype)
        x = q_sample(init_b, jnp.full((noise.shape[0],), grid[0]), noise)
    if replace_known is not None:
        x = replace_known(x, grid[0], jax.random.fold_in(rng, steps))  # the steps use 0..steps-1
    common = dict(grid=grid, rng=rng, replace_known=replace_known, resample_steps=resample_steps)
    if sampler == "ancestral":
        x, _ = _integrate(_ancestral_step(denoise, grid), x, (), start=0, stop=steps, **common)
    elif sampler == "ddim":
        x, _ = _integrate(_ddim_step(denoise, grid, float(eta)), x, (), start=0, stop=steps, **common)
    elif sampler == "dpmpp_2m":
        carry = (jnp.zeros_like(x), jnp.float32(1.0), jnp.bool_(False))
        forget = lambda c: (c[0], c[1], jnp.bool_(False))
        step = _dpmpp_2m_step(denoise, grid, steps)
        x, _ = _integrate(step, x, carry, start=0, stop=steps, forget=forget, **common)
    else:
        last_heun = steps - 1 if t_end == 0.0 else steps  # the step to sigma = 0 is a plain Euler step
        x, _ = _integrate(_heun_step(denoise, grid, correct=True), x, (), start=0, stop=last_heun, **common)
        x, _ = _integrate(
            _heun_step(denoise, grid, correct=False), x, (), start=last_heun, stop=steps, **common
        )
    return x


def ddim_invert(
    model_fn: ModelFn,
    x0: Array,
    *,
    steps: int,
    schedule: str | Schedule,
    prediction: str,
    thresholding: str | None | Callable[[Array], Array] = None,
    threshold_percentile: float = 99.5,
    t_start: float = 1.0,
    t_end: float = 0.0,
    spacing: str = "karras",
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    refine_iters: int = 2,
) -> Array:
    """Deterministic DDIM (eta = 0) run backwards: x0 [B, ...] at t_end -> x [B, ...] at t_start on the same
    grid as sample(..., sampler="ddim"), so that sampling the result gives x0 back. Each step starts from the
    explicit inverse (model at the cleaner node; at log_snr(t_end) for the clean node) and then solves
    ddim_step(x_t) = x_s with refine_iters fixed-point iterations
    x_t -= alpha_t / alpha_s (ddim_step(x_t) - x_s) (one model call each; a contraction, since the step's Jacobian lies between sigma_s/sigma_t and
    alpha_s/alpha_t)."""
    check_prediction(prediction)
    if not isinstance(refine_iters, int) or refine_iters < 0:
        raise ValueError(f"refine_iters must be a Python int >= 0, got {refine_iters!r}")
    schedule = as_schedule(schedule)
    denoise = _make_denoiser(model_fn, prediction, make_threshold_fn(thresholding, threshold_percentile))
    grid = sampling_grid(
        schedule,
        steps,
        spacing=spacing,
        t_start=t_start,
        t_end=t_end,
        rho=rho,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
    )
    eval_grid = grid.at[-1].set(
        jnp.where(jnp.isinf(grid[-1]), schedule.log_snr(jnp.float32(t_end)), grid[-1])
    )
    step = _ddim_step(denoise, grid, 0.0)

    def body(j, x_s):
        i = steps - 1 - j  # from node i + 1 (cleaner) to node i (noisier)
        l_eval = eval_grid[i + 1]
        x0_hat = denoise(x_s, l_eval)
        alpha_t, sigma_t = alpha_sigma(grid[i])
        x_t = alpha_t * x0_hat + sigma_t * eps_from_x0(x_s, x0_hat, l_eval)
        gain = jnp.exp(
            0.5 * (jax.nn.log_sigmoid(grid[i]) - jax.nn.log_sigmoid(grid[i + 1]))
        )  # alpha_t/alpha_s

        def refine(_, x_t):
            return x_t - gain * (step(i, x_t, (), None)[0] - x_s)

        return jax.lax.fori_loop(0, refine_iters, refine, x_t)

    return jax.lax.fori_loop(0, steps, body, x0)
