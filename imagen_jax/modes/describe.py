"""mode=describe: every stage's parameters, FLOPs per training example and activation memory, in seconds and
without compiling or allocating anything, so a user can look before they launch.

- params / param_bytes: from jax.eval_shape of the train state.
- flops_per_example: XLA's cost analysis of the lowered (not compiled) train step at batch 1: forward, backward
  and the batch-independent optimizer and EMA update, which is small next to the model at a real batch size.
  tests/test_describe.py checks it against the compiled step's count on a small config.
- activation_bytes_per_example: what the backward pass keeps per example, the residuals of jax.vjp of every loss
  the step differentiates at batch 2 minus those at batch 1 (parameters and other batch-independent residuals
  cancel), with the config's remat and dtype; the largest over the step's losses (the GAN has two).
"""

import json
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from imagen_jax import experiment
from imagen_jax.models.registry import get_family
from imagen_jax.text.encoder import text_shape
from imagen_jax.training import hparams as hparams_lib
from imagen_jax.training import steps


def _nbytes(tree: Any) -> int:
    return sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def residual_bytes(loss, params: Any, batch: dict[str, Any]) -> int:
    """Bytes of the residuals jax.vjp keeps for the backward pass of loss(params, batch, rng), traced abstractly
    (the vjp function is a pytree whose leaves are its residuals)."""
    key = jax.random.key(0)
    vjp_fn = jax.eval_shape(lambda p, b: jax.vjp(lambda q: loss(q, b, key), p)[1], params, batch)
    return _nbytes(vjp_fn)


def _stage_costs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """One row for the trained stage of `config`."""
    family = get_family(config)
    program = steps.program(family, hparams_lib.from_config(config.train))
    length, width = text_shape(config.text)
    abstract_batch = lambda n: jax.eval_shape(
        lambda: experiment.example_batch(config.data.image_size, length, width, n)
    )
    batch = abstract_batch(1)
    shapes = nn.meta.unbox(experiment.abstract_boxed_state(family, program.optimizer, batch))
    cost = jax.jit(program.step).lower(shapes, batch, jax.random.key(0)).cost_analysis()
    flops = float((cost or {}).get("flops", 0.0))
    if not flops > 0:
        raise RuntimeError(
            "XLA's cost analysis reports no FLOPs for the lowered step; describe cannot count them."
        )
    activations = max(
        residual_bytes(loss, shapes.params, abstract_batch(2)) - residual_bytes(loss, shapes.params, batch)
        for loss in program.losses.values()
    )
    stage = family.train_stage if family.capabilities.staged else None
    return {
        "stage": stage.name if stage else config.family,
        "params": sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes.params)),
        "flops_per_example": flops,
        "activation_bytes_per_example": float(activations),
        "param_bytes": _nbytes(shapes.params),
        "image_size": stage.image_size if stage else config.data.image_size,
        "train_crop": stage.train_crop if stage else config.data.image_size,
    }


def describe(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """Per stage (a single-stage family has one): parameters, FLOPs per training example and activation memory
    (see the module docstring). The step is traced at batch 1 without gradient accumulation."""
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
