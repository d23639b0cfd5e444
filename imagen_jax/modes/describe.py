"""mode=describe: every stage's parameters, FLOPs per training example and activation memory, from XLA's compiled
train step on abstract inputs (jax.eval_shape / lower / compile; nothing is allocated or trained)."""

import json
from typing import Any

import jax
import ml_collections
import numpy as np

from imagen_jax import experiment, parallel
from imagen_jax.models.registry import get_family
from imagen_jax.text.encoder import text_shape
from imagen_jax.training import hparams as hparams_lib
from imagen_jax.training import steps
from imagen_jax.training.trainer import compiled_flops


def _stage_costs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """One row: the train step of `config`'s trained stage compiled at batch 1 on abstract inputs."""
    family = get_family(config)
    program = steps.program(family, hparams_lib.from_config(config.train))
    length, width = text_shape(config.text)
    batch = jax.eval_shape(lambda: experiment.example_batch(config.data.image_size, length, width, 1))
    mesh = parallel.make_mesh(config.mesh)
    shapes, _ = experiment.abstract_state(family, program.optimizer, batch, mesh)
    compiled = jax.jit(program.step).lower(shapes, batch, jax.random.key(0)).compile()
    flops = compiled_flops(compiled)
    if flops is None:
        raise RuntimeError(
            "XLA's cost analysis reports no FLOPs on this backend; describe cannot count them."
        )
    memory = compiled.memory_analysis()
    stage = family.train_stage if family.capabilities.staged else None
    leaves = jax.tree.leaves(shapes.params)
    return {
        "stage": stage.name if stage else config.family,
        "params": sum(int(np.prod(leaf.shape)) for leaf in leaves),
        "flops_per_example": flops,
        "activation_bytes_per_example": float(getattr(memory, "temp_size_in_bytes", 0) or 0),
        "param_bytes": sum(leaf.size * leaf.dtype.itemsize for leaf in leaves),
        "image_size": stage.image_size if stage else config.data.image_size,
        "train_crop": stage.train_crop if stage else config.data.image_size,
    }


def describe(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """Per stage (a single-stage family has one): parameters, FLOPs per training example and activation memory.

    The step is compiled once per stage at batch 1 (no gradient accumulation): flops_per_example is its FLOP
    count (forward, backward, and the batch-independent optimizer + EMA update, which is small next to the model
    at a real batch size); activation_bytes_per_example is XLA's temporary-buffer size for that step (the
    activations kept for the backward pass, plus gradients): an estimate of memory per example.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    config.train.grad_accum_steps = 1
    family = get_family(config)
    names = [stage.name for stage in family.stages] if family.capabilities.staged else [None]
    rows = []
    for name in names:
        if name is not None:
            config.train_stage = name
        rows.append(_stage_costs(config))
    return rows


def run(config: ml_collections.ConfigDict, workdir: str, prompts: list[str]) -> None:
    for row in describe(config):
        print(json.dumps(row), flush=True)
