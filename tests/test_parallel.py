"""Mesh construction, logical-axis shardings, multi-process start-up settings, per-device memory, and equality of
sharded and unsharded training, checkpoints and samples."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs import quickstart
from imagen_jax import parallel
from imagen_jax.training import state as state_lib
from imagen_jax.training import steps
from imagen_jax.training.checkpoint import Checkpointer, abstract_like


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


def _tiny_wide_config() -> ml_collections.ConfigDict:
    config = quickstart.get_config("tiny")
    config.model.dim = 16  # wide enough for fsdp and tensor axes of size 2 to split every kernel
    return config


def _abstract_state(family, program, example):
    return jax.eval_shape(
        lambda r: state_lib.create(family.init(r, example), program.optimizer), jax.random.key(0)
    )


def _train(mesh, num_steps=3):
    family, program = steps.from_config(_tiny_wide_config())
    rng = np.random.default_rng(0)
    batches = [
        {
            "images": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
            "text_embeddings": rng.normal(size=(8, 6, 16)).astype(np.float32),
            "text_mask": np.arange(6)[None] < rng.integers(1, 7, (8, 1)),
        }
        for _ in range(num_steps)
    ]
    example = {k: jnp.asarray(v[:1]) for k, v in batches[0].items()}
    boxed = _abstract_state(family, program, example)
    shardings = parallel.logical_shardings(boxed, mesh)
    state = jax.jit(
        lambda r: nn.meta.unbox(state_lib.create(family.init(r, example), program.optimizer)),
        out_shardings=shardings,
    )(jax.random.key(0))
    batch_shardings = {k: parallel.batch_sharding(mesh, v.ndim) for k, v in batches[0].items()}
    step = jax.jit(
        program.step,
        in_shardings=(shardings, batch_shardings, parallel.replicated(mesh)),
        out_shardings=(shardings, parallel.replicated(mesh)),
    )
    losses = []
    for i, batch in enumerate(batches):
        state, metrics = step(state, parallel.global_batch(batch, mesh), jax.random.key(i))
        losses.append(float(metrics["loss"]))
    return losses, state


@pytest.fixture(scope="module")
def trained_on_eight():
    """(losses, state) after 3 steps on 8 devices with data=2, fsdp=2, tensor=2."""
    return _train(parallel.make_mesh(_mesh_config(2, 2, 2)))


def test_eight_devices_match_one_device(trained_on_eight):
    one = parallel.make_mesh(_mesh_config(1, 1, 1), devices=jax.devices()[:1])
    losses_1, state_1 = _train(one)
    losses_8, state_8 = trained_on_eight
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state_1.params), jax.tree.leaves(state_8.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    sharded = [leaf for leaf in jax.tree.leaves(state_8.params) if not leaf.sharding.is_fully_replicated]
    assert sharded, "nothing was sharded over fsdp/tensor"


def test_checkpoint_from_eight_devices_restores_on_one_and_samples_the_same(trained_on_eight, tmp_path):
    _, state_8 = trained_on_eight
    family, program = steps.from_config(_tiny_wide_config())
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=1)
    ckpt.save(3, state_8, {"data": {"next_step": 3}})
    ckpt.wait()
    one = parallel.make_mesh(_mesh_config(1, 1, 1), devices=jax.devices()[:1])
    example = {
        "images": jnp.zeros((1, 16, 16, 3)),
        "text_embeddings": jnp.zeros((1, 6, 16)),
        "text_mask": jnp.ones((1, 6), bool),
    }
    boxed = _abstract_state(family, program, example)
    state_1, _ = ckpt.restore(3, abstract_like(nn.meta.unbox(boxed), parallel.logical_shardings(boxed, one)))
    ckpt.close()
    assert all(leaf.sharding.device_set == {jax.devices()[0]} for leaf in jax.tree.leaves(state_1))
    rng = np.random.default_rng(1)
    embeddings = jnp.asarray(rng.normal(size=(4, 6, 16)), jnp.float32)
    mask = jnp.asarray(np.arange(6)[None] < np.array([[2], [6], [4], [1]]))
    generate = jax.jit(lambda p, e, m: family.generate(p, e, m, jax.random.key(9), steps=3, sampler="ddim"))
    samples_8 = np.asarray(generate(state_8.ema_params, embeddings, mask))
    samples_1 = np.asarray(generate(state_1.ema_params, embeddings, mask))
    assert samples_1.shape == (4, 16, 16, 3) and np.std(samples_1) > 0.05
    np.testing.assert_allclose(samples_1, samples_8, atol=1e-4)


def test_fsdp_eight_holds_at_most_a_sixth_of_params_and_optimizer_state_per_device():
    config = quickstart.get_config("tiny")
    family, program = steps.from_config(config)
    example = {
        "images": jnp.zeros((1, 16, 16, 3)),
        "text_embeddings": jnp.zeros((1, 6, config.text.t5.d_model)),
        "text_mask": jnp.ones((1, 6), bool),
    }
    boxed = _abstract_state(family, program, example)
    mesh = parallel.make_mesh(_mesh_config(1, 8, 1))
    state = jax.jit(
        lambda r: nn.meta.unbox(state_lib.create(family.init(r, example), program.optimizer)),
        out_shardings=parallel.logical_shardings(boxed, mesh),
    )(jax.random.key(0))
    tree = (state.params, state.opt_state)
    unsharded = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))
    held = parallel.bytes_per_device(tree)
    assert set(held) == set(jax.devices())
    assert max(held.values()) <= unsharded / 6, (max(held.values()), unsharded)
    assert sum(held.values()) >= unsharded  # every byte lives somewhere (replicated leaves count 8 times)
    replicated = parallel.bytes_per_device(jax.device_put(tree, jax.devices()[0]))
    assert replicated == {jax.devices()[0]: unsharded}


def test_per_device_batch_with_micro_steps():
    mesh = parallel.make_mesh(_mesh_config(4, 2, 1))
    assert parallel.per_device_batch(32, mesh) == 4
    assert parallel.per_device_batch(32, mesh, micro_steps=2) == 4  # two micro-batches of 2 per device
    with pytest.raises(parallel.MeshConfigError, match="grad_accum_steps = 32"):
        parallel.per_device_batch(16, mesh, micro_steps=4)


def test_initialize_distributed_settings(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(parallel, "_detected_cluster", lambda: None)
    settings = lambda **kw: ml_collections.ConfigDict(
        {"initialize": "auto", "coordinator_address": "", "num_processes": -1, "process_id": -1, **kw}
    )
    assert parallel.initialize_distributed(settings()) is False  # one process: nothing to join
    assert parallel.initialize_distributed(None) is False
    assert parallel.initialize_distributed(settings(initialize="never", num_processes=2)) is False
    with pytest.raises(parallel.DistributedInitError, match="choose one of auto, always, never"):
        parallel.initialize_distributed(settings(initialize="sometimes"))
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(parallel.DistributedInitError, match="JAX_NUM_PROCESSES='two'"):
        parallel.initialize_distributed(settings())
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    jax.devices()  # this process already runs JAX, so joining now fails; the error says what was given
    with pytest.raises(parallel.DistributedInitError, match="coordinator_address=localhost:1.*process_id=1"):
        parallel.initialize_distributed(
            settings(coordinator_address="localhost:1", num_processes=2, process_id=1)
        )


def test_each_process_must_hold_its_own_share_of_the_batch():
    """Process-local batches tile the global batch only if no batch row sits on two processes' devices."""
    blocks = lambda device: device.id // 4  # as on two hosts of 4 devices each
    mesh = parallel.make_mesh(_mesh_config(1, 4, 2))
    assert parallel.batch_rows_by_process(mesh, 8, blocks) == {0: {0, 1, 2, 3}, 1: {4, 5, 6, 7}}
    parallel.check_process_batches(mesh, 8, blocks)
    parallel.check_process_batches(parallel.make_mesh(_mesh_config(2, 2, 2)), 8, blocks)
    with pytest.raises(parallel.MeshConfigError, match="same batch rows on devices of different processes"):
        parallel.check_process_batches(
            parallel.make_mesh(_mesh_config(1, 1, 8)), 8, blocks
        )  # all rows on all
    interleaved = lambda device: device.id % 2  # each (data) shard's two devices on different processes
    with pytest.raises(parallel.MeshConfigError, match="mesh.data x mesh.fsdp a multiple"):
        parallel.check_process_batches(parallel.make_mesh(_mesh_config(4, 1, 2)), 8, interleaved)
    parallel.check_process_batches(parallel.make_mesh(_mesh_config(8, 1, 1)), 8, interleaved)
