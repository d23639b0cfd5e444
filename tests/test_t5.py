"""T5 encoder and checkpoint import, checked against transformers' PyTorch T5EncoderModel."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from safetensors.numpy import load_file, save_file
from transformers.models.t5.modeling_t5 import T5Attention

from imagen_jax.text import t5
from imagen_jax.text.hf_import import CheckpointError, load_t5

TINY = dict(vocab_size=100, d_model=48, d_kv=16, d_ff=96, num_heads=4, num_layers=2)
RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("relpos_buckets", None),
)


def save_hf_t5(path, feed_forward_proj="gated-gelu", cls=transformers.T5EncoderModel, seed=0, **save_kwargs):
    """A random-weight transformers T5 saved with save_pretrained (safetensors); returns the torch model."""
    torch.manual_seed(seed)
    model = cls(transformers.T5Config(**TINY, feed_forward_proj=feed_forward_proj, dropout_rate=0.0)).eval()
    model.save_pretrained(str(path), **save_kwargs)
    return model


def reference_hidden(model, ids, mask):
    with torch.inference_mode():
        out = model if isinstance(model, transformers.T5EncoderModel) else model.get_encoder()
        return out(
            input_ids=torch.from_numpy(ids.astype(np.int64)), attention_mask=torch.from_numpy(mask)
        ).last_hidden_state.numpy()


def padded_batch(length=150, seed=0):
    """ids int32 [5, length] with rows of `length`, 100, 5, 1 and 0 tokens (all padding), zero-padded."""
    rng = np.random.default_rng(seed)
    lengths = np.array([length, min(length, 100), 5, 1, 0])
    mask = np.arange(length)[None, :] < lengths[:, None]
    ids = np.where(mask, rng.integers(3, TINY["vocab_size"], (5, length)), 0).astype(np.int32)
    return ids, mask


@pytest.fixture(scope="module")
def gated_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("t5_gated")
    return path, save_hf_t5(path)


def test_import_path_needs_no_torch():
    code = "import sys, imagen_jax.text.encoder; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_relative_position_buckets_match_transformers():
    for num_buckets, max_distance in ((32, 128), (16, 64), (32, 20), (64, 256)):
        ours = t5.relative_position_buckets(600, num_buckets, max_distance)
        position = torch.arange(600)
        ref = T5Attention._relative_position_bucket(
            position[None, :] - position[:, None], True, num_buckets, max_distance
        )
        np.testing.assert_array_equal(ours, ref.numpy())


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu"])
def test_parity_with_transformers(tmp_path, feed_forward_proj, gated_checkpoint):
    if feed_forward_proj == "gated-gelu":
        path, model = gated_checkpoint
    else:
        path, model = tmp_path, save_hf_t5(tmp_path, feed_forward_proj)
    module, variables = load_t5(str(path))
    assert module.config.feed_forward_proj == feed_forward_proj
    ids, mask = padded_batch()  # longer than max_distance 128: the log-spaced and clipped buckets are used
    ours = np.asarray(jax.jit(module.apply)(variables, ids, mask))
    ref = reference_hidden(model, ids, mask)
    assert ours.shape == ref.shape == (5, 150, TINY["d_model"])
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_sharded_index_of_a_full_encoder_decoder_checkpoint(tmp_path):
    model = save_hf_t5(tmp_path, cls=transformers.T5ForConditionalGeneration, seed=1, max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 2
    module, variables = load_t5(str(tmp_path))  # decoder.* weights are skipped
    ids, mask = padded_batch(40)
    np.testing.assert_allclose(
        np.asarray(module.apply(variables, ids, mask)), reference_hidden(model, ids, mask), atol=1e-5, rtol=0
    )


def test_bfloat16_compute(gated_checkpoint):
    path, model = gated_checkpoint
    module, variables = load_t5(str(path), dtype="bfloat16")
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(variables))
    ids, mask = padded_batch(32)
    ours = module.apply(variables, ids, mask)
    assert ours.dtype == jnp.bfloat16
    ref = reference_hidden(model, ids, mask)
    error = np.abs(np.asarray(ours, np.float32) - ref)
    assert error.max() < 0.1 and error.mean() < 0.02  # bfloat16 has 8 mantissa bits


def test_bfloat16_checkpoint_loads_exactly(tmp_path):
    model = save_hf_t5(tmp_path / "f32").to(torch.bfloat16)
    model.save_pretrained(str(tmp_path / "bf16"))
    _, variables = load_t5(str(tmp_path / "bf16"), dtype="float32")
    ref = model.state_dict()["encoder.block.1.layer.0.SelfAttention.q.weight"].float().numpy()
    query = np.asarray(variables["params"]["block_1"]["attention"]["query"])
    np.testing.assert_array_equal(query.reshape(TINY["d_model"], -1).T, ref)
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_t5(str(tmp_path / "bf16"), dtype="fp16")


def _rewrite(path, edit):
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_missing_key_is_named(tmp_path):
    save_hf_t5(tmp_path)
    key = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
    _rewrite(tmp_path, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        load_t5(str(tmp_path))


def test_unexpected_key_is_named(tmp_path):
    save_hf_t5(tmp_path)
    key = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
    _rewrite(tmp_path, lambda t: t.update({key: np.zeros((32, 4), np.float32)}))
    with pytest.raises(CheckpointError, match=f"unexpected key '{key}'"):
        load_t5(str(tmp_path))


def test_shape_mismatch_is_named(tmp_path):
    save_hf_t5(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["d_ff"] = 80
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"shape mismatch for 'encoder\.block\.\d\.layer\.1\.DenseReluDense"
    ):
        load_t5(str(tmp_path))


def test_decoder_only_and_non_t5_checkpoints(tmp_path):
    save_hf_t5(tmp_path)
    _rewrite(tmp_path, lambda t: [t.pop(k) for k in list(t) if k.startswith("encoder.")])
    with pytest.raises(CheckpointError, match="no encoder"):
        load_t5(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="not a T5 checkpoint"):
        load_t5(str(tmp_path))
    os.remove(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="convert them once to safetensors"):
        load_t5(str(tmp_path))
    with pytest.raises(CheckpointError, match="No config.json"):
        load_t5(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name", ["xl", "xxl"])
def test_parameter_count_without_allocation(name):
    config = t5.preset(name)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    shapes = jax.eval_shape(t5.T5Encoder(config).init, jax.random.key(0), ids, ids)
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes)))
    hf_config = transformers.T5Config(
        vocab_size=32128,
        d_model=config.d_model,
        d_kv=64,
        d_ff=config.d_ff,
        num_heads=config.num_heads,
        num_layers=config.num_layers,
        feed_forward_proj="gated-gelu",
    )
    with torch.device("meta"):
        reference = sum(p.numel() for p in transformers.T5EncoderModel(hf_config).parameters())
    assert ours == t5.num_params(config)
    assert abs(ours - reference) / reference < 0.01
    published = {"xl": 1.22e9, "xxl": 4.76e9}[name]
    assert abs(ours - published) / published < 0.01


def test_logical_axis_names():
    specs = t5.logical_partition_specs(t5.T5Config(**TINY, feed_forward_proj="gated-gelu"))["params"]
    assert specs["token_embedding"] == PartitionSpec("vocab", "embed")
    assert specs["relpos_bias"] == PartitionSpec("relpos_buckets", "heads")
    assert specs["block_0"]["attention"]["query"] == PartitionSpec("embed", "heads", "kv")
    assert specs["block_0"]["attention"]["out"] == PartitionSpec("heads", "kv", "embed")
    assert specs["block_1"]["mlp"]["wo"] == PartitionSpec("mlp", "embed")
    names = {n for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec)) for n in s}
    assert names == set(t5.LOGICAL_AXES)


def test_sharded_over_fsdp_and_tensor_matches_unsharded(gated_checkpoint):
    path, _ = gated_checkpoint
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    module, unsharded = load_t5(str(path))
    _, sharded = load_t5(str(path), mesh=mesh, rules=RULES)
    wi = sharded["params"]["block_0"]["mlp"]["wi_0"]
    assert wi.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert wi.addressable_shards[0].data.shape == (TINY["d_model"] // 2, TINY["d_ff"] // 2)
    query = sharded["params"]["block_1"]["attention"]["query"]
    assert query.addressable_shards[0].data.shape == (24, 2, 16)
    ids, mask = (np.concatenate([x, x[1:4]]) for x in padded_batch(40))  # 8 rows: 2 per batch shard
    batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    ids_s, mask_s = jax.device_put(ids, batch), jax.device_put(mask, batch)
    with mesh:
        out = jax.jit(module.apply)(sharded, ids_s, mask_s)
    reference = module.apply(unsharded, ids, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference), atol=1e-5, rtol=0)
