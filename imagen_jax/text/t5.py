"""T5 encoder (v1.0 relu and v1.1 / FLAN-T5 gated-gelu) as a Flax linen module, numerically as transformers'.

Pre-norm blocks, RMSNorm in float32, no biases, unscaled attention logits, one bucketed bidirectional
relative-position bias table (block 0's in Hugging Face checkpoints) shared by all layers.

Parameters carry logical axis names (see ``LOGICAL_AXES``) for the mesh rules in parallel.py:
  token_embedding [vocab, embed]; relpos_bias [relpos_buckets, heads]; */scale [embed];
  attention query/key/value [embed, heads, kv], out [heads, kv, embed]; mlp wi* [embed, mlp], wo [mlp, embed].
Activations are constrained by logical names as well (activation_sharding.py): every block's output
[activation_batch, activation_length, activation_embed], queries/keys/values [.., activation_heads, activation_kv]
and the feed-forward hidden layer [.., activation_mlp].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imagen_jax import parallel
from imagen_jax.activation_sharding import constrain
from imagen_jax.attention import IMPLEMENTATIONS, attention

LOGICAL_AXES = ("vocab", "embed", "heads", "kv", "mlp", "relpos_buckets")
FEED_FORWARD_PROJ = ("relu", "gelu", "gated-gelu", "gated-relu", "gated-silu")
DTYPES = ("float32", "bfloat16", "float16")
_TOKENS = ("activation_batch", "activation_length", "activation_embed")  # [B, L, D]
_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_kv")  # [B, L, H, K]


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Encoder hyper-parameters, named as in Hugging Face's T5Config."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_heads: int
    num_layers: int
    feed_forward_proj: str
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"  # parameters and compute; norms, attention logits and softmax run in float32
    # imagen_jax.attention's kernel ("xla", or "cudnn" on NVIDIA GPUs): how attention runs, not what the encoder
    # computes, so it is left out of repr (the built-in encoder's embedding-cache identity hashes repr(config))
    attention_implementation: str = dataclasses.field(default="xla", repr=False)

    def __post_init__(self):
        if self.feed_forward_proj not in FEED_FORWARD_PROJ:
            raise ValueError(
                f"feed_forward_proj must be one of {FEED_FORWARD_PROJ}, got {self.feed_forward_proj!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.attention_implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"attention_implementation must be one of {IMPLEMENTATIONS}, got {self.attention_implementation!r}"
            )
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"T5Config.{name} must be >= 1, got {getattr(self, name)}")
        if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 2:
            raise ValueError("relative_attention_num_buckets must be even and >= 4")

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")


def _v1_1(d_model: int, d_ff: int, num_heads: int, num_layers: int) -> T5Config:
    return T5Config(32128, d_model, 64, d_ff, num_heads, num_layers, "gated-gelu")


# T5 v1.1 (and FLAN-T5) encoder shapes; v1.0 t5-small/base use relu with d_ff 2048/3072 and 8/12 heads.
PRESETS: dict[str, T5Config] = {
    "small": _v1_1(512, 1024, 6, 8),
    "base": _v1_1(768, 2048, 12, 12),
    "large": _v1_1(1024, 2816, 16, 24),
    "xl": _v1_1(2048, 5120, 32, 24),
    "xxl": _v1_1(4096, 10240, 64, 24),
}


def preset(name: str, **overrides) -> T5Config:
    """A named v1.1 encoder shape ("small" ... "xxl"), with fields overridden, e.g. preset("xxl", dtype="bfloat16")."""
    if name not in PRESETS:
        raise ValueError(f"Unknown T5 preset {name!r}; one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def num_params(config: T5Config) -> int:
    """Encoder parameter count by the Hugging Face formula (shared embedding included)."""
    d, inner = config.d_model, config.num_heads * config.d_kv
    ffn = (3 if config.is_gated else 2) * d * config.d_ff
    block = 4 * d * inner + ffn + 2 * d
    return (
        config.vocab_size * d
        + config.relative_attention_num_buckets * config.num_heads
        + config.num_layers * block
        + d
    )


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional bucket of (key - query) for every pair: int32 [length, length], in float32 as transformers."""
    position = np.arange(length, dtype=np.int64)
    relative = position[None, :] - position[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int64) * half
    distance = np.abs(relative)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        log_ratio = np.log(distance.astype(np.float32) / np.float32(max_exact))
    scaled = log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = max_exact + np.where(distance < max_exact, 0, scaled).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": partial(jax.nn.gelu, approximate=False),  # transformers' "gelu"
    "gated-gelu": partial(jax.nn.gelu, approximate=True),  # transformers maps gated-gelu to gelu_new (tanh)
    "gated-relu": jax.nn.relu,
    "gated-silu": jax.nn.silu,
}


def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], std: float, dtype):
    init = nn.initializers.normal(std) if std else nn.initializers.ones
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
    """T5 layer norm: x / rms(x) * scale, statistics in float32, no mean, no bias. [..., D] -> [..., D]."""

    epsilon: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, "scale", (x.shape[-1],), ("embed",), 0.0, self.dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return scale * normed.astype(self.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with an additive position bias and a key padding mask; logits unscaled, float32."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, position_bias: jax.Array, mask: jax.Array) -> jax.Array:
        """x [B, L, D], position_bias float32 [H, L, L], mask bool [B, L] -> [B, L, D]."""
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        d, h, k = cfg.d_model, cfg.num_heads, cfg.d_kv
        # transformers' initialisation scales (T5PreTrainedModel._init_weights)
        wq = _param(self, "query", (d, h, k), ("embed", "heads", "kv"), (d * k) ** -0.5, dtype)
        wk = _param(self, "key", (d, h, k), ("embed", "heads", "kv"), d**-0.5, dtype)
        wv = _param(self, "value", (d, h, k), ("embed", "heads", "kv"), d**-0.5, dtype)
        wo = _param(self, "out", (h, k, d), ("heads", "kv", "embed"), (h * k) ** -0.5, dtype)
        q = constrain(jnp.einsum("bld,dhk->blhk", x, wq), _HEADS)
        key = constrain(jnp.einsum("bld,dhk->blhk", x, wk), _HEADS)
        value = constrain(jnp.einsum("bld,dhk->blhk", x, wv), _HEADS)
        context = attention(
            q,
            key,
            value,
            mask,
            implementation=cfg.attention_implementation,
            bias=position_bias[None],
            scale=1.0,
        )
        return jnp.einsum("blhk,hkd->bld", context, wo)


class FeedForward(nn.Module):
    """wo(act(wi x)) for v1.0, wo(act(wi_0 x) * wi_1 x) for gated variants. [B, L, D] -> [B, L, D]."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        d, f = cfg.d_model, cfg.d_ff
        act = _ACTIVATIONS[cfg.feed_forward_proj]
        if cfg.is_gated:
            wi_0 = _param(self, "wi_0", (d, f), ("embed", "mlp"), d**-0.5, dtype)
            wi_1 = _param(self, "wi_1", (d, f), ("embed", "mlp"), d**-0.5, dtype)
            hidden = act(x @ wi_0) * (x @ wi_1)
        else:
            wi = _param(self, "wi", (d, f), ("embed", "mlp"), d**-0.5, dtype)
            hidden = act(x @ wi)
        hidden = constrain(hidden, ("activation_batch", "activation_length", "activation_mlp"))
        wo = _param(self, "wo", (f, d), ("mlp", "embed"), f**-0.5, dtype)
        return hidden @ wo


class T5Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x)). [B, L, D] -> [B, L, D]."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, position_bias: jax.Array, mask: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        normed = RMSNorm(cfg.layer_norm_epsilon, dtype, name="attention_norm")(x)
        x = x + SelfAttention(cfg, name="attention")(normed, position_bias, mask)
        normed = RMSNorm(cfg.layer_norm_epsilon, dtype, name="mlp_norm")(x)
        return constrain(x + FeedForward(cfg, name="mlp")(normed), _TOKENS)


class T5Encoder(nn.Module):
    """T5 encoder stack: (input_ids int [B, L], attention_mask [B, L], 1 = token; None = all tokens)
    -> last hidden states [B, L, D].

    The final RMSNorm is applied (transformers' last_hidden_state). Padding positions still carry values;
    mask them downstream.
    """

    config: T5Config

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        length = input_ids.shape[-1]
        embedding = _param(
            self, "token_embedding", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), 1.0, dtype
        )
        table = _param(
            self,
            "relpos_bias",
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            ("relpos_buckets", "heads"),
            cfg.d_model**-0.5,
            dtype,
        )
        buckets = relative_position_buckets(
            length, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        )
        position_bias = jnp.transpose(table[buckets].astype(jnp.float32), (2, 0, 1))  # [H, L, L]
        mask = attention_mask.astype(bool)
        x = jnp.take(embedding, input_ids, axis=0)
        for i in range(cfg.num_layers):
            x = T5Block(cfg, name=f"block_{i}")(x, position_bias, mask)
        return RMSNorm(cfg.layer_norm_epsilon, dtype, name="final_norm")(x)


def logical_partition_specs(config: T5Config):
    """Pytree {"params": ...} of PartitionSpecs over logical axis names, computed without allocation."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    shapes = jax.eval_shape(T5Encoder(config).init, jax.random.key(0), ids, ids)
    return nn.get_partition_spec(shapes)


def param_shardings(config: T5Config, mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = None) -> dict:
    """NamedShardings {"params": ...} from logical axis rules (default parallel.LOGICAL_AXIS_RULES); axes that
    do not divide a dimension are dropped."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    boxed = jax.eval_shape(T5Encoder(config).init, jax.random.key(0), ids, ids)
    rules = parallel.LOGICAL_AXIS_RULES if rules is None else rules
    mesh_specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), rules)
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, parallel.fit_spec(spec, leaf.shape, mesh)),
        mesh_specs,
        nn.meta.unbox(boxed),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def init_params(config: T5Config, seed: int) -> dict:
    """Deterministic random variables {"params": ...} (unboxed arrays) with transformers' init scales."""
    ids = jnp.ones((1, 1), jnp.int32)
    variables = T5Encoder(config).init(jax.random.key(seed), ids, ids)
    return nn.meta.unbox(variables)
