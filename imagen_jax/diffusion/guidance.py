"""Classifier-free guidance (one batched forward pass) and static / dynamic thresholding of predicted x0."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from imagen_jax.diffusion.objectives import broadcast_to

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]
ModelFnWithDrop = Callable[[Array, Array, Array], Array]

THRESHOLDINGS = ("none", "static", "dynamic")


def classifier_free_guidance(model_fn_with_drop: ModelFnWithDrop, guidance_scale: float | Array) -> ModelFn:
    """model_fn(x_t [B, ...], log_snr [B]) -> uncond + w (cond - uncond), from ONE call of
    model_fn_with_drop(x [2B, ...], log_snr [2B], drop_text bool [2B]) on the batch doubled as
    (conditional, unconditional). guidance_scale w: a float, or an array [B] (per example).
    A Python w == 1 gives a single conditional call of batch B."""
    if isinstance(guidance_scale, int | float) and guidance_scale == 1.0:

        def conditional_fn(x_t: Array, log_snr: Array) -> Array:
            return model_fn_with_drop(x_t, log_snr, jnp.zeros((x_t.shape[0],), bool))

        return conditional_fn

    def guided_fn(x_t: Array, log_snr: Array) -> Array:
        b = x_t.shape[0]
        log_snr = jnp.broadcast_to(log_snr, (b,))
        drop = jnp.concatenate([jnp.zeros((b,), bool), jnp.ones((b,), bool)])
        pred = model_fn_with_drop(jnp.concatenate([x_t, x_t]), jnp.concatenate([log_snr, log_snr]), drop)
        cond, uncond = pred[:b], pred[b:]
        w = broadcast_to(jnp.asarray(guidance_scale, jnp.float32), cond).astype(cond.dtype)
        return uncond + w * (cond - uncond)

    return guided_fn


def static_threshold(x0: Array) -> Array:
    """Clip predicted x0 to [-1, 1]."""
    return jnp.clip(x0, -1.0, 1.0)


def check_percentile(percentile: float) -> float:
    """Validate a dynamic-thresholding percentile given in percent, 1 < p <= 100 (Imagen: 99.5).

    Values in (0, 1] are rejected: they are almost surely quantiles (0.995 meaning 99.5 %), which
    jnp.percentile would read as the 0.995-th percent and so turn dynamic thresholding into near-static
    clipping (a known bug in a public Flax port)."""
    try:
        p = float(percentile)
    except TypeError as e:
        raise TypeError(
            f"The dynamic-thresholding percentile must be a Python number, got {percentile!r}"
        ) from e
    if 0 < p <= 1:
        raise ValueError(
            f"Dynamic-thresholding percentile {p} looks like a quantile in 0..1; it is given in percent "
            f"(0..100], e.g. 99.5 as in the Imagen paper (did you mean {100 * p:g}?)"
        )
    if not 1 < p <= 100:
        raise ValueError(f"Dynamic-thresholding percentile must be in percent, 1 < p <= 100, got {p}")
    return p


def dynamic_threshold(x0: Array, percentile: float = 99.5) -> Array:
    """Imagen's dynamic thresholding, per sample of x0 [B, ...]: s = max(percentile of |x0| (in percent,
    linear interpolation), 1); returns clip(x0, -s, s) / s."""
    p = check_percentile(percentile)
    flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.float32)
    s = jnp.maximum(jnp.percentile(flat, p, axis=1), 1.0).astype(x0.dtype)
    s = broadcast_to(s, x0)
    return jnp.clip(x0, -s, s) / s


def make_threshold_fn(kind: str | None | Callable[[Array], Array], percentile: float = 99.5):
    """x0 -> x0 for kind "none" (or None), "static", "dynamic" (with percentile, in percent) or a callable."""
    if callable(kind):
        return kind
    if kind is None or kind == "none":
        return lambda x0: x0
    if kind == "static":
        return static_threshold
    if kind == "dynamic":
        p = check_percentile(percentile)
        return lambda x0: dynamic_threshold(x0, p)
    raise ValueError(f"Unknown thresholding {kind!r}; choose one of {THRESHOLDINGS} or pass a callable")
