"""train.optimizer: Adafactor through optimizers.single_network equals optax's own chain; its factored statistics get
shardings of their own rank on an 8-device fsdp mesh, where its update (and, marked slow, a whole train step) matches
the unsharded one and its state survives a checkpoint; the paper's base model holds far less optimizer state with
it than with Adam (a closed form); a name that is not an optimizer (or one a family does not take) is refused."""

import copy
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from configs import gan_shapes, imagen_base64, quickstart, vae_shapes
from imagen_jax import parallel, workdir
from imagen_jax.models.registry import get_family
from imagen_jax.training import hparams, optimizers, steps
from imagen_jax.training import state as state_lib
from imagen_jax.training.checkpoint import Checkpointer, abstract_like


def _train_config(**fields) -> ml_collections.ConfigDict:
    base = dict(optimizer="adafactor", learning_rate=1e-2, warmup_steps=2, grad_clip=1.0, ema_decay=0.999)
    return ml_collections.ConfigDict({**base, **fields})


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


# factored: (128, 256), the tie (128, 128), 4-D and 3-D kernels; not factored: a bias, a small matrix
SHAPES = {
    "wide": (128, 256),
    "square": (128, 128),
    "conv": (3, 3, 128, 256),
    "stack": (4, 200, 130),
    "bias": (130,),
    "small": (8, 16),
}
NAMES = {
    "wide": ("embed", "mlp"),
    "square": ("embed", "mlp"),
    "conv": (None, None, "conv_in", "conv_out"),
    "stack": (None, "embed", "mlp"),
    "bias": ("mlp",),
    "small": ("embed", "mlp"),
}


def test_adafactor_equals_a_hand_built_optax_chain_and_boxes_its_statistics_by_rank():
    rng = np.random.default_rng(0)
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
    lr, warmup = 1e-2, 2
    by_hand = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adafactor(
            lambda count: lr * jnp.minimum(count / warmup, 1.0),
            min_dim_size_to_factor=128,
            decay_rate=0.8,
            clipping_threshold=1.0,
            momentum=None,
            multiply_by_parameter_scale=False,
            eps=1e-30,
        ),
    )
    ours = optimizers.single_network(
        hparams.from_config(_train_config(learning_rate=lr, warmup_steps=warmup))
    )
    p_ours, p_hand = params, params
    s_ours, s_hand = ours.init(params), by_hand.init(params)
    grads = [{k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()} for _ in range(3)]
    update_ours, update_hand = jax.jit(ours.update), jax.jit(by_hand.update)
    for step, g in enumerate(grads):
        u_ours, s_ours = update_ours(g, s_ours, p_ours)
        u_hand, s_hand = update_hand(g, s_hand, p_hand)
        p_ours, p_hand = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_hand, u_hand)
        if step == 0:  # the first decay is 1 - 1^-0.8 = 0: v_row = mean(g^2) over the dropped axis d0
            clipped = np.asarray(g["square"]) / float(optax.global_norm(g))  # the global norm is far above 1
            factored = s_ours[1][0]
            np.testing.assert_allclose(factored.v_row["square"], np.mean(clipped**2, axis=1), rtol=1e-5)
            np.testing.assert_allclose(factored.v_col["square"], np.mean(clipped**2, axis=0), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), p_ours, p_hand)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-30), s_ours, s_hand)
    assert not np.allclose(p_ours["conv"], params["conv"])  # the steps did move the parameters

    boxed = {k: nn.LogicallyPartitioned(v, NAMES[k]) for k, v in params.items()}
    boxed_state = jax.eval_shape(ours.init, boxed)
    factored = boxed_state[1][0]
    assert isinstance(factored, optax.FactoredState)
    names = lambda tree: {k: v.names if _is_box(v) else v.shape for k, v in tree.items()}
    # v_row drops the largest dimension (the later one of a tie), v_col the second largest; placeholders unboxed
    assert names(factored.v_row) == {
        "wide": ("embed",),
        "square": ("embed",),
        "conv": (None, None, "conv_in"),
        "stack": (None, "mlp"),  # 200 is the largest dimension of (4, 200, 130)
        "bias": (1,),
        "small": (1,),
    }
    assert names(factored.v_col) == {
        "wide": ("mlp",),
        "square": ("mlp",),
        "conv": (None, None, "conv_out"),
        "stack": (None, "embed"),
        "bias": (1,),
        "small": (1,),
    }
    assert names(factored.v) == {"wide": (1,), "square": (1,), "conv": (1,), "stack": (1,)} | {
        "bias": ("mlp",),
        "small": ("embed", "mlp"),
    }
    unboxed = jax.tree.map(lambda x: (x.shape, x.dtype), nn.meta.unbox(boxed_state))
    assert unboxed == jax.tree.map(lambda x: (x.shape, x.dtype), s_hand)  # the same state, only boxed right


@pytest.fixture(scope="module")
def sharded_setup():
    """A one-level tiny U-Net (quickstart:tiny without attention, 8x8 images) with 128-wide conditioning MLPs
    (factored) under Adafactor, a batch of 8, its boxed abstract train state, an 8-device fsdp mesh, the state
    shardings, and a state built without compiling an init: random parameters, optax's own initial state."""
    config = quickstart.get_config("tiny")
    config.model.update(dict(channel_mult=(1,), num_res_blocks=(1,), attn_levels=(), cross_attn_levels=()))
    config.model.cond_dim = 128  # time / pooled-text MLP kernels of 128 x 128: factored
    config.data.image_size = 8
    config.train.optimizer = "adafactor"
    config.train.learning_rate = 1e-2
    family, program = steps.from_config(config)
    rng = np.random.default_rng(1)
    batch = {
        "images": jnp.asarray(rng.uniform(-1, 1, (8, 8, 8, 3)), jnp.float32),
        "text_embeddings": jnp.asarray(rng.normal(size=(8, 6, config.text.t5.d_model)), jnp.float32),
        "text_mask": jnp.asarray(np.arange(6)[None] < rng.integers(1, 7, (8, 1))),
    }
    boxed = jax.eval_shape(
        lambda r: state_lib.create(family.init(r, batch), program.optimizer), jax.random.key(0)
    )
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=8, tensor=1)))
    shardings = parallel.logical_shardings(boxed, mesh)
    shapes = nn.meta.unbox(boxed)
    params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes.params)
    state = jax.device_put(state_lib.create(params, program.optimizer), shardings)
    return program, batch, boxed, mesh, shardings, state


def test_adafactor_state_has_shardings_of_its_own_rank_on_an_fsdp_mesh(sharded_setup):
    _, _, boxed, _, shardings, state = sharded_setup
    shapes = nn.meta.unbox(boxed)
    for leaf, sharding in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings), strict=True):
        assert len(sharding.spec) <= leaf.ndim, (leaf.shape, sharding.spec)
    factored = shardings.opt_state[1][0]
    assert isinstance(factored, optax.FactoredState)
    for name in ("time_mlp_0", "time_mlp_1", "pooled_text_mlp"):  # kernels (128, 128) named (embed, mlp)
        assert shapes.params[name]["kernel"].shape == (128, 128)
        assert shardings.params[name]["kernel"].spec == PartitionSpec("fsdp", "tensor")
        assert shapes.opt_state[1][0].v_row[name]["kernel"].shape == (128,)
        assert factored.v_row[name]["kernel"].spec == PartitionSpec("fsdp")  # rows kept: sharded like them
        assert factored.v_col[name]["kernel"].spec == PartitionSpec("tensor")  # tensor has size 1 here
        assert factored.v[name]["kernel"].is_fully_replicated  # the (1,) placeholder
    v_row = state.opt_state[1][0].v_row["time_mlp_0"]["kernel"]
    assert {shard.data.shape for shard in v_row.addressable_shards} == {(16,)}  # 128 rows over 8 devices


def _updated_twice(update, grads, opt_state, params):
    """Two optimizer updates (the first at learning rate 0: the warm-up starts there) -> (params, opt_state)."""
    for _ in range(2):
        updates, opt_state = update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params, opt_state


def test_adafactor_update_runs_sharded_matches_unsharded_and_survives_a_checkpoint(sharded_setup, tmp_path):
    program, _, boxed, _, shardings, state = sharded_setup
    grads = jax.tree.map(lambda p: jnp.cos(3.0 * p), state.params)  # sharded like the parameters
    sharded = jax.jit(
        program.optimizer.update,
        in_shardings=(shardings.params, shardings.opt_state, shardings.params),
        out_shardings=(shardings.params, shardings.opt_state),
    )
    params, opt_state = _updated_twice(sharded, grads, state.opt_state, state.params)
    one = jax.devices()[0]
    ref_params, ref_opt_state = _updated_twice(
        jax.jit(program.optimizer.update), *jax.device_put((grads, state.opt_state, state.params), one)
    )
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    jax.tree.map(close, params, ref_params)
    jax.tree.map(close, opt_state, ref_opt_state)
    assert not np.allclose(params["time_mlp_0"]["kernel"], state.params["time_mlp_0"]["kernel"])
    v_row = opt_state[1][0].v_row["time_mlp_0"]["kernel"]
    assert v_row.sharding == shardings.opt_state[1][0].v_row["time_mlp_0"]["kernel"]
    np.testing.assert_array_less(0.0, v_row)

    new = state.replace(step=state.step + 2, params=params, opt_state=opt_state)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=1, async_save=False)
    ckpt.save(2, new, {"step": 2})
    restored, record = ckpt.restore(2, abstract_like(nn.meta.unbox(boxed), shardings))
    ckpt.close()
    assert record == {"step": 2}
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(new), strict=True):
        assert a.sharding == b.sharding
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # two U-Net train-step compilations: 25 s of CPU (the update test above compiles less)
def test_a_sharded_adafactor_train_step_matches_the_unsharded(sharded_setup):
    program, batch, _, mesh, shardings, state = sharded_setup
    batch_shardings = {k: parallel.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
    sharded_step = jax.jit(
        program.step,
        in_shardings=(shardings, batch_shardings, parallel.replicated(mesh)),
        out_shardings=(shardings, parallel.replicated(mesh)),
    )
    unsharded_step = jax.jit(program.step)
    one = jax.devices()[0]
    new, ref = state, jax.device_put(state, one)
    for i in range(2):  # the first step has learning rate 0 (the warm-up starts there)
        new, metrics = sharded_step(new, jax.device_put(batch, batch_shardings), jax.random.key(i))
        ref, ref_metrics = unsharded_step(ref, jax.device_put(batch, one), jax.random.key(i))
        assert float(metrics["nonfinite"]) == 0.0
        np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-5)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    close_v = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-15 + 1e-4 * float(jnp.max(b)))
    jax.tree.map(close_v, new.opt_state, ref.opt_state)
    # Biases right before a GroupNorm have zero gradient up to rounding (~1e-10, a mean second moment v below
    # 1e-12); Adafactor scales that noise to steps of the learning rate with arbitrary signs, so their parameters
    # are compared through v only.
    noise = jax.tree.map(lambda v: v.size > 1 and float(jnp.max(v)) < 1e-12, ref.opt_state[1][0].v)
    compared = jax.tree.map(lambda n, a, b: n or close(a, b) or True, noise, new.params, ref.params)
    assert 0 < sum(jax.tree.leaves(noise)) < len(jax.tree.leaves(compared)) / 4
    assert not np.allclose(new.params["time_mlp_0"]["kernel"], state.params["time_mlp_0"]["kernel"])
    assert (
        new.opt_state[1][0].v_row["time_mlp_0"]["kernel"].sharding
        == (shardings.opt_state[1][0].v_row["time_mlp_0"]["kernel"])
    )


def _floats(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_base64_optimizer_state_is_far_smaller_with_adafactor_than_with_adam():
    config = imagen_base64.get_config()
    assert config.train.optimizer == "adafactor"
    family, program = steps.from_config(config)
    stage = family.train_stage
    assert stage.image_size == 64
    batch = {
        "images": jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
        "text_embeddings": jax.ShapeDtypeStruct(
            (1, config.text.max_length, config.text.t5.d_model), jnp.float32
        ),
        "text_mask": jax.ShapeDtypeStruct((1, config.text.max_length), jnp.bool_),
    }
    params = nn.meta.unbox(jax.eval_shape(family.init, jax.random.key(0), batch))
    adam_config = copy.deepcopy(config.train)
    adam_config.optimizer = "adam"
    adafactor_state = jax.eval_shape(program.optimizer.init, params)
    adam_state = jax.eval_shape(optimizers.single_network(hparams.from_config(adam_config)).init, params)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}

    shapes = [leaf.shape for leaf in jax.tree.leaves(params)]
    count = sum(int(np.prod(s)) for s in shapes)
    # the faithful base U-Net of App. F.1: 1.66B (README, "The paper's three stages")
    assert 1.6e9 < count < 1.7e9
    # closed forms: Adam keeps mu and nu (2 floats a parameter); Adafactor keeps, per parameter whose two largest
    # dimensions are >= 128, one statistic without the largest dimension and one without the second largest (plus
    # a (1,) placeholder for v), else a full-size v (plus two (1,) placeholders), and two counts (the factored
    # RMS's and the learning-rate schedule's).
    adafactor = 2
    for s in shapes:
        largest, second = sorted(s)[-1], sorted(s)[-2] if len(s) >= 2 else 0
        size = int(np.prod(s))
        adafactor += size // largest + size // second + 1 if second >= 128 else size + 2
    assert _floats(adam_state) == 2 * count + 2  # and two counts: Adam's and the schedule's
    assert _floats(adafactor_state) == adafactor
    ratio = _floats(adam_state) / _floats(adafactor_state)
    # 16.5 GB of Adam state against 1.2 GB: optax factors only the two largest dimensions, so the attention
    # kernels (width, heads, 64) (about 300M parameters, most of them text keys and values) keep a full-size v
    assert ratio > 10, ratio
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(adafactor_state) if leaf.ndim)


def test_an_unknown_optimizer_is_refused_with_the_choices(tmp_path, capsys):
    with pytest.raises(
        ValueError, match=r"train.optimizer='sgd' is not an optimizer; choose one of \('adam', "
    ):
        hparams.from_config(_train_config(optimizer="sgd"))
    saved_before = _train_config()
    del saved_before["optimizer"]
    assert hparams.from_config(saved_before).optimizer == "adam"  # configs saved before the key

    from imagen_jax.main import main

    config_file = pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.py"
    argv = ["main", "--config", f"{config_file}:tiny", "--workdir", str(tmp_path / "w")]
    assert main([*argv, "--config.train.optimizer=sgd"]) == 2
    assert "train.optimizer='sgd' is not an optimizer" in capsys.readouterr().err
    gan = gan_shapes.get_config("tiny")
    gan.train.optimizer = "adafactor"
    with pytest.raises(ValueError, match="the gan family trains with adam only"):
        get_family(gan)
    vae = vae_shapes.get_config("tiny")
    vae.train.optimizer = "adafactor"
    with pytest.raises(ValueError, match="the vae family trains with adam only"):
        get_family(vae)
    with pytest.raises(ValueError, match="adam only"):
        workdir.check_config(gan, [])
