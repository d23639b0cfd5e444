"""The Imagen family's train step, the EMA, and checkpoint save/restore of the whole train state."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import quickstart
from imagen_jax import parallel
from imagen_jax.models.family import get_family
from imagen_jax.training import state as state_lib
from imagen_jax.training.checkpoint import Checkpointer, CheckpointError, abstract_like


@pytest.fixture(scope="module")
def setup():
    config = quickstart.get_config("tiny")
    config.train.learning_rate = 3e-3
    config.train.warmup_steps = 1
    family = get_family(config)
    rng = np.random.default_rng(0)
    batch = {
        "images": jnp.asarray(rng.uniform(-1, 1, (4, 16, 16, 3)), jnp.float32),
        "text_embeddings": jnp.asarray(rng.normal(size=(4, 6, 10)), jnp.float32),
        "text_mask": jnp.asarray(np.arange(6)[None] < np.array([[3], [6], [2], [5]])),
    }
    params = nn.meta.unbox(jax.jit(family.init)(jax.random.key(0), batch))
    state = state_lib.create(params, family.make_optimizer())
    return config, family, batch, state


def test_train_steps_reduce_the_loss_on_a_fixed_batch(setup):
    _, family, batch, state = setup
    step = jax.jit(family.train_step)
    keys = jax.random.split(jax.random.key(7), 8)
    eval_loss = jax.jit(lambda p: jnp.mean(jax.vmap(lambda k: family.loss(p, batch, k))(keys)))
    before = float(eval_loss(state.params))
    for i in range(30):
        state, metrics = step(state, batch, jax.random.key(100 + i))
        assert np.isfinite(float(metrics["loss"]))
    after = float(eval_loss(state.params))
    assert int(state.step) == 30
    assert after < 0.8 * before, (before, after)


def test_ema_update_closed_form():
    ema = {"w": jnp.array([1.0, 2.0])}
    params = {"w": jnp.array([3.0, -2.0])}
    out = state_lib.ema_update(ema, params, 0.9)
    np.testing.assert_allclose(np.asarray(out["w"]), [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2], rtol=1e-6)


def test_learning_rate_warmup():
    config = quickstart.get_config()
    schedule = state_lib.learning_rate_schedule(config.train)
    lr, warmup = config.train.learning_rate, config.train.warmup_steps
    assert float(schedule(0)) == 0.0
    assert float(schedule(warmup // 2)) == pytest.approx(lr * (warmup // 2) / warmup)
    assert float(schedule(warmup * 5)) == pytest.approx(lr)


def test_checkpoint_round_trip_and_other_mesh(setup, tmp_path):
    config, family, batch, state = setup
    state, _ = jax.jit(family.train_step)(state, batch, jax.random.key(1))
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    ckpt.save(1, state, {"data": {"next_step": 1}})
    ckpt.wait()
    assert ckpt.latest_step() == 1
    # Restore onto an 8-device fsdp mesh: the same numbers, now sharded.
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1}))
    boxed = jax.eval_shape(
        lambda r: state_lib.create(family.init(r, batch), family.make_optimizer()), jax.random.key(0)
    )
    shardings = parallel.logical_shardings(boxed, mesh)
    restored, record = ckpt.restore(1, abstract_like(nn.meta.unbox(boxed), shardings))
    assert record == {"data": {"next_step": 1}}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(len(leaf.sharding.device_set) == 8 for leaf in jax.tree.leaves(restored.params))
    ckpt.close()


def test_damaged_checkpoint_is_reported_not_loaded(setup, tmp_path):
    _, _, _, state = setup
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    ckpt.save(3, state, {"data": {"next_step": 3}})
    ckpt.wait()
    for path in (tmp_path / "ckpt" / "3" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"garbage")
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    with pytest.raises(CheckpointError, match="step 3.*Delete"):
        ckpt.restore(3, abstract_like(shapes, shardings))
    ckpt.close()
