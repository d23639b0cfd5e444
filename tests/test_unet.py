"""U-Net: shapes, invariants of the text conditioning, zero-initialised output, remat equivalence."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.models.unet import SKIP_SCALE, UNet

TINY = dict(
    dim=8,
    channel_mult=(1, 2),
    num_res_blocks=(1, 1),
    attn_levels=(1,),
    cross_attn_levels=(0,),
    head_dim=8,
    cond_dim=16,
)


def _inputs(batch=2, size=8, length=5, text_dim=12, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(keys[0], (batch, size, size, 3))
    log_snr = jnp.linspace(-5.0, 5.0, batch)
    text = jax.random.normal(keys[1], (batch, length, text_dim))
    mask = jnp.arange(length)[None, :] < jnp.array([3, 5])[:batch, None]
    return x, log_snr, text, mask


def _init_nonzero_output(model, args):
    """Parameters with the zero-initialised output conv (and residual convs) randomised, so outputs depend on input."""
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), *args)["params"])
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    leaves = [leaf + 0.1 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, leaves)


def test_output_shape_and_zero_init():
    model = UNet(**TINY)
    args = _inputs()
    params = jax.jit(model.init)(jax.random.key(0), *args)["params"]
    out = jax.jit(model.apply)({"params": params}, *args)
    assert out.shape == args[0].shape
    np.testing.assert_array_equal(np.asarray(out), 0.0)  # zero-initialised output convolution


def test_padded_tokens_do_not_matter():
    model = UNet(**TINY)
    x, log_snr, text, mask = _inputs()
    params = _init_nonzero_output(model, (x, log_snr, text, mask))
    garbage = jnp.where(mask[..., None], text, 100.0 * jax.random.normal(jax.random.key(9), text.shape))
    apply = jax.jit(model.apply)
    a = apply({"params": params}, x, log_snr, text, mask)
    b = apply({"params": params}, x, log_snr, garbage, mask)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    c = apply({"params": params}, x, log_snr, text + jax.random.normal(jax.random.key(3), text.shape), mask)
    assert float(jnp.abs(a - c).max()) > 1e-3  # but the real tokens do


def test_dropped_text_equals_empty_prompt():
    model = UNet(**TINY)
    x, log_snr, text, mask = _inputs()
    params = _init_nonzero_output(model, (x, log_snr, text, mask))
    apply = jax.jit(model.apply)
    dropped = apply({"params": params}, x, log_snr, text, mask, jnp.array([True, True]))
    empty = apply({"params": params}, x, log_snr, jnp.zeros_like(text), jnp.zeros_like(mask))
    np.testing.assert_allclose(np.asarray(dropped), np.asarray(empty), atol=1e-5)
    assert np.all(np.isfinite(np.asarray(empty)))


def test_remat_gives_same_gradients():
    args = _inputs()
    plain, remat = UNet(**TINY), UNet(**TINY, remat=True)
    params = _init_nonzero_output(plain, args)
    grad = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(m.apply({"params": p}, *args) ** 2)))(params)
    for a, b in zip(jax.tree.leaves(grad(plain)), jax.tree.leaves(grad(remat)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_skip_scaling_and_resampling_order():
    """Skips enter the up path scaled by 1/sqrt(2); the down path resamples before its blocks, the up path after."""
    model = UNet(**TINY)
    args = _inputs()
    params = _init_nonzero_output(model, args)
    calls, inputs, outputs = [], {}, {}

    def record(next_fun, call_args, call_kwargs, context):
        out = next_fun(*call_args, **call_kwargs)
        if context.method_name == "__call__" and len(context.module.path) == 1:  # the U-Net's direct children
            calls.append(context.module.name)
            inputs[context.module.name], outputs[context.module.name] = call_args[0], out
        return out

    with nn.intercept_methods(record):
        model.apply({"params": params}, *args)
    skip = outputs["down0_block0"]
    up_input = inputs["up0_block0"]
    np.testing.assert_allclose(
        np.asarray(up_input[..., -skip.shape[-1] :]), np.asarray(skip * SKIP_SCALE), rtol=1e-6, atol=1e-6
    )
    assert SKIP_SCALE == pytest.approx(1 / np.sqrt(2))
    assert calls.index("down1_resample") < calls.index("down1_block0")
    assert calls.index("up1_block0") < calls.index("up1_resample") < calls.index("up0_block0")


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match="num_res_blocks"):
        UNet(dim=8, channel_mult=(1, 2), num_res_blocks=(1, 1, 1)).init(jax.random.key(0), *_inputs())
    with pytest.raises(ValueError, match="divisible"):
        UNet(dim=8, channel_mult=(1, 2, 2, 2)).init(jax.random.key(0), *_inputs(size=4))
