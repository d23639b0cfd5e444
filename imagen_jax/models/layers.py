"""U-Net building blocks: FiLM res blocks, attention over pixels and text, text pooling, resampling.

Every parameter carries logical axis names (see imagen_jax/parallel.py for the table mapping them to mesh axes):
conv kernels (None, None, "conv_in", "conv_out"), dense kernels ("embed", "mlp") or ("mlp", "embed"),
attention projections ("embed", "heads", "kv") / ("heads", "kv", "embed"), norms ("norm",). Block outputs
(feature maps [B,H,W,C]: FEATURE_MAP) and attention's queries, keys and values ([B,L,H,D]: HEADS) are
constrained by logical names too (imagen_jax/activation_sharding.py; a no-op unless a mesh is active).
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagen_jax.activation_sharding import constrain
from imagen_jax.attention import attention

Dtype = jnp.dtype | str

_CONV_AXES = (None, None, "conv_in", "conv_out")
FEATURE_MAP = ("activation_batch", None, None, "activation_channels")  # [B,H,W,C]
HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_kv")  # [B,L,H,D]


def _param_init(init: Callable, axes: tuple) -> Callable:
    return nn.with_logical_partitioning(init, axes)


def conv(
    features: int,
    kernel: int = 3,
    *,
    stride: int = 1,
    zero_init: bool = False,
    dtype: Dtype = "float32",
    name: str | None = None,
) -> nn.Conv:
    """A 'SAME'-padded 2D convolution with logically partitioned kernel and bias."""
    kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding="SAME",
        dtype=dtype,
        kernel_init=_param_init(kernel_init, _CONV_AXES),
        bias_init=_param_init(nn.initializers.zeros_init(), ("conv_out",)),
        name=name,
    )


def dense(
    features: int,
    axes: tuple = ("embed", "mlp"),
    *,
    zero_init: bool = False,
    use_bias: bool = True,
    dtype: Dtype = "float32",
    name: str | None = None,
) -> nn.Dense:
    """A Dense layer whose kernel [in, out] is annotated with `axes`."""
    kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=_param_init(kernel_init, axes),
        bias_init=_param_init(nn.initializers.zeros_init(), (axes[-1],)),
        name=name,
    )


NORM_GROUPS = 32  # GroupNorm32's (Nichol-Dhariwal's, Imagen's) largest group count: the default everywhere


def norm_group_count(channels: int, max_groups: int = NORM_GROUPS) -> int:
    """The largest power of two <= max_groups that divides `channels` (32 groups for 32 and 64 channels, 8 for
    24: the count GroupNorm32 would take when max_groups is 32).

    GroupNorm removes each group's spatial mean. With one channel per group (32 groups of a 32-channel map) it
    is InstanceNorm: every channel's mean over the image, its lowest frequency, is invisible to the layers after
    it. A small U-Net then cannot see the per-channel mean of its noisy input and keeps the sampling noise's
    mean as the image's (the quickstart's tinted backgrounds); fewer, wider groups keep the differences between
    a group's channels, so the mean passes through.
    """
    if max_groups < 1:
        raise ValueError(f"max_groups must be >= 1, got {max_groups}.")
    return next(g for g in (32, 16, 8, 4, 2, 1) if g <= max_groups and channels % g == 0)


def group_norm(
    channels: int, dtype: Dtype = "float32", name: str | None = None, max_groups: int = NORM_GROUPS
) -> nn.GroupNorm:
    """GroupNorm with norm_group_count(channels, max_groups) groups; statistics in float32."""
    groups = norm_group_count(channels, max_groups)
    return nn.GroupNorm(
        num_groups=groups,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=_param_init(nn.initializers.ones_init(), ("norm",)),
        bias_init=_param_init(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def layer_norm(dtype: Dtype = "float32", name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=_param_init(nn.initializers.ones_init(), ("norm",)),
        bias_init=_param_init(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def log_snr_embedding(log_snr: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal features of the noise level: log_snr [B] -> [B, dim].

    log-SNR spans roughly [-20, 20]; it is scaled so that its range maps onto the usual timestep range
    of sinusoidal embeddings (about +-1000).
    """
    half = dim // 2
    freqs = jnp.exp(-jnp.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (log_snr.astype(jnp.float32) * 50.0)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class ResBlock(nn.Module):
    """BigGAN-style residual block with scale-shift (FiLM) conditioning: [B,H,W,C] -> [B,H,W,out]."""

    features: int
    dropout: float = 0.0
    dtype: Dtype = "float32"
    norm_groups: int = NORM_GROUPS  # GroupNorm's largest group count (norm_group_count)

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array, train: bool = False) -> jax.Array:
        h = nn.silu(group_norm(x.shape[-1], self.dtype, name="norm1", max_groups=self.norm_groups)(x))
        h = conv(self.features, dtype=self.dtype, name="conv1")(h)
        scale_shift = dense(2 * self.features, ("embed", "mlp"), dtype=self.dtype, name="film")(nn.silu(cond))
        scale, shift = jnp.split(scale_shift[:, None, None, :], 2, axis=-1)
        h = group_norm(self.features, self.dtype, name="norm2", max_groups=self.norm_groups)(h)
        h = h * (1 + scale) + shift
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = conv(self.features, zero_init=True, dtype=self.dtype, name="conv2")(h)
        if x.shape[-1] != self.features:
            x = conv(self.features, kernel=1, dtype=self.dtype, name="skip")(x)
        return constrain(x + h, FEATURE_MAP)


class AttentionBlock(nn.Module):
    """Self-attention over pixels, optionally with the text tokens appended to the keys/values.

    x [B,H,W,C], text [B,L,Dt] (already layer-normed), text_mask bool [B,L] -> [B,H,W,C].
    With `text_only=True` it is explicit cross-attention: queries from pixels, keys/values from text alone
    (plus one learned null key/value, so a prompt with every token masked still has something to attend to).
    `implementation` is imagen_jax.attention's ("xla", or "cudnn" on NVIDIA GPUs); logits are float32.
    """

    head_dim: int
    text_only: bool = False
    dtype: Dtype = "float32"
    implementation: str = "xla"
    norm_groups: int = NORM_GROUPS  # GroupNorm's largest group count (norm_group_count)

    @nn.compact
    def __call__(self, x: jax.Array, text: jax.Array | None, text_mask: jax.Array | None) -> jax.Array:
        b, hgt, wid, c = x.shape
        heads = max(1, c // self.head_dim)
        proj = lambda name: nn.DenseGeneral(
            (heads, self.head_dim),
            dtype=self.dtype,
            use_bias=False,
            name=name,
            kernel_init=_param_init(nn.initializers.lecun_normal(), ("embed", "heads", "kv")),
        )
        h = group_norm(c, self.dtype, name="norm", max_groups=self.norm_groups)(x).reshape(b, hgt * wid, c)
        q = proj("query")(h)
        keys, values, masks = [], [], []
        if not self.text_only:
            keys.append(proj("key")(h))
            values.append(proj("value")(h))
            masks.append(jnp.ones((b, hgt * wid), bool))
        null_kv = self.param(
            "null_kv",
            _param_init(nn.initializers.normal(0.02), (None, "heads", "kv")),
            (2, heads, self.head_dim),
        )
        keys.append(jnp.broadcast_to(null_kv[0].astype(self.dtype), (b, 1, heads, self.head_dim)))
        values.append(jnp.broadcast_to(null_kv[1].astype(self.dtype), (b, 1, heads, self.head_dim)))
        masks.append(jnp.ones((b, 1), bool))
        if text is not None:
            keys.append(proj("text_key")(text))
            values.append(proj("text_value")(text))
            masks.append(text_mask)
        out = attention(
            constrain(q, HEADS),
            constrain(jnp.concatenate(keys, 1), HEADS),
            constrain(jnp.concatenate(values, 1), HEADS),
            jnp.concatenate(masks, 1),
            implementation=self.implementation,
        )
        out = nn.DenseGeneral(
            c,
            axis=(-2, -1),
            dtype=self.dtype,
            name="out",
            kernel_init=_param_init(nn.initializers.zeros_init(), ("heads", "kv", "embed")),
        )(out)
        return constrain(x + out.reshape(b, hgt, wid, c), FEATURE_MAP)


class AttentionPool(nn.Module):
    """Attention pooling of text tokens: text [B,L,D], mask [B,L] -> [B,D] (a learned query over the tokens).

    `implementation` is imagen_jax.attention's ("xla", or "cudnn" on NVIDIA GPUs); logits are float32.
    """

    num_heads: int = 4
    dtype: Dtype = "float32"
    implementation: str = "xla"

    @nn.compact
    def __call__(self, text: jax.Array, text_mask: jax.Array) -> jax.Array:
        b, _, d = text.shape
        heads = self.num_heads if d % self.num_heads == 0 else 1
        head_dim = d // heads
        query = self.param(
            "query", _param_init(nn.initializers.normal(0.02), (None, "heads", "kv")), (1, heads, head_dim)
        )
        proj = lambda name: nn.DenseGeneral(
            (heads, head_dim),
            dtype=self.dtype,
            use_bias=False,
            name=name,
            kernel_init=_param_init(nn.initializers.lecun_normal(), ("embed", "heads", "kv")),
        )
        mean = jnp.sum(text * text_mask[..., None], 1) / jnp.maximum(jnp.sum(text_mask, 1), 1)[:, None]
        tokens = jnp.concatenate(
            [mean[:, None], text], axis=1
        )  # the mean token keeps an all-masked row finite
        mask = jnp.concatenate([jnp.ones((b, 1), bool), text_mask], axis=1)
        q = jnp.broadcast_to(query.astype(self.dtype), (b, 1, heads, head_dim))
        pooled = attention(
            q, proj("key")(tokens), proj("value")(tokens), mask, implementation=self.implementation
        )
        return nn.DenseGeneral(
            d,
            axis=(-2, -1),
            dtype=self.dtype,
            name="out",
            kernel_init=_param_init(nn.initializers.lecun_normal(), ("heads", "kv", "embed")),
        )(pooled)[:, 0]


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 convolution: [B,H,W,C] -> [B,H/2,W/2,out]."""

    features: int
    dtype: Dtype = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(
                f"Cannot downsample a {x.shape[1]}x{x.shape[2]} feature map: sides must be even."
            )
        return constrain(
            conv(self.features, kernel=3, stride=2, dtype=self.dtype, name="conv")(x), FEATURE_MAP
        )


class Upsample(nn.Module):
    """Double the resolution (nearest neighbour, then a 3x3 convolution): [B,H,W,C] -> [B,2H,2W,out]."""

    features: int
    dtype: Dtype = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return constrain(conv(self.features, dtype=self.dtype, name="conv")(x), FEATURE_MAP)
