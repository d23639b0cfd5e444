"""sample.guidance_interval through an Imagen stage's sampler: its two limits against closed forms (an interval
holding every step is plain guidance, one holding none is guidance 1), its validation at the door, and the
default of a config written before the option."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import quickstart
from imagen_jax.models.imagen import ImagenFamily


@pytest.fixture(scope="module")
def stage():
    """(family, random params, text [2,4,32], mask) of the tiny quickstart."""
    family = ImagenFamily.from_config(quickstart.get_config("tiny"))
    unet = family.train_stage.unet
    params = nn.meta.unbox(
        unet.init(
            jax.random.key(0),
            jnp.zeros((1, 16, 16, 3)),
            jnp.zeros((1,)),
            jnp.zeros((1, 4, 32)),
            jnp.ones((1, 4)),
        )
    )
    leaves, treedef = jax.tree.flatten(params["params"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(
        treedef, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )
    return family, params, jax.random.normal(jax.random.key(2), (2, 4, 32)), jnp.ones((2, 4), bool)


def _sample(stage, **options):
    family, params, text, mask = stage
    run = jax.jit(
        lambda p: family.generate_stage("base", p, text, mask, jax.random.key(4), steps=4, **options)
    )
    return np.asarray(run(params))


def test_the_intervals_limits_are_plain_guidance_and_no_guidance(stage):
    guided = _sample(stage, guidance_scale=4.0)
    conditional = _sample(stage, guidance_scale=1.0)
    assert np.abs(guided - conditional).mean() > 1e-3  # guidance changes these samples
    everywhere = _sample(stage, guidance_scale=4.0, guidance_interval=(-30.0, 30.0))  # cosine spans -20..20
    np.testing.assert_allclose(everywhere, guided, atol=1e-4)  # the same sums, fused differently
    nowhere = _sample(stage, guidance_scale=4.0, guidance_interval=(25.0, 30.0))
    np.testing.assert_allclose(nowhere, conditional, atol=1e-4)
    part = _sample(stage, guidance_scale=4.0, guidance_interval=(0.0, 30.0))
    assert np.abs(part - guided).mean() > 1e-4 and np.abs(part - conditional).mean() > 1e-4


def test_a_malformed_interval_in_the_config_is_refused_when_the_family_is_built():
    config = quickstart.get_config("tiny")
    config.sample.guidance_interval = (3.0, 1.0)
    with pytest.raises(ValueError, match=r"sample\.guidance_interval=\(3\.0, 1\.0\)"):
        ImagenFamily.from_config(config)


def test_a_config_without_the_option_guides_at_every_noise_level():
    config = quickstart.get_config("tiny")
    del config.sample["guidance_interval"]
    family = ImagenFamily.from_config(config)
    assert dict(family.train_stage.sample_defaults)["guidance_interval"] == ()
    assert "log-SNR" not in family.sampling_summary()
