"""Prompts -> embeddings: the built-in and the pretrained encoder, fixed shapes, and the embedding cache."""

import importlib.util
import itertools
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import Mesh

from imagen_jax.text import encoder as text_encoder
from imagen_jax.text.encoder import (
    CachedTextEncoder,
    build_text_encoder,
    encode_captions_to_cache,
    text_cache_dir,
    with_cache,
)
from imagen_jax.text.tokenizer import train_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS, SHAPES = ("red", "blue", "green", "yellow"), ("circle", "square", "triangle")
PLACES = ("at the top", "on the left", "in the centre", "at the bottom")
CAPTIONS = [
    f"a {s} {c} {shape} {p}"
    for s, c, shape, p in itertools.product(("large", "small"), COLOURS, SHAPES, PLACES)
]
RULES = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor"), ("kv", None))


def text_config(**overrides):
    """The quickstart experiment's `text` section (tiny variant), with overrides."""
    spec = importlib.util.spec_from_file_location(
        "quickstart", os.path.join(ROOT, "configs", "quickstart.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny").text
    config.update(overrides)
    return config


def no_corpus():
    raise AssertionError("the tokenizer should have been reused, not trained again")


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("workdir"))
    return build_text_encoder(text_config(), workdir, corpus=lambda: CAPTIONS), workdir


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A random-weight transformers T5 (v1.1) saved with save_pretrained, plus a spiece.model."""
    path = tmp_path_factory.mktemp("hf_t5")
    tokenizer = train_tokenizer(CAPTIONS, str(path / "spiece.model"), vocab_size=48)
    config = transformers.T5Config(
        vocab_size=tokenizer.vocab_size + 5,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_heads=4,
        num_layers=2,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    torch.manual_seed(0)
    transformers.T5EncoderModel(config).eval().save_pretrained(str(path))
    return path


def test_builtin_encoder_shapes_padding_and_empty_prompt(builtin):
    encoder, workdir = builtin
    config = text_config()
    assert os.path.isfile(os.path.join(workdir, "text", "spiece.model"))
    assert (encoder.dim, encoder.max_length) == (config.t5.d_model, config.max_length)
    embeddings, mask = encoder.encode(
        ["a large red circle at the top", "", "a small blue square on the left"]
    )
    assert embeddings.shape == (3, config.max_length, config.t5.d_model) and embeddings.dtype == np.float32
    assert mask.shape == (3, config.max_length) and mask.dtype == bool
    assert mask[0].sum() == len(encoder.tokenizer.encode("a large red circle at the top"))
    assert not mask[1].any() and not embeddings[1].any()  # unconditional: all padding, zeros
    assert not embeddings[~mask].any() and np.abs(embeddings[mask]).min() > 0
    # the same numbers as the module applied directly, whatever the batch size it is padded to
    ids, direct_mask = encoder.tokenize(["a large red circle at the top"])
    direct = encoder.module.apply(encoder.params, ids, direct_mask)[0]
    np.testing.assert_allclose(embeddings[0][mask[0]], np.asarray(direct)[mask[0]], atol=1e-6)


def test_builtin_encoder_is_deterministic_and_reuses_its_tokenizer(builtin):
    encoder, workdir = builtin
    again = build_text_encoder(text_config(), workdir, corpus=no_corpus)
    assert again.identity == encoder.identity
    prompts = CAPTIONS[:5]
    np.testing.assert_array_equal(again.encode(prompts)[0], encoder.encode(prompts)[0])
    for change in ({"init_seed": 1}, {"max_length": 12}, {"dtype": "bfloat16"}):
        assert (
            build_text_encoder(text_config(**change), workdir, corpus=no_corpus).identity != encoder.identity
        )


def test_pretrained_encoder_matches_transformers_end_to_end(pretrained_dir, tmp_path):
    encoder = build_text_encoder(
        text_config(pretrained_dir=str(pretrained_dir)), str(tmp_path), corpus=no_corpus
    )
    assert encoder._params is None  # weights load on first use
    prompts = ["a large red circle at the top", "", "a small green triangle in the centre, twice: " * 3]
    embeddings, mask = encoder.encode(prompts)
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(pretrained_dir))
    model = transformers.T5EncoderModel.from_pretrained(str(pretrained_dir)).eval()
    batch = tokenizer(prompts[::2], max_length=16, padding="max_length", truncation=True, return_tensors="pt")
    with torch.inference_mode():
        reference = model(**batch).last_hidden_state.numpy()
    reference_mask = batch["attention_mask"].numpy().astype(bool)
    np.testing.assert_array_equal(mask[::2], reference_mask)
    np.testing.assert_allclose(embeddings[::2][reference_mask], reference[reference_mask], atol=1e-5, rtol=0)
    assert not mask[1].any() and not embeddings[1].any()


def test_cache_is_read_instead_of_running_the_encoder(pretrained_dir, tmp_path):
    config = text_config(pretrained_dir=str(pretrained_dir))
    workdir = str(tmp_path)
    cache_dir = text_cache_dir(config, workdir)
    first = build_text_encoder(config, workdir, corpus=no_corpus)
    encode_captions_to_cache(first, CAPTIONS[:40] + CAPTIONS[:10] + [""], cache_dir, batch_size=16)
    assert first.num_model_calls == 3  # 41 distinct captions in batches of 16

    second = build_text_encoder(config, workdir, corpus=no_corpus)  # a new run: nothing loaded
    cached = with_cache(second, cache_dir)
    assert isinstance(cached, CachedTextEncoder) and len(cached.cache) == 41
    prompts = [CAPTIONS[3], "", CAPTIONS[39], CAPTIONS[3]]
    embeddings, mask = cached.encode(prompts)
    assert second.num_model_calls == 0 and second._params is None
    expected_embeddings, expected_mask = first.encode(prompts)
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_allclose(embeddings, expected_embeddings, atol=1e-5, rtol=0)  # other batch size

    # new captions are added as new shards; the old ones are not encoded again
    encode_captions_to_cache(second, CAPTIONS, cache_dir, batch_size=64, shard_size=30)
    assert second.num_model_calls == 2  # 56 new captions in shards of 30 and 26
    reopened = text_encoder.EmbeddingCache.open(cache_dir, second.identity)
    assert len(reopened) == 97 and len(reopened._tokens) == 3
    # a caption outside the cache falls back to the encoder
    cached = with_cache(second, cache_dir)
    embeddings, _ = cached.encode(["a blue blue circle", CAPTIONS[0]])
    assert second.num_model_calls == 3
    np.testing.assert_allclose(embeddings[1], cached.cache.lookup([CAPTIONS[0]])[0][0], atol=1e-5, rtol=0)


def test_changed_encoder_does_not_read_the_cache(builtin, tmp_path):
    encoder, workdir = builtin
    cache_dir = str(tmp_path / "cache")
    encode_captions_to_cache(encoder, [""], cache_dir)  # a shard with no token rows at all
    encode_captions_to_cache(encoder, CAPTIONS[:8], cache_dir)
    cached = with_cache(encoder, cache_dir)
    assert isinstance(cached, CachedTextEncoder) and len(cached.cache) == 9
    assert not cached.encode([""])[1].any()
    changed = build_text_encoder(text_config(init_seed=7), workdir, corpus=no_corpus)
    assert with_cache(changed, cache_dir) is changed
    fresh = changed.encode(CAPTIONS[:2])[0]
    assert np.abs(fresh - encoder.encode(CAPTIONS[:2])[0]).max() > 1e-3


def test_sharded_builtin_encoder_matches_unsharded(builtin):
    encoder, workdir = builtin
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    sharded = build_text_encoder(text_config(), workdir, corpus=no_corpus, mesh=mesh, rules=RULES)
    wi = sharded.params["params"]["block_0"]["mlp"]["wi_0"]
    assert wi.addressable_shards[0].data.shape == (16, 32)  # [32, 64] over fsdp=2 x tensor=2
    # an odd tokenizer vocabulary is not split over tensor (replicated), not an error
    vocab = sharded.params["params"]["token_embedding"]
    assert vocab.addressable_shards[0].data.shape[0] == (
        vocab.shape[0] if vocab.shape[0] % 2 else vocab.shape[0] // 2
    )
    prompts = CAPTIONS[:6] + [""]
    np.testing.assert_allclose(sharded.encode(prompts)[0], encoder.encode(prompts)[0], atol=1e-5, rtol=0)


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained_dir"):
        build_text_encoder(
            text_config(pretrained_dir=str(tmp_path / "nope")), str(tmp_path), corpus=no_corpus
        )
    with pytest.raises(ValueError, match="max_length"):
        build_text_encoder(text_config(max_length=1), str(tmp_path), corpus=lambda: CAPTIONS)
    big = train_tokenizer(CAPTIONS * 2 + ["zebra quokka xylophone jumps"], str(tmp_path / "big.model"), 80)
    config = text_config(spiece_model=str(tmp_path / "big.model"))
    assert (
        build_text_encoder(config, str(tmp_path), corpus=no_corpus).module.config.vocab_size == big.vocab_size
    )


def test_attention_implementation_is_plumbed_and_refused_when_unknown(builtin, pretrained_dir, tmp_path):
    # a text section without the key (as configs written before it) runs "xla", as the quickstart states
    default, workdir = builtin
    assert text_config().attention_implementation == "xla"
    legacy = text_config()
    del legacy["attention_implementation"]
    assert (
        build_text_encoder(legacy, workdir, corpus=no_corpus).module.config.attention_implementation == "xla"
    )
    assert default.module.config.attention_implementation == "xla"
    pretrained = build_text_encoder(  # weights load (and attention runs) on first use
        text_config(pretrained_dir=str(pretrained_dir), attention_implementation="cudnn"),
        str(tmp_path),
        corpus=no_corpus,
    )
    assert pretrained.module.config.attention_implementation == "cudnn"
    if jax.default_backend() != "gpu":  # the built-in encoder runs its init at once
        with pytest.raises(ValueError, match="'cudnn' needs an NVIDIA GPU"):
            build_text_encoder(text_config(attention_implementation="cudnn"), workdir, corpus=no_corpus)
    with pytest.raises(ValueError, match=r"text.attention_implementation must be one of \('xla', 'cudnn'\)"):
        build_text_encoder(text_config(attention_implementation="flash"), workdir, corpus=no_corpus)


def test_pretrained_encoder_runs_sharded_in_a_real_run(pretrained_dir, tmp_path):
    """experiment.build places a pretrained T5 over the process's devices (fsdp x tensor from the config's mesh)
    and runs it sharded; its embeddings are the unsharded encoder's. The built-in encoder stays on one device."""
    from configs import quickstart
    from imagen_jax import experiment

    config = quickstart.get_config("tiny")
    config.text.pretrained_dir = str(pretrained_dir)
    config.mesh.update(dict(data=2, fsdp=2, tensor=2))
    exp = experiment.build(config, str(tmp_path))
    params = exp.text_encoder.params["params"]
    wi = params["block_0"]["mlp"][
        "wi_0"
    ]  # [32, 64]: embed over fsdp (4 of the 8 devices), mlp over tensor (2)
    assert len(wi.sharding.device_set) == 8 and wi.addressable_shards[0].data.shape == (8, 32)
    prompts = CAPTIONS[:5] + [""]
    plain = build_text_encoder(
        text_config(pretrained_dir=str(pretrained_dir)), str(tmp_path), corpus=no_corpus
    )
    np.testing.assert_allclose(
        exp.text_encoder.encode(prompts)[0], plain.encode(prompts)[0], atol=1e-5, rtol=0
    )
    config.text.pretrained_dir = ""
    assert experiment.text_placement(config) == (None, None)
