"""Sampling compiles once per (generate, stage, shapes, settings) and reuses it: across calls, prompt sets and the
values of a guidance sweep (sample.compiled_generate). Counted as traces of a stand-in generate and as entries of
the jit cache for the tiny quickstart's U-Net, whose traced guidance gives the numbers of a constant one."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from imagen_jax import experiment, sample
from imagen_jax.models.imagen import ImagenFamily


class _Counting:
    """A generate whose Python body runs once per trace: out = params * guidance_scale + steps, [B, 2]."""

    def __init__(self):
        self.traces = 0

    def generate(self, params, text_embeddings, text_mask, rng, *, steps=1, guidance_scale=1.0):
        self.traces += 1
        return params * guidance_scale + steps + jnp.zeros((text_embeddings.shape[0], 2))


def test_one_trace_per_shape_and_setting_and_a_sweep_reuses_it():
    family = _Counting()
    run = lambda batch, **o: np.asarray(
        sample.compiled_generate(
            family.generate,
            jnp.float32(2.0),
            np.zeros((batch, 4, 8), np.float32),
            np.ones((batch, 4), bool),
            jax.random.key(0),
            traced=("guidance_scale",),
            **o,
        )
    )
    for g in (3.0, 5.0, 7.5):  # a sweep: the traced value changes, the program does not
        np.testing.assert_allclose(run(4, steps=2, guidance_scale=g), 2.0 * g + 2)
    assert family.traces == 1
    run(4, steps=2, guidance_scale=3.0)  # another prompt set of the same chunk shape
    assert family.traces == 1
    np.testing.assert_allclose(run(4, steps=2, guidance_scale=1.0), 4.0)  # 1.0 stays static (unguided)
    assert family.traces == 2
    run(4, steps=3, guidance_scale=3.0)  # steps shape the program
    run(8, steps=2, guidance_scale=3.0)  # so does the batch
    assert family.traces == 4
    run(8, steps=2, guidance_scale=9.0)
    assert family.traces == 4


@pytest.fixture(scope="module")
def tiny():
    config = quickstart.get_config("tiny")
    family = ImagenFamily.from_config(config)
    unet = family.train_stage.unet
    shapes = nn.meta.unbox(
        jax.eval_shape(
            unet.init,
            jax.random.key(0),
            jnp.zeros((1, 16, 16, 3)),
            jnp.zeros((1,)),
            jnp.zeros((1, 4, 32)),
            jnp.ones((1, 4)),
        )
    )["params"]
    # random weights (no init to compile), so that the text, hence guidance, changes the images
    draw = np.random.default_rng(1)
    params = jax.tree.map(lambda s: np.float32(0.1) * draw.standard_normal(s.shape, np.float32), shapes)
    text = np.asarray(jax.random.normal(jax.random.key(2), (3, 4, 32)), np.float32)
    return family, params, text, np.ones((3, 4), bool)


def test_the_unet_sampler_compiles_once_for_a_guidance_sweep_with_the_same_numbers(tiny):
    family, params, text, mask = tiny
    how = dict(steps=2, sampler="dpmpp_2m", thresholding="static")
    call = lambda g: np.asarray(
        sample.compiled_generate(
            family.generate,
            params,
            text,
            mask,
            jax.random.key(7),
            traced=("guidance_scale",),
            guidance_scale=g,
            **how,
        )
    )
    before = sample._compiled_generate._cache_size()
    swept = {g: call(g) for g in (2.0, 4.0, 2.0)}
    assert sample._compiled_generate._cache_size() == before + 1
    # what the old per-call jit computed with the value as a constant
    constant = jax.jit(functools.partial(family.generate, guidance_scale=4.0, **how))
    np.testing.assert_allclose(
        swept[4.0], np.asarray(constant(params, text, mask, jax.random.key(7))), atol=2e-5
    )
    assert not np.allclose(swept[2.0], swept[4.0])  # the traced value is used, not baked in


def test_the_report_after_training_samples_the_grid_and_the_heldout_prompts_with_one_compilation(
    tiny, tmp_path
):
    """The grid (4 prompts) and the held-out set (6) used to be sampled in chunks of their own sizes, compiling the
    sampler twice per report; one shared chunk size compiles it once. The report of a tiny quickstart experiment
    with the fixture's random weights (no training needed)."""
    config = quickstart.get_config("tiny")
    config.sample.judge_prompts = 6
    exp = experiment.build(config, str(tmp_path / "wd"))
    before = sample._compiled_generate._cache_size()
    report = sample.sample_and_judge(exp, tiny[1], step=0)
    assert sample._compiled_generate._cache_size() == before + 1
    assert report["grid_judge"]["count"] == 4 and report["heldout_judge"]["count"] == 6  # padding dropped
    assert (
        json.loads((tmp_path / "wd" / "samples" / "step_0.json").read_text())["heldout_judge"]["count"] == 6
    )
