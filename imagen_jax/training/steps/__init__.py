"""The training-step layer: for each family, the optimizer built once from the frozen hyper-parameters and the
jit-able step(state, batch, rng) -> (state, metrics) that computes the family's gradients and applies them with
the one update.apply_gradients. The trainer, describe and the benchmarks get both from `program`."""

import dataclasses
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import optax

from imagen_jax.models.family import Family
from imagen_jax.training.hparams import TrainHparams
from imagen_jax.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """What training a family means: its optimizer, one jit-able step that uses it, and the losses the step
    differentiates ({name: loss(params, batch, rng) -> scalar})."""

    optimizer: optax.GradientTransformation
    step: Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict[str, Any]]]
    losses: dict[str, Callable[[Any, dict[str, jax.Array], jax.Array], jax.Array]]


def _builders(kind: str) -> ModuleType:
    """The module that builds `kind`'s optimizer and step (imported on demand)."""
    from imagen_jax.training.steps import clip, diffusion, gan, vae

    return {"imagen": diffusion, "gan": gan, "vae": vae, "clip": clip}[kind]


def program(family: Family, hp: TrainHparams) -> TrainProgram:
    """The optimizer and the step of `family` under the hyper-parameters `hp`."""
    builders = _builders(family.kind)
    optimizer = builders.optimizer(family, hp)
    return TrainProgram(
        optimizer=optimizer, step=builders.make_step(family, hp, optimizer), losses=builders.losses(family)
    )


def from_config(config: Any) -> tuple[Family, TrainProgram]:
    """(the family config.family names, its train program under config.train): what a test or a benchmark needs
    to step a family without building a whole experiment."""
    from imagen_jax.models.registry import get_family
    from imagen_jax.training import hparams

    family = get_family(config)
    return family, program(family, hparams.from_config(config.train))
