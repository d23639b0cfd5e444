"""Mesh construction, logical-axis shardings, and equality of sharded and unsharded training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs import quickstart
from imagen_jax import parallel
from imagen_jax.models.family import get_family
from imagen_jax.training import state as state_lib


def _mesh_config(data, fsdp, tensor):
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def test_mesh_shape_fills_and_validates():
    assert parallel.mesh_shape(_mesh_config(-1, 1, 1), 8) == (8, 1, 1)
    assert parallel.mesh_shape(_mesh_config(2, -1, 2), 8) == (2, 2, 2)
    assert parallel.mesh_shape(_mesh_config(1, 1, 1), 1) == (1, 1, 1)
    with pytest.raises(parallel.MeshConfigError, match="At most one"):
        parallel.mesh_shape(_mesh_config(-1, -1, 1), 8)
    with pytest.raises(parallel.MeshConfigError, match="needs 4 devices"):
        parallel.mesh_shape(_mesh_config(2, 2, 1), 8)
    with pytest.raises(parallel.MeshConfigError, match="cannot be split"):
        parallel.mesh_shape(_mesh_config(-1, 3, 1), 8)


def test_logical_rules_shard_divisible_dimensions_only():
    mesh = parallel.make_mesh(_mesh_config(2, 2, 2))
    boxed = {
        "kernel": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((8, 6), jnp.float32), ("embed", "mlp")),
        "odd": nn.LogicallyPartitioned(
            jax.ShapeDtypeStruct((3, 3, 5, 3), jnp.float32), (None, None, "conv_in", "conv_out")
        ),
        "plain": jax.ShapeDtypeStruct((4,), jnp.float32),
    }
    shardings = parallel.logical_shardings(boxed, mesh)
    assert shardings["kernel"].spec == PartitionSpec("fsdp", "tensor")
    assert shardings["odd"].spec == PartitionSpec(None, None, None, None)  # 5 and 3 don't split in two
    assert shardings["plain"].is_fully_replicated


def _train(mesh, steps=3):
    config = quickstart.get_config("tiny")
    config.model.dim = 16  # wide enough for fsdp and tensor axes of size 2 to split every kernel
    family = get_family(config)
    rng = np.random.default_rng(0)
    batches = [
        {
            "images": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
            "text_embeddings": rng.normal(size=(8, 6, 16)).astype(np.float32),
            "text_mask": np.arange(6)[None] < rng.integers(1, 7, (8, 1)),
        }
        for _ in range(steps)
    ]
    example = {k: jnp.asarray(v[:1]) for k, v in batches[0].items()}
    boxed = jax.eval_shape(
        lambda r: state_lib.create(family.init(r, example), family.make_optimizer()), jax.random.key(0)
    )
    shardings = parallel.logical_shardings(boxed, mesh)
    state = jax.jit(
        lambda r: nn.meta.unbox(state_lib.create(family.init(r, example), family.make_optimizer())),
        out_shardings=shardings,
    )(jax.random.key(0))
    batch_shardings = {k: parallel.batch_sharding(mesh, v.ndim) for k, v in batches[0].items()}
    step = jax.jit(
        family.train_step,
        in_shardings=(shardings, batch_shardings, parallel.replicated(mesh)),
        out_shardings=(shardings, parallel.replicated(mesh)),
    )
    losses = []
    for i, batch in enumerate(batches):
        state, metrics = step(state, parallel.global_batch(batch, mesh), jax.random.key(i))
        losses.append(float(metrics["loss"]))
    return losses, state


def test_eight_devices_match_one_device():
    one = parallel.make_mesh(_mesh_config(1, 1, 1), devices=jax.devices()[:1])
    eight = parallel.make_mesh(_mesh_config(2, 2, 2))
    losses_1, state_1 = _train(one)
    losses_8, state_8 = _train(eight)
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state_1.params), jax.tree.leaves(state_8.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    sharded = [leaf for leaf in jax.tree.leaves(state_8.params) if not leaf.sharding.is_fully_replicated]
    assert sharded, "nothing was sharded over fsdp/tensor"
