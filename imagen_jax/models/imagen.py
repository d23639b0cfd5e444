"""The Imagen diffusion family: a text-conditioned U-Net trained with the continuous-time diffusion loss,
classifier-free guidance by dropping the text, and guided, thresholded sampling (see models/family.py)."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from imagen_jax.diffusion import objectives, samplers, schedules
from imagen_jax.diffusion.guidance import classifier_free_guidance
from imagen_jax.models.unet import UNet
from imagen_jax.training import state as state_lib

PyTree = Any


def build_unet(model_config: ml_collections.ConfigDict) -> UNet:
    """The U-Net described by config.model."""
    blocks = model_config.num_res_blocks
    return UNet(
        dim=model_config.dim,
        channel_mult=tuple(model_config.channel_mult),
        num_res_blocks=blocks if isinstance(blocks, int) else tuple(blocks),
        attn_levels=tuple(model_config.attn_levels),
        cross_attn_levels=tuple(model_config.cross_attn_levels),
        head_dim=model_config.head_dim,
        cond_dim=model_config.cond_dim,
        dropout=model_config.dropout,
        remat=model_config.remat,
        dtype=model_config.dtype,
    )


class ImagenFamily:
    """One text-to-image diffusion stage; config.model, config.diffusion, config.train, config.sample."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.unet = build_unet(config.model)
        self.schedule = schedules.get_schedule(config.diffusion.schedule)
        objectives.check_prediction(config.diffusion.prediction)

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """Parameters (logically boxed, see parallel.logical_shardings) for a batch's shapes."""
        images = batch["images"]
        log_snr = jnp.zeros(images.shape[:1], jnp.float32)
        return self.unet.init(rng, images, log_snr, batch["text_embeddings"], batch["text_mask"])["params"]

    def make_optimizer(self) -> optax.GradientTransformation:
        return state_lib.adam_with_warmup(self.config.train)

    def loss(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True
    ) -> jax.Array:
        """Mean diffusion loss over the batch (scalar), with the text dropped at diffusion.cond_drop_prob."""
        diffusion = self.config.diffusion
        noise_rng, drop_rng, dropout_rng = jax.random.split(rng, 3)
        x0 = batch["images"]
        x_t, log_snr, noise = objectives.sample_training_inputs(noise_rng, x0, self.schedule)
        drop_text = jax.random.bernoulli(drop_rng, diffusion.cond_drop_prob, x0.shape[:1])
        pred = self.unet.apply(
            {"params": params},
            x_t,
            log_snr,
            batch["text_embeddings"],
            batch["text_mask"],
            drop_text,
            train=train,
            rngs={"dropout": dropout_rng},
        )
        per_example = objectives.diffusion_loss(
            pred,
            x0,
            noise,
            log_snr,
            prediction=diffusion.prediction,
            weighting=diffusion.loss_weighting,
            min_snr_gamma=diffusion.min_snr_gamma,
        )
        return jnp.mean(per_example)

    def train_step(
        self, state: state_lib.TrainState, batch: dict[str, jax.Array], rng: jax.Array
    ) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
        """One optimizer step on the diffusion loss, then the EMA update.

        The batch [B, ...] is processed in train.grad_accum_steps micro-batches whose gradients are averaged
        (state_lib.accumulate_gradients). A non-finite loss or gradient skips the update (metric nonfinite=1).
        """
        train = self.config.train
        loss, grads = state_lib.accumulate_gradients(
            self.loss, state.params, batch, rng, int(train.get("grad_accum_steps", 1))
        )
        updates, opt_state = self.make_optimizer().update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state_lib.ema_update(state.ema_params, params, train.ema_decay)
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params
        )
        new_state, nonfinite = state_lib.skip_nonfinite_update(state, new_state, loss, grads)
        metrics = {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "learning_rate": state_lib.learning_rate_schedule(train)(state.step),
            "nonfinite": nonfinite,
        }
        return new_state, metrics

    def generate(
        self, params: PyTree, text_embeddings: jax.Array, text_mask: jax.Array, rng: jax.Array, **options: Any
    ) -> jax.Array:
        """Images [B,H,W,3] in [-1,1] for text [B,L,D] / mask [B,L]; options override config.sample
        (sampler, steps, guidance_scale, thresholding, dynamic_threshold_percentile, image_size)."""
        sample_config = self.config.sample
        opt = lambda key: options.get(key, sample_config[key])
        size = options.get("image_size", self.config.data.image_size)
        batch = text_embeddings.shape[0]

        def model_fn_with_drop(x_t: jax.Array, log_snr: jax.Array, drop_text: jax.Array) -> jax.Array:
            reps = x_t.shape[0] // batch  # the guidance wrapper stacks [conditional; unconditional]
            tile = lambda a: jnp.concatenate([a] * reps, axis=0)
            return self.unet.apply(
                {"params": params}, x_t, log_snr, tile(text_embeddings), tile(text_mask), drop_text
            )

        noise_rng, sample_rng = jax.random.split(rng)
        noise = jax.random.normal(noise_rng, (batch, size, size, self.unet.out_channels), jnp.float32)
        model_fn = classifier_free_guidance(model_fn_with_drop, opt("guidance_scale"))
        images = samplers.sample(
            model_fn,
            noise,
            sample_rng,
            sampler=opt("sampler"),
            steps=opt("steps"),
            schedule=self.schedule,
            prediction=self.config.diffusion.prediction,
            thresholding=opt("thresholding"),
            threshold_percentile=opt("dynamic_threshold_percentile"),
        )
        return jnp.clip(images, -1.0, 1.0)
