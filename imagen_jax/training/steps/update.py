"""The one place a parameter update happens, for every family: gradients (accumulated over micro-batches) ->
optimizer -> EMA -> step + 1 -> the non-finite guard. The families' step builders (training/steps/) only compute
gradients and call apply_gradients."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from imagen_jax.training.state import TrainState

PyTree = Any


def ema_decay_at(decay: float, warmup: bool, step: jax.Array) -> float | jax.Array:
    """The EMA's decay at `step`: `decay`, or with warm-up min(decay, (1 + step) / (10 + step)) (as
    tf.train.ExponentialMovingAverage with num_updates), so a short run's average forgets the random init."""
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


@dataclasses.dataclass(frozen=True)
class Ema:
    """How a family's parameter average is kept: its decay, whether that decay warms up (ema_decay_at), and which
    part of the parameters it averages (the family's ema_of; all of them by default)."""

    decay: float
    warmup: bool = False
    part: Callable[[PyTree], PyTree] = lambda params: params

    @classmethod
    def of_family(cls, family: Any, decay: float, warmup: bool | None = None) -> "Ema":
        """The average `family` keeps at `decay`, over its ema_of: warmed up when `warmup` (train.ema_warmup) says
        so; None (a config without the key) takes the family's default, capabilities.ema_warmup."""
        return cls(decay, family.capabilities.ema_warmup if warmup is None else bool(warmup), family.ema_of)


def ema_update(ema: PyTree, params: PyTree, decay: float | jax.Array) -> PyTree:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def value_and_grad(
    loss_fn: Callable[[PyTree, dict[str, jax.Array], jax.Array], tuple[jax.Array, PyTree]],
    params: PyTree,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    micro_steps: int = 1,
) -> tuple[tuple[jax.Array, PyTree], PyTree]:
    """((mean loss, mean aux), mean gradient) of loss_fn(params, micro_batch, rng_j) -> (loss, aux) over
    `micro_steps` micro-batches.

    The batch's leading dimension B is split into micro_steps strided micro-batches of B / micro_steps (example i
    goes to micro-batch i % micro_steps, so each device keeps its own examples); a lax.scan runs them one after
    another, holding one micro-batch's activations at a time. Micro-batch j uses jax.random.fold_in(rng, j).
    Gradients and aux are summed in float32. With micro_steps=1 this is exactly
    jax.value_and_grad(loss_fn, has_aux=True). For a loss that is a mean of per-example terms, the result equals
    one step on the whole batch.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_steps == 1:
        return grad_fn(params, batch, rng)

    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % micro_steps:
            raise ValueError(f"batch of {x.shape[0]} does not split into {micro_steps} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // micro_steps, micro_steps, *x.shape[1:]), 0, 1)

    def body(carry, inputs):
        loss_sum, aux_sum, grad_sum = carry
        index, micro_batch = inputs
        (loss, aux), grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
        add = lambda s, g: s + g.astype(jnp.float32)
        return (
            loss_sum + loss.astype(jnp.float32),
            jax.tree.map(add, aux_sum, aux),
            jax.tree.map(add, grad_sum, grads),
        ), None

    zeros = lambda tree: jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), tree)
    aux_shapes = jax.eval_shape(lambda: loss_fn(params, jax.tree.map(lambda x: split(x)[0], batch), rng)[1])
    (loss_sum, aux_sum, grad_sum), _ = jax.lax.scan(
        body,
        (jnp.zeros((), jnp.float32), zeros(aux_shapes), zeros(params)),
        (jnp.arange(micro_steps), jax.tree.map(split, batch)),
    )
    grads = jax.tree.map(lambda g, p: (g / micro_steps).astype(p.dtype), grad_sum, params)
    aux = jax.tree.map(lambda a: a / micro_steps, aux_sum)
    return (loss_sum / micro_steps, aux), grads


def all_finite(*trees: PyTree) -> jax.Array:
    """bool scalar: every element of every array leaf in `trees` is finite (no NaN, no inf).

    Read from their global norm, sqrt(sum of squares in float32): a NaN or an infinity anywhere makes it
    non-finite. It also flags finite values past ~1.8e19 (their squares overflow float32), a diverged update all
    the same. Why the norm: a flag per leaf joined by `and` (or a plain sum) is a chain of cheap scalar ops that
    XLA copies into every parameter's update fusion selecting on it, O(leaves^2) instructions (148k of the
    quickstart's train step; experiments/benchmarks/train_step_compile.py times its compile both ways); a square
    root is an op XLA does not copy, so the chain is computed once. It costs one pass over the checked values, like
    the global norm gradient clipping takes (a separate one: the checked values include the loss)."""
    leaves = [leaf for tree in trees for leaf in jax.tree.leaves(tree)]
    squares = sum(jnp.sum(jnp.square(jnp.asarray(leaf, jnp.float32))) for leaf in leaves)
    return jnp.isfinite(jnp.sqrt(squares))


def skip_nonfinite_update(old: TrainState, new: TrainState, *checked: PyTree) -> tuple[TrainState, jax.Array]:
    """(state, nonfinite): `new` when every value in `checked` (e.g. the loss and the gradients) is finite;
    otherwise `old` with only its step advanced (parameters, optimizer state and EMA unchanged).

    nonfinite is a float32 scalar, 1.0 for a skipped update, to be reported as the metric "nonfinite"; the
    trainer counts consecutive ones and stops after train.max_nonfinite_steps.
    """
    finite = all_finite(*checked)
    kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new.replace(step=old.step), old)
    return kept.replace(step=new.step), 1.0 - finite.astype(jnp.float32)


def optimizer_update(
    params: PyTree, opt_state: PyTree, grads: PyTree, optimizer: optax.GradientTransformation
) -> tuple[PyTree, PyTree]:
    """(params, opt_state) after one optimizer update of `grads`. `grads` may cover only some top-level entries of
    a dict of networks (optimizers.per_network): those entries are updated, the others are kept."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    if isinstance(params, dict) and set(grads) < set(params):
        return {**params, **optax.apply_updates({k: params[k] for k in updates}, updates)}, opt_state
    return optax.apply_updates(params, updates), opt_state


def apply_gradients(
    state: TrainState,
    grads: PyTree,
    optimizer: optax.GradientTransformation,
    *,
    ema: Ema,
    checked: tuple[PyTree, ...] = (),
    params: PyTree = None,
    opt_state: PyTree = None,
    after_update: Callable[[PyTree], PyTree] | None = None,
    ema_copied: tuple[str, ...] = (),
) -> tuple[TrainState, jax.Array]:
    """(the state after one update, nonfinite): every family's step ends here.

    The optimizer applies `grads` to `params` / `opt_state` (default: the state's; the GAN passes those after its
    discriminator updates), `after_update` may then rewrite the parameters (the VQ-VAE's EMA codebook), the EMA
    averages ema.part(params) at ema_decay_at(ema.decay, ema.warmup, step), copying the top-level entries named in
    `ema_copied` instead (already averages), and the step advances. When any value in `grads` or `checked` (e.g.
    the loss) is NaN/inf, the result is `state` with only its step advanced, and nonfinite is 1.0.
    """
    params = state.params if params is None else params
    opt_state = state.opt_state if opt_state is None else opt_state
    params, opt_state = optimizer_update(params, opt_state, grads, optimizer)
    if after_update is not None:
        params = after_update(params)
    ema_params = ema_update(
        state.ema_params, ema.part(params), ema_decay_at(ema.decay, ema.warmup, state.step)
    )
    if ema_copied:
        ema_params = {**ema_params, **{key: params[key] for key in ema_copied}}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params)
    return skip_nonfinite_update(state, new_state, *checked, grads)
