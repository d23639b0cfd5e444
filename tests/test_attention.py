"""imagen_jax.attention (jax.nn.dot_product_attention, float32 logits) against the einsum path it replaced: the
function itself with masks and a bias, the U-Net's AttentionBlock / AttentionPool recomputed by hand from their own
parameters, a bfloat16 case that fails if the logits are rounded to bfloat16, and the refused implementations.
T5 through it is checked against transformers' PyTorch T5 in tests/test_t5.py and tests/test_text_encoder.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import attention as attention_lib
from imagen_jax.attention import attention
from imagen_jax.models import layers
from imagen_jax.text import t5


def reference_attention(q, k, v, kv_mask, bias=None, scale=None):
    """The einsum path: float32 logits from float32-upcast q and k, explicit scale (1/sqrt(D) by default), masked
    with finfo.min, float32 softmax. [B,Q,H,D] float32."""
    q, k, v = (jnp.asarray(x, jnp.float32) for x in (q, k, v))
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") * np.float32(scale)
    if bias is not None:
        logits = logits + bias
    logits = jnp.where(kv_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v, precision="highest")


def bf16_logits_attention(q, k, v, kv_mask):
    """The path before: q.k in the compute dtype (bfloat16 here), cast to float32 afterwards."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1]).astype(
        jnp.float32
    )
    logits = jnp.where(kv_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


B, Q, K, H, D = 3, 5, 7, 2, 8


def _qkv(seed, queries=Q, keys=K):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal((B, n, H, D)), jnp.float32) for n in (queries, keys, keys))


MASKS = {
    "all keys": np.ones((B, K), bool),
    "per batch element": np.array(
        [[1, 1, 1, 1, 1, 1, 0], [1, 0, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 1, 0]], bool
    ),
    "padding": np.arange(K)[None] < np.array([7, 3, 1])[:, None],
}


@pytest.mark.parametrize("bias_batch", [None, 1, B])
@pytest.mark.parametrize("mask_name", sorted(MASKS))
def test_matches_the_einsum_reference(mask_name, bias_batch):
    q, k, v = _qkv(0)
    mask = jnp.asarray(MASKS[mask_name])
    bias = None
    if bias_batch is not None:
        bias = jnp.asarray(3 * np.random.default_rng(1).standard_normal((bias_batch, H, Q, K)), jnp.float32)
    for scale in (None, 1.0):
        out = jax.jit(attention, static_argnames=("implementation", "scale"))(
            q, k, v, mask, bias=bias, scale=scale
        )
        assert out.shape == (B, Q, H, D) and out.dtype == jnp.float32
        error = float(jnp.max(jnp.abs(out - reference_attention(q, k, v, mask, bias, scale))))
        assert error < 2e-6, error  # outputs are O(1): float32 rounding


def test_a_row_with_every_key_masked_attends_uniformly():
    q, k, v = _qkv(2)
    mask = jnp.asarray(MASKS["per batch element"]).at[1].set(False)
    out = attention(q, k, v, mask)
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(out[1], jnp.broadcast_to(v[1].mean(0), (Q, H, D)), atol=1e-6)
    np.testing.assert_allclose(out[0], reference_attention(q, k, v, mask)[0], atol=2e-6)


def test_gradients_match_the_reference():
    q, k, v = _qkv(3)
    mask = jnp.asarray(MASKS["per batch element"])
    weights = jnp.asarray(np.random.default_rng(4).standard_normal((B, Q, H, D)), jnp.float32)
    loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, mask) * weights)
    ours = jax.grad(loss(attention), argnums=(0, 1, 2))(q, k, v)
    reference = jax.grad(loss(reference_attention), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bfloat16_logits_are_not_rounded_to_bfloat16():
    """Large, close logits (about 1000 apart by a few units, spacing 8 in bfloat16): the weights from float32 logits
    of the same bfloat16 inputs are met to bfloat16 precision of the weights themselves, the old path misses by far."""
    rng = np.random.default_rng(0)
    b, q_len, k_len, heads, dim = 2, 4, 8, 2, 64
    q = jnp.asarray(4 + 0.5 * rng.standard_normal((b, q_len, heads, dim)), jnp.bfloat16)
    k = jnp.asarray(4 + 0.5 * rng.standard_normal((b, k_len, heads, dim)), jnp.bfloat16)
    # one-hot values: the output's first k_len features are the attention weights themselves
    v = jnp.asarray(np.broadcast_to(np.eye(k_len, dim)[None, :, None], (b, k_len, heads, dim)), jnp.bfloat16)
    mask = jnp.asarray(np.arange(k_len)[None] < np.array([8, 6])[:, None])
    exact = reference_attention(q, k, v, mask)  # float32 from the same bfloat16 values
    new = attention(q, k, v, mask)
    old = bf16_logits_attention(q, k, v, mask)
    assert new.dtype == jnp.bfloat16
    new_error = float(jnp.max(jnp.abs(new.astype(jnp.float32) - exact)))
    old_error = float(jnp.max(jnp.abs(old.astype(jnp.float32) - exact)))
    assert new_error < 5e-3, (
        new_error
    )  # the weights' own cast to bfloat16 (2^-9 relative) before the product with v
    assert old_error > 5e-2, old_error


def test_the_cudnn_layout_is_the_same_attention():
    """What runs on cuDNN (odd lengths padded to even, the mask spread over [B,1,Q,K]), computed here by XLA."""
    q, k, v = _qkv(5)
    mask = jnp.asarray(MASKS["per batch element"])
    bias = jnp.asarray(np.random.default_rng(6).standard_normal((1, H, Q, K)), jnp.float32)
    padded_q, padded_k, padded_v, full_mask, padded_bias = attention_lib._cudnn_layout(q, k, v, mask, bias)
    assert padded_q.shape == (B, Q + 1, H, D) and padded_k.shape == padded_v.shape == (B, K + 1, H, D)
    assert full_mask.shape == (B, 1, Q + 1, K + 1) and padded_bias.shape == (1, H, Q + 1, K + 1)
    out = jax.nn.dot_product_attention(
        padded_q, padded_k, padded_v, padded_bias, full_mask, implementation="xla"
    )[:, :Q]
    np.testing.assert_allclose(out, reference_attention(q, k, v, mask, bias), atol=2e-6)


def _randomised(params, seed):
    """params with every leaf redrawn (the zero-initialised output projection would hide the attention)."""
    leaves, tree = jax.tree.flatten(nn.meta.unbox(params))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree,
        [
            0.5 * jax.random.normal(key, leaf.shape, leaf.dtype)
            for key, leaf in zip(keys, leaves, strict=True)
        ],
    )


def _group_norm(x, groups, scale, bias, eps=1e-6):
    b, h, w, c = x.shape
    g = x.reshape(b, h * w, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    return ((g - mean) / jnp.sqrt(var + eps)).reshape(b, h, w, c) * scale + bias


TEXT_MASK = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], bool)  # the second prompt has every token masked


@pytest.mark.parametrize("text_only", [False, True])
def test_attention_block_equals_the_hand_computation(text_only):
    rng = np.random.default_rng(7)
    b, side, c, head_dim, length, text_dim = 2, 4, 16, 4, 4, 6
    x = jnp.asarray(rng.standard_normal((b, side, side, c)), jnp.float32)
    text = jnp.asarray(rng.standard_normal((b, length, text_dim)), jnp.float32)
    mask = jnp.asarray(TEXT_MASK)
    block = layers.AttentionBlock(head_dim, text_only=text_only)
    params = _randomised(block.init(jax.random.key(0), x, text, mask)["params"], 1)
    out = block.apply({"params": params}, x, text, mask)

    heads = c // head_dim
    h = _group_norm(x, 16, params["norm"]["scale"], params["norm"]["bias"]).reshape(b, side * side, c)
    project = lambda name, inputs: jnp.einsum(
        "blc,chd->blhd", inputs, params[name]["kernel"], precision="highest"
    )
    null_k, null_v = (jnp.broadcast_to(params["null_kv"][i], (b, 1, heads, head_dim)) for i in (0, 1))
    keys, values, masks = [null_k], [null_v], [jnp.ones((b, 1), bool)]
    if not text_only:
        keys, values = [project("key", h), *keys], [project("value", h), *values]
        masks = [jnp.ones((b, side * side), bool), *masks]
    keys.append(project("text_key", text))
    values.append(project("text_value", text))
    masks.append(mask)
    attended = reference_attention(
        project("query", h), jnp.concatenate(keys, 1), jnp.concatenate(values, 1), jnp.concatenate(masks, 1)
    )
    expected = x + (
        jnp.einsum("blhd,hdc->blc", attended, params["out"]["kernel"], precision="highest")
        + params["out"]["bias"]
    ).reshape(x.shape)
    assert float(jnp.max(jnp.abs(out - expected))) < 1e-5


def test_attention_pool_equals_the_hand_computation():
    rng = np.random.default_rng(8)
    b, length, d, heads = 2, 4, 16, 4
    text = jnp.asarray(rng.standard_normal((b, length, d)), jnp.float32)
    mask = jnp.asarray(TEXT_MASK)
    pool = layers.AttentionPool(num_heads=heads)
    params = _randomised(pool.init(jax.random.key(0), text, mask)["params"], 2)
    out = pool.apply({"params": params}, text, mask)

    counts = np.maximum(TEXT_MASK.sum(1), 1)[:, None]
    mean = jnp.sum(jnp.where(mask[..., None], text, 0.0), 1) / counts
    tokens = jnp.concatenate([mean[:, None], text], 1)
    token_mask = jnp.concatenate([jnp.ones((b, 1), bool), mask], 1)
    project = lambda name: jnp.einsum("blc,chd->blhd", tokens, params[name]["kernel"], precision="highest")
    query = jnp.broadcast_to(params["query"], (b, 1, heads, d // heads))
    pooled = reference_attention(query, project("key"), project("value"), token_mask)
    expected = jnp.einsum("bhd,hdc->bc", pooled[:, 0], params["out"]["kernel"], precision="highest")
    assert out.shape == (b, d)
    assert float(jnp.max(jnp.abs(out - (expected + params["out"]["bias"])))) < 1e-5


def test_parameter_trees_are_unchanged():
    x, text, mask = jnp.zeros((1, 4, 4, 16)), jnp.zeros((1, 4, 6)), jnp.ones((1, 4), bool)
    shapes = lambda tree: {
        "/".join(str(p.key) for p in path): v.shape for path, v in jax.tree.leaves_with_path(tree)
    }
    block = jax.eval_shape(
        layers.AttentionBlock(4, implementation="xla").init, jax.random.key(0), x, text, mask
    )
    assert shapes(nn.meta.unbox(block["params"])) == {
        "norm/scale": (16,),
        "norm/bias": (16,),
        "query/kernel": (16, 4, 4),
        "key/kernel": (16, 4, 4),
        "value/kernel": (16, 4, 4),
        "null_kv": (2, 4, 4),
        "text_key/kernel": (6, 4, 4),
        "text_value/kernel": (6, 4, 4),
        "out/kernel": (4, 4, 16),
        "out/bias": (16,),
    }
    assert nn.get_partition_spec(block)["params"]["query"]["kernel"] == jax.sharding.PartitionSpec(
        "embed", "heads", "kv"
    )


def test_unknown_implementations_are_refused():
    q, k, v = _qkv(0)
    mask = jnp.ones((B, K), bool)
    with pytest.raises(ValueError, match=r"one of \('xla', 'cudnn'\), got 'flash'"):
        attention(q, k, v, mask, implementation="flash")
    x, text = jnp.zeros((1, 2, 2, 8)), jnp.zeros((1, 4, 6))
    with pytest.raises(ValueError, match="got 'flash'"):
        layers.AttentionBlock(4, implementation="flash").init(
            jax.random.key(0), x, text, jnp.ones((1, 4), bool)
        )
    with pytest.raises(ValueError, match="got 'flash'"):
        layers.AttentionPool(implementation="flash").init(jax.random.key(0), text, jnp.ones((1, 4), bool))
    with pytest.raises(ValueError, match=r"attention_implementation must be one of \('xla', 'cudnn'\)"):
        t5.preset("small", attention_implementation="flash")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN can run here")
def test_cudnn_is_refused_off_gpu_with_a_clear_message():
    q, k, v = _qkv(0)
    with pytest.raises(
        ValueError, match=r"'cudnn' needs an NVIDIA GPU, but the default JAX backend is 'cpu'"
    ):
        attention(
            q.astype(jnp.bfloat16),
            k.astype(jnp.bfloat16),
            v.astype(jnp.bfloat16),
            jnp.ones((B, K), bool),
            implementation="cudnn",
        )
    # a config may name it on any machine (it is checked where attention runs), and it is not part of what the
    # encoder computes: the built-in encoder's embedding-cache identity hashes repr(config)
    config = t5.preset("small", attention_implementation="cudnn")
    assert config.attention_implementation == "cudnn" and repr(config) == repr(t5.preset("small"))


def test_t5_runs_through_it_with_the_position_bias_and_padding():
    """T5's own attention, recomputed with the reference: unscaled logits + relative-position bias, key padding."""
    config = t5.T5Config(50, 16, 4, 32, 2, 1, "gated-gelu")
    ids = jnp.asarray([[5, 6, 7, 8, 9], [5, 6, 0, 0, 0]], jnp.int32)
    mask = ids > 0
    params = t5.init_params(config, 0)["params"]
    x = jnp.asarray(np.random.default_rng(9).standard_normal((2, 5, 16)), jnp.float32)
    bias = jnp.asarray(np.random.default_rng(10).standard_normal((2, 5, 5)), jnp.float32)
    attn = params["block_0"]["attention"]
    out = t5.SelfAttention(config).apply({"params": attn}, x, bias, mask)
    project = lambda name: jnp.einsum("bld,dhk->blhk", x, attn[name], precision="highest")
    context = reference_attention(
        project("query"), project("key"), project("value"), mask, bias[None], scale=1.0
    )
    expected = jnp.einsum("blhk,hkd->bld", context, attn["out"], precision="highest")
    assert float(jnp.max(jnp.abs(out - expected))) < 1e-5
