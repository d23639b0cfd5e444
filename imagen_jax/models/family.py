"""The family contract (ARCHITECTURE.md) and the registry the trainer, sampler and evaluation look families up in.

A family is built from the experiment config and exposes pure functions over parameter trees:
  init(rng, batch) -> params
  make_optimizer() -> optax.GradientTransformation
  train_step(state, batch, rng) -> (state, metrics)
  generate(params, text_embeddings, text_mask, rng, **sampling options) -> images in [-1, 1]
  sampling_summary() -> str   (the default sampling settings, for the console)
and optionally
  ema_of(params) -> the part of params the EMA averages (default: all of it; the GAN averages its generator)
  check_sample_config(config.sample) -> None, raising ValueError (checked at the door for non-Imagen families)
  after_training(exp, params, step) -> dict   (extra results after training, printed by main as "key: value";
                                               the VAE's held-out reconstructions and bits/dim)
A batch is a dict: images float32 [B,H,W,3] in [-1,1], text_embeddings float32 [B,L,D], text_mask bool [B,L].
describe(config) reports each stage's size and cost from its compiled train step (mode=describe).
"""

from collections.abc import Callable
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
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

    def sampling_summary(self) -> str:
        """How generate samples by default, in a few words for the console (e.g. 'dpmpp_2m, 20 steps, ...')."""
        ...


def _imagen(config: ml_collections.ConfigDict) -> Family:
    from imagen_jax.models.imagen import ImagenFamily

    return ImagenFamily(config)


def _gan(config: ml_collections.ConfigDict) -> Family:
    from imagen_jax.models.gan import GanFamily

    return GanFamily(config)


def _vae(config: ml_collections.ConfigDict) -> Family:
    from imagen_jax.models.vae import VaeFamily

    return VaeFamily(config)


FAMILIES: dict[str, Callable[[ml_collections.ConfigDict], Family]] = {
    "imagen": _imagen,
    "gan": _gan,
    "vae": _vae,
}


def get_family(config: ml_collections.ConfigDict) -> Family:
    """The family named by config.family, built from the config."""
    if config.family not in FAMILIES:
        raise ValueError(
            f"Unknown family {config.family!r}; config.family must be one of {sorted(FAMILIES)}."
        )
    return FAMILIES[config.family](config)


def _text_shape(text_config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(max_length, embedding width) of the configured text encoder, without building or loading it."""
    if text_config.pretrained_dir:
        from imagen_jax.text import hf_import

        return text_config.max_length, hf_import.read_config(text_config.pretrained_dir).d_model
    return text_config.max_length, text_config.t5.d_model


def _abstract_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    length, width = _text_shape(config.text)
    size = config.data.image_size
    return {
        "images": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32),
        "text_embeddings": jax.ShapeDtypeStruct((batch_size, length, width), jnp.float32),
        "text_mask": jax.ShapeDtypeStruct((batch_size, length), jnp.bool_),
    }


def _compiled_step_costs(family: Family, batch: dict[str, jax.ShapeDtypeStruct]) -> tuple[float, float, Any]:
    """(FLOPs, temporary bytes, abstract state) of one compiled train step on `batch`, nothing allocated."""
    from imagen_jax.training import state as state_lib
    from imagen_jax.training.trainer import compiled_flops

    boxed = jax.eval_shape(
        lambda rng, b: state_lib.create(
            family.init(rng, b), family.make_optimizer(), getattr(family, "ema_of", None)
        ),
        jax.random.key(0),
        batch,
    )
    abstract_state = nn.meta.unbox(boxed)
    compiled = jax.jit(family.train_step).lower(abstract_state, batch, jax.random.key(0)).compile()
    flops = compiled_flops(compiled)
    if flops is None:
        raise RuntimeError(
            "XLA's cost analysis reports no FLOPs on this backend; describe cannot count them."
        )
    memory = compiled.memory_analysis()
    return flops, float(getattr(memory, "temp_size_in_bytes", 0) or 0), abstract_state


def describe(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """Per stage (a single-stage family has one): parameters, FLOPs per training example and activation memory,
    from XLA's compiled train step on abstract inputs (jax.eval_shape / lower / compile; nothing is allocated).

    The step is compiled once per stage at batch 1 (no gradient accumulation): flops_per_example is its FLOP
    count (forward, backward, and the batch-independent optimizer + EMA update, which is small next to the model
    at a real batch size); activation_bytes_per_example is XLA's temporary-buffer size for that step (the
    activations kept for the backward pass, plus gradients): an estimate of memory per example.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    config.train.grad_accum_steps = 1
    names = [stage.name for stage in getattr(get_family(config), "stages", [])] or [None]  # None: no stages
    rows = []
    for name in names:
        if name is not None and "train_stage" in config:
            config.train_stage = name
        family = get_family(config)
        flops, temp_bytes, state = _compiled_step_costs(family, _abstract_batch(config, 1))
        stage = getattr(family, "train_stage", None)
        params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state.params))
        rows.append(
            {
                "stage": name or config.family,
                "params": params,
                "flops_per_example": flops,
                "activation_bytes_per_example": temp_bytes,
                "param_bytes": sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state.params)),
                "image_size": stage.image_size if stage else config.data.image_size,
                "train_crop": stage.train_crop if stage else config.data.image_size,
            }
        )
    return rows
