"""Classifier-free guidance and static / dynamic thresholding against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.diffusion import guidance as G


class _CountingModel:
    """A nonlinear stand-in for a text-conditioned network that records the batch size of every call."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, x, log_snr, drop_text):
        self.batch_sizes.append(x.shape[0])
        ls = log_snr.reshape(-1, 1, 1)
        cond = jnp.tanh(2 * x + ls)
        uncond = 0.3 * x**2 - ls
        return jnp.where(drop_text.reshape(-1, 1, 1), uncond, cond)


X = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
LOG_SNR = jnp.array([-1.0, 0.5, 2.0])


def test_scale_one_is_the_conditional_prediction_in_one_call():
    model = _CountingModel()
    out = G.classifier_free_guidance(model, 1.0)(X, LOG_SNR)
    np.testing.assert_allclose(out, jnp.tanh(2 * X + LOG_SNR.reshape(-1, 1, 1)), atol=1e-6)
    assert model.batch_sizes == [3]


@pytest.mark.parametrize("w", [0.0, 3.0, jnp.array([1.0, 2.0, 7.5])])
def test_batched_guidance_equals_two_separate_passes(w):
    model = _CountingModel()
    out = jax.jit(G.classifier_free_guidance(model, w))(X, LOG_SNR)
    assert model.batch_sizes == [6]  # one call, conditional and unconditional halves together
    cond = model(X, LOG_SNR, jnp.zeros(3, bool))
    uncond = model(X, LOG_SNR, jnp.ones(3, bool))
    w_b = jnp.broadcast_to(jnp.asarray(w), (3,)).reshape(-1, 1, 1)
    np.testing.assert_allclose(out, uncond + w_b * (cond - uncond), rtol=1e-5, atol=1e-6)


def test_guidance_with_scale_one_array_still_works():
    out = G.classifier_free_guidance(_CountingModel(), jnp.float32(1.0))(X, LOG_SNR)
    np.testing.assert_allclose(out, jnp.tanh(2 * X + LOG_SNR.reshape(-1, 1, 1)), atol=1e-6)


def test_static_threshold():
    np.testing.assert_array_equal(
        G.static_threshold(jnp.array([[-3.0, -0.5, 0.25, 1.5]])), [[-1, -0.5, 0.25, 1]]
    )


def test_dynamic_threshold_hand_computed():
    x0 = jnp.array(
        [
            [-3.0, 0.5, 2.0, 1.0],  # |x| sorted 0.5 1 2 3: the 50th percentile is 1.5, the 100th 3
            [0.2, -0.5, 0.9, 0.1],  # percentile below 1: s = 1, nothing changes
            [0.5, -0.5, 0.5, 4.0],  # 50th percentile 0.5 < 1: s = 1, plain clipping to [-1, 1]
        ]
    )
    np.testing.assert_allclose(
        G.dynamic_threshold(x0, 50.0),
        [[-1.0, 0.5 / 1.5, 1.0, 1.0 / 1.5], [0.2, -0.5, 0.9, 0.1], [0.5, -0.5, 0.5, 1.0]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(G.dynamic_threshold(x0, 100.0)[0], x0[0] / 3.0, rtol=1e-6)


def test_dynamic_threshold_default_is_99_5_percent():
    # |x| = 0, 0.01, ..., 2.00 (201 values): the 99.5th percentile is element 199, 1.99
    values = jnp.linspace(0.0, 2.0, 201) * jnp.where(jnp.arange(201) % 2 == 0, 1.0, -1.0)
    x0 = values.reshape(1, 201, 1)
    out = G.dynamic_threshold(x0)
    np.testing.assert_allclose(out, jnp.clip(x0, -1.99, 1.99) / 1.99, rtol=1e-5)
    assert float(jnp.abs(out).max()) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [0.995, 0.5, 1.0])
def test_quantile_passed_as_percentile_is_rejected(bad):
    with pytest.raises(ValueError, match="percent"):
        G.dynamic_threshold(jnp.ones((1, 4)), bad)
    with pytest.raises(ValueError, match="did you mean"):
        G.make_threshold_fn("dynamic", bad)


@pytest.mark.parametrize("bad", [0.0, -5.0, 100.5])
def test_out_of_range_percentile_is_rejected(bad):
    with pytest.raises(ValueError, match="percent"):
        G.make_threshold_fn("dynamic", bad)


def test_make_threshold_fn():
    x0 = jnp.array([[-3.0, 0.5, 2.0, 1.0]])
    np.testing.assert_array_equal(G.make_threshold_fn("none")(x0), x0)
    np.testing.assert_array_equal(G.make_threshold_fn(None)(x0), x0)
    np.testing.assert_array_equal(G.make_threshold_fn("static")(x0), G.static_threshold(x0))
    np.testing.assert_allclose(G.make_threshold_fn("dynamic", 50.0)(x0), G.dynamic_threshold(x0, 50.0))
    fn = lambda x: 2 * x
    assert G.make_threshold_fn(fn) is fn
    with pytest.raises(ValueError, match="Unknown thresholding"):
        G.make_threshold_fn("dynamc")


def test_an_interval_guides_only_the_examples_inside_it():
    model = _CountingModel()
    out = jax.jit(G.classifier_free_guidance(model, 3.0, (0.0, 1.0)))(X, LOG_SNR)  # only 0.5 is inside
    cond = model(X, LOG_SNR, jnp.zeros(3, bool))
    uncond = model(X, LOG_SNR, jnp.ones(3, bool))
    np.testing.assert_allclose(out[1], uncond[1] + 3.0 * (cond[1] - uncond[1]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[::2], cond[::2], rtol=1e-5, atol=1e-6)  # w = 1 outside: the conditional


def test_a_step_wholly_outside_the_interval_is_one_conditional_call():
    model = _CountingModel()
    out = jax.jit(G.classifier_free_guidance(model, 3.0, (5.0, 20.0)))(X, LOG_SNR)
    np.testing.assert_allclose(out, jnp.tanh(2 * X + LOG_SNR.reshape(-1, 1, 1)), atol=1e-6)
    assert sorted(model.batch_sizes) == [3, 6]  # both branches traced: the doubled batch and the plain one
    inside = jax.jit(G.classifier_free_guidance(model, 3.0, (-5.0, 5.0)))(X, LOG_SNR)
    np.testing.assert_allclose(inside, G.classifier_free_guidance(model, 3.0)(X, LOG_SNR), atol=1e-6)


@pytest.mark.parametrize(
    "bad", [(1.0,), (2.0, 1.0), (1.0, 1.0), ("a", 2.0), (0.0, float("nan")), (True, 2.0)]
)
def test_a_malformed_interval_is_rejected(bad):
    with pytest.raises(ValueError, match="guidance_interval"):
        G.check_interval(bad)


def test_an_interval_is_normalised_to_floats():
    assert G.check_interval([1, 20]) == (1.0, 20.0)
    assert G.check_interval(()) == () == G.check_interval(None)
