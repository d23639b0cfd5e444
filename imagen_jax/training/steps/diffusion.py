"""Imagen's train step: the trained stage's diffusion loss, its gradients averaged over train.grad_accum_steps
micro-batches, one optimizer step, then the EMA."""

from collections.abc import Callable

import jax
import optax

from imagen_jax.models.imagen import ImagenFamily
from imagen_jax.training import optimizers
from imagen_jax.training.hparams import TrainHparams
from imagen_jax.training.state import TrainState
from imagen_jax.training.steps.update import Ema, apply_gradients, value_and_grad


def optimizer(family: ImagenFamily, hp: TrainHparams) -> optax.GradientTransformation:
    """train.optimizer (Adam or Adafactor) on the warm-up schedule to train.learning_rate, after clipping."""
    return optimizers.single_network(hp)


def make_step(
    family: ImagenFamily, hp: TrainHparams, tx: optax.GradientTransformation
) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """step(state, batch, rng) -> (state, metrics: loss, grad_norm, learning_rate, nonfinite).

    A non-finite loss or gradient skips the update (metric nonfinite=1)."""
    schedule = optimizers.lr_schedule(hp, hp.learning_rate)
    ema = Ema.of_family(family, hp.ema_decay, hp.ema_warmup)

    def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        (loss, _), grads = value_and_grad(
            lambda params, micro_batch, key: (family.loss(params, micro_batch, key), {}),
            state.params,
            batch,
            rng,
            hp.grad_accum_steps,
        )
        new_state, nonfinite = apply_gradients(
            state,
            grads,
            tx,
            ema=ema,
            checked=(loss,),
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "learning_rate": schedule(state.step),
            "nonfinite": nonfinite,
        }
        return new_state, metrics

    return step


def losses(family: ImagenFamily) -> dict[str, Callable]:
    """{name: loss(params, batch, rng) -> scalar}: what the step differentiates (describe measures what its
    backward pass keeps)."""
    return {"loss": family.loss}
