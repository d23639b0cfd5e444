"""Optimizers, built once from the frozen hyper-parameters (hparams.TrainHparams): the one warm-up schedule, Adam or
Adafactor after global-norm clipping, and the GAN's two per-network optimizers side by side in one transformation.

Every family's step applies them through training/steps/update.py; nothing here reads a ConfigDict."""

from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from imagen_jax.errors import UserError
from imagen_jax.training.hparams import TrainHparams

PyTree = Any

# Adam's decay rates and epsilon when train.adam_b1 / adam_b2 are not given: Kingma & Ba's, and Imagen's.
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


def lr_schedule(hp: TrainHparams, peak: float, every: int = 1) -> optax.Schedule:
    """Linear warm-up from 0 to `peak` over hp.warmup_steps (at least 1), then hp.lr_schedule: constant (as in
    Imagen), or a cosine or a line from `peak` down to hp.lr_final_fraction x peak at hp.total_steps (the
    config's train.steps; a run resumed with more steps decays over the new length from where it stands), held
    there after. The count is divided by `every` first: the GAN's discriminator optimizer counts gan.d_steps
    updates per train step, and its schedule is measured in train steps too."""
    warmup = max(int(hp.warmup_steps), 1)
    span = max(int(hp.total_steps) - warmup, 1)
    final = peak * float(hp.lr_final_fraction)
    if hp.lr_schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, span, alpha=float(hp.lr_final_fraction))
    elif hp.lr_schedule == "linear":
        after = optax.linear_schedule(peak, final, span)
    else:
        after = optax.constant_schedule(peak)
    schedule = optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], boundaries=[warmup])
    return schedule if every == 1 else (lambda count: schedule(count // every))


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


def clipped(hp: TrainHparams, optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """Global-norm clipping at hp.grad_clip (0: none), then `optimizer`."""
    parts = [optax.clip_by_global_norm(hp.grad_clip)] if hp.grad_clip else []
    return optax.chain(*parts, optimizer)


def adam(hp: TrainHparams, peak: float, every: int = 1) -> optax.GradientTransformation:
    """Clipping, then Adam(hp.adam_b1 or ADAM_B1, hp.adam_b2 or ADAM_B2, ADAM_EPS) on lr_schedule(hp, peak)."""
    b1 = ADAM_B1 if hp.adam_b1 is None else hp.adam_b1
    b2 = ADAM_B2 if hp.adam_b2 is None else hp.adam_b2
    return clipped(hp, optax.adam(lr_schedule(hp, peak, every), b1=b1, b2=b2, eps=ADAM_EPS))


def single_network(hp: TrainHparams) -> optax.GradientTransformation:
    """hp.optimizer for a family with one parameter tree: Adam, or Adafactor (ADAFACTOR_OPTIONS), both on the
    schedule of lr_schedule(hp, hp.learning_rate) after clipping.

    Given logically boxed parameters, Adafactor's init returns a state whose boxes match their leaves' ranks (see
    factored_state_boxes), so parallel.logical_shardings can shard it."""
    if hp.learning_rate is None:
        raise UserError(
            "train.learning_rate is missing: this family trains one network at one learning rate."
        )
    if hp.optimizer == "adam":
        return adam(hp, hp.learning_rate)
    adafactor = optax.adafactor(lr_schedule(hp, hp.learning_rate), **ADAFACTOR_OPTIONS)
    return clipped(hp, factored_state_boxes(adafactor, ADAFACTOR_MIN_DIM_TO_FACTOR))


def per_network(optimizers: dict[str, optax.GradientTransformation]) -> optax.GradientTransformation:
    """One transformation over params {name: subtree, ...} that applies optimizers[name] to each named subtree.
    Its state is {name: that optimizer's state}. update() takes gradients for some of the names only and returns
    updates for those, leaving the other networks' states as they are: the GAN updates its discriminator
    gan.d_steps times and then its generator, each on its own gradients, within one train step.

    The same as optax.multi_transform with one label per top-level key, except that a network absent from the
    gradients is skipped rather than given zero gradients (which would still advance its optimizer's count and
    moments), and that the state keeps the {name: state} layout of checkpoints written before this module."""

    def init(params: PyTree) -> PyTree:
        return {name: opt.init(params[name]) for name, opt in optimizers.items()}

    def update(grads: PyTree, state: PyTree, params: PyTree | None = None) -> tuple[PyTree, PyTree]:
        unknown = set(grads) - set(optimizers)
        if unknown:
            raise ValueError(f"No optimizer for {sorted(unknown)}; this one has {sorted(optimizers)}.")
        updates, new_state = {}, dict(state)
        for name in grads:
            updates[name], new_state[name] = optimizers[name].update(
                grads[name], state[name], None if params is None else params[name]
            )
        return updates, new_state

    return optax.GradientTransformation(init, update)


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
