"""Config variants (the text after ':' in --config configs/<name>.py:<arg>) go through one parser,
imagen_jax.config_files.parse_arg, and the config files start their data and eval sections from the defaults
kept in imagen_jax (data/pipeline.py, evaluation/run.py)."""

import glob
import os
import types

import pytest

from imagen_jax.config_files import parse_arg, sibling
from imagen_jax.data import pipeline
from imagen_jax.evaluation import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = sorted(
    os.path.basename(path)[: -len(".py")]
    for path in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if not path.endswith("__init__.py")
)
SPEC = dict(tiny=False, steps=10, rate=0.5, name="base", stage=("base16", "sr32"))


def config_module(name: str) -> types.ModuleType:
    """configs/<name>.py, loaded by path as main.py loads it."""
    return sibling(os.path.join(ROOT, "configs", "__init__.py"), name)


@pytest.mark.parametrize("arg", [None, "", ",", ",,"])
def test_no_variant_gives_every_default(arg):
    variant = parse_arg(arg, **SPEC)
    assert variant.to_dict() == dict(tiny=False, steps=10, rate=0.5, name="base", stage="base16")


def test_values_take_the_type_of_their_default():
    variant = parse_arg("tiny,steps=3,rate=2,name=wide,stage=sr32", **SPEC)
    assert variant.to_dict() == dict(tiny=True, steps=3, rate=2.0, name="wide", stage="sr32")
    assert type(variant.steps) is int and type(variant.rate) is float and type(variant.tiny) is bool


@pytest.mark.parametrize(
    "arg, tiny",
    [("tiny", True), ("tiny=true", True), ("tiny=True", True), ("tiny=1", True), ("tiny=false", False)],
)
def test_bool_variants(arg, tiny):
    assert parse_arg(arg, **SPEC).tiny is tiny


def test_words_combine_in_any_order_and_later_items_win():
    flags = dict(tiny=False, vq=False, logistic=False)
    assert parse_arg("vq,tiny", **flags).to_dict() == dict(tiny=True, vq=True, logistic=False)
    assert parse_arg("tiny,vq", **flags) == parse_arg("vq,,tiny", **flags)
    assert parse_arg("tiny,tiny=false", **flags).tiny is False


def test_a_choice_alone_selects_it():
    assert parse_arg("sr32", **SPEC).stage == "sr32"
    assert parse_arg("sr32,tiny", **SPEC).to_dict() == parse_arg("tiny,stage=sr32", **SPEC).to_dict()


@pytest.mark.parametrize("arg", ["nope", "tiny,nope", "nope,tiny", "nope=1", "tiny,nope=true"])
def test_an_unknown_variant_is_named_with_the_known_ones(arg):
    with pytest.raises(ValueError) as error:
        parse_arg(arg, tiny=False, vq=False, logistic=False)
    message = str(error.value)
    assert message.startswith("Unknown config variant 'nope'; known variants: tiny, vq, logistic")
    assert "combine with commas" in message


@pytest.mark.parametrize(
    "arg, expected",
    [
        ("tiny=maybe", "'maybe' for config variant 'tiny': expected true or false"),
        ("tiny=", "'' for config variant 'tiny'"),
        ("steps=1.5", "'1.5' for config variant 'steps': expected <int>"),
        ("rate=fast", "'fast' for config variant 'rate': expected <float>"),
        ("stage=sr64", "'sr64' for config variant 'stage': expected base16 | sr32"),
    ],
)
def test_a_bad_value_is_named(arg, expected):
    with pytest.raises(ValueError, match=f"Bad value {expected}"):
        parse_arg(arg, **SPEC)


def test_a_valued_variant_alone_asks_for_its_value():
    with pytest.raises(ValueError, match=r"'steps' needs a value: steps=<int>"):
        parse_arg("steps", **SPEC)


def test_a_config_without_variants_rejects_any():
    assert parse_arg(None).to_dict() == {}
    with pytest.raises(ValueError, match="'tiny'; this config has no variants"):
        parse_arg("tiny")


@pytest.mark.parametrize(
    "spec", [dict(tiny=False, stage=("tiny", "sr32")), dict(a=("x", "y"), b=("y", "z")), dict(stage=())]
)
def test_an_ambiguous_spec_is_a_bug_of_the_config_file(spec):
    with pytest.raises(TypeError):
        parse_arg(None, **spec)


@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("arg", ["nope", "tiny,nope"])
def test_every_config_file_rejects_an_unknown_variant_by_name(name, arg):
    with pytest.raises(ValueError, match="Unknown config variant 'nope'; known variants: "):
        config_module(name).get_config(arg)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_file_has_a_tiny_variant(name):
    module = config_module(name)
    assert module.get_config(None).to_dict() == module.get_config("").to_dict()
    assert module.get_config("tiny").to_dict() == module.get_config("tiny=true").to_dict()
    assert module.get_config("tiny").to_dict() != module.get_config(None).to_dict()


@pytest.mark.parametrize("name", ["vae_shapes", "vae_coco64"])
def test_vae_variants_combine(name):
    module = config_module(name)
    config = module.get_config("logistic,vq,tiny")
    assert (config.model.variant, config.model.likelihood) == ("vq", "logistic")
    assert config.to_dict() == module.get_config("tiny,vq,logistic").to_dict()
    assert module.get_config("tiny").model.variant == "vae"


def test_shapes_cascade_stage_variant():
    module = config_module("shapes_cascade")
    assert module.get_config(None).train_stage == "base16"
    assert module.get_config("sr32").to_dict() == module.get_config("stage=sr32").to_dict()
    assert (module.get_config("sr32").train_stage, module.get_config("sr32").train.steps) == ("sr32", 2000)
    assert module.get_config("sr32,tiny").train_stage == "sr32"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_sections_start_from_the_imagen_jax_defaults(name):
    """Every data.* default of pipeline.data_defaults() and every eval setting is in each config (the configs
    build those sections from the defaults instead of restating them)."""
    config = config_module(name).get_config(None)
    assert set(pipeline.data_defaults()) <= set(config.data)
    if "eval" in config:
        assert set(config.eval) == set(run.default_settings())


def test_data_defaults_are_a_fresh_copy_of_data_defaults():
    defaults = pipeline.data_defaults()
    assert set(defaults) == set(pipeline.DATA_DEFAULTS) - set(pipeline.UNLISTED_DATA_KEYS)
    assert all(defaults[key] == pipeline.DATA_DEFAULTS[key] for key in defaults)
    defaults.crop = "random"
    assert pipeline.data_defaults().crop == pipeline.DATA_DEFAULTS["crop"] == "center"


def test_imagen_shapes_px16_is_the_quickstart_guided_at_low_noise_only():
    px16 = config_module("imagen_shapes").get_config("px16").to_dict()
    quickstart = config_module("quickstart").get_config(None).to_dict()
    assert px16["sample"].pop("guidance_interval") == (1.0, 20.0)
    assert quickstart["sample"].pop("guidance_interval") == ()
    assert px16 == quickstart
    assert config_module("imagen_shapes").get_config(None).to_dict() == (
        config_module("shapes_base").get_config(None).to_dict()
    )


@pytest.mark.parametrize(
    ("name", "arg"), [("gan_shapes", "px16"), ("vae_shapes", "px16"), ("vae_shapes", "vq,px16")]
)
def test_px16_baselines_see_the_quickstarts_data_text_and_prompts(name, arg):
    """The 16x16 comparison: every family on the quickstart's images, captions, text encoder and judged prompts;
    only the networks differ."""
    import jax
    import numpy as np
    from flax import linen as nn

    from imagen_jax.experiment import example_batch
    from imagen_jax.models.registry import get_family

    quickstart = config_module("quickstart").get_config(None)
    config = config_module(name).get_config(arg)
    assert config.data.to_dict() == quickstart.data.to_dict()
    assert config.text.to_dict() == quickstart.text.to_dict()
    assert tuple(config.sample.prompts) == tuple(quickstart.sample.prompts)
    assert config.sample.judge_prompts == quickstart.sample.judge_prompts == 256
    family = get_family(config)

    def sample_from_init():
        batch = example_batch(16, config.text.max_length, config.text.t5.d_model, 2)
        params = nn.meta.unbox(family.init(jax.random.key(0), batch))  # as training holds them
        rng = jax.random.key(1)
        return family.generate(family.ema_of(params), batch["text_embeddings"], batch["text_mask"], rng)

    images = jax.eval_shape(sample_from_init)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.float32
