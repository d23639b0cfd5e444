"""The shapes feature network (trained once, cached by its spec) and evaluation end to end on the tiny quickstart."""

import dataclasses

import jax
import numpy as np
import pytest

from imagen_jax.data import shapes
from imagen_jax.evaluation import feature_net

TINY_NET = feature_net.FeatureNetSpec(
    image_size=16, widths=(8, 16), feature_dim=32, steps=80, batch_size=32, validation_size=128
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tiny_net(cache_dir):
    logs = []
    net = feature_net.load_or_train(TINY_NET, cache_dir, log=logs.append)
    assert len(logs) == 1 and "Training the shapes feature network once" in logs[0]
    return net


def test_feature_net_learns_the_attributes_and_is_cached_by_its_spec(tiny_net, cache_dir):
    accuracy = tiny_net.info["validation_accuracy"]
    # 80 steps of a tiny net: position and size are easy (chance 0.2 and 0.5), shape and colour take longer
    assert accuracy["position"] > 0.8 and accuracy["size"] > 0.7
    logs = []
    again = feature_net.load_or_train(TINY_NET, cache_dir, log=logs.append)
    assert logs == [] and again.name == tiny_net.name  # read back, never retrained
    images = shapes.ShapesDataset(16, seed=3).batch(0, 10)["images"]
    np.testing.assert_array_equal(again.features(images), tiny_net.features(images))
    other = dataclasses.replace(TINY_NET, seed=1)
    assert other.key() != TINY_NET.key()  # a changed spec would train into another folder


def test_feature_net_training_is_deterministic(tiny_net):
    short = dataclasses.replace(TINY_NET, steps=3)
    params, accuracy = feature_net.train(short)
    params2, accuracy2 = feature_net.train(short)
    assert accuracy == accuracy2
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_features_are_batched_and_resized(tiny_net):
    images = shapes.ShapesDataset(32, seed=4).batch(0, 5)["images"]  # 32 px into a 16 px network
    features = tiny_net.features(images, batch_size=2)
    assert features.shape == (5, 32) and features.dtype == np.float32
    np.testing.assert_allclose(features[3:], tiny_net.features(images[3:]), rtol=1e-5, atol=1e-6)
