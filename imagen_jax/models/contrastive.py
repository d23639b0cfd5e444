"""The CLIP family: a CLIP trained on the experiment's own captioned data, through the same data, frozen text
encoder, trainer and checkpoints as the generative families (config.family = "clip").

models/clip.py's ShapesClip: a small ViT over the images and a transformer over the frozen text encoder's token
embeddings, both projected to model.projection_dim and L2-normalised. The loss is CLIP's symmetric InfoNCE with a
learned temperature (logit scale clamped at log 100, as CLIP): cross-entropy of each image against the batch's
captions and of each caption against the batch's images. Captions repeat within a batch of synthetic data, so
every pair with the same caption counts as a positive (the target spreads evenly over them) instead of being
pushed apart as a negative.

It generates nothing (capabilities.generates is False): it scores images against text, for evaluation (CLIP
score) and reranking (evaluation/clip_score.py, rerank.py).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from imagen_jax.models.clip import ACTIVATIONS, ShapesClip, TowerConfig
from imagen_jax.models.family import Capabilities

PyTree = Any
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned logit scale (1 / temperature) at 100


def _tower(m: ml_collections.ConfigDict) -> TowerConfig:
    return TowerConfig(
        width=int(m.width),
        layers=int(m.layers),
        heads=int(m.heads),
        mlp_dim=int(m.mlp_dim),
        activation=str(m.get("activation", "gelu")),
    )


def check_model_config(config: ml_collections.ConfigDict) -> None:
    """A ValueError naming the first impossible model.* setting."""
    m, size = config.model, int(config.data.image_size)
    if int(m.patch_size) < 1 or size % int(m.patch_size):
        raise ValueError(f"model.patch_size={m.patch_size} must divide data.image_size={size}.")
    for tower in ("vision", "text"):
        t = m[tower]
        if t.get("activation", "gelu") not in ACTIVATIONS:
            raise ValueError(f"model.{tower}.activation={t.activation!r}; choose one of {ACTIVATIONS}.")
        for key in ("width", "layers", "heads", "mlp_dim"):
            if int(t[key]) < (0 if key == "layers" else 1):
                raise ValueError(f"model.{tower}.{key}={t[key]} must be >= {0 if key == 'layers' else 1}.")
        if int(t.width) % int(t.heads):
            raise ValueError(
                f"model.{tower}.width={t.width} must be divisible by model.{tower}.heads={t.heads}."
            )
    if any(int(c) < 1 for c in m.vision.get("stem_channels", ())):
        raise ValueError(f"model.vision.stem_channels={tuple(m.vision.stem_channels)} must all be >= 1.")
    if int(m.projection_dim) < 1:
        raise ValueError(f"model.projection_dim={m.projection_dim} must be >= 1.")


def contrastive_loss(
    image_embeds: jax.Array, text_embeds: jax.Array, logit_scale: jax.Array, same_text: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(symmetric InfoNCE, image -> text top-1 accuracy). image_embeds, text_embeds [B, P] L2-normalised;
    same_text bool [B, B], True where captions i and j are the same (the diagonal included)."""
    logits = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE)) * image_embeds @ text_embeds.T
    targets = same_text.astype(jnp.float32) / same_text.sum(axis=1, keepdims=True)
    loss = 0.5 * (
        optax.softmax_cross_entropy(logits, targets).mean()
        + optax.softmax_cross_entropy(logits.T, targets).mean()
    )
    hit = jnp.take_along_axis(same_text, jnp.argmax(logits, axis=1)[:, None], axis=1)[:, 0]
    return loss, hit.mean()


def same_captions(text_embeddings: jax.Array, text_mask: jax.Array) -> jax.Array:
    """bool [B, B]: True where two rows hold the same caption (identical embeddings and masks)."""
    emb = jnp.where(text_mask[..., None], text_embeddings, 0.0).reshape(text_embeddings.shape[0], -1)
    same = jnp.all(emb[:, None] == emb[None], axis=-1)
    return same & jnp.all(text_mask[:, None] == text_mask[None], axis=-1)


class ClipFamily:
    """A CLIP over the experiment's images and frozen text embeddings (see the module docstring). It trains with
    Adam and generates nothing."""

    kind = "clip"
    capabilities = Capabilities(grad_accum=False, optimizers=("adam",), generates=False)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ClipFamily:
        check_model_config(config)
        m = config.model
        return cls(
            ShapesClip(
                vision=_tower(m.vision),
                text=_tower(m.text),
                image_size=int(config.data.image_size),
                patch_size=int(m.patch_size),
                max_length=int(config.text.max_length),
                projection_dim=int(m.projection_dim),
                stem_channels=tuple(int(c) for c in m.vision.get("stem_channels", ())),
            )
        )

    def __init__(self, model: ShapesClip):
        self.model = model
        self.image_size = model.image_size

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        return self.model.init(rng, batch["images"], batch["text_embeddings"], batch["text_mask"])["params"]

    def ema_of(self, params: PyTree) -> PyTree:
        return params

    def embed_images(self, params: PyTree, images: jax.Array) -> jax.Array:
        """images [N, S, S, 3] in [-1, 1] -> L2-normalised embeddings [N, P]."""
        return self.model.apply({"params": params}, images, method=ShapesClip.embed_images)

    def embed_texts(self, params: PyTree, text_embeddings: jax.Array, text_mask: jax.Array) -> jax.Array:
        """Frozen-encoder embeddings [N, L, D] and mask [N, L] -> L2-normalised embeddings [N, P]."""
        return self.model.apply({"params": params}, text_embeddings, text_mask, method=ShapesClip.embed_texts)

    def loss(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        """(symmetric InfoNCE over the batch, {accuracy, logit_scale}); rng unused (no dropout)."""
        del rng
        out = self.model.apply(
            {"params": params}, batch["images"], batch["text_embeddings"], batch["text_mask"]
        )
        same = same_captions(batch["text_embeddings"], batch["text_mask"])
        logit_scale = params["logit_scale"]
        loss, accuracy = contrastive_loss(out["image_embeds"], out["text_embeds"], logit_scale, same)
        return loss, {"accuracy": accuracy, "logit_scale": jnp.minimum(logit_scale, MAX_LOGIT_SCALE)}

    def generate(
        self, params: PyTree, text_embeddings: jax.Array, text_mask: jax.Array, rng: jax.Array, **options
    ):
        raise ValueError("the clip family scores images against text; it generates none")

    def check_sample_options(self, options: dict[str, Any]) -> None:
        if options:
            raise ValueError(
                f"the clip family generates nothing; it takes no sampling options ({sorted(options)})."
            )

    def sampling_summary(self) -> str:
        return "a CLIP: it scores images against captions and generates nothing"
