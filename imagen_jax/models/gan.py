"""The GAN family: a text-conditional GAN baseline trained, sampled and judged through the same pipes as Imagen.

Generator (DF-GAN style): noise z [B,Z] and the frozen text encoder's tokens, attention-pooled, form the
condition c = [z, text]; a dense layer maps c to a 4x4 (start_size) feature map; every block (upsample, then
two 3x3 convolutions) modulates its features with an affine (FiLM) transform predicted from c, so text enters
every block; optional token cross-attention at chosen levels; tanh output in [-1, 1].

Discriminator: residual downsampling blocks on the image, then the text (masked mean of the tokens through an
MLP) joins either by projection (Miyato & Koyama 2018: logit = w.f + <f, e(text)>) or by concatenation
(DF-GAN: the text tiled over the last feature map, then a conv). It judges image-text agreement: real images
with a wrong caption are scored as fakes (a "mismatch" term, as in DF-GAN and GAN-INT-CLS). Every conv and
dense layer of D can be spectrally normalised.

Train state layout (training/state.py's TrainState, shared by every family):
  params     = {"generator": G params, "discriminator": D params, "spectral_norm": D's power-iteration
                vectors u (only when model.discriminator.spectral_norm)}. The u vectors are D's persistent
                non-trainable state, like flax's "batch_stats": one vector per normalised layer, a flax
                collection named "spectral_norm"; they are carried in params so that checkpoints, shardings
                and resume treat them like everything else, but no optimizer touches them: the D step
                writes the vectors its power iteration produced.
  opt_state  = {"generator": Adam state of G, "discriminator": Adam state of D}: two optimizers with their own
                learning rates, betas and warm-up (training/steps/gan.py, optimizers.per_network).
  ema_params = {"generator": EMA of G}: only the generator is averaged (ema_of); generate samples with it.
The train step (training/steps/gan.py) runs gan.d_steps discriminator updates (unrolled, each on the step's batch
with fresh noise) and then one generator update, on device; the trainer's `step` counts generator steps. This
module holds the networks and the losses (d_loss_fn, g_loss_fn) as functions of explicit arguments.

Losses (gan.loss): minimax (Goodfellow's log(1 - D(G(z))) for G), non_saturating (-log D(G(z))), hinge,
lsgan (least squares, 0/1 targets), wgan (Wasserstein; pair it with gan.gp_weight > 0 for WGAN-GP).
Regularisers: gan.r1_gamma (R1: gamma/2 E||grad_x D(x_real, text)||^2), gan.gp_weight (WGAN-GP: lambda
E(||grad D(x_hat, text)|| - 1)^2 on real/fake interpolates), spectral normalisation in D.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_jax.models import layers
from imagen_jax.models.family import Capabilities

PyTree = Any
LOSSES = ("minimax", "non_saturating", "hinge", "lsgan", "wgan")
CONDITIONING = ("projection", "concat")
SAMPLE_OPTIONS = ("truncation", "noise_scale")
SN_COLLECTION = "spectral_norm"
_LEAK = 0.2


# Losses -----------------------------------------------------------------------------------------------------


def real_term(loss: str, logits: jax.Array) -> jax.Array:
    """D's per-example loss for logits it should call real."""
    if loss in ("minimax", "non_saturating"):
        return jax.nn.softplus(-logits)  # -log sigmoid(r)
    if loss == "hinge":
        return jax.nn.relu(1.0 - logits)
    if loss == "lsgan":
        return 0.5 * jnp.square(logits - 1.0)
    if loss == "wgan":
        return -logits
    raise ValueError(f"gan.loss={loss!r} is not a GAN loss; choose one of {LOSSES}.")


def fake_term(loss: str, logits: jax.Array) -> jax.Array:
    """D's per-example loss for logits it should call fake (generated, or a real image with a wrong caption)."""
    if loss in ("minimax", "non_saturating"):
        return jax.nn.softplus(logits)  # -log(1 - sigmoid(f))
    if loss == "hinge":
        return jax.nn.relu(1.0 + logits)
    if loss == "lsgan":
        return 0.5 * jnp.square(logits)
    if loss == "wgan":
        return logits
    raise ValueError(f"gan.loss={loss!r} is not a GAN loss; choose one of {LOSSES}.")


def generator_term(loss: str, fake_logits: jax.Array) -> jax.Array:
    """G's per-example loss on D's logits for its samples."""
    if loss == "minimax":
        return -jax.nn.softplus(fake_logits)  # log(1 - sigmoid(f)), minimised
    if loss == "non_saturating":
        return jax.nn.softplus(-fake_logits)  # -log sigmoid(f)
    if loss in ("hinge", "wgan"):
        return -fake_logits
    if loss == "lsgan":
        return 0.5 * jnp.square(fake_logits - 1.0)
    raise ValueError(f"gan.loss={loss!r} is not a GAN loss; choose one of {LOSSES}.")


def discriminator_loss(
    loss: str,
    real_logits: jax.Array,
    fake_logits: jax.Array,
    mismatch_logits: jax.Array | None = None,
    mismatch_valid: jax.Array | None = None,
    mismatch_weight: float = 0.0,
) -> jax.Array:
    """Scalar: mean real term + (1 - w) mean fake term + w mean mismatch term (w = mismatch_weight; mismatch pairs
    with mismatch_valid False are left out of their mean). Logits [B]."""
    total = jnp.mean(real_term(loss, real_logits))
    fake = jnp.mean(fake_term(loss, fake_logits))
    if mismatch_logits is None or not mismatch_weight:
        return total + fake
    valid = jnp.ones_like(mismatch_logits) if mismatch_valid is None else mismatch_valid.astype(jnp.float32)
    mismatch = jnp.sum(fake_term(loss, mismatch_logits) * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    return total + (1.0 - mismatch_weight) * fake + mismatch_weight * mismatch


def generator_loss(loss: str, fake_logits: jax.Array) -> jax.Array:
    """Scalar: G's mean loss over D's logits [B] for its samples."""
    return jnp.mean(generator_term(loss, fake_logits))


def input_gradients(critic: Callable[[jax.Array], jax.Array], images: jax.Array) -> jax.Array:
    """d critic(images)_i / d images_i for every example: [B,H,W,C] (the critic treats examples independently)."""
    return jax.grad(lambda x: jnp.sum(critic(x)))(images)


def r1_penalty(critic: Callable[[jax.Array], jax.Array], real_images: jax.Array) -> jax.Array:
    """Scalar: E_i ||grad_x critic(x)_i||^2 at the real images (times gamma/2 for the R1 regulariser)."""
    grads = input_gradients(critic, real_images)
    return jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=(1, 2, 3)))


def wgan_gradient_penalty(
    critic: Callable[[jax.Array], jax.Array], real: jax.Array, fake: jax.Array, eps: jax.Array
) -> jax.Array:
    """Scalar: E_i (||grad critic(x_hat_i)|| - 1)^2 with x_hat = eps real + (1 - eps) fake, eps [B] in [0, 1]."""
    eps = eps.reshape(-1, *([1] * (real.ndim - 1))).astype(real.dtype)
    interpolates = eps * real + (1.0 - eps) * fake
    grads = input_gradients(critic, interpolates).astype(jnp.float32)
    norms = jnp.sqrt(jnp.sum(jnp.square(grads), axis=(1, 2, 3)) + 1e-12)
    return jnp.mean(jnp.square(norms - 1.0))


# Mismatched captions ----------------------------------------------------------------------------------------


def _text_fingerprints(text_embeddings: jax.Array, text_mask: jax.Array, width: int = 4) -> jax.Array:
    """[B, width+1]: fixed random projections of each (masked) caption embedding, plus its token count; two
    copies of one caption get the same numbers, two different captions (almost surely) do not."""
    _, length, dim = text_embeddings.shape
    rs = np.random.RandomState(1234)
    a = jnp.asarray(rs.normal(size=(length, width)), jnp.float32)
    b = jnp.asarray(rs.normal(size=(dim, width)), jnp.float32)
    masked = text_embeddings.astype(jnp.float32) * text_mask[..., None]
    projected = jnp.einsum("bld,lk,dk->bk", masked, a, b, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([projected, jnp.sum(text_mask, -1, keepdims=True).astype(jnp.float32)], -1)


def mismatch_indices(
    text_embeddings: jax.Array, text_mask: jax.Array, max_shift: int = 8
) -> tuple[jax.Array, jax.Array]:
    """(index [B] int32, valid [B] bool): example i is paired with the caption of example index[i], the first of
    i+1, i+2, ... (mod B, at most max_shift ahead) whose caption differs from i's. A roll of the batch, except
    that duplicates of i's own caption are skipped; valid is False where every candidate had i's caption (e.g. a
    batch of one caption), and such pairs must be left out of the mismatch loss."""
    batch = text_embeddings.shape[0]
    prints = _text_fingerprints(text_embeddings, text_mask)
    shifts = jnp.arange(1, min(max_shift, max(batch - 1, 1)) + 1)
    candidates = (jnp.arange(batch)[:, None] + shifts[None, :]) % batch  # [B, K]
    diff = jnp.abs(prints[:, None, :] - prints[candidates])  # [B, K, W]
    tolerance = 1e-4 * (1.0 + jnp.abs(prints[:, None, :]))
    differs = jnp.any(diff > tolerance, axis=-1)  # [B, K]
    first = jnp.argmax(differs, axis=-1)
    valid = jnp.any(differs, axis=-1) & (batch > 1)
    index = jnp.take_along_axis(candidates, first[:, None], axis=-1)[:, 0]
    return index.astype(jnp.int32), valid


# Spectral normalisation ---------------------------------------------------------------------------------------


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.sqrt(jnp.sum(jnp.square(x)) + eps)


def power_iteration(matrix: jax.Array, u: jax.Array, iterations: int) -> tuple[jax.Array, jax.Array]:
    """(u, sigma): `iterations` power-iteration steps on matrix [m, n] from u [n]; sigma = v^T W u estimates the
    largest singular value (u, v held constant for its gradient, as in Miyato et al. 2018)."""
    matrix = matrix.astype(jnp.float32)
    u = u.astype(jnp.float32)
    for _ in range(iterations):
        v = _l2_normalize(matrix @ u)
        u = _l2_normalize(matrix.T @ v)
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(_l2_normalize(matrix @ u))
    return u, v @ matrix @ u


class SpectralNormalized(nn.Module):
    """Divides a kernel by its spectral norm (the kernel reshaped to [fan_in, out]), estimated by power iteration
    from a persistent vector u [out] in the "spectral_norm" collection. With update_stats, u is advanced by
    `iterations` steps and stored; without, the stored u is only used (the generator's step, sampling, penalties).
    """

    iterations: int = 1

    @nn.compact
    def __call__(self, kernel: jax.Array, update_stats: bool) -> jax.Array:
        out = kernel.shape[-1]
        u_var = self.variable(
            SN_COLLECTION,
            "u",
            nn.with_logical_partitioning(
                lambda rng, shape: _l2_normalize(jax.random.normal(rng, shape)), ("norm",)
            ),
            self.make_rng("params") if self.is_initializing() else None,
            (out,),
        )
        u, sigma = power_iteration(kernel.reshape(-1, out), u_var.value, max(self.iterations, 1))
        if update_stats and not self.is_initializing():
            u_var.value = u
        return (kernel / jnp.maximum(sigma, 1e-12).astype(kernel.dtype)).astype(kernel.dtype)


class SNConv(nn.Module):
    """A 'SAME' conv whose kernel is (optionally) spectrally normalised: [B,H,W,Cin] -> [B,H,W,features]."""

    features: int
    kernel: int = 3
    spectral_norm: bool = True
    iterations: int = 1
    dtype: layers.Dtype = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")),
            (self.kernel, self.kernel, x.shape[-1], self.features),
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
            (self.features,),
        )
        if self.spectral_norm:
            kernel = SpectralNormalized(self.iterations, name="sn")(kernel, update_stats)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias.astype(self.dtype)


class SNDense(nn.Module):
    """A dense layer [.., in] -> [.., features] whose kernel is (optionally) spectrally normalised."""

    features: int
    axes: tuple = ("embed", "mlp")
    use_bias: bool = True
    spectral_norm: bool = True
    iterations: int = 1
    dtype: layers.Dtype = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), self.axes),
            (x.shape[-1], self.features),
        )
        if self.spectral_norm:
            kernel = SpectralNormalized(self.iterations, name="sn")(kernel, update_stats)
        y = x.astype(self.dtype) @ kernel.astype(self.dtype)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axes[-1],)),
                (self.features,),
            )
            y = y + bias.astype(self.dtype)
        return y


# Networks -----------------------------------------------------------------------------------------------------


def _levels(image_size: int, channel_mult: tuple[int, ...]) -> int:
    """The start (lowest) resolution: image_size / 2^(len(channel_mult) - 1), checked to be whole and >= 2."""
    start = image_size / 2 ** (len(channel_mult) - 1)
    if not channel_mult or start != int(start) or start < 2:
        raise ValueError(
            f"channel_mult={tuple(channel_mult)} has {len(channel_mult)} levels: image_size={image_size} must "
            "halve that many times minus one to a whole side >= 2 (e.g. (1, 2, 4, 4) for 32 -> 4)."
        )
    return int(start)


class Affine(nn.Module):
    """DF-GAN's affine text modulation: x [B,H,W,C] * (1 + gamma(c)) + beta(c), gamma/beta from a 2-layer MLP of
    the condition c [B,E] whose last layer starts at zero (the identity)."""

    hidden: int
    dtype: layers.Dtype = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        h = nn.relu(layers.dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="hidden")(cond))
        gamma_beta = layers.dense(
            2 * x.shape[-1], ("mlp", "embed"), zero_init=True, dtype=self.dtype, name="gamma_beta"
        )(h)
        gamma, beta = jnp.split(gamma_beta[:, None, None, :], 2, axis=-1)
        return x * (1.0 + gamma) + beta


class GeneratorBlock(nn.Module):
    """[B,H,W,Cin] -> [B,sH,sW,features] (s = 2 when upsample): affine-lrelu-conv twice, residual 1x1 skip."""

    features: int
    upsample: bool
    affine_hidden: int
    dtype: layers.Dtype = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        if self.upsample:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        h = Affine(self.affine_hidden, self.dtype, name="affine1")(x, cond)
        h = layers.conv(self.features, dtype=self.dtype, name="conv1")(nn.leaky_relu(h, _LEAK))
        h = Affine(self.affine_hidden, self.dtype, name="affine2")(h, cond)
        h = layers.conv(self.features, dtype=self.dtype, name="conv2")(nn.leaky_relu(h, _LEAK))
        if x.shape[-1] != self.features:
            x = layers.conv(self.features, kernel=1, dtype=self.dtype, name="skip")(x)
        return x + h


class Generator(nn.Module):
    """(z [B,Z], text [B,L,D], mask [B,L]) -> images [B,S,S,3] in [-1,1]. channel_mult[i] * dim channels at
    resolution S / 2^i (level 0 = full resolution, as in the U-Net); text cross-attention at cross_attn_levels."""

    image_size: int
    dim: int
    channel_mult: tuple[int, ...]
    text_dim: int
    affine_hidden: int
    cross_attn_levels: tuple[int, ...] = ()
    head_dim: int = 32
    dtype: layers.Dtype = "float32"

    @nn.compact
    def __call__(self, z: jax.Array, text: jax.Array, text_mask: jax.Array) -> jax.Array:
        start = _levels(self.image_size, self.channel_mult)
        top = len(self.channel_mult) - 1
        text = layers.layer_norm(self.dtype, name="text_norm")(text.astype(self.dtype))
        pooled = layers.AttentionPool(dtype=self.dtype, name="text_pool")(text, text_mask)
        pooled = layers.dense(self.text_dim, ("embed", "mlp"), dtype=self.dtype, name="text_proj")(pooled)
        cond = jnp.concatenate([z.astype(self.dtype), pooled], axis=-1)
        channels = self.dim * self.channel_mult[top]
        h = layers.dense(start * start * channels, ("embed", "mlp"), dtype=self.dtype, name="fc")(cond)
        h = h.reshape(z.shape[0], start, start, channels)
        for level in range(top, -1, -1):
            h = GeneratorBlock(
                self.dim * self.channel_mult[level],
                upsample=level != top,
                affine_hidden=self.affine_hidden,
                dtype=self.dtype,
                name=f"block_{level}",
            )(h, cond)
            if level in self.cross_attn_levels:
                h = layers.AttentionBlock(
                    self.head_dim, text_only=True, dtype=self.dtype, name=f"cross_attn_{level}"
                )(h, text, text_mask)
        h = layers.conv(3, dtype=self.dtype, name="to_rgb")(nn.leaky_relu(h, _LEAK))
        return jnp.tanh(h.astype(jnp.float32))


class DiscriminatorBlock(nn.Module):
    """[B,H,W,Cin] -> [B,H/s,W/s,features] (s = 2 when downsample): lrelu-conv twice, then average pooling;
    residual skip (1x1 conv where channels change)."""

    features: int
    downsample: bool
    spectral_norm: bool
    iterations: int
    dtype: layers.Dtype = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, update_stats: bool) -> jax.Array:
        sn = dict(spectral_norm=self.spectral_norm, iterations=self.iterations, dtype=self.dtype)
        h = SNConv(self.features, name="conv1", **sn)(nn.leaky_relu(x, _LEAK), update_stats)
        h = SNConv(self.features, name="conv2", **sn)(nn.leaky_relu(h, _LEAK), update_stats)
        if x.shape[-1] != self.features:
            x = SNConv(self.features, kernel=1, name="skip", **sn)(x, update_stats)
        if self.downsample:
            pool = lambda a: nn.avg_pool(a, (2, 2), (2, 2))
            h, x = pool(h), pool(x)
        return x + h


class Discriminator(nn.Module):
    """(images [B,S,S,3], text [B,L,D], mask [B,L]) -> logits [B]: how real and how well-captioned each image
    looks. Same level convention as the Generator; the text joins by projection or concatenation."""

    image_size: int
    dim: int
    channel_mult: tuple[int, ...]
    text_dim: int
    conditioning: str = "projection"
    spectral_norm: bool = True
    iterations: int = 1
    dtype: layers.Dtype = "float32"

    @nn.compact
    def __call__(
        self, images: jax.Array, text: jax.Array, text_mask: jax.Array, update_stats: bool = False
    ) -> jax.Array:
        _levels(self.image_size, self.channel_mult)
        sn = dict(spectral_norm=self.spectral_norm, iterations=self.iterations, dtype=self.dtype)
        top = len(self.channel_mult) - 1
        h = SNConv(self.dim * self.channel_mult[0], name="from_rgb", **sn)(images, update_stats)
        for level in range(top + 1):
            h = DiscriminatorBlock(
                self.dim * self.channel_mult[level], downsample=level != top, name=f"block_{level}", **sn
            )(h, update_stats)
        h = nn.leaky_relu(h, _LEAK)
        mask = text_mask.astype(jnp.float32)[..., None]
        pooled = jnp.sum(text.astype(jnp.float32) * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1.0)
        t = nn.leaky_relu(
            SNDense(self.text_dim, ("embed", "mlp"), name="text_hidden", **sn)(pooled, update_stats), _LEAK
        )
        channels = h.shape[-1]
        if self.conditioning == "projection":
            features = jnp.sum(h, axis=(1, 2))
            embedded = SNDense(channels, ("mlp", "embed"), use_bias=False, name="text_embed", **sn)(
                t, update_stats
            )
            logit = SNDense(1, ("embed", None), name="logit", **sn)(features, update_stats)[:, 0]
            return (logit + jnp.sum(features * embedded, axis=-1)).astype(jnp.float32)
        if self.conditioning == "concat":
            tiled = jnp.broadcast_to(t[:, None, None, :], (*h.shape[:3], t.shape[-1])).astype(h.dtype)
            h = SNConv(channels, name="joint", **sn)(jnp.concatenate([h, tiled], -1), update_stats)
            features = jnp.sum(nn.leaky_relu(h, _LEAK), axis=(1, 2))
            return SNDense(1, ("embed", None), name="logit", **sn)(features, update_stats)[:, 0].astype(
                jnp.float32
            )
        raise ValueError(
            f"model.discriminator.conditioning={self.conditioning!r}; choose one of {CONDITIONING}."
        )


# The family ---------------------------------------------------------------------------------------------------


def check_sample_options(options: dict[str, Any], where: str = "sample") -> None:
    """Raises ValueError for a sampling option the GAN does not take or a value out of range."""
    unknown = set(options) - set(SAMPLE_OPTIONS)
    if unknown:
        raise ValueError(
            f"Unknown GAN sampling option(s) {sorted(unknown)}; the GAN takes {list(SAMPLE_OPTIONS)}."
        )
    truncation = float(options.get("truncation", 0.0))
    if not (truncation == 0.0 or truncation > 0.0) or math.isinf(truncation):
        raise ValueError(
            f"{where}.truncation={truncation} must be 0 (off) or a positive bound on |z| (e.g. 1.0)."
        )
    scale = float(options.get("noise_scale", 1.0))
    if not scale > 0.0 or math.isinf(scale):
        raise ValueError(f"{where}.noise_scale={scale} must be a positive number (1.0: the training noise).")


@dataclasses.dataclass(frozen=True)
class Objective:
    """config.gan: the adversarial loss, D updates per G update, the mismatched-caption share and the penalties."""

    loss: str
    d_steps: int
    mismatch_weight: float
    r1_gamma: float
    gp_weight: float


class GanFamily:
    """The text-conditional GAN described by config.model.{generator, discriminator} and config.gan.

    config.gan: loss (LOSSES), d_steps (D updates per G update), mismatch_weight (share of D's fake term given to
    real images with a wrong caption), r1_gamma, gp_weight. config.sample: truncation, noise_scale (defaults of
    generate's options). Its generator and discriminator train with Adam each, at train.g_learning_rate and
    train.d_learning_rate (training/steps/gan.py); no gradient accumulation (its D loss pairs captions across the
    whole batch and its step makes D and G updates in turn); its EMA (of the generator) warms up.
    """

    kind = "gan"
    capabilities = Capabilities(grad_accum=False, optimizers=("adam",), ema_warmup=True)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "GanFamily":
        """The GAN described by the config, checked."""
        return cls(config.model, config.gan, int(config.data.image_size), config.sample)

    def __init__(
        self,
        model: ml_collections.ConfigDict,
        gan: ml_collections.ConfigDict,
        size: int,
        sample: ml_collections.ConfigDict,
    ):
        g, d = model.generator, model.discriminator
        if gan.loss not in LOSSES:
            raise ValueError(f"gan.loss={gan.loss!r} is not a GAN loss; choose one of {LOSSES}.")
        if d.conditioning not in CONDITIONING:
            raise ValueError(
                f"model.discriminator.conditioning={d.conditioning!r}; choose one of {CONDITIONING}."
            )
        if int(gan.d_steps) < 1:
            raise ValueError(f"gan.d_steps={gan.d_steps} must be >= 1.")
        if not 0.0 <= float(gan.mismatch_weight) < 1.0:
            raise ValueError(f"gan.mismatch_weight={gan.mismatch_weight} must be in [0, 1).")
        if float(gan.r1_gamma) < 0 or float(gan.gp_weight) < 0:
            raise ValueError("gan.r1_gamma and gan.gp_weight must be >= 0.")
        for name, section in (("generator", g), ("discriminator", d)):
            try:
                _levels(size, tuple(section.channel_mult))
            except ValueError as err:
                raise ValueError(f"model.{name}.{err}") from err
        bad_levels = [lv for lv in g.cross_attn_levels if not 0 <= lv < len(g.channel_mult)]
        if bad_levels:
            raise ValueError(
                f"model.generator.cross_attn_levels={tuple(g.cross_attn_levels)}: levels must be in "
                f"0..{len(g.channel_mult) - 1} (0 = full resolution)."
            )
        self.sample_defaults = {k: sample[k] for k in SAMPLE_OPTIONS if k in sample}
        check_sample_options(self.sample_defaults)
        self.image_size = size
        self.noise_dim = int(g.noise_dim)
        self.objective = Objective(
            gan.loss, int(gan.d_steps), float(gan.mismatch_weight), float(gan.r1_gamma), float(gan.gp_weight)
        )
        self.spectral_norm = bool(d.spectral_norm)
        self.generator = Generator(
            image_size=size,
            dim=int(g.dim),
            channel_mult=tuple(g.channel_mult),
            text_dim=int(g.text_dim),
            affine_hidden=int(g.affine_hidden),
            cross_attn_levels=tuple(g.cross_attn_levels),
            head_dim=int(g.head_dim),
            dtype=g.dtype,
        )
        self.discriminator = Discriminator(
            image_size=size,
            dim=int(d.dim),
            channel_mult=tuple(d.channel_mult),
            text_dim=int(d.text_dim),
            conditioning=d.conditioning,
            spectral_norm=self.spectral_norm,
            iterations=int(d.power_iterations),
            dtype=d.dtype,
        )

    # Parameters ------------------------------------------------------------------------------

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """{"generator", "discriminator"[, "spectral_norm"]} (logically boxed) for a batch's shapes."""
        g_rng, d_rng = jax.random.split(rng)
        text, mask = batch["text_embeddings"], batch["text_mask"]
        z = jnp.zeros((text.shape[0], self.noise_dim), jnp.float32)
        params = {"generator": self.generator.init(g_rng, z, text, mask)["params"]}
        d_vars = self.discriminator.init(d_rng, batch["images"], text, mask)
        params["discriminator"] = d_vars["params"]
        if self.spectral_norm:
            params[SN_COLLECTION] = d_vars[SN_COLLECTION]
        return params

    def ema_of(self, params: PyTree) -> PyTree:
        """The part of params the EMA averages and generate samples with: {"generator": ...}."""
        return {"generator": params["generator"]}

    # The networks as functions --------------------------------------------------------------------------------

    def sample_noise(self, rng: jax.Array, batch: int, truncation: float = 0.0, noise_scale: float = 1.0):
        """z [batch, noise_dim]: standard normal, or truncated to |z| <= truncation (> 0), times noise_scale."""
        shape = (batch, self.noise_dim)
        if truncation:
            z = jax.random.truncated_normal(rng, -truncation, truncation, shape, jnp.float32)
        else:
            z = jax.random.normal(rng, shape, jnp.float32)
        return z * noise_scale

    def generate_images(self, g_params: PyTree, z: jax.Array, text: jax.Array, mask: jax.Array) -> jax.Array:
        return self.generator.apply({"params": g_params}, z, text, mask)

    def critic(
        self, params: PyTree, images: jax.Array, text: jax.Array, mask: jax.Array, update_stats: bool = False
    ) -> tuple[jax.Array, PyTree]:
        """(logits [B], the spectral-norm vectors after this call) of D on (images, text); with update_stats
        the power iteration advances the vectors, else they come back as given."""
        variables = {"params": params["discriminator"]}
        if self.spectral_norm:
            variables[SN_COLLECTION] = params[SN_COLLECTION]
            if update_stats:
                logits, new_vars = self.discriminator.apply(
                    variables, images, text, mask, True, mutable=[SN_COLLECTION]
                )
                return logits, new_vars[SN_COLLECTION]
        logits = self.discriminator.apply(variables, images, text, mask, False)
        return logits, params.get(SN_COLLECTION)

    # Training -----------------------------------------------------------------------------------------------

    def d_loss_fn(
        self, d_params: PyTree, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, tuple[PyTree, dict[str, jax.Array]]]:
        """(D's loss, (new spectral-norm vectors, metrics)) on the batch: real images with their captions,
        generated images and real images with mismatched captions (one D call on the three, concatenated),
        plus the R1 / WGAN gradient penalties. d_params replaces params["discriminator"] (the differentiated
        argument)."""
        obj = self.objective
        images, text, mask = batch["images"], batch["text_embeddings"], batch["text_mask"]
        b = images.shape[0]
        noise_rng, eps_rng = jax.random.split(rng)
        params = {**params, "discriminator": d_params}
        z = self.sample_noise(noise_rng, b)
        fake = jax.lax.stop_gradient(self.generate_images(params["generator"], z, text, mask))
        other, valid = mismatch_indices(text, mask)
        all_images = jnp.concatenate([images, fake, images], 0)
        all_text = jnp.concatenate([text, text, text[other]], 0)
        all_mask = jnp.concatenate([mask, mask, mask[other]], 0)
        logits, sn_state = self.critic(params, all_images, all_text, all_mask, update_stats=True)
        real, fake_logits, mismatch = logits[:b], logits[b : 2 * b], logits[2 * b :]
        loss = discriminator_loss(obj.loss, real, fake_logits, mismatch, valid, obj.mismatch_weight)
        # Penalties read the vectors the power iteration just produced, without advancing them again.
        penalty_params = {**params, SN_COLLECTION: sn_state} if self.spectral_norm else params
        critic = lambda x: self.critic(penalty_params, x, text, mask)[0]
        r1 = r1_penalty(critic, images) if obj.r1_gamma else jnp.zeros((), jnp.float32)
        gp = (
            wgan_gradient_penalty(critic, images, fake, jax.random.uniform(eps_rng, (b,)))
            if obj.gp_weight
            else jnp.zeros((), jnp.float32)
        )
        total = loss + 0.5 * obj.r1_gamma * r1 + obj.gp_weight * gp
        metrics = {
            "d_loss": total,
            "d_adversarial_loss": loss,
            "real_score": jnp.mean(real),
            "fake_score": jnp.mean(fake_logits),
            "mismatch_score": jnp.sum(mismatch * valid) / jnp.maximum(jnp.sum(valid), 1),
            "mismatch_valid": jnp.mean(valid.astype(jnp.float32)),
            "r1_penalty": r1,
            "gradient_penalty": gp,
        }
        return total, (sn_state, metrics)

    def g_loss_fn(
        self, g_params: PyTree, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(G's loss, D's mean logit on its samples) for fresh noise and the batch's captions."""
        text, mask = batch["text_embeddings"], batch["text_mask"]
        z = self.sample_noise(rng, text.shape[0])
        fake = self.generate_images(g_params, z, text, mask)
        logits, _ = self.critic(params, fake, text, mask)
        return generator_loss(self.objective.loss, logits), jnp.mean(logits)

    # Sampling -------------------------------------------------------------------------------------------------

    def generate(
        self, params: PyTree, text_embeddings: jax.Array, text_mask: jax.Array, rng: jax.Array, **options: Any
    ) -> jax.Array:
        """Images [B,S,S,3] in [-1,1] from the generator in params (the EMA tree {"generator": ...}, or the full
        params) for text [B,L,D] / mask [B,L]. Options (default config.sample): truncation (0: off; t > 0 draws
        z from a normal truncated to [-t, t]), noise_scale (z is multiplied by it)."""
        check_sample_options(options)
        sample = self.sample_defaults
        opt = lambda key, default: options[key] if key in options else sample.get(key, default)
        z = self.sample_noise(
            rng, text_embeddings.shape[0], float(opt("truncation", 0.0)), float(opt("noise_scale", 1.0))
        )
        return jnp.clip(self.generate_images(params["generator"], z, text_embeddings, text_mask), -1.0, 1.0)

    def sampling_summary(self) -> str:
        """E.g. 'EMA generator, one pass, truncation off, noise scale 1.0'."""
        sample = self.sample_defaults
        truncation = float(sample.get("truncation", 0.0))
        trunc = f"truncation |z| <= {truncation}" if truncation else "truncation off"
        return f"EMA generator, one pass, {trunc}, noise scale {float(sample.get('noise_scale', 1.0))}"

    def check_sample_options(self, options: dict[str, Any]) -> None:
        """Raises ValueError for a sampling option generate does not take or a value out of range."""
        check_sample_options(options)
