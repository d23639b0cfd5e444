"""Classifier-free guidance (one batched forward pass) and static / dynamic thresholding of predicted x0."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp

from imagen_jax.diffusion.objectives import broadcast_to

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]
ModelFnWithDrop = Callable[[Array, Array, Array], Array]

THRESHOLDINGS = ("none", "static", "dynamic")


def check_interval(
    interval: Sequence[float] | None, where: str = "sample.guidance_interval"
) -> tuple[float, ...]:
    """The guidance interval as a tuple: () (guidance at every noise level) or (lo, hi), finite log-SNRs with
    lo < hi; a ValueError naming `where` otherwise."""
    values = tuple(interval or ())
    if not values:
        return ()
    ok = len(values) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not ok or not all(math.isfinite(v) for v in values) or not values[0] < values[1]:
        raise ValueError(
            f"{where}={interval!r} must be () (guidance at every noise level) or (lo, hi), two finite log-SNRs "
            f"with lo < hi: guidance where lo <= log_snr <= hi, the conditional prediction elsewhere (e.g. "
            f"(1.0, 20.0) skips the noisiest steps of a cosine schedule, whose log-SNR spans -20..20)."
        )
    return float(values[0]), float(values[1])


def classifier_free_guidance(
    model_fn_with_drop: ModelFnWithDrop,
    guidance_scale: float | Array,
    interval: Sequence[float] | None = (),
) -> ModelFn:
    """model_fn(x_t [B, ...], log_snr [B]) -> uncond + w (cond - uncond), from ONE call of
    model_fn_with_drop(x [2B, ...], log_snr [2B], drop_text bool [2B]) on the batch doubled as
    (conditional, unconditional). guidance_scale w: a float, or an array [B] (per example).
    A Python w == 1 gives a single conditional call of batch B.

    interval (lo, hi): guidance only where lo <= log_snr <= hi, the conditional prediction (w = 1) elsewhere
    ("guidance in a limited interval", Kynkaenniemi et al. 2024: guidance at the noisiest steps pushes every
    sample's layout and colours the same way, costing diversity and fidelity for little alignment). A step whose
    whole batch lies outside it makes the single conditional call of batch B. (): every noise level."""
    interval = check_interval(interval)
    if isinstance(guidance_scale, int | float) and guidance_scale == 1.0:
        return partial(_conditional, model_fn_with_drop)

    def guided_fn(x_t: Array, log_snr: Array) -> Array:
        log_snr = jnp.broadcast_to(log_snr, (x_t.shape[0],))
        w = jnp.broadcast_to(jnp.asarray(guidance_scale, jnp.float32), log_snr.shape)
        if not interval:
            return _guided(model_fn_with_drop, x_t, log_snr, w)
        inside = (log_snr >= interval[0]) & (log_snr <= interval[1])
        return jax.lax.cond(
            jnp.any(inside),
            lambda: _guided(model_fn_with_drop, x_t, log_snr, jnp.where(inside, w, 1.0)),
            lambda: _conditional(model_fn_with_drop, x_t, log_snr),
        )

    return guided_fn


def _conditional(model_fn_with_drop: ModelFnWithDrop, x_t: Array, log_snr: Array) -> Array:
    """The conditional prediction alone: one call of batch B."""
    return model_fn_with_drop(x_t, log_snr, jnp.zeros((x_t.shape[0],), bool))


def _guided(model_fn_with_drop: ModelFnWithDrop, x_t: Array, log_snr: Array, w: Array) -> Array:
    """uncond + w (cond - uncond) from one call of batch 2B; log_snr and w [B]."""
    b = x_t.shape[0]
    drop = jnp.concatenate([jnp.zeros((b,), bool), jnp.ones((b,), bool)])
    pred = model_fn_with_drop(jnp.concatenate([x_t, x_t]), jnp.concatenate([log_snr, log_snr]), drop)
    cond, uncond = pred[:b], pred[b:]
    return uncond + broadcast_to(w, cond).astype(cond.dtype) * (cond - uncond)


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
