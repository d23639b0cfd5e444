"""pytorch-fid's FID InceptionV3 in Flax: 2048-d pool features, from the user's local weight file.

The network is torchvision's Inception3 with pytorch-fid's patches (FIDInceptionA/C: average pools that do
not count the padding; FIDInceptionE_1 likewise; FIDInceptionE_2: a max pool in the pool branch), evaluated
as pytorch-fid's InceptionV3 wrapper does: images in [0, 1] resized bilinearly (align_corners=False, no
antialiasing) to 299x299, scaled to [-1, 1], through the network up to the final average pool.

Weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a state dict of the FID Inception), read from a
path the user gives (eval.inception_weights); nothing is downloaded. A .pth needs torch to read;
`convert_pth_to_npz` writes the same state dict as an .npz that loads without torch. Module names follow the
PyTorch names (Mixed_5b.branch1x1.conv ...), so the conversion is a transpose per tensor, checked against the
expected shapes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.errors import UserError

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPSILON = 1e-3


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


class BasicConv(nn.Module):
    """Conv (no bias) -> BatchNorm (inference, eps 1e-3) -> ReLU, as torchvision's BasicConv2d."""

    features: int
    kernel: int | tuple[int, int]
    stride: int = 1
    padding: int | tuple[int, int] = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = _pair(self.padding)
        x = nn.Conv(
            self.features,
            _pair(self.kernel),
            strides=_pair(self.stride),
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1, padding not counted (TensorFlow's average pool; pytorch-fid's patch)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: jax.Array, stride: int = 2, padding: int = 0) -> jax.Array:
    return nn.max_pool(x, (3, 3), (stride, stride), ((padding, padding), (padding, padding)))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(64, 1, name="branch1x1")(x)
        b5 = BasicConv(48, 1, name="branch5x5_1")(x)
        b5 = BasicConv(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv(64, 1, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(384, 3, stride=2, name="branch3x3")(x)
        bd = BasicConv(64, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = BasicConv(192, 1, name="branch1x1")(x)
        b7 = BasicConv(c7, 1, name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, 1, name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(192, 1, name="branch3x3_1")(x)
        b3 = BasicConv(320, 3, stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, 1, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
    """FIDInceptionE_1 (pool="avg", padding not counted) or FIDInceptionE_2 (pool="max")."""

    pool: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(320, 1, name="branch1x1")(x)
        b3 = BasicConv(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = BasicConv(448, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool(x, stride=1, padding=1)
        bp = BasicConv(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """Images [B, H, W, 3] already in the network's range [-1, 1] (H, W >= 75) -> pool features [B, 2048]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = BasicConv(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, 3, name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool(x)
        x = BasicConv(80, 1, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def preprocess(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """Images [B, H, W, 3] in [-1, 1] -> [B, size, size, 3] in [-1, 1] as pytorch-fid feeds its network: the
    [0, 1] image resized bilinearly (half-pixel centres, no antialiasing, like F.interpolate) then 2x - 1."""
    x = (jnp.asarray(images, jnp.float32) + 1.0) / 2.0
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear", antialias=False)
    return 2.0 * x - 1.0


def abstract_variables() -> Any:
    """The variables' shapes ({params, batch_stats}) at 299x299, nothing allocated."""
    return jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))


# -------------------------------------------------------------------------------------------- weight import

_LEAVES = {  # PyTorch tensor name suffix -> (collection, Flax leaf name)
    "conv.weight": ("params", "kernel"),
    "bn.weight": ("params", "scale"),
    "bn.bias": ("params", "bias"),
    "bn.running_mean": ("batch_stats", "mean"),
    "bn.running_var": ("batch_stats", "var"),
}


class InceptionWeightsError(UserError):
    """The Inception weight file is missing, unreadable, or not pytorch-fid's FID Inception."""


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
    if not path or not os.path.isfile(path):
        raise InceptionWeightsError(
            f"Inception weights not found at {path!r}. Give the local path of pytorch-fid's FID Inception "
            "(pt_inception-2015-12-05-6726825d.pth, or an .npz made by "
            "imagen_jax.evaluation.inception.convert_pth_to_npz) with --config.eval.inception_weights=PATH; "
            "nothing is downloaded. Or use the built-in feature space: --config.eval.feature_space=shapes."
        )
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    try:
        import torch
    except ImportError:
        raise InceptionWeightsError(
            f"{path} is a PyTorch file and torch is not installed: convert it once where torch is "
            "(python -c \"from imagen_jax.evaluation.inception import convert_pth_to_npz as c; c('in.pth', "
            "'out.npz')\") and give the .npz."
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged or foreign file
        raise InceptionWeightsError(f"cannot read {path} as a PyTorch state dict: {err}") from err
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def convert_state_dict(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """pytorch-fid FID Inception state dict -> Flax variables {params, batch_stats}, checked against the
    network's shapes (the classifier fc.* and num_batches_tracked are not needed for pool features)."""
    expected = abstract_variables()
    variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
    found = set()
    for name, value in state.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        suffix = ".".join(name.split(".")[-2:])
        if suffix not in _LEAVES:
            raise InceptionWeightsError(f"unexpected tensor {name!r}: not a layer of the FID Inception")
        collection, leaf = _LEAVES[suffix]
        path = name.split(".")[:-2] + [suffix.split(".")[0], leaf]
        value = np.asarray(value, np.float32)
        if leaf == "kernel":
            value = value.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]
        node, want = variables[collection], expected[collection]
        try:
            for key in path[:-1]:
                node, want = node.setdefault(key, {}), want[key]
            want = want[path[-1]]
        except KeyError:
            raise InceptionWeightsError(
                f"unexpected tensor {name!r}: not a layer of the FID Inception"
            ) from None
        if tuple(want.shape) != value.shape:
            raise InceptionWeightsError(
                f"tensor {name!r} has shape {value.shape} (after conversion), the FID Inception needs {want.shape}"
            )
        node[path[-1]] = value
        found.add((collection, *path))
    needed = {
        (p[0].key, *(k.key for k in p[1:])) for p, _ in jax.tree_util.tree_flatten_with_path(expected)[0]
    }
    missing = sorted(".".join(m[1:]) for m in needed - found)
    if missing:
        raise InceptionWeightsError(
            f"the weight file lacks {len(missing)} tensors of the FID Inception, e.g. {missing[:3]}; is it "
            "pytorch-fid's pt_inception-2015-12-05 state dict?"
        )
    return variables


def load_variables(path: str) -> dict[str, Any]:
    """Flax variables of the FID Inception from a local .pth (needs torch) or .npz state dict."""
    return convert_state_dict(_read_state_dict(path))


def convert_pth_to_npz(pth_path: str, npz_path: str) -> None:
    """Writes the .pth state dict as an .npz (same tensor names) that loads without torch."""
    np.savez(npz_path, **_read_state_dict(pth_path))


def make_feature_fn(variables: Mapping[str, Any], size: int = INPUT_SIZE) -> Any:
    """A jitted function: images [B, H, W, 3] in [-1, 1] -> pool features float32 [B, 2048]."""
    model = FIDInceptionV3()

    @jax.jit
    def features(images: jax.Array) -> jax.Array:
        return model.apply(variables, preprocess(images, size))

    return features
