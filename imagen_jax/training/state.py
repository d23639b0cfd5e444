"""The train state every family shares (step, parameters, optimizer state, EMA parameters), and the pieces of a
train step every family reuses: gradient accumulation over micro-batches and the non-finite update guard."""

from collections.abc import Callable
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


def ema_update(ema: PyTree, params: PyTree, decay: float) -> PyTree:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def accumulate_gradients(
    loss_fn: Callable[[PyTree, dict[str, jax.Array], jax.Array], jax.Array],
    params: PyTree,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    micro_steps: int,
) -> tuple[jax.Array, PyTree]:
    """(mean loss, mean gradient) of loss_fn(params, micro_batch, rng_j) over `micro_steps` micro-batches.

    The batch's leading dimension B is split into micro_steps strided micro-batches of B / micro_steps (example i
    goes to micro-batch i % micro_steps, so each device keeps its own examples); a lax.scan runs them one after
    another, holding one micro-batch's activations at a time. Micro-batch j uses jax.random.fold_in(rng, j).
    Gradients are summed in float32. With micro_steps=1 this is exactly jax.value_and_grad(loss_fn).
    For a loss that is a mean of per-example terms, the result equals one step on the whole batch.
    """
    grad_fn = jax.value_and_grad(loss_fn)
    if micro_steps == 1:
        return grad_fn(params, batch, rng)

    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % micro_steps:
            raise ValueError(f"batch of {x.shape[0]} does not split into {micro_steps} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // micro_steps, micro_steps, *x.shape[1:]), 0, 1)

    def body(carry, inputs):
        loss_sum, grad_sum = carry
        index, micro_batch = inputs
        loss, grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
        grad_sum = jax.tree.map(lambda s, g: s + g.astype(jnp.float32), grad_sum, grads)
        return (loss_sum + loss.astype(jnp.float32), grad_sum), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (loss_sum, grad_sum), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(micro_steps), jax.tree.map(split, batch))
    )
    grads = jax.tree.map(lambda g, p: (g / micro_steps).astype(p.dtype), grad_sum, params)
    return loss_sum / micro_steps, grads


def all_finite(*trees: PyTree) -> jax.Array:
    """bool scalar: every element of every array leaf in `trees` is finite (no NaN, no inf)."""
    leaves = [leaf for tree in trees for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def skip_nonfinite_update(
    old: TrainState, new: TrainState, *checked: PyTree
) -> tuple[TrainState, jax.Array]:
    """(state, nonfinite): `new` when every value in `checked` (e.g. the loss and the gradients) is finite;
    otherwise `old` with only its step advanced (parameters, optimizer state and EMA unchanged).

    nonfinite is a float32 scalar, 1.0 for a skipped update, to be reported as the metric "nonfinite"; the
    trainer counts consecutive ones and stops after train.max_nonfinite_steps. Jit-able; used by every family.
    """
    finite = all_finite(*checked)
    kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new.replace(step=old.step), old)
    return kept.replace(step=new.step), 1.0 - finite.astype(jnp.float32)


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
