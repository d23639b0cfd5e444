"""The train state every family shares: step, parameters, optimizer state, and the EMA of (part of) the
parameters."""

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """step: int32 scalar; params / ema_params: parameter trees; opt_state: the optimizer's state tree."""

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree


def create(
    params: PyTree,
    optimizer: optax.GradientTransformation,
    ema_of: Callable[[PyTree], PyTree] | None = None,
) -> TrainState:
    """A fresh state at step 0 whose EMA starts at the initial parameters: all of them, or the part ema_of(params)
    picks (a family's ema_of, e.g. the GAN's generator)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, ema_of(params) if ema_of else params),
    )
