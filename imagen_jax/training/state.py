"""The train state every family shares (step, parameters, optimizer state, EMA parameters), and the pieces of a
train step every family reuses: gradient accumulation over micro-batches and the non-finite update guard."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
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


def skip_nonfinite_update(old: TrainState, new: TrainState, *checked: PyTree) -> tuple[TrainState, jax.Array]:
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


OPTIMIZERS = ("adam", "adafactor")

# Adafactor as Imagen's base model used it, for its memory footprint (Saharia et al. 2022 chose it over Adam for
# similar quality with much less optimizer memory). Factored second moments (a row and a column statistic for
# every parameter with two dimensions >= ADAFACTOR_MIN_DIM_TO_FACTOR, optax's default), Adafactor's own decay
# 1 - t^-0.8 and update clipping at RMS 1 (Shazeer & Stern 2018); no first moment (momentum=None: a full
# parameter-sized buffer would give back half of the saving) and no parameter-scale step
# (multiply_by_parameter_scale=False), so train.learning_rate with its warm-up is an absolute step size, as for
# Adam (the paper gives one schedule, 1e-4 after 10k warm-up steps, for every stage).
ADAFACTOR_MIN_DIM_TO_FACTOR = 128
ADAFACTOR_OPTIONS = dict(
    min_dim_size_to_factor=ADAFACTOR_MIN_DIM_TO_FACTOR,
    decay_rate=0.8,
    clipping_threshold=1.0,
    momentum=None,
    multiply_by_parameter_scale=False,
    eps=1e-30,
)


def optimizer_name(train_config: ml_collections.ConfigDict) -> str:
    """train.optimizer ("adam" when the key is absent, as in configs saved before it existed), checked."""
    name = str(train_config.get("optimizer", "adam"))
    if name not in OPTIMIZERS:
        raise ValueError(f"train.optimizer={name!r} is not an optimizer; choose one of {OPTIMIZERS}.")
    return name


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Gradient clipping by global norm (train.grad_clip; 0 disables it), then train.optimizer: Adam(0.9, 0.999,
    1e-8) or Adafactor (ADAFACTOR_OPTIONS), both on learning_rate_schedule(train_config).

    Given logically boxed parameters, init returns a state whose boxes match their leaves' ranks (see
    factored_state_boxes), so parallel.logical_shardings can shard it."""
    if optimizer_name(train_config) == "adam":
        return adam_with_warmup(train_config)
    parts = []
    if train_config.grad_clip:
        parts.append(optax.clip_by_global_norm(train_config.grad_clip))
    adafactor = optax.adafactor(learning_rate_schedule(train_config), **ADAFACTOR_OPTIONS)
    parts.append(factored_state_boxes(adafactor, ADAFACTOR_MIN_DIM_TO_FACTOR))
    return optax.chain(*parts)


def factored_dims(shape: tuple[int, ...], min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """(d1, d0) as optax's factored RMS picks them: the second-largest and the largest dimension (np.argsort
    order, so of equal sizes the later one is d0), or None when the shape is not factored (fewer than two
    dimensions, or the second-largest is below min_dim_size_to_factor). v_row drops d0, v_col drops d1."""
    if len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def factored_state_boxes(
    optimizer: optax.GradientTransformation, min_dim_size_to_factor: int
) -> optax.GradientTransformation:
    """`optimizer` (one containing optax's scale_by_factored_rms) whose init, given logically boxed parameters,
    boxes the factored statistics with the logical names they really have.

    optax builds FactoredState by tree-mapping over the parameters, so every v_row / v_col / v leaf comes back in
    its parameter's box with all of the parameter's axis names, although v_row and v_col lack one axis and the
    unused ones are (1,) placeholders. Here a factored parameter's v_row keeps the names of its dimensions but d0
    and v_col those but d1 (so each statistic is sharded like the parameter along the axes it keeps, and the
    update's broadcasts need no resharding); a non-factored parameter's v keeps all names; the (1,) placeholders
    are unboxed (replicated). Unboxed parameters get optax's state unchanged."""
    is_box = lambda x: isinstance(x, nn.Partitioned)

    def statistic(param: Any, stat: Any, kind: str) -> Any:
        if not is_box(param):
            return stat
        dims = factored_dims(param.value.shape, min_dim_size_to_factor)
        value = stat.value
        if kind == "v":
            return stat if dims is None else value
        if dims is None:
            return value
        dropped = dims[1] if kind == "v_row" else dims[0]
        names = tuple(name for i, name in enumerate(param.names) if i != dropped)
        if len(names) != value.ndim:  # optax changed how it factors: fail here, not as a sharding error
            raise RuntimeError(
                f"factored statistic {value.shape} of a {param.value.shape} parameter {param.names}"
            )
        return stat.replace(names=names)

    def rebox(node: Any, params: PyTree) -> Any:
        if not isinstance(node, optax.FactoredState):
            return node
        fields = {
            kind: jax.tree.map(
                lambda p, s, k=kind: statistic(p, s, k), params, getattr(node, kind), is_leaf=is_box
            )
            for kind in ("v_row", "v_col", "v")
        }
        return node._replace(**fields)

    def init(params: PyTree) -> PyTree:
        state = optimizer.init(params)
        return jax.tree.map(
            lambda node: rebox(node, params), state, is_leaf=lambda x: isinstance(x, optax.FactoredState)
        )

    return optax.GradientTransformation(init, optimizer.update)
