"""The family contract (ARCHITECTURE.md) and the registry the trainer, sampler and evaluation look families up in.

A family is built from the experiment config and exposes pure functions over parameter trees:
  init(rng, batch) -> params
  make_optimizer() -> optax.GradientTransformation
  train_step(state, batch, rng) -> (state, metrics)
  generate(params, text_embeddings, text_mask, rng, **sampling options) -> images in [-1, 1]
A batch is a dict: images float32 [B,H,W,3] in [-1,1], text_embeddings float32 [B,L,D], text_mask bool [B,L].
"""

from collections.abc import Callable
from typing import Any, Protocol

import jax
import ml_collections
import optax

from imagen_jax.training.state import TrainState

PyTree = Any


class Family(Protocol):
    config: ml_collections.ConfigDict

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree: ...

    def make_optimizer(self) -> optax.GradientTransformation: ...

    def train_step(
        self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]: ...

    def generate(
        self, params: PyTree, text_embeddings: jax.Array, text_mask: jax.Array, rng: jax.Array, **options: Any
    ) -> jax.Array: ...


def _imagen(config: ml_collections.ConfigDict) -> Family:
    from imagen_jax.models.imagen import ImagenFamily

    return ImagenFamily(config)


FAMILIES: dict[str, Callable[[ml_collections.ConfigDict], Family]] = {"imagen": _imagen}


def get_family(config: ml_collections.ConfigDict) -> Family:
    """The family named by config.family, built from the config."""
    if config.family not in FAMILIES:
        raise ValueError(
            f"Unknown family {config.family!r}; config.family must be one of {sorted(FAMILIES)}."
        )
    return FAMILIES[config.family](config)
