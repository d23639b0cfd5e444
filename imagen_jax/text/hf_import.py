"""Local Hugging Face T5 checkpoint directory -> (T5Encoder, variables), without torch.

Reads config.json and model.safetensors or a sharded model.safetensors.index.json one tensor at a time,
so host memory stays near one copy of the weights (one tensor when a mesh is given: each goes straight to
its devices). A full encoder-decoder checkpoint is fine: decoder.* and lm_head.* are skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from imagen_jax.attention import IMPLEMENTATIONS
from imagen_jax.errors import UserError
from imagen_jax.text.t5 import DTYPES, T5Config, T5Encoder, param_shardings

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
T5_MODEL_TYPES = ("t5", "mt5")  # mT5 shares T5 v1.1's encoder; umT5 (per-layer position bias) does not
IGNORED_PREFIXES = ("decoder.", "lm_head.")
EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")


class CheckpointError(UserError):
    """A checkpoint directory that cannot be read as a T5 encoder; the message names the file or key."""


@dataclasses.dataclass(frozen=True)
class _Spec:
    """One checkpoint tensor: our parameter path, the checkpoint shape, and checkpoint -> ours."""

    path: tuple[str, ...]
    shape: tuple[int, ...]
    convert: Callable[[np.ndarray], np.ndarray]


def read_config(path: str, dtype: str = "float32", attention_implementation: str = "xla") -> T5Config:
    """T5Config from <path>/config.json; a clear error for a non-T5 or decoder-only configuration.

    dtype and attention_implementation are ours (how to run it), not the checkpoint's.
    """
    if attention_implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"attention_implementation must be one of {IMPLEMENTATIONS}, got {attention_implementation!r}"
        )
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"No config.json in {path!r}: expected a Hugging Face T5 checkpoint directory")
    with open(config_path, encoding="utf-8") as f:
        raw = json.load(f)
    model_type = raw.get("model_type")
    if model_type not in T5_MODEL_TYPES:
        raise CheckpointError(
            f"{config_path}: model_type is {model_type!r}, not a T5 checkpoint (expected one of {T5_MODEL_TYPES})"
        )
    if raw.get("is_decoder", False):
        raise CheckpointError(f"{config_path}: is_decoder is true; a T5 encoder checkpoint is needed")
    try:
        return T5Config(
            vocab_size=raw["vocab_size"],
            d_model=raw["d_model"],
            d_kv=raw["d_kv"],
            d_ff=raw["d_ff"],
            num_heads=raw["num_heads"],
            num_layers=raw["num_layers"],
            feed_forward_proj=raw.get("feed_forward_proj", "relu"),
            relative_attention_num_buckets=raw.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=raw.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-6),
            dtype=dtype,
            attention_implementation=attention_implementation,
        )
    except KeyError as e:
        raise CheckpointError(f"{config_path}: missing key {e.args[0]!r}") from None
    except ValueError as e:
        raise CheckpointError(f"{config_path}: {e}") from None


def checkpoint_specs(config: T5Config) -> dict[str, _Spec]:
    """Hugging Face encoder key -> where the tensor goes in our tree, its checkpoint shape, and its conversion."""
    d, h, k, f = config.d_model, config.num_heads, config.d_kv, config.d_ff
    in_proj = lambda w: w.T.reshape(d, h, k)  # [h*k, d] -> [d, h, k]
    out_proj = lambda w: w.T.reshape(h, k, d)  # [d, h*k] -> [h, k, d]
    same = lambda w: w
    specs = {
        "shared.weight": _Spec(("token_embedding",), (config.vocab_size, d), same),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": _Spec(
            ("relpos_bias",), (config.relative_attention_num_buckets, h), same
        ),
        "encoder.final_layer_norm.weight": _Spec(("final_norm", "scale"), (d,), same),
    }
    ffn = ("wi_0", "wi_1") if config.is_gated else ("wi",)
    for i in range(config.num_layers):
        block, hf = f"block_{i}", f"encoder.block.{i}.layer"
        specs[f"{hf}.0.layer_norm.weight"] = _Spec((block, "attention_norm", "scale"), (d,), same)
        for hf_name, name in (("q", "query"), ("k", "key"), ("v", "value")):
            specs[f"{hf}.0.SelfAttention.{hf_name}.weight"] = _Spec(
                (block, "attention", name), (h * k, d), in_proj
            )
        specs[f"{hf}.0.SelfAttention.o.weight"] = _Spec((block, "attention", "out"), (d, h * k), out_proj)
        specs[f"{hf}.1.layer_norm.weight"] = _Spec((block, "mlp_norm", "scale"), (d,), same)
        for name in ffn:
            specs[f"{hf}.1.DenseReluDense.{name}.weight"] = _Spec((block, "mlp", name), (f, d), np.transpose)
        specs[f"{hf}.1.DenseReluDense.wo.weight"] = _Spec((block, "mlp", "wo"), (d, f), np.transpose)
    return specs


def weight_files(path: str) -> dict[str, str]:
    """Checkpoint key -> safetensors file, from model.safetensors or model.safetensors.index.json."""
    index_path = os.path.join(path, INDEX_FILE)
    single_path = os.path.join(path, SINGLE_FILE)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: no 'weight_map' object")
        files = {key: os.path.join(path, name) for key, name in weight_map.items()}
        for file in sorted(set(files.values())):
            if not os.path.isfile(file):
                raise CheckpointError(
                    f"{index_path} names {os.path.basename(file)!r}, which is not in {path!r}"
                )
        return files
    if os.path.isfile(single_path):
        with safe_open(single_path, framework="numpy") as st:
            return {key: single_path for key in st.keys()}
    found = sorted(os.listdir(path)) if os.path.isdir(path) else []
    hint = ""
    if any(name.endswith(".bin") for name in found):
        hint = (
            " Only PyTorch .bin weights are present; convert them once to safetensors, e.g. "
            "T5EncoderModel.from_pretrained(path).save_pretrained(path) on a machine with torch."
        )
    raise CheckpointError(f"No {SINGLE_FILE} or {INDEX_FILE} in {path!r} (found {found}).{hint}")


def _match_keys(files: dict[str, str], specs: dict[str, _Spec], path: str) -> dict[str, str]:
    """Checkpoint key to read for each spec key; errors on missing, unexpected or decoder-only."""
    keys = {key for key in files if not key.startswith(IGNORED_PREFIXES)}
    if not any(key.startswith("encoder.") for key in keys):
        raise CheckpointError(
            f"{path!r} has no encoder.* weights (a decoder-only or non-T5 checkpoint?); "
            f"first keys: {sorted(files)[:5]}"
        )
    chosen = {}
    for key in specs:
        if key == "shared.weight":
            source = next((k for k in EMBEDDING_KEYS if k in keys), None)
        else:
            source = key if key in keys else None
        if source is None:
            raise CheckpointError(f"{path!r}: missing key {key!r} (expected by config.json)")
        chosen[key] = source
    unexpected = sorted(keys - set(chosen.values()) - set(EMBEDDING_KEYS))
    if unexpected:
        raise CheckpointError(
            f"{path!r}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all); "
            "config.json does not describe these weights"
        )
    return chosen


def _read_tensors(files: dict[str, str], chosen: dict[str, str], specs: dict[str, _Spec]) -> Iterator:
    """Yields (spec key, checkpoint array) one at a time, file by file, after checking shapes from headers."""
    by_file: dict[str, list[str]] = {}
    for key, source in chosen.items():
        by_file.setdefault(files[source], []).append(key)
    for file, keys in sorted(by_file.items()):
        with safe_open(file, framework="numpy") as st:
            for key in keys:
                shape = tuple(st.get_slice(chosen[key]).get_shape())
                if shape != specs[key].shape:
                    raise CheckpointError(
                        f"{os.path.basename(file)}: shape mismatch for {chosen[key]!r}: checkpoint has {shape}, "
                        f"config.json implies {specs[key].shape}"
                    )
            for key in keys:
                yield key, st.get_tensor(chosen[key])


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _lookup(tree, path: tuple[str, ...]):
    for name in path:
        tree = tree[name]
    return tree


def _to_device(array: np.ndarray, sharding: jax.sharding.Sharding | None) -> jax.Array:
    if sharding is None:
        return jax.device_put(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def load_t5(
    path: str,
    dtype: str = "float32",
    mesh: jax.sharding.Mesh | None = None,
    rules: tuple[tuple[str, str | tuple[str, ...] | None], ...] | None = None,
    attention_implementation: str = "xla",
) -> tuple[T5Encoder, dict]:
    """Loads a local Hugging Face T5 (or mT5) checkpoint directory.

    Returns (module, variables) with module.apply(variables, input_ids int32 [B, L], attention_mask [B, L])
    -> last hidden states [B, L, D]. With a mesh (and logical axis rules), each parameter is placed sharded
    as soon as it is read. attention_implementation: imagen_jax.attention's ("xla", or "cudnn" on NVIDIA GPUs).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    config = read_config(path, dtype, attention_implementation)
    specs = checkpoint_specs(config)
    files = weight_files(path)
    chosen = _match_keys(files, specs, path)
    shardings = None
    if mesh is not None:
        shardings = param_shardings(config, mesh, rules)["params"]
    target = jnp.dtype(dtype)
    params: dict = {}
    for key, tensor in _read_tensors(files, chosen, specs):
        spec = specs[key]
        array = np.ascontiguousarray(spec.convert(tensor).astype(target, copy=False))
        del tensor
        _set(
            params, spec.path, _to_device(array, None if shardings is None else _lookup(shardings, spec.path))
        )
    return T5Encoder(config), {"params": params}


def fingerprint(path: str, sample_bytes: int = 1 << 16) -> str:
    """Cheap content hash of a checkpoint: config.json, every tensor's name, dtype, shape and sampled bytes.

    Reads about sample_bytes per tensor, so an XXL checkpoint is fingerprinted in well under a second.
    """
    digest = hashlib.sha256()
    with open(os.path.join(path, "config.json"), "rb") as f:
        digest.update(f.read())
    for file in sorted(set(weight_files(path).values())):
        with open(file, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
            start = 8 + header_size
            for name in sorted(k for k in header if k != "__metadata__"):
                entry = header[name]
                digest.update(json.dumps([name, entry["dtype"], entry["shape"]]).encode())
                begin, end = entry["data_offsets"]
                chunk = 4096
                count = max(1, min(sample_bytes // chunk, (end - begin) // chunk))
                for offset in np.linspace(begin, max(begin, end - chunk), count).astype(np.int64):
                    f.seek(start + int(offset))
                    digest.update(f.read(min(chunk, end - int(offset))))
    return digest.hexdigest()[:16]
