"""What an experiment config builds, in one step: the dataset, the frozen text encoder, the model family, the
training program (optimizer + step), the mesh and its logical-axis rules, the sharded train-state layout, and the
jitted train step over them. Shared by training, sampling, evaluation, describe and compile (which lowers the same
jitted train step for a TPU topology), so they can never disagree."""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from imagen_jax import activation_sharding, parallel
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
    family: Family,
    optimizer: Any,
    batch: dict[str, jax.Array],
    mesh: Mesh,
    rules: parallel.Rules = parallel.LOGICAL_AXIS_RULES,
) -> tuple[PyTree, PyTree]:
    """(ShapeDtypeStructs, NamedShardings) of the unboxed train state for `batch`'s shapes, nothing allocated: what
    init, restore and sampling start from (describe needs no mesh: it unboxes abstract_boxed_state)."""
    boxed = abstract_boxed_state(family, optimizer, batch)
    return nn.meta.unbox(boxed), parallel.logical_shardings(boxed, mesh, rules)


BATCH_NDIM = {"images": 4, "text_embeddings": 3, "text_mask": 2}  # a training batch's arrays and their ranks


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a config builds for a run. `workdir` is the run's top folder; `run_dir` is where this run's
    checkpoints and metrics live (workdir itself, or <workdir>/stages/<name> for a cascade stage)."""

    config: ml_collections.ConfigDict
    workdir: str
    run_dir: str
    dataset: ShapesDataset | None  # None for an experiment that is only compiled (modes/compile.py)
    text_encoder: PromptEncoder
    family: Family
    hparams: hparams_lib.TrainHparams
    program: steps.TrainProgram
    mesh: Mesh
    rules: parallel.Rules  # logical axis -> mesh axes, parameters' and activations' (mesh.logical_axis_rules)
    state_shapes: PyTree  # ShapeDtypeStructs of the unboxed TrainState
    state_shardings: PyTree  # NamedShardings, same structure

    def example_batch(self, batch_size: int) -> dict[str, jax.Array]:
        """Zeros with the shapes of a training batch (images, text_embeddings, text_mask)."""
        return example_batch(
            self.config.data.image_size, self.text_encoder.max_length, self.text_encoder.dim, batch_size
        )

    def batch_shardings(self) -> dict[str, jax.sharding.NamedSharding]:
        """A training batch's shardings: split over data x fsdp along the batch, the rest replicated."""
        return {key: parallel.batch_sharding(self.mesh, ndim) for key, ndim in BATCH_NDIM.items()}

    def jit_train_step(self, step_rng: jax.Array) -> Any:
        """The jitted train step (state, batch) -> (state, metrics) that training runs and mode=compile lowers for
        a TPU topology: sharded by the state and batch shardings, the state donated, activations constrained by
        the mesh's logical-axis rules while it is traced. The step's key is fold_in(step_rng, state.step), the
        step taken from the state, so it is the same on every process and after a resume."""

        def step(state: state_lib.TrainState, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
            with activation_sharding.use(self.mesh, self.rules):
                return self.program.step(state, batch, jax.random.fold_in(step_rng, state.step))

        return jax.jit(
            step,
            in_shardings=(self.state_shardings, self.batch_shardings()),
            out_shardings=(self.state_shardings, parallel.replicated(self.mesh)),
            donate_argnums=(0,),
        )

    @property
    def placement(self) -> tuple[Mesh, tuple[tuple[str, Any], ...]]:
        """(mesh, logical-axis rules): what sampling (sample.compiled_generate) traces its activations under."""
        return self.mesh, tuple(self.rules)

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
        workdir_lib.check_checkpoint_config(
            record, self.config, step, checkpointer.directory, workdir_lib.trained_stage(self.family)
        )
        return checkpointer.restore(step, abstract_like(self.state_shapes, self.state_shardings))


def assemble(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: ShapesDataset | None,
    text_encoder: PromptEncoder,
    mesh: Mesh,
) -> Experiment:
    """The experiment of `config` around an existing dataset, text encoder and mesh (a cascade's stages share
    them)."""
    family = get_family(config)
    hp = hparams_lib.from_config(config.train)
    program = steps.program(family, hp)
    rules = parallel.axis_rules(config.get("mesh"))
    batch = example_batch(config.data.image_size, text_encoder.max_length, text_encoder.dim, 1)
    shapes, shardings = abstract_state(family, program.optimizer, batch, mesh, rules)
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
        rules,
        shapes,
        shardings,
    )


def build(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
    """Every component of the experiment described by `config`, for a run in `workdir`."""
    dataset = pipeline.build_dataset(config)
    encoder = build_text_encoder(config.text, workdir, dataset.caption_corpus, *text_placement(config))
    # Embeddings precomputed by mode=encode_text are read instead of running T5.
    text_encoder = with_cache(encoder, text_cache_dir(config.text, workdir))
    return assemble(config, workdir, dataset, text_encoder, parallel.make_mesh(config.mesh))


def text_placement(config: ml_collections.ConfigDict) -> tuple[Mesh | None, parallel.Rules | None]:
    """(mesh, rules) for the text encoder: a pretrained T5 (text.pretrained_dir, e.g. T5-XXL's 4.7B parameters)
    is sharded over each process's own devices (parallel.host_mesh) by the config's rules; the small built-in
    encoder runs whole on one device, as it always has (its embeddings, and so every run, stay bit for bit)."""
    if not config.text.pretrained_dir:
        return None, None
    return parallel.host_mesh(config.mesh), parallel.axis_rules(config.get("mesh"))


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
