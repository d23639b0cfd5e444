"""The Imagen family's train step (gradient accumulation, the non-finite guard), the EMA, checkpoint save/restore of
the whole train state (incomplete checkpoints, keep-every), and the trainer's FLOP accounting."""

import copy
import math
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import quickstart
from imagen_jax import parallel
from imagen_jax.errors import UserError
from imagen_jax.models import imagen
from imagen_jax.training import hparams, optimizers, steps, trainer
from imagen_jax.training import state as state_lib
from imagen_jax.training.checkpoint import COMMIT_FILE, Checkpointer, CheckpointError, abstract_like
from imagen_jax.training.steps import update


@pytest.fixture(scope="module")
def setup():
    config = quickstart.get_config("tiny")
    config.train.learning_rate = 3e-3
    config.train.warmup_steps = 1
    family, program = steps.from_config(config)
    rng = np.random.default_rng(0)
    batch = {
        # flat colours: x0 is predictable from a noisy image, so the loss can fall far below its initial value
        "images": jnp.asarray(np.broadcast_to(rng.uniform(-1, 1, (4, 1, 1, 3)), (4, 16, 16, 3)), jnp.float32),
        "text_embeddings": jnp.asarray(rng.normal(size=(4, 6, 10)), jnp.float32),
        "text_mask": jnp.asarray(np.arange(6)[None] < np.array([[3], [6], [2], [5]])),
    }
    params = nn.meta.unbox(jax.jit(family.init)(jax.random.key(0), batch))
    state = state_lib.create(params, program.optimizer)
    return config, family, batch, state, program


@pytest.fixture(scope="module")
def jitted_step(setup):
    """The family's train step, jitted once for the module (batch of 4)."""
    return jax.jit(setup[4].step)


def test_train_steps_reduce_the_loss_on_a_fixed_batch(setup, jitted_step):
    _, family, batch, state, _ = setup
    step = jitted_step
    keys = jax.random.split(jax.random.key(7), 8)
    eval_loss = jax.jit(lambda p: jnp.mean(jax.vmap(lambda k: family.loss(p, batch, k))(keys)))
    before = float(eval_loss(state.params))
    for i in range(30):
        state, metrics = step(state, batch, jax.random.key(100 + i))
        assert np.isfinite(float(metrics["loss"]))
    after = float(eval_loss(state.params))
    assert int(state.step) == 30
    assert after < 0.8 * before, (before, after)


def test_offset_noise_reaches_the_loss_and_old_configs_train_without_it(setup):
    config, family, batch, state, _ = setup
    key = jax.random.key(5)
    offset_config = copy.deepcopy(config)
    offset_config.diffusion.offset_noise = 0.3
    with_offset = float(steps.from_config(offset_config)[0].loss(state.params, batch, key))
    assert with_offset != pytest.approx(float(family.loss(state.params, batch, key)), rel=1e-3)
    old_section = copy.deepcopy(config.diffusion)  # a config.json written before the option
    del old_section["offset_noise"]
    assert imagen._offset_noise(old_section, "stages.base") == 0.0


def test_ema_update_closed_form():
    ema = {"w": jnp.array([1.0, 2.0])}
    params = {"w": jnp.array([3.0, -2.0])}
    out = update.ema_update(ema, params, 0.9)
    np.testing.assert_allclose(np.asarray(out["w"]), [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2], rtol=1e-6)


def test_learning_rate_warmup():
    config = quickstart.get_config()
    schedule = optimizers.lr_schedule(hparams.from_config(config.train), config.train.learning_rate)
    lr, warmup = config.train.learning_rate, config.train.warmup_steps
    assert config.train.lr_schedule == "constant"
    assert float(schedule(0)) == 0.0
    assert float(schedule(warmup // 2)) == pytest.approx(lr * (warmup // 2) / warmup)
    assert float(schedule(warmup * 5)) == pytest.approx(lr)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_learning_rate_decays_to_its_final_fraction_at_train_steps(kind):
    """Warm-up 100 steps to 2e-3, then down to 10% at step 1100: closed forms at a quarter, half and the end."""
    config = quickstart.get_config()
    config.train.update(
        steps=1100, warmup_steps=100, learning_rate=2e-3, lr_schedule=kind, lr_final_fraction=0.1
    )
    peak, final = 2e-3, 2e-4
    schedule = optimizers.lr_schedule(hparams.from_config(config.train), peak)
    assert float(schedule(50)) == pytest.approx(peak / 2)
    assert float(schedule(100)) == pytest.approx(peak)
    for done in (0.25, 0.5, 1.0):
        shape = 0.5 * (1 + math.cos(math.pi * done)) if kind == "cosine" else 1 - done
        expected = final + (peak - final) * shape
        assert float(schedule(100 + int(1000 * done))) == pytest.approx(expected, rel=1e-5)
    assert float(schedule(5000)) == pytest.approx(final, rel=1e-5)  # held after train.steps
    # the GAN's discriminator counts d_steps updates per train step: its schedule runs in train steps
    halved = optimizers.lr_schedule(hparams.from_config(config.train), peak, every=2)
    assert float(halved(2 * 600)) == pytest.approx(float(schedule(600)))


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (dict(lr_schedule="step"), "is not a schedule"),
        (dict(lr_schedule="cosine", lr_final_fraction=1.5), "must lie in"),
        (dict(lr_schedule="cosine", steps=50, warmup_steps=100), "shorten the warm-up"),
    ],
)
def test_a_bad_learning_rate_schedule_is_refused_by_name(update, message):
    config = quickstart.get_config()
    config.train.update(update)
    with pytest.raises(UserError, match=message):
        hparams.from_config(config.train)


def test_a_config_saved_before_schedules_trains_at_a_constant_rate():
    config = quickstart.get_config()
    del config.train["lr_schedule"], config.train["lr_final_fraction"]
    hp = hparams.from_config(config.train)
    assert (hp.lr_schedule, hp.lr_final_fraction) == ("constant", 0.0)


def test_checkpoint_round_trip_and_other_mesh(setup, tmp_path):
    config, family, batch, state, program = setup
    state, _ = jax.jit(program.step)(state, batch, jax.random.key(1))
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    ckpt.save(1, state, {"data": {"next_step": 1}})
    ckpt.wait()
    assert ckpt.latest_step() == 1
    # Restore onto an 8-device fsdp mesh: the same numbers, now sharded.
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1}))
    boxed = jax.eval_shape(
        lambda r: state_lib.create(family.init(r, batch), program.optimizer), jax.random.key(0)
    )
    shardings = parallel.logical_shardings(boxed, mesh)
    restored, record = ckpt.restore(1, abstract_like(nn.meta.unbox(boxed), shardings))
    assert record == {"data": {"next_step": 1}}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(len(leaf.sharding.device_set) == 8 for leaf in jax.tree.leaves(restored.params))
    ckpt.close()


def test_damaged_checkpoint_is_reported_not_loaded(setup, tmp_path):
    _, _, _, state, _ = setup
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


def _tree_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_nonfinite_batch_leaves_the_state_unchanged_and_is_counted(setup, jitted_step):
    _, _, batch, state, _ = setup
    state, metrics = jitted_step(state, batch, jax.random.key(1))  # a normal step first: Adam has moments
    assert float(metrics["nonfinite"]) == 0.0
    bad = dict(batch, images=batch["images"].at[0, 0, 0, 0].set(jnp.nan))
    after, metrics = jitted_step(state, bad, jax.random.key(2))
    assert float(metrics["nonfinite"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    assert int(after.step) == int(state.step) + 1  # the step (data position) advances ...
    assert _tree_equal(after.params, state.params)  # ... nothing else does
    assert _tree_equal(after.opt_state, state.opt_state)
    assert _tree_equal(after.ema_params, state.ema_params)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(after))


def test_all_finite_flags_nan_inf_and_overflow_in_any_leaf():
    tree = {"a": jnp.ones((3, 4)), "b": [jnp.zeros(5), jnp.full((2,), -7.0, jnp.bfloat16)]}
    assert bool(update.all_finite(tree, jnp.float32(2.0)))
    for bad in (np.nan, np.inf, -np.inf, 1e20):  # 1e20: its square overflows float32, a diverged update
        broken = jax.tree.map(lambda x: x, tree)
        broken["b"][0] = broken["b"][0].at[3].set(bad)
        assert not bool(update.all_finite(broken)), bad
    assert not bool(update.all_finite(tree, jnp.float32(np.nan)))


def test_nonfinite_guard_compiles_to_a_program_linear_in_the_number_of_leaves():
    """The guard selects every leaf on one scalar: the compiled program grows like the leaves, not their square (a
    chain of per-leaf `and`s was copied into every leaf's select fusion: 148k instructions for the quickstart)."""

    def instructions(num_leaves: int) -> int:
        params = {f"p{i}": jnp.full((8,), float(i)) for i in range(num_leaves)}

        def guarded(params, grads):
            new = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
            finite = update.all_finite(grads)
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, params)

        text = jax.jit(guarded).lower(params, params).compile().as_text()
        return sum(1 for line in text.splitlines() if " = " in line)

    small, large = instructions(32), instructions(128)
    assert large < 6 * small, (small, large)  # 4x the leaves: ~4x the instructions (a square would be ~16x)


def test_accumulate_gradients_closed_form_and_rng_per_micro_batch():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    y = jnp.arange(8.0)
    w = jnp.array([0.5, -1.0, 2.0])

    def loss(params, batch, rng):  # mean squared error, plus a term that only the rng decides
        err = batch["x"] @ params - batch["y"]
        return jnp.mean(err**2) + jax.random.uniform(rng)

    rng = jax.random.key(3)
    with_aux = lambda params, batch, rng: (loss(params, batch, rng), {"rng_term": jax.random.uniform(rng)})
    (value, aux), grad = update.value_and_grad(with_aux, w, {"x": x, "y": y}, rng, 2)
    np.testing.assert_allclose(grad, 2 * x.T @ (x @ w - y) / 8, rtol=1e-5)  # d/dw mean(err^2)
    micro_rng = [float(jax.random.uniform(jax.random.fold_in(rng, j))) for j in range(2)]
    np.testing.assert_allclose(value, jnp.mean((x @ w - y) ** 2) + np.mean(micro_rng), rtol=1e-5)
    np.testing.assert_allclose(aux["rng_term"], np.mean(micro_rng), rtol=1e-6)  # aux averaged like the loss


@pytest.mark.slow  # deselected by default (CI time); run with: python -m pytest -m slow
def test_two_micro_steps_equal_one_big_step(setup, jitted_step):
    """With a loss that does not depend on the rng (a fixed noise level and target per example), accumulating two
    micro-batches of 2 gives the update of one batch of 4: loss, gradient norm, parameters and optimizer state."""
    config, family, batch, state, _ = setup
    # one real step first: the schedule follows the optimizer's own count, and its step 0 has learning rate 0
    state, _ = jitted_step(state, batch, jax.random.key(4))

    def deterministic_loss(params, batch, rng):
        images = batch["images"]
        log_snr = 3.0 * jnp.mean(images, axis=(1, 2, 3))  # per example, from its own pixels
        pred = family.unet.apply(
            {"params": params}, 0.7 * images, log_snr, batch["text_embeddings"], batch["text_mask"]
        )
        return jnp.mean((pred - images) ** 2)

    results = []
    for micro_steps in (1, 2):
        accum_config = copy.deepcopy(config)
        accum_config.train.grad_accum_steps = micro_steps
        accum_family, accum_program = steps.from_config(accum_config)
        accum_family.loss = deterministic_loss  # the step looks the loss up when it is traced
        results.append(jax.jit(accum_program.step)(state, batch, jax.random.key(5)))
    (one, m1), (two, m2) = results
    # float32 sums in another order (2.9e-5 relative at XLA's optimisation level 0); a wrong average is O(1)
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(float(m2[key]), float(m1[key]), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
    assert not _tree_equal(one.params, state.params)  # the step did move the parameters


def test_incomplete_checkpoint_is_ignored_then_set_aside(setup, tmp_path):
    _, _, _, state, _ = setup
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(str(directory), keep=3)
    ckpt.save(2, state, {"data": {"next_step": 2}})
    ckpt.close()
    # A copy cut short: the '4' folder has everything but the commit file Orbax writes last.
    shutil.copytree(directory / "2", directory / "4")
    os.remove(directory / "4" / COMMIT_FILE)
    ckpt = Checkpointer(str(directory), keep=3)
    assert ckpt.all_steps() == [2] and ckpt.latest_step() == 2
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    with pytest.raises(CheckpointError, match="step 4.*incomplete"):
        ckpt.restore(4, abstract_like(shapes, shardings))
    moved = ckpt.set_aside_incomplete()
    assert moved == [str(directory / "4.incomplete")]
    assert sorted(os.listdir(directory)) == ["2", "4.incomplete"]
    ckpt.save(4, state, {"data": {"next_step": 4}})  # the step can be saved again
    ckpt.close()
    ckpt = Checkpointer(str(directory), keep=3)
    assert ckpt.all_steps() == [2, 4]
    ckpt.close()


def test_keep_every_keeps_multiples_beyond_the_last_n(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=1, keep_period=4)
    for step in (2, 4, 6, 8, 10):
        ckpt.save(step, {"w": jnp.full((3,), float(step))}, {"data": {"next_step": step}})
    ckpt.close()
    assert sorted(int(name) for name in os.listdir(tmp_path / "ckpt")) == [4, 8, 10]


def test_flops_from_the_compiled_step_and_peak_table():
    m, k, n = 64, 32, 16
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert trainer.compiled_flops(compiled) == pytest.approx(2 * m * k * n, rel=0.05)
    assert trainer.peak_flops_per_device(0.0, "TPU v4") == 275e12
    assert trainer.peak_flops_per_device(0.0, "TPU v5 lite") == 197e12  # v5e, not v5p
    assert trainer.peak_flops_per_device(0.0, "NVIDIA H100 PCIe") == 756e12
    assert trainer.peak_flops_per_device(0.0, "NVIDIA H100 80GB HBM3") == 989e12
    assert trainer.peak_flops_per_device(0.0, "cpu") is None
    assert trainer.peak_flops_per_device(5e12, "cpu") == 5e12
