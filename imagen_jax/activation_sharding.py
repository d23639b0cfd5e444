"""Sharding constraints on activations, by logical axis names, so that a pod shards what the step computes and
not only the parameters.

Models mark their activations with `constrain(x, ("activation_batch", None, None, "activation_channels"))` at
block boundaries and in attention. The marks do nothing until a caller activates a mesh and its logical-axis
rules around the tracing of a step (`with use(mesh, rules): ...`, done by experiment.py for the train step,
sampling and mode=compile, and by the text encoder), so the same modules run unchanged on one CPU, in tests and
under jax.eval_shape. The rules are the ones parameters use (parallel.LOGICAL_AXIS_RULES or the config's
mesh.logical_axis_rules): e.g. activation_batch -> (data, fsdp), activation_channels / activation_heads ->
tensor. A mesh axis that does not divide a dimension evenly is dropped for that dimension (it is replicated),
as for parameters: a batch of 1 or 3 channels never fails to compile.

This module sits at the bottom of the import layers (models/ and text/ use it); it holds no mesh of its own
outside a `use` block.
"""

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Any]]

# The logical names of activation dimensions that models use (parallel.LOGICAL_AXIS_RULES maps them).
ACTIVATION_AXES = (
    "activation_batch",  # examples: split over data x fsdp, as the input batch is
    "activation_length",  # pixels or tokens of a sequence
    "activation_embed",  # the width of a token stream (T5's d_model)
    "activation_channels",  # a U-Net feature map's channels
    "activation_heads",  # attention heads
    "activation_kv",  # channels per head
    "activation_mlp",  # a feed-forward hidden layer
)

_ACTIVE: contextvars.ContextVar[tuple[Mesh, tuple[tuple[str, Any], ...]] | None] = contextvars.ContextVar(
    "imagen_jax_activation_sharding", default=None
)


@contextlib.contextmanager
def use(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Within this block, `constrain` places activations on `mesh` by `rules` (enter it around tracing)."""
    token = _ACTIVE.set((mesh, tuple((name, axes) for name, axes in rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes from dimensions they do not divide evenly (those dimensions are replicated)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[n] for n in names)
        fitted.append(axes if names and dim % size == 0 else None)
    return PartitionSpec(*fitted)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """x with the sharding its logical dimension names give under the active mesh and rules; x itself outside a
    `use` block. names has one entry per dimension of x (None: not constrained to any mesh axis)."""
    active = _ACTIVE.get()
    if active is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} names {tuple(names)} for an array of shape {x.shape}")
    mesh, rules = active
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, fit_spec(spec, x.shape, mesh)))
