"""The default feature space for the built-in data: a small CNN trained to read shapes images.

InceptionV3 features (evaluation/inception.py) describe natural photographs and need weights the user must
supply; on 16-32 px shapes images they mostly measure blur. This network is trained, deterministically and
once, to classify the attributes the shapes data varies (shape, colour, size, position of one-object scenes,
all colour-shape pairs), and its penultimate layer [feature_dim], divided by its RMS value on validation
images, is the feature space FID/KID/precision/recall
are computed in. It is cached under <cache_dir>/shapes_feature_net/<key>/, where key hashes its whole spec
(and a version), so a cached net is never retrained and a changed spec never reads a stale one.
Reports name the space with `FeatureExtractor.name`, e.g. "shapes-cnn-32px-1a2b3c4d".
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from imagen_jax.data import shapes

VERSION = 2  # bump when the network or its training changes: old caches are then ignored
HEADS: dict[str, tuple[str, ...]] = shapes.ATTRIBUTE_VALUES


def default_cache_dir() -> str:
    """$IMAGEN_JAX_CACHE, else ~/.cache/imagen_jax."""
    return os.environ.get("IMAGEN_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "imagen_jax")


@dataclasses.dataclass(frozen=True)
class FeatureNetSpec:
    """Everything that decides the trained network; its hash keys the cache."""

    image_size: int = 32
    widths: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 128
    steps: int = 500
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0
    validation_size: int = 512

    def key(self) -> str:
        text = json.dumps({"version": VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class ShapesCNN(nn.Module):
    """Conv/ReLU/avg-pool stages, a dense feature layer, and one linear classifier head per attribute."""

    widths: Sequence[int]
    feature_dim: int

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """images [B, S, S, 3] in [-1, 1] -> (features [B, feature_dim], {attribute: logits [B, classes]})."""
        x = images
        for width in self.widths:
            x = nn.relu(nn.Conv(width, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
        features = nn.relu(nn.Dense(self.feature_dim)(x.reshape(x.shape[0], -1)))
        return features, {
            name: nn.Dense(len(classes), name=name)(features) for name, classes in HEADS.items()
        }


def _labels(captions: Sequence[str]) -> dict[str, np.ndarray]:
    objects = [shapes.parse_caption(c).objects[0] for c in captions]
    return {
        name: np.asarray([classes.index(getattr(o, name)) for o in objects], np.int32)
        for name, classes in HEADS.items()
    }


def _dataset(spec: FeatureNetSpec) -> shapes.ShapesDataset:
    # every colour-shape pair: the feature space must see what the generators are asked for at evaluation
    return shapes.ShapesDataset(spec.image_size, max_objects=1, holdout_combinations=False, seed=spec.seed)


@functools.lru_cache(maxsize=4)
def _compiled(spec: FeatureNetSpec) -> tuple[ShapesCNN, optax.GradientTransformation, Any, Any]:
    """(model, optimizer, jitted train step, jitted apply) of a spec; cached so a retrain compiles nothing."""
    model = ShapesCNN(spec.widths, spec.feature_dim)
    optimizer = optax.adam(optax.cosine_decay_schedule(spec.learning_rate, spec.steps))

    def loss_fn(p, images, labels):
        _, logits = model.apply(p, images)
        return sum(
            optax.softmax_cross_entropy_with_integer_labels(logits[k], labels[k]).mean() for k in HEADS
        )

    @jax.jit
    def step(p, opt_state, images, labels):
        grads = jax.grad(loss_fn)(p, images, labels)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    return model, optimizer, step, jax.jit(model.apply)


def train(spec: FeatureNetSpec) -> tuple[Any, dict[str, float], float]:
    """(parameters, validation accuracy per attribute, feature scale) of the network trained from scratch,
    deterministically. The scale is the RMS feature value on the validation images: features are divided by
    it, so they are O(1) like Inception's (the KID kernel (x.y/D + 1)^3 assumes that scale)."""
    model, optimizer, step, apply = _compiled(spec)
    data = _dataset(spec)
    params = model.init(jax.random.key(spec.seed), jnp.zeros((1, spec.image_size, spec.image_size, 3)))
    opt_state = optimizer.init(params)
    for i in range(spec.steps):
        batch = data.batch(i, spec.batch_size, split="train")
        params, opt_state = step(params, opt_state, batch["images"], _labels(batch["captions"]))
    held_out = data.batch(
        0, spec.validation_size, process_index=1, split="train"
    )  # a stream never trained on
    features, logits = apply(params, held_out["images"])
    labels = _labels(held_out["captions"])
    accuracy = {k: float(np.mean(np.argmax(np.asarray(logits[k]), -1) == labels[k])) for k in HEADS}
    scale = float(np.sqrt(np.mean(np.square(np.asarray(features, np.float64))))) or 1.0
    return params, accuracy, scale


@dataclasses.dataclass
class FeatureExtractor:
    """A feature network ready to embed images: `features(images)` -> float32 [N, dim]."""

    name: str
    dim: int
    image_size: int
    apply: Any  # jitted: images [B, image_size, image_size, 3] in [-1, 1] -> features [B, dim]
    info: dict[str, Any]

    def features(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Features float32 [N, dim] of images [N, H, W, 3] in [-1, 1] (resized bilinearly when H != size)."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images [N, H, W, 3], got shape {images.shape}")
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pad = batch_size - len(chunk) if len(images) > batch_size else 0  # one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
            out.append(np.asarray(self.apply(chunk))[: len(chunk) - pad])
        return np.concatenate(out).astype(np.float32)


def load_or_train(spec: FeatureNetSpec, cache_dir: str = "", log: Any = print) -> FeatureExtractor:
    """The network of `spec` from <cache_dir>/shapes_feature_net/<key>/ (default_cache_dir() when empty),
    trained and saved there first when absent."""
    directory = os.path.join(cache_dir or default_cache_dir(), "shapes_feature_net", spec.key())
    params_path, info_path = os.path.join(directory, "params.msgpack"), os.path.join(directory, "info.json")
    model = ShapesCNN(spec.widths, spec.feature_dim)
    template = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, spec.image_size, spec.image_size, 3))
    )
    if os.path.exists(params_path) and os.path.exists(info_path):
        with open(params_path, "rb") as f:
            params = serialization.from_bytes(template, f.read())
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    else:
        log(f"Training the shapes feature network once ({spec.steps} steps) into {directory} ...")
        params, accuracy, scale = train(spec)
        info = {
            "spec": dataclasses.asdict(spec),
            "version": VERSION,
            "validation_accuracy": accuracy,
            "feature_scale": scale,
        }
        os.makedirs(directory, exist_ok=True)
        for path, data, mode in (
            (params_path, serialization.to_bytes(params), "wb"),
            (info_path, json.dumps(info, indent=2), "w"),
        ):
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, mode) as f:
                f.write(data)
            os.replace(tmp, path)  # concurrent processes train the same net; the last rename wins
    size, scale = spec.image_size, float(info["feature_scale"])

    @jax.jit
    def apply(images: jax.Array) -> jax.Array:
        if images.shape[1:3] != (size, size):
            images = jax.image.resize(images, (images.shape[0], size, size, 3), "bilinear")
        return model.apply(params, images)[0] / scale

    info = {**info, "cache_dir": directory}
    return FeatureExtractor(f"shapes-cnn-{size}px-{spec.key()[:8]}", spec.feature_dim, size, apply, info)
