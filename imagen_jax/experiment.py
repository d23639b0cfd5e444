"""What an experiment config builds, in one step: the dataset, the frozen text encoder, the model family, the
training program (optimizer + step), the mesh, and the sharded train-state layout. Shared by training, sampling,
evaluation and describe, so they can never disagree."""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from imagen_jax import parallel
from imagen_jax import workdir as workdir_lib
from imagen_jax.data import pipeline
from imagen_jax.data.shapes import ShapesDataset
from imagen_jax.models.family import Family
from imagen_jax.models.registry import get_family
from imagen_jax.text.encoder import PromptEncoder, build_text_encoder, text_cache_dir, with_cache
from imagen_jax.training import hparams as hparams_lib
from imagen_jax.training import state as state_lib
from imagen_jax.training import steps
from imagen_jax.training.checkpoint import Checkpointer, CheckpointError, abstract_like

PyTree = Any


def example_batch(image_size: int, text_length: int, text_dim: int, batch_size: int) -> dict[str, jax.Array]:
    """Zeros with the shapes of a training batch: images [B,S,S,3], text_embeddings [B,L,D], text_mask [B,L]."""
    return {
        "images": jnp.zeros((batch_size, image_size, image_size, 3), jnp.float32),
        "text_embeddings": jnp.zeros((batch_size, text_length, text_dim), jnp.float32),
        "text_mask": jnp.ones((batch_size, text_length), bool),
    }


def boxed_state(
    family: Family, optimizer: Any, batch: dict[str, jax.Array], rng: jax.Array
) -> state_lib.TrainState:
    """A fresh train state for `batch`'s shapes, its parameters still in their logical-partitioning boxes."""
    return state_lib.create(family.init(rng, batch), optimizer, family.ema_of)


def abstract_boxed_state(family: Family, optimizer: Any, batch: dict[str, jax.Array]) -> state_lib.TrainState:
    """boxed_state's ShapeDtypeStructs for `batch`'s shapes (arrays or ShapeDtypeStructs), nothing allocated."""
    return jax.eval_shape(lambda rng, b: boxed_state(family, optimizer, b, rng), jax.random.key(0), batch)


def abstract_state(
    family: Family, optimizer: Any, batch: dict[str, jax.Array], mesh: Mesh
) -> tuple[PyTree, PyTree]:
    """(ShapeDtypeStructs, NamedShardings) of the unboxed train state for `batch`'s shapes, nothing allocated: what
    init, restore and sampling start from (describe needs no mesh: it unboxes abstract_boxed_state)."""
    boxed = abstract_boxed_state(family, optimizer, batch)
    return nn.meta.unbox(boxed), parallel.logical_shardings(boxed, mesh)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a config builds for a run. `workdir` is the run's top folder; `run_dir` is where this run's
    checkpoints and metrics live (workdir itself, or <workdir>/stages/<name> for a cascade stage)."""

    config: ml_collections.ConfigDict
    workdir: str
    run_dir: str
    dataset: ShapesDataset
    text_encoder: PromptEncoder
    family: Family
    hparams: hparams_lib.TrainHparams
    program: steps.TrainProgram
    mesh: Mesh
    state_shapes: PyTree  # ShapeDtypeStructs of the unboxed TrainState
    state_shardings: PyTree  # NamedShardings, same structure

    def example_batch(self, batch_size: int) -> dict[str, jax.Array]:
        """Zeros with the shapes of a training batch (images, text_embeddings, text_mask)."""
        return example_batch(
            self.config.data.image_size, self.text_encoder.max_length, self.text_encoder.dim, batch_size
        )

    def init_state(self, rng: jax.Array) -> state_lib.TrainState:
        """A fresh train state, created directly with its shardings (never whole on one host).

        On CPU it is compiled at XLA's backend optimisation level 0: it runs once, and LLVM's passes over the
        threefry draws of every parameter dominate its compilation (the quickstart's: 85 s -> 24 s on a busy
        2-core CPU, 0.9 s to run). The random bits are integer arithmetic, the same at every level."""
        batch = self.example_batch(1)
        init = jax.jit(
            lambda r: nn.meta.unbox(boxed_state(self.family, self.program.optimizer, batch, r)),
            out_shardings=self.state_shardings,
        )
        on_cpu = all(d.platform == "cpu" for d in self.mesh.devices.flat)
        options = {"xla_backend_optimization_level": 0} if on_cpu else None
        return init.lower(rng).compile(compiler_options=options)(rng)

    def checkpointer(self) -> Checkpointer:
        train = self.config.train
        return Checkpointer(
            os.path.join(self.run_dir, "checkpoints"),
            keep=train.keep_checkpoints,
            keep_period=train.get("keep_every", 0),
        )

    def restore(self, checkpointer: Checkpointer, step: int) -> tuple[state_lib.TrainState, dict]:
        """(state, the JSON record saved with it) of checkpoint `step`, placed with this run's shardings. A
        checkpoint trained with another experiment (its record's config) is refused first, naming the keys, so
        that an intact checkpoint is never reported as damaged."""
        record = checkpointer.read_record(step)
        workdir_lib.check_checkpoint_config(record, self.config, step, checkpointer.directory)
        return checkpointer.restore(step, abstract_like(self.state_shapes, self.state_shardings))


def assemble(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: ShapesDataset,
    text_encoder: PromptEncoder,
    mesh: Mesh,
) -> Experiment:
    """The experiment of `config` around an existing dataset, text encoder and mesh (a cascade's stages share
    them)."""
    family = get_family(config)
    hp = hparams_lib.from_config(config.train)
    program = steps.program(family, hp)
    batch = example_batch(config.data.image_size, text_encoder.max_length, text_encoder.dim, 1)
    shapes, shardings = abstract_state(family, program.optimizer, batch, mesh)
    run_dir = os.path.join(workdir, workdir_lib.stage_dir(family))
    return Experiment(
        config,
        workdir,
        run_dir.rstrip(os.sep),
        dataset,
        text_encoder,
        family,
        hp,
        program,
        mesh,
        shapes,
        shardings,
    )


def build(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
    """Every component of the experiment described by `config`, for a run in `workdir`."""
    dataset = pipeline.build_dataset(config)
    text_encoder = with_cache(  # embeddings precomputed by mode=encode_text are read instead of running T5
        build_text_encoder(config.text, workdir, corpus=dataset.caption_corpus),
        text_cache_dir(config.text, workdir),
    )
    return assemble(config, workdir, dataset, text_encoder, parallel.make_mesh(config.mesh))


class NoCheckpointError(CheckpointError):
    """The run has no checkpoint to restore (it was never trained)."""


def restore_latest(exp: Experiment, ema: bool = True) -> tuple[PyTree, int]:
    """(the EMA parameters, or with ema=False the whole train state; step) of the run's latest complete
    checkpoint; NoCheckpointError naming the folder when there is none."""
    checkpointer = exp.checkpointer()
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise NoCheckpointError(f"{exp.run_dir} has no checkpoint: train it first.")
        state, _ = exp.restore(checkpointer, step)
    finally:
        checkpointer.close()
    return (state.ema_params if ema else state), step
