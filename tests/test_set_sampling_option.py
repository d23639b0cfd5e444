"""sample.set_sampling_option: the KEY=VALUE sampling ablations of the benchmark scripts, and what it refuses."""

import os

import pytest

from imagen_jax import sample
from imagen_jax.config_files import sibling

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "__init__.py")


def _config(name: str):
    """configs/<name>.py's tiny variant, loaded by path as main.py loads it."""
    return sibling(CONFIGS, name).get_config("tiny")


def test_values_are_read_as_literals_or_kept_as_words():
    config = _config("quickstart")
    sample.set_sampling_option(config, "sample.steps=50")
    sample.set_sampling_option(config, "sample.sampler=ancestral")
    sample.set_sampling_option(config, "sample.guidance_interval=(1.0, 20.0)")
    assert config.sample.steps == 50 and isinstance(config.sample.steps, int)
    assert config.sample.sampler == "ancestral"
    assert config.sample.guidance_interval == (1.0, 20.0)


def test_a_cascade_stages_sampling_key():
    config = _config("shapes_cascade64")
    sample.set_sampling_option(config, "stages.sr64.sample.steps=30")
    assert config.stages.sr64.sample.steps == 30


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.steps=5", "sample.\\* or stages"),  # training keys are not a sampling ablation
        ("sample.steps", "KEY=VALUE"),
        ("sample.no_such_key=1", "not a key"),
        ("stages.sr99.sample.steps=3", "not a key"),
    ],
)
def test_refused(item, message):
    with pytest.raises(sample.SamplingError, match=message):
        sample.set_sampling_option(_config("shapes_cascade64"), item)
