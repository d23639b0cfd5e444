"""The CLIP family's train step: one Adam step on the symmetric InfoNCE loss, then the EMA."""

from collections.abc import Callable

import jax
import optax

from imagen_jax.models.contrastive import ClipFamily
from imagen_jax.training import optimizers
from imagen_jax.training.hparams import TrainHparams
from imagen_jax.training.state import TrainState
from imagen_jax.training.steps.update import Ema, apply_gradients


def optimizer(family: ClipFamily, hp: TrainHparams) -> optax.GradientTransformation:
    """Adam on the warm-up schedule to train.learning_rate, after clipping."""
    return optimizers.single_network(hp)


def make_step(
    family: ClipFamily, hp: TrainHparams, tx: optax.GradientTransformation
) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """step(state, batch, rng) -> (state, metrics: loss, accuracy (image -> caption top-1 within the batch),
    logit_scale, grad_norm, learning_rate, nonfinite). A non-finite loss or gradient skips the update."""
    schedule = optimizers.lr_schedule(hp, hp.learning_rate)
    ema = Ema.of_family(family, hp.ema_decay, hp.ema_warmup)

    def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        (loss, terms), grads = jax.value_and_grad(family.loss, has_aux=True)(state.params, batch, rng)
        new_state, nonfinite = apply_gradients(state, grads, tx, ema=ema, checked=(loss,))
        metrics = {
            "loss": loss,
            **terms,
            "grad_norm": optax.global_norm(grads),
            "learning_rate": schedule(state.step),
            "nonfinite": nonfinite,
        }
        return new_state, metrics

    return step


def losses(family: ClipFamily) -> dict[str, Callable]:
    """{name: loss(params, batch, rng) -> scalar}: what the step differentiates."""
    return {"loss": lambda params, batch, rng: family.loss(params, batch, rng)[0]}
