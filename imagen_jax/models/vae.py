"""The VAE family: a text-conditional VAE (or VQ-VAE), trained, sampled and judged through the same pipes as Imagen.

VAE (model.variant="vae"): encoder q(z | x, c) and decoder p(x | z, c), both convolutional with the pooled text
c applied by FiLM in every residual block, and a learned text-conditioned prior p(z | c) (a learned latent canvas
modulated by the text), so that sampling from a prompt means something. z is a [h, w, latent_channels] grid.
Pixel likelihood (model.likelihood): "logistic" (discretised to 256 bins, PixelCNN++ edges) or "gaussian"
(model.gaussian_variance "learned" per pixel or "fixed" at model.fixed_sigma). KL warm-up (model.kl_warmup_steps:
the KL weight grows linearly from 0 to 1) and free bits (model.free_bits nats per latent channel, on the batch
mean) fight posterior collapse. The metric bits_per_dim is the single-sample negative ELBO with the pixel
likelihood discretised to 256 bins (a Gaussian decoder's too), in bits per pixel channel.

VQ-VAE (model.variant="vq"): the encoder's [h, w, D] grid is quantised to the nearest of model.codebook_size codes
(straight-through gradients, commitment loss with weight model.commitment_cost), the codebook follows EMA
updates (decay model.codebook_decay) with dead-code restarts (model.dead_code_threshold), and a small
autoregressive transformer (vq.CodePrior) learns p(codes | text) on stop-gradient codes in the same train step
(training/steps/vae.py).
Its bits_per_dim is the negative ELBO with that prior (q is deterministic, so the KL is -log p(codes | text)).

Sampling (config.sample.temperature, or generate(..., temperature=)): z from the prior (its standard deviation
scaled by the temperature; codes drawn at that softmax temperature), then the decoder's mean image.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from imagen_jax.models import likelihoods, vq
from imagen_jax.models.family import Capabilities
from imagen_jax.models.layers import (
    AttentionPool,
    Downsample,
    ResBlock,
    Upsample,
    conv,
    dense,
    group_norm,
    layer_norm,
)

PyTree = Any
VARIANTS = ("vae", "vq")
LIKELIHOODS = ("gaussian", "logistic")
VARIANCES = ("learned", "fixed")
MIN_LOG_SCALE = -7.0  # pixel scales below exp(-7) ~ 1e-3 (a tenth of a bin) are clamped, as in PixelCNN++
SAMPLE_OPTIONS = ("temperature",)


class TextCondition(nn.Module):
    """The pooled text condition: text [B,L,D], mask [B,L] -> [B,cond_dim]."""

    cond_dim: int

    @nn.compact
    def __call__(self, text: jax.Array, text_mask: jax.Array) -> jax.Array:
        pooled = AttentionPool(name="pool")(layer_norm(name="norm")(text), text_mask.astype(bool))
        h = nn.silu(dense(self.cond_dim, ("embed", "mlp"), name="in")(pooled))
        return dense(self.cond_dim, ("mlp", "embed"), name="out")(h)


class Encoder(nn.Module):
    """x [B,H,W,3], cond [B,C] -> [B,H/2^(n-1),W/2^(n-1),out_channels] for n = len(channel_mult)."""

    dim: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    out_channels: int

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        h = conv(self.dim, name="conv_in")(x)
        for level, mult in enumerate(self.channel_mult):
            for block in range(self.num_res_blocks):
                h = ResBlock(self.dim * mult, name=f"down{level}_block{block}")(h, cond)
            if level < len(self.channel_mult) - 1:
                h = Downsample(self.dim * mult, name=f"down{level}")(h)
        h = nn.silu(group_norm(h.shape[-1], name="norm_out")(h))
        return conv(self.out_channels, name="conv_out")(h)


class Decoder(nn.Module):
    """z [B,h,w,Z], cond [B,C] -> [B,h*2^(n-1),w*2^(n-1),out_channels] (the mirror of Encoder)."""

    dim: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    out_channels: int

    @nn.compact
    def __call__(self, z: jax.Array, cond: jax.Array) -> jax.Array:
        h = conv(self.dim * self.channel_mult[-1], name="conv_in")(z)
        for level in reversed(range(len(self.channel_mult))):
            for block in range(self.num_res_blocks):
                h = ResBlock(self.dim * self.channel_mult[level], name=f"up{level}_block{block}")(h, cond)
            if level > 0:
                h = Upsample(self.dim * self.channel_mult[level - 1], name=f"up{level}")(h)
        h = nn.silu(group_norm(h.shape[-1], name="norm_out")(h))
        return conv(self.out_channels, zero_init=True, name="conv_out")(h)


class LatentPrior(nn.Module):
    """p(z | c): cond [B,C] -> (mean, log_var), each [B,size,size,channels]: a learned canvas, FiLM res blocks."""

    size: int
    channels: int
    features: int
    num_blocks: int

    @nn.compact
    def __call__(self, cond: jax.Array) -> tuple[jax.Array, jax.Array]:
        canvas = self.param(
            "canvas",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None, "conv_out")),
            (self.size, self.size, self.features),
        )
        h = jnp.broadcast_to(canvas[None], (cond.shape[0], *canvas.shape))
        for block in range(self.num_blocks):
            h = ResBlock(self.features, name=f"block{block}")(h, cond)
        h = nn.silu(group_norm(self.features, name="norm_out")(h))
        mean, log_var = jnp.split(conv(2 * self.channels, zero_init=True, name="conv_out")(h), 2, axis=-1)
        return mean, log_var


class ConditionalVAE(nn.Module):
    """All networks of the family; methods are applied one at a time (flax `method=`)."""

    variant: str
    dim: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    latent_channels: int
    latent_size: int
    cond_dim: int
    pixel_channels: int  # 3 (mean only: fixed variance) or 6 (mean and log scale)
    prior_blocks: int
    codebook_size: int
    prior_dim: int
    prior_heads: int
    prior_layers: int

    def setup(self):
        is_vq = self.variant == "vq"
        self.text_condition = TextCondition(self.cond_dim)
        enc_out = self.latent_channels if is_vq else 2 * self.latent_channels
        self.encoder = Encoder(self.dim, self.channel_mult, self.num_res_blocks, enc_out)
        self.decoder = Decoder(self.dim, self.channel_mult, self.num_res_blocks, self.pixel_channels)
        if is_vq:
            self.codebook = vq.Codebook(self.codebook_size, self.latent_channels)
            self.code_prior = vq.CodePrior(
                self.codebook_size, self.latent_size**2, self.prior_dim, self.prior_heads, self.prior_layers
            )
        else:
            self.latent_prior = LatentPrior(
                self.latent_size, self.latent_channels, self.dim * self.channel_mult[-1], self.prior_blocks
            )

    def condition(self, text, text_mask):
        return self.text_condition(text, text_mask)

    def encode(self, x, cond):
        return self.encoder(x, cond)

    def decode(self, z, cond):
        return self.decoder(z, cond)

    def prior(self, cond):
        return self.latent_prior(cond)

    def code_logits(self, codes, text, text_mask):
        return self.code_prior(codes, text, text_mask)

    def codebook_arrays(self):
        return self.codebook()

    def __call__(self, x, text, text_mask):
        """Touches every network (for init)."""
        cond = self.condition(text, text_mask)
        enc = self.encode(x, cond)
        if self.variant == "vq":
            self.codebook_arrays()
            codes = jnp.zeros((x.shape[0], self.latent_size**2), jnp.int32)
            self.code_logits(codes, text, text_mask)
            return self.decode(enc, cond)
        self.prior(cond)
        return self.decode(enc[..., : self.latent_channels], cond)


def reparameterize(mean: jax.Array, log_var: jax.Array, rng: jax.Array) -> jax.Array:
    """z = mean + exp(log_var / 2) * eps, eps ~ N(0, I): a sample of N(mean, exp(log_var)) differentiable in both."""
    return mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape, mean.dtype)


def kl_weight(step: jax.Array, warmup_steps: int) -> jax.Array:
    """The KL weight at `step`: linear warm-up from 1/warmup_steps to 1 (1 throughout when warmup_steps <= 0)."""
    if warmup_steps <= 0:
        return jnp.ones((), jnp.float32)
    return jnp.minimum(1.0, (step.astype(jnp.float32) + 1.0) / warmup_steps)


def free_bits_kl(kl_map: jax.Array, free_bits: float) -> jax.Array:
    """Sum over latent channels of max(free_bits, batch-mean KL of the channel): kl_map [B,h,w,C] -> scalar."""
    per_channel = jnp.mean(jnp.sum(kl_map, axis=(1, 2)), axis=0)
    return jnp.sum(jnp.maximum(per_channel, free_bits))


def check_model_config(config: ml_collections.ConfigDict) -> None:
    """One clear ValueError for a VAE-family setting that cannot work."""
    m = config.model
    choices = {"variant": VARIANTS, "likelihood": LIKELIHOODS, "gaussian_variance": VARIANCES}
    for key, allowed in choices.items():
        if m[key] not in allowed:
            raise ValueError(f"model.{key}={m[key]!r}; choose one of {allowed}.")
    levels = len(m.channel_mult)
    if levels < 1 or config.data.image_size % 2 ** (levels - 1):
        raise ValueError(
            f"data.image_size={config.data.image_size} must be divisible by 2^(len(model.channel_mult) - 1) = "
            f"{2 ** (levels - 1)}."
        )
    if m.gaussian_variance == "fixed" and not m.fixed_sigma > 0:
        raise ValueError(f"model.fixed_sigma={m.fixed_sigma} must be > 0.")
    if m.free_bits < 0 or m.kl_warmup_steps < 0:
        raise ValueError("model.free_bits and model.kl_warmup_steps must be >= 0.")
    if not 0.0 < m.codebook_decay < 1.0 or m.codebook_size < 2 or m.prior_dim % m.prior_heads:
        raise ValueError(
            "model.codebook_decay must be in (0, 1), model.codebook_size >= 2, and model.prior_dim divisible by "
            "model.prior_heads."
        )


@dataclasses.dataclass(frozen=True)
class Objective:
    """The objective's settings of config.model (see the module docstring)."""

    likelihood: str
    fixed_sigma: float
    kl_warmup_steps: int
    free_bits: float
    commitment_cost: float
    codebook_size: int
    codebook_decay: float
    dead_code_threshold: float

    @classmethod
    def from_model_config(cls, m: ml_collections.ConfigDict) -> "Objective":
        return cls(
            likelihood=m.likelihood,
            fixed_sigma=m.fixed_sigma,
            kl_warmup_steps=int(m.kl_warmup_steps),
            free_bits=m.free_bits,
            commitment_cost=m.commitment_cost,
            codebook_size=m.codebook_size,
            codebook_decay=m.codebook_decay,
            dead_code_threshold=m.dead_code_threshold,
        )


class VaeFamily:
    """The text-conditional VAE / VQ-VAE described by config.model (see the module docstring). It trains with
    Adam, without gradient accumulation, and reconstructs held-out images after training."""

    kind = "vae"
    capabilities = Capabilities(grad_accum=False, optimizers=("adam",), reconstructs=True)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "VaeFamily":
        """The VAE described by the config, checked."""
        check_model_config(config)
        family = cls(config.model, int(config.data.image_size), float(config.sample.temperature))
        family.check_sample_options({"temperature": family.temperature})
        return family

    def __init__(self, m: ml_collections.ConfigDict, image_size: int, temperature: float):
        self.objective = Objective.from_model_config(m)
        self.temperature = temperature
        self.variant = m.variant
        self.is_vq = m.variant == "vq"
        self.latent_size = image_size // 2 ** (len(m.channel_mult) - 1)
        self.learned_variance = m.likelihood == "logistic" or m.gaussian_variance == "learned"
        self.model = ConditionalVAE(
            variant=m.variant,
            dim=m.dim,
            channel_mult=tuple(m.channel_mult),
            num_res_blocks=m.num_res_blocks,
            latent_channels=m.latent_channels,
            latent_size=self.latent_size,
            cond_dim=m.cond_dim,
            pixel_channels=6 if self.learned_variance else 3,
            prior_blocks=m.prior_blocks,
            codebook_size=m.codebook_size,
            prior_dim=m.prior_dim,
            prior_heads=m.prior_heads,
            prior_layers=m.prior_layers,
        )

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """Parameters (logically boxed) of every network; a VQ-VAE's include the EMA codebook under "codebook"."""
        return self.model.init(rng, batch["images"], batch["text_embeddings"], batch["text_mask"])["params"]

    def ema_of(self, params: PyTree) -> PyTree:
        """The EMA averages every parameter (a VQ-VAE's codebook is copied into it: see training/steps/vae.py)."""
        return params

    def _apply(self, params: PyTree, method: str, *args: Any) -> Any:
        return self.model.apply({"params": params}, *args, method=getattr(ConditionalVAE, method))

    def _pixels(self, params: PyTree, z: jax.Array, cond: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mean, log_scale) of p(x | z, c), each [B,H,W,3]."""
        out = self._apply(params, "decode", z, cond)
        if not self.learned_variance:
            return out, jnp.full_like(out, jnp.log(self.objective.fixed_sigma))
        mean, log_scale = jnp.split(out, 2, axis=-1)
        return mean, jnp.maximum(log_scale, MIN_LOG_SCALE)

    def _pixel_nll(self, x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(training NLL, discretised NLL), each [B] in nats: the Gaussian trains on its density."""
        distribution = self.objective.likelihood
        discrete = -jnp.sum(
            likelihoods.discretized_log_prob(x, mean, log_scale, distribution), axis=(1, 2, 3)
        )
        if distribution == "logistic":
            return discrete, discrete
        train = -jnp.sum(likelihoods.gaussian_log_density(x, mean, log_scale), axis=(1, 2, 3))
        return train, discrete

    def terms(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array) -> dict[str, jax.Array]:
        """Per-example terms of the objective on a batch ([B] arrays unless noted), plus the encodings.

        Both variants: nll (training), nll_discrete, mean (decoder mean [B,H,W,3]). VAE: kl [B], kl_map
        [B,h,w,Z]. VQ: commitment [B], prior_nll [B], codes [B,h*w], z_e [B,h,w,D]."""
        x = batch["images"]
        cond = self._apply(params, "condition", batch["text_embeddings"], batch["text_mask"])
        enc = self._apply(params, "encode", x, cond)
        out: dict[str, jax.Array] = {}
        if self.is_vq:
            z, codes, commitment = vq.quantize(enc, params[vq.CODEBOOK]["embedding"])
            codes = codes.reshape(x.shape[0], -1)
            logits = self._apply(
                params, "code_logits", codes, batch["text_embeddings"], batch["text_mask"]
            ).astype(jnp.float32)
            out["prior_nll"] = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, codes), axis=1)
            out.update(commitment=jnp.sum(commitment, axis=(1, 2)), codes=codes, z_e=enc)
        else:
            post_mean, post_log_var = jnp.split(enc, 2, axis=-1)
            prior_mean, prior_log_var = self._apply(params, "prior", cond)
            z = reparameterize(post_mean, post_log_var, rng)
            out["kl_map"] = likelihoods.gaussian_kl(post_mean, post_log_var, prior_mean, prior_log_var)
            out["kl"] = jnp.sum(out["kl_map"], axis=(1, 2, 3))
        mean, log_scale = self._pixels(params, z, cond)
        out["nll"], out["nll_discrete"] = self._pixel_nll(x, mean, log_scale)
        out["mean"] = mean
        return out

    def loss(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(loss in nats per dimension, terms): NLL + KL weight * free-bits KL (VAE), or NLL + commitment_cost *
        commitment + prior NLL (VQ), averaged over the batch and divided by H*W*3."""
        m = self.objective
        terms = self.terms(params, batch, rng)
        dims = terms["mean"][0].size
        if self.is_vq:
            total = jnp.mean(terms["nll"] + m.commitment_cost * terms["commitment"] + terms["prior_nll"])
        else:
            weight = kl_weight(step, m.kl_warmup_steps)
            total = jnp.mean(terms["nll"]) + weight * free_bits_kl(terms["kl_map"], m.free_bits)
            terms["kl_weight"] = weight
        return total / dims, terms

    def negative_elbo_bits_per_dim(self, terms: dict[str, jax.Array]) -> jax.Array:
        """[B] the single-sample negative ELBO (discretised pixels) in bits per dimension."""
        rate = terms["prior_nll"] if self.is_vq else terms["kl"]
        return likelihoods.bits_per_dim(terms["nll_discrete"] + rate, terms["mean"][0].size)

    # Sampling and reconstruction ----------------------------------------------------------------------------

    def generate(
        self, params: PyTree, text_embeddings: jax.Array, text_mask: jax.Array, rng: jax.Array, **options: Any
    ) -> jax.Array:
        """Images [B,H,W,3] in [-1,1]: z from the text-conditioned prior at `temperature` (default
        config.sample.temperature), then the decoder's mean."""
        unknown = set(options) - set(SAMPLE_OPTIONS)
        if unknown:
            raise ValueError(
                f"Unknown sampling option(s) {sorted(unknown)} for the vae family; use {SAMPLE_OPTIONS}."
            )
        temperature = float(options.get("temperature", self.temperature))
        batch = text_embeddings.shape[0]
        cond = self._apply(params, "condition", text_embeddings, text_mask)
        if self.is_vq:
            logits_fn = lambda codes: self._apply(params, "code_logits", codes, text_embeddings, text_mask)
            length = self.latent_size**2
            codes = vq.sample_codes(logits_fn, batch, length, self.objective.codebook_size, rng, temperature)
            z = params[vq.CODEBOOK]["embedding"][codes].reshape(batch, self.latent_size, self.latent_size, -1)
        else:
            prior_mean, prior_log_var = self._apply(params, "prior", cond)
            z = prior_mean + temperature * jnp.exp(0.5 * prior_log_var) * jax.random.normal(
                rng, prior_mean.shape
            )
        mean, _ = self._pixels(params, z, cond)
        return jnp.clip(mean, -1.0, 1.0)

    def reconstruct(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(reconstructions [B,H,W,3] in [-1,1], negative ELBO in bits/dim [B]) of a batch: the decoder's mean at
        the posterior mean (VAE) or the nearest codes (VQ), and the single-sample bound with z ~ q(z | x, c)."""
        terms = self.terms(params, batch, rng)
        if not self.is_vq:  # the picture at the posterior mean, not at a noisy sample
            cond = self._apply(params, "condition", batch["text_embeddings"], batch["text_mask"])
            post_mean = jnp.split(self._apply(params, "encode", batch["images"], cond), 2, axis=-1)[0]
            terms["mean"] = self._pixels(params, post_mean, cond)[0]
        return jnp.clip(terms["mean"], -1.0, 1.0), self.negative_elbo_bits_per_dim(terms)

    def check_sample_options(self, options: dict[str, Any]) -> None:
        """A ValueError for sampling options generate cannot use."""
        unknown = set(options) - set(SAMPLE_OPTIONS)
        if unknown:
            raise ValueError(
                f"Unknown sampling option(s) {sorted(unknown)} for the vae family; use {SAMPLE_OPTIONS}."
            )
        if "temperature" in options and not float(options["temperature"]) >= 0:
            raise ValueError(f"sample.temperature={options['temperature']} must be >= 0.")

    def sampling_summary(self) -> str:
        prior = "autoregressive code prior" if self.is_vq else "Gaussian prior p(z|text)"
        return (
            f"{self.variant}, {prior}, temperature {self.temperature}, "
            f"decoder mean ({self.objective.likelihood})"
        )
