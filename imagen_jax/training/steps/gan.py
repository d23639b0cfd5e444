"""The GAN's train step: gan.d_steps discriminator updates, then one generator update against the updated
discriminator, then the generator's EMA; each network with its own Adam (optimizers.per_network)."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from imagen_jax.errors import UserError
from imagen_jax.models.gan import SN_COLLECTION, GanFamily
from imagen_jax.training import optimizers
from imagen_jax.training.hparams import TrainHparams
from imagen_jax.training.state import TrainState
from imagen_jax.training.steps.update import Ema, apply_gradients, optimizer_update

PyTree = Any


def optimizer(family: GanFamily, hp: TrainHparams) -> optax.GradientTransformation:
    """Adam for the generator at train.g_learning_rate and for the discriminator at train.d_learning_rate, whose
    warm-up counts train steps (it makes gan.d_steps updates per step); state {"generator", "discriminator"}."""
    if hp.g_learning_rate is None or hp.d_learning_rate is None:
        raise UserError("The gan family needs train.g_learning_rate and train.d_learning_rate.")
    return optimizers.per_network(
        {
            "generator": optimizers.adam(hp, hp.g_learning_rate),
            "discriminator": optimizers.adam(hp, hp.d_learning_rate, every=family.objective.d_steps),
        }
    )


def make_step(
    family: GanFamily, hp: TrainHparams, tx: optax.GradientTransformation
) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """step(state, batch, rng) -> (state, metrics).

    The discriminator steps are unrolled (d_steps is small; XLA:CPU runs convolutions inside a while loop far
    slower), each on the batch with fresh noise and advancing the spectral-norm vectors. A non-finite loss,
    gradient or discriminator parameter skips the whole step (metric nonfinite=1). Metrics: d_loss, g_loss,
    real/fake/mismatch scores (D's mean logits; the last D step's), r1_penalty, gradient_penalty, g_fake_score (D's
    mean logit on G's samples in the G step), grad norms, learning rates, nonfinite.
    """
    d_grad_fn = jax.value_and_grad(family.d_loss_fn, has_aux=True)
    g_grad_fn = jax.value_and_grad(family.g_loss_fn, has_aux=True)
    g_schedule = optimizers.lr_schedule(hp, hp.g_learning_rate)
    d_schedule = optimizers.lr_schedule(hp, hp.d_learning_rate)
    ema = Ema.of_family(family, hp.ema_decay, hp.ema_warmup)

    def d_update(params: PyTree, opt_state: PyTree, batch: dict, rng: jax.Array):
        (_, (sn_state, metrics)), grads = d_grad_fn(params["discriminator"], params, batch, rng)
        params, opt_state = optimizer_update(params, opt_state, {"discriminator": grads}, tx)
        if family.spectral_norm:
            params = {**params, SN_COLLECTION: sn_state}
        return params, opt_state, {**metrics, "d_grad_norm": optax.global_norm(grads)}

    def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        d_rng, g_rng = jax.random.split(rng)
        params, opt_state, d_metrics = state.params, state.opt_state, []
        for step_rng in jax.random.split(d_rng, family.objective.d_steps):
            params, opt_state, metrics = d_update(params, opt_state, batch, step_rng)
            d_metrics.append(metrics)
        d_metrics = jax.tree.map(lambda *m: jnp.stack(m), *d_metrics)
        (g_loss, g_fake_score), g_grads = g_grad_fn(params["generator"], params, batch, g_rng)
        new_state, nonfinite = apply_gradients(
            state,
            {"generator": g_grads},
            tx,
            params=params,
            opt_state=opt_state,
            ema=ema,
            checked=(d_metrics["d_loss"], g_loss, params["discriminator"]),
        )
        metrics = {
            **jax.tree.map(lambda m: m[-1], d_metrics),
            "g_loss": g_loss,
            "g_fake_score": g_fake_score,
            "g_grad_norm": optax.global_norm(g_grads),
            "g_learning_rate": g_schedule(state.step),
            "d_learning_rate": d_schedule(state.step),
            "nonfinite": nonfinite,
        }
        return new_state, metrics

    return step


def losses(family: GanFamily) -> dict[str, Callable]:
    """{name: loss(params, batch, rng) -> scalar}: what the step differentiates, the discriminator's and the
    generator's (describe measures what their backward passes keep)."""
    return {
        "discriminator": lambda p, batch, rng: family.d_loss_fn(p["discriminator"], p, batch, rng)[0],
        "generator": lambda p, batch, rng: family.g_loss_fn(p["generator"], p, batch, rng)[0],
    }
