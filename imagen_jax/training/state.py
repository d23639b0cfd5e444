"""The train state every family shares: step, parameters, optimizer state, EMA parameters."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """step: int32 scalar; params / ema_params: parameter trees; opt_state: the optimizer's state tree."""

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree


def create(params: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state at step 0 whose EMA starts at the initial parameters."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
    )


def ema_update(ema: PyTree, params: PyTree, decay: float) -> PyTree:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up from 0 to train.learning_rate over train.warmup_steps, then constant (as in Imagen)."""
    warmup = max(int(train_config.warmup_steps), 1)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, train_config.learning_rate, warmup),
            optax.constant_schedule(train_config.learning_rate),
        ],
        boundaries=[warmup],
    )


def adam_with_warmup(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Gradient clipping by global norm (train.grad_clip; 0 disables it), then Adam(0.9, 0.999, 1e-8)."""
    parts = []
    if train_config.grad_clip:
        parts.append(optax.clip_by_global_norm(train_config.grad_clip))
    parts.append(optax.adam(learning_rate_schedule(train_config), b1=0.9, b2=0.999, eps=1e-8))
    return optax.chain(*parts)
