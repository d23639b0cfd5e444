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


def _init_nonzero_output(model, args, **kwargs):
    """Parameters with the zero-initialised output conv (and residual convs) randomised, so outputs depend on input."""
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), *args, **kwargs)["params"])
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
        # float32 rounding of the recomputed forward, in absolute terms ~2e-6 of the leaf's largest entry (seen:
        # 1.2e-5 on an entry of 0.016 in a leaf reaching 6.3, at XLA's optimisation level 0); a wrong remat is O(1)
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(a).max())))


def _record_calls(model, args, params, **kwargs):
    """(names of the U-Net's direct children in call order, their inputs, their outputs) of one apply."""
    calls, inputs, outputs = [], {}, {}

    def record(next_fun, call_args, call_kwargs, context):
        out = next_fun(*call_args, **call_kwargs)
        if context.method_name == "__call__" and len(context.module.path) == 1:  # the U-Net's direct children
            calls.append(context.module.name)
            inputs[context.module.name], outputs[context.module.name] = call_args[0], out
        return out

    with nn.intercept_methods(record):
        model.apply({"params": params}, *args, **kwargs)
    return calls, inputs, outputs


def test_efficient_unet_dblocks_downsample_first_and_ublocks_take_scaled_dblock_outputs():
    """Every DBlock (level 0 too) downsamples before its res blocks; every UBlock upsamples after them; a UBlock's
    skip is its DBlock's output scaled by 1/sqrt(2); the deepest UBlock continues without one; no middle block."""
    model = UNet(**TINY)
    args = _inputs()
    params = _init_nonzero_output(model, args)
    calls, inputs, outputs = _record_calls(model, args, params)
    dblock0_out = outputs["down0_cross_attn"]  # TINY's level 0 ends in cross-attention
    up_input = inputs["up0_block0"]
    np.testing.assert_allclose(
        np.asarray(up_input[..., -dblock0_out.shape[-1] :]),
        np.asarray(dblock0_out * SKIP_SCALE),
        rtol=1e-6,
        atol=1e-6,
    )
    assert SKIP_SCALE == pytest.approx(1 / np.sqrt(2))
    deepest = outputs["down1_attn"]  # TINY attends at level 1
    np.testing.assert_array_equal(
        np.asarray(inputs["up1_block0"]), np.asarray(deepest)
    )  # no skip concatenated
    assert calls.index("conv_in") < calls.index("down0_resample") < calls.index("down0_block0")
    assert calls.index("down1_resample") < calls.index("down1_block0")
    assert calls.index("up1_block0") < calls.index("up1_resample") < calls.index("up0_block0")
    assert calls.index("up0_block0") < calls.index("up0_resample") < calls.index("norm_out")
    assert not any(name.startswith("mid") for name in calls)
    size = args[0].shape[1]
    assert outputs["down0_block0"].shape[1] == size // 2 and outputs["down1_block0"].shape[1] == size // 4
    assert outputs["up0_resample"].shape[1] == size


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match="num_res_blocks"):
        UNet(dim=8, channel_mult=(1, 2), num_res_blocks=(1, 1, 1)).init(jax.random.key(0), *_inputs())
    with pytest.raises(ValueError, match="divisible"):
        UNet(dim=8, channel_mult=(1, 2, 2, 2)).init(jax.random.key(0), *_inputs(size=4))


def test_base_unet_resamples_after_down_blocks_and_before_up_blocks_without_skip_scaling():
    """efficient=False is the base U-Net of App. F.1: down path resamples after a level's blocks, the up path
    before them, and skips enter unscaled."""
    model = UNet(**TINY, efficient=False)
    args = _inputs()
    params = _init_nonzero_output(model, args)
    calls, inputs, outputs = _record_calls(model, args, params)
    assert outputs["down0_block0"].shape[1] == args[0].shape[1]  # level 0 at full resolution
    skip = outputs["down0_block0"]
    np.testing.assert_array_equal(np.asarray(inputs["up0_block0"][..., -skip.shape[-1] :]), np.asarray(skip))
    assert calls.index("down0_block0") < calls.index("down1_resample") < calls.index("down1_block0")
    assert calls.index("up1_block0") < calls.index("up1_resample") < calls.index("up0_block0")
    assert outputs["down0_block0"].shape[1] == 2 * outputs["down1_block0"].shape[1]
    assert inputs["up0_block0"].shape[1] == 2 * inputs["up1_block0"].shape[1]


def _sr_inputs():
    x, log_snr, text, mask = _inputs()
    lowres = jax.random.normal(jax.random.key(7), x.shape)
    return (x, log_snr, text, mask), lowres, jnp.array([-2.0, 3.0])


def test_super_resolution_output_depends_on_lowres_image_and_augmentation_level():
    model = UNet(**TINY, lowres_cond=True)
    args, lowres, aug = _sr_inputs()
    params = _init_nonzero_output(model, args, lowres=lowres, aug_log_snr=aug)
    assert params["conv_in"]["kernel"].shape[2] == 6  # x_t and the low-res image, channels stacked
    apply = jax.jit(lambda p, lr, a: model.apply({"params": p}, *args, lowres=lr, aug_log_snr=a))
    base = apply(params, lowres, aug)
    assert base.shape == args[0].shape
    other_lowres = apply(params, lowres.at[:, :4].set(0.0), aug)
    other_aug = apply(params, lowres, aug + 1.0)
    for changed in (other_lowres, other_aug):
        per_example = jnp.abs(changed - base).max(axis=(1, 2, 3))
        assert float(per_example.min()) > 1e-3
    with pytest.raises(ValueError, match="needs `lowres` and `aug_log_snr`"):
        model.apply({"params": params}, *args)
    with pytest.raises(ValueError, match="upsampled"):
        model.apply({"params": params}, *args, lowres=lowres[:, ::2, ::2], aug_log_snr=aug)
    with pytest.raises(ValueError, match="without lowres_cond"):
        UNet(**TINY).init(jax.random.key(0), *args, lowres=lowres, aug_log_snr=aug)


def test_explicit_cross_attention_alone_sees_only_unmasked_tokens():
    """The 1024 stage's layout: no self-attention anywhere, cross-attention at the lowest level only."""
    model = UNet(**{**TINY, "attn_levels": (), "cross_attn_levels": (1,)})
    x, log_snr, text, mask = _inputs()
    params = _init_nonzero_output(model, (x, log_snr, text, mask))
    assert "down1_cross_attn" in params and "up1_cross_attn" in params
    assert not any(k.endswith("_attn") and "cross" not in k for k in params)
    garbage = jnp.where(mask[..., None], text, 50.0 * jax.random.normal(jax.random.key(4), text.shape))
    apply = jax.jit(model.apply)
    a = apply({"params": params}, x, log_snr, text, mask)
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(apply({"params": params}, x, log_snr, garbage, mask)), atol=1e-5
    )
    unmasked = apply({"params": params}, x, log_snr, garbage, jnp.ones_like(mask))
    assert float(jnp.abs(unmasked - a)[0].max()) > 1e-3  # example 0 has 2 padded tokens that now count


def test_norm_group_count_and_what_group_norm_removes():
    """norm_groups caps GroupNorm's group count (powers of two dividing the channels, GroupNorm32's rule at 32).
    One channel per group is InstanceNorm: a per-channel constant (an image's mean colour, carried into the
    features) vanishes exactly; with wider groups only the part shared by a group's channels does."""
    from imagen_jax.models.layers import group_norm, norm_group_count

    assert [norm_group_count(c) for c in (32, 64, 24, 3)] == [32, 32, 8, 1]
    assert [norm_group_count(c, 8) for c in (32, 64, 12, 3)] == [8, 8, 4, 1]
    with pytest.raises(ValueError, match="max_groups"):
        norm_group_count(32, 0)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 32))
    per_channel = jax.random.normal(jax.random.key(1), (32,))  # differs within every group
    per_group = jnp.repeat(jax.random.normal(jax.random.key(2), (8,)), 4)  # one value per 8-group
    for max_groups, kept in ((32, False), (8, True)):
        norm = group_norm(32, max_groups=max_groups)
        params = norm.init(jax.random.key(0), x)
        base = norm.apply(params, x)
        np.testing.assert_allclose(norm.apply(params, x + per_group), base, atol=1e-4)
        moved = float(jnp.abs(norm.apply(params, x + per_channel) - base).max())
        assert (moved > 0.1) == kept, (max_groups, moved)


def test_unet_norm_groups_changes_the_function_not_the_parameters():
    x, log_snr, text, mask = _inputs()
    instance, grouped = UNet(**TINY), UNet(**TINY, norm_groups=2)
    params = _init_nonzero_output(instance, (x, log_snr, text, mask))
    shapes = jax.tree.map(jnp.shape, nn.meta.unbox(grouped.init(jax.random.key(1), x, log_snr, text, mask)))
    assert jax.tree.map(jnp.shape, {"params": params}) == shapes  # same checkpoint layout
    a = jax.jit(instance.apply)({"params": params}, x, log_snr, text, mask)
    b = jax.jit(grouped.apply)({"params": params}, x, log_snr, text, mask)
    assert float(jnp.abs(a - b).max()) > 1e-3
