"""What an experiment config builds: the dataset, the frozen text encoder, the model family, the mesh, and the
sharded train-state layout. Shared by training, sampling and evaluation, so they can never disagree."""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from imagen_jax import parallel
from imagen_jax.data import pipeline
from imagen_jax.data.shapes import ShapesDataset
from imagen_jax.models.family import Family, get_family
from imagen_jax.text.encoder import PromptEncoder, build_text_encoder, text_cache_dir, with_cache
from imagen_jax.training import state as state_lib
from imagen_jax.training.checkpoint import Checkpointer, abstract_like

PyTree = Any


@dataclasses.dataclass
class Experiment:
    config: ml_collections.ConfigDict
    workdir: str
    dataset: ShapesDataset
    text_encoder: PromptEncoder
    family: Family
    mesh: Mesh
    state_shardings: PyTree  # NamedShardings, structure of the (unboxed) TrainState
    state_shapes: PyTree  # ShapeDtypeStructs, same structure

    def example_batch(self, batch_size: int) -> dict[str, jax.Array]:
        """Zeros with the shapes of a training batch (images, text_embeddings, text_mask)."""
        size = self.config.data.image_size
        return {
            "images": jnp.zeros((batch_size, size, size, 3), jnp.float32),
            "text_embeddings": jnp.zeros(
                (batch_size, self.text_encoder.max_length, self.text_encoder.dim), jnp.float32
            ),
            "text_mask": jnp.ones((batch_size, self.text_encoder.max_length), bool),
        }

    def init_state(self, rng: jax.Array) -> state_lib.TrainState:
        """A fresh train state, created directly with its shardings (never whole on one host).

        On CPU it is compiled at XLA's backend optimisation level 0: it runs once, and LLVM's passes over the
        threefry draws of every parameter dominate its compilation (the quickstart's: 85 s -> 24 s on a busy
        2-core CPU, 0.9 s to run). The random bits are integer arithmetic, the same at every level."""
        init = jax.jit(lambda r: nn.meta.unbox(self._boxed_state(r)), out_shardings=self.state_shardings)
        on_cpu = all(d.platform == "cpu" for d in self.mesh.devices.flat)
        options = {"xla_backend_optimization_level": 0} if on_cpu else None
        return init.lower(rng).compile(compiler_options=options)(rng)

    def _boxed_state(self, rng: jax.Array) -> state_lib.TrainState:
        """The train state with its parameters still wrapped in logical-partitioning boxes."""
        return state_lib.create(
            self.family.init(rng, self.example_batch(1)),
            self.family.make_optimizer(),
            getattr(self.family, "ema_of", None),  # e.g. the GAN averages only its generator
        )

    def checkpointer(self) -> Checkpointer:
        train = self.config.train
        return Checkpointer(
            os.path.join(self.workdir, "checkpoints"),
            keep=train.keep_checkpoints,
            keep_period=train.get("keep_every", 0),
        )

    def restore(self, checkpointer: Checkpointer, step: int) -> tuple[state_lib.TrainState, dict]:
        return checkpointer.restore(step, abstract_like(self.state_shapes, self.state_shardings))


def build(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
    """Every component of the experiment described by `config`, for a run in `workdir`."""
    dataset = pipeline.build_dataset(config)
    text_encoder = with_cache(  # embeddings precomputed by mode=encode_text are read instead of running T5
        build_text_encoder(config.text, workdir, corpus=dataset.caption_corpus),
        text_cache_dir(config.text, workdir),
    )
    family = get_family(config)
    mesh = parallel.make_mesh(config.mesh)
    stage_dir = getattr(family, "stage_dir", "")  # a cascade stage keeps its checkpoints and metrics apart
    run_dir = os.path.join(workdir, stage_dir) if stage_dir else workdir
    exp = Experiment(config, run_dir, dataset, text_encoder, family, mesh, None, None)
    boxed = jax.eval_shape(exp._boxed_state, jax.random.key(0))
    exp.state_shardings = parallel.logical_shardings(boxed, mesh)
    exp.state_shapes = nn.meta.unbox(boxed)
    return exp
