"""CLIP in Flax: a ViT image tower and a transformer text tower, projected into one space (Radford et al. 2021).

`Clip` is the Hugging Face `CLIPModel` layout (parameter names follow its checkpoint keys, so
evaluation/clip_import.py converts a checkpoint by renaming and transposing): pre-norm transformer layers with
biased q/k/v/out projections, `quick_gelu` (OpenAI) or `gelu` (LAION / OpenCLIP) MLPs, a class token and a
pre-transformer LayerNorm in the image tower, a causal text tower pooled at the end-of-text token.

`ShapesClip` is the CLIP this project trains on its own data (models/contrastive.py): the same image tower, and a
text tower that reads the frozen project text encoder's token embeddings [B, L, D] instead of token ids.

Both return image and text embeddings L2-normalised in the joint space; logits are exp(logit_scale) x cosine.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """One transformer stack: width, depth, heads, MLP width, activation (ACTIVATIONS) and LayerNorm epsilon."""

    width: int
    layers: int
    heads: int
    mlp_dim: int
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """A Hugging Face-layout CLIP. eos_token_id 2 marks the legacy configs pooled at argmax(input_ids)."""

    vision: TowerConfig
    text: TowerConfig
    image_size: int
    patch_size: int
    vocab_size: int
    max_length: int
    projection_dim: int
    eos_token_id: int = 2
    logit_scale_init: float = 2.6592
    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")


def _activation(name: str):
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    return lambda x: jax.nn.gelu(x, approximate=name == "gelu_new")


class Attention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections, 1/sqrt(head_dim) scaling and float32
    softmax. mask: bool [B, 1 or L, L] (True = may attend) or None."""

    config: TowerConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        c = self.config
        head_dim = c.width // c.heads
        dense = lambda name: nn.Dense(c.width, dtype=self.dtype, param_dtype=self.dtype, name=name)
        split = lambda t: t.reshape(*t.shape[:-1], c.heads, head_dim)
        q, k, v = (split(dense(n)(x)) for n in ("q_proj", "k_proj", "v_proj"))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * head_dim**-0.5
        if mask is not None:
            logits = jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(*x.shape[:-1], c.width)
        return dense("out_proj")(out)


class EncoderLayer(nn.Module):
    """x + attn(LN(x)), then x + MLP(LN(x))."""

    config: TowerConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        c = self.config
        norm = lambda name: nn.LayerNorm(
            c.layer_norm_eps, dtype=self.dtype, param_dtype=self.dtype, name=name
        )
        x = x + Attention(c, self.dtype, name="self_attn")(norm("layer_norm1")(x), mask)
        h = nn.Dense(c.mlp_dim, dtype=self.dtype, param_dtype=self.dtype, name="fc1")(norm("layer_norm2")(x))
        h = nn.Dense(c.width, dtype=self.dtype, param_dtype=self.dtype, name="fc2")(
            _activation(c.activation)(h)
        )
        return x + h


class Transformer(nn.Module):
    config: TowerConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        for i in range(self.config.layers):
            x = EncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, mask)
        return x


class VisionTower(nn.Module):
    """pixel_values [B, H, W, 3] (normalised) -> the class token's output after post_layernorm [B, width].

    Patches by a stride-`patch_size` convolution without bias; a learned class token and position embeddings;
    LayerNorm before the transformer (pre_layrnorm, as the checkpoints spell it)."""

    config: TowerConfig
    image_size: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        c, p = self.config, self.patch_size
        if pixel_values.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"pixel_values are {pixel_values.shape[1]}x{pixel_values.shape[2]}; this CLIP takes "
                f"{self.image_size}x{self.image_size}"
            )
        patches = nn.Conv(
            c.width,
            (p, p),
            (p, p),
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.dtype,
            name="patch_embedding",
        )(pixel_values.astype(self.dtype))
        b = patches.shape[0]
        patches = patches.reshape(b, -1, c.width)
        init = nn.initializers.normal(c.width**-0.5)
        cls = self.param("class_embedding", init, (c.width,), self.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c.width)), patches], axis=1)
        positions = self.param("position_embedding", nn.initializers.normal(0.02), x.shape[1:], self.dtype)
        x = x + positions
        norm = lambda name: nn.LayerNorm(
            c.layer_norm_eps, dtype=self.dtype, param_dtype=self.dtype, name=name
        )
        x = Transformer(c, self.dtype, name="encoder")(norm("pre_layrnorm")(x), None)
        return norm("post_layernorm")(x[:, 0])


class TextTower(nn.Module):
    """input_ids int [B, L], attention_mask [B, L] -> the end-of-text token's output after final_layer_norm
    [B, width]. Causal attention that also ignores padding; pooled at the first eos_token_id (at argmax(ids)
    for the legacy eos_token_id 2, as transformers does)."""

    config: TowerConfig
    vocab_size: int
    max_length: int
    eos_token_id: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        c = self.config
        length = input_ids.shape[1]
        if length > self.max_length:
            raise ValueError(f"{length} tokens; this CLIP's text tower takes at most {self.max_length}")
        tokens = nn.Embed(
            self.vocab_size, c.width, dtype=self.dtype, param_dtype=self.dtype, name="token_embedding"
        )
        positions = self.param(
            "position_embedding", nn.initializers.normal(0.02), (self.max_length, c.width), self.dtype
        )
        x = tokens(input_ids) + positions[:length]
        causal = jnp.tril(jnp.ones((length, length), bool))
        mask = causal[None] & attention_mask.astype(bool)[:, None, :]
        x = Transformer(c, self.dtype, name="encoder")(x, mask)
        x = nn.LayerNorm(c.layer_norm_eps, dtype=self.dtype, param_dtype=self.dtype, name="final_layer_norm")(
            x
        )
        if self.eos_token_id == 2:
            eos = jnp.argmax(input_ids, axis=-1)
        else:
            eos = jnp.argmax(input_ids == self.eos_token_id, axis=-1)
        return jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]


def normalize(x: jax.Array) -> jax.Array:
    """x / ||x|| over the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _outputs(image_embeds: jax.Array, text_embeds: jax.Array, logit_scale: jax.Array) -> dict[str, jax.Array]:
    logits_per_image = jnp.exp(logit_scale.astype(jnp.float32)) * image_embeds @ text_embeds.T
    return {
        "image_embeds": image_embeds,
        "text_embeds": text_embeds,
        "logits_per_image": logits_per_image,
        "logits_per_text": logits_per_image.T,
    }


class Clip(nn.Module):
    """apply(variables, pixel_values [B_i, H, W, 3], input_ids [B_t, L], attention_mask [B_t, L]) -> dict of
    image_embeds [B_i, P], text_embeds [B_t, P] (projected, L2-normalised, float32), logits_per_image
    [B_i, B_t] and logits_per_text. method=Clip.embed_images / Clip.embed_texts run one tower."""

    config: ClipConfig

    def setup(self):
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        self.vision_model = VisionTower(c.vision, c.image_size, c.patch_size, dtype)
        self.text_model = TextTower(c.text, c.vocab_size, c.max_length, c.eos_token_id, dtype)
        dense = lambda name: nn.Dense(
            c.projection_dim, use_bias=False, dtype=dtype, param_dtype=dtype, name=name
        )
        self.visual_projection = dense("visual_projection")
        self.text_projection = dense("text_projection")
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.logit_scale_init), (), dtype)

    def embed_images(self, pixel_values: jax.Array) -> jax.Array:
        return normalize(self.visual_projection(self.vision_model(pixel_values)))

    def embed_texts(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        return normalize(self.text_projection(self.text_model(input_ids, attention_mask)))

    def __call__(self, pixel_values: jax.Array, input_ids: jax.Array, attention_mask: jax.Array):
        return _outputs(
            self.embed_images(pixel_values), self.embed_texts(input_ids, attention_mask), self.logit_scale
        )


class EmbeddingTextTower(nn.Module):
    """The shapes CLIP's text tower: token embeddings [B, L, D] of the frozen project text encoder and their
    mask [B, L] -> [B, width]: a linear map to the width, learned positions, a bidirectional transformer over the
    real tokens, LayerNorm, then the mean over the real tokens."""

    config: TowerConfig
    max_length: int

    @nn.compact
    def __call__(self, embeddings: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.config
        mask = mask.astype(bool)
        x = nn.Dense(c.width, name="input_projection")(embeddings.astype(jnp.float32))
        x = (
            x
            + self.param("position_embedding", nn.initializers.normal(0.02), (self.max_length, c.width))[
                : x.shape[1]
            ]
        )
        x = Transformer(c, name="encoder")(x, mask[:, None, :])
        x = nn.LayerNorm(c.layer_norm_eps, name="final_layer_norm")(x)
        weights = mask.astype(jnp.float32)[..., None]
        return (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)


class ConvStem(nn.Module):
    """3x3 convolutions with GELU at full resolution before the ViT's patches (Xiao et al. 2021, "Early
    convolutions help transformers see better"): [B, S, S, C] -> [B, S, S, channels[-1]]. A linear patch
    embedding mixes an object's shape with its colour (the response to a shape scales with its colour's
    projection); per-pixel nonlinear features first let the same shape look alike in every colour."""

    channels: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.channels):
            x = jax.nn.gelu(nn.Conv(width, (3, 3), padding="SAME", name=f"conv_{i}")(x))
        return x


class ShapesClip(nn.Module):
    """apply(variables, images [B, S, S, 3] in [-1, 1], text_embeddings [B_t, L, D], text_mask [B_t, L]) -> the
    same dict as Clip. A ViT over the images as they are (no CLIP normalisation: the network learns its own),
    after an optional convolutional stem (stem_channels)."""

    vision: TowerConfig
    text: TowerConfig
    image_size: int
    patch_size: int
    max_length: int
    projection_dim: int
    logit_scale_init: float = 2.6592  # log(1 / 0.07), as CLIP
    stem_channels: tuple[int, ...] = ()

    def setup(self):
        self.stem = ConvStem(self.stem_channels) if self.stem_channels else (lambda x: x)
        self.vision_model = VisionTower(self.vision, self.image_size, self.patch_size)
        self.text_model = EmbeddingTextTower(self.text, self.max_length)
        self.visual_projection = nn.Dense(self.projection_dim, use_bias=False)
        self.text_projection = nn.Dense(self.projection_dim, use_bias=False)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init), ())

    def embed_images(self, images: jax.Array) -> jax.Array:
        return normalize(self.visual_projection(self.vision_model(self.stem(images))))

    def embed_texts(self, text_embeddings: jax.Array, text_mask: jax.Array) -> jax.Array:
        return normalize(self.text_projection(self.text_model(text_embeddings, text_mask)))

    def __call__(self, images: jax.Array, text_embeddings: jax.Array, text_mask: jax.Array):
        return _outputs(
            self.embed_images(images), self.embed_texts(text_embeddings, text_mask), self.logit_scale
        )
