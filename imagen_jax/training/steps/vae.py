"""The VAE's train step: one Adam step on the negative ELBO (or the VQ-VAE's loss), then for a VQ-VAE the EMA
codebook update and dead-code restarts, then the model EMA."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from imagen_jax.models import likelihoods, vq
from imagen_jax.models.vae import VaeFamily
from imagen_jax.training import optimizers
from imagen_jax.training.hparams import TrainHparams
from imagen_jax.training.state import TrainState
from imagen_jax.training.steps.update import Ema, apply_gradients


def optimizer(family: VaeFamily, hp: TrainHparams) -> optax.GradientTransformation:
    """Adam on the warm-up schedule to train.learning_rate, after clipping."""
    return optimizers.single_network(hp)


def make_step(
    family: VaeFamily, hp: TrainHparams, tx: optax.GradientTransformation
) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """step(state, batch, rng) -> (state, metrics).

    The codebook gets zero gradients (it is read through stop_gradient), so Adam leaves it alone; its EMA update
    then overwrites params["codebook"], and ema_params["codebook"] is set to that same codebook (it already is an
    average; averaging it again would blur restarted codes). A non-finite loss or gradient skips the whole update
    (metric nonfinite=1)."""
    schedule = optimizers.lr_schedule(hp, hp.learning_rate)
    ema = Ema.of_family(family, hp.ema_decay, hp.ema_warmup)
    objective = family.objective

    def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        loss_rng, restart_rng = jax.random.split(rng)
        (loss, terms), grads = jax.value_and_grad(family.loss, has_aux=True)(
            state.params, batch, loss_rng, state.step
        )
        metrics = {
            "loss": loss,
            "bits_per_dim": jnp.mean(family.negative_elbo_bits_per_dim(terms)),
            "nll_bits_per_dim": jnp.mean(
                likelihoods.bits_per_dim(terms["nll_discrete"], terms["mean"][0].size)
            ),
        }
        after_update = None
        if family.is_vq:
            codebook = vq.ema_codebook_update(
                state.params[vq.CODEBOOK], terms["z_e"], terms["codes"], objective.codebook_decay
            )
            codebook, restarted = vq.restart_dead_codes(
                codebook, terms["z_e"], objective.dead_code_threshold, restart_rng
            )
            after_update = lambda params: {**params, vq.CODEBOOK: codebook}
            metrics.update(
                codebook_perplexity=vq.perplexity(terms["codes"], objective.codebook_size),
                dead_codes_restarted=restarted,
                commitment=jnp.mean(terms["commitment"]),
                prior_bits_per_code=jnp.mean(terms["prior_nll"]) / (terms["codes"].shape[1] * jnp.log(2.0)),
            )
        else:
            metrics.update(kl=jnp.mean(terms["kl"]), kl_weight=terms["kl_weight"])
        new_state, nonfinite = apply_gradients(
            state,
            grads,
            tx,
            ema=ema,
            checked=(loss,),
            after_update=after_update,
            ema_copied=(vq.CODEBOOK,) if family.is_vq else (),
        )
        metrics.update(
            grad_norm=optax.global_norm(grads),
            learning_rate=schedule(state.step),
            nonfinite=nonfinite,
        )
        return new_state, metrics

    return step


def losses(family: VaeFamily) -> dict[str, Callable]:
    """{name: loss(params, batch, rng) -> scalar}: what the step differentiates (describe measures what its
    backward pass keeps)."""
    return {"loss": lambda params, batch, rng: family.loss(params, batch, rng, jnp.zeros((), jnp.int32))[0]}
