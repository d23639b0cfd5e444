"""Prompts -> (T5 embeddings [B, L, D], mask [B, L]) at a fixed padded length, with an on-disk embedding cache.

    encoder = build_text_encoder(config.text, workdir, corpus=lambda: captions)
    emb, mask = encoder.encode(["a red circle", ""])            # "" is the unconditional case: mask all False
    encode_captions_to_cache(encoder, captions, text_cache_dir(config.text, workdir))   # mode=encode_text
    encoder = with_cache(encoder, text_cache_dir(config.text, workdir))                 # training reads it

Embeddings at padding positions are zero. The cache lives in <cache_dir>/<encoder.identity>/, so a changed
tokenizer, checkpoint, dtype or max_length never reads another encoder's entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_jax import activation_sharding, parallel
from imagen_jax.attention import IMPLEMENTATIONS
from imagen_jax.errors import MissingFileError, UserError
from imagen_jax.text import hf_import
from imagen_jax.text.t5 import T5Config, T5Encoder, init_params, param_shardings
from imagen_jax.text.tokenizer import Tokenizer, train_tokenizer

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


class PromptEncoder(Protocol):
    """What training and sampling use: TextEncoder or CachedTextEncoder."""

    max_length: int
    identity: str

    @property
    def dim(self) -> int: ...

    def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...


def embed(module: T5Encoder, params: dict, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Pure, jit-able: float32 [B, L, D] embeddings, zero where mask [B, L] is False."""
    hidden = module.apply(params, ids, mask).astype(jnp.float32)
    return jnp.where(mask[..., None], hidden, 0.0)


def jit_embed(module: T5Encoder, mesh: jax.sharding.Mesh | None = None, rules: Rules | None = None):
    """jit of embed(params, ids, mask). With a mesh (one process's devices, parallel.host_mesh): parameters
    sharded by `rules` (t5.param_shardings), ids and mask [B, L] and the embeddings [B, L, D] split along the
    batch over data x fsdp, activations constrained by the same rules while it is traced. mode=compile lowers
    this same function for a TPU topology."""
    if mesh is None:
        return jax.jit(lambda params, ids, mask: embed(module, params, ids, mask))
    rules = parallel.LOGICAL_AXIS_RULES if rules is None else rules

    def sharded_embed(params: dict, ids: jax.Array, mask: jax.Array) -> jax.Array:
        with activation_sharding.use(mesh, rules):
            return embed(module, params, ids, mask)

    rows = parallel.batch_sharding(mesh, 2)
    return jax.jit(
        sharded_embed,
        in_shardings=(param_shardings(module.config, mesh, rules), rows, rows),
        out_shardings=parallel.batch_sharding(mesh, 3),
    )


def _batch_bucket(n: int) -> int:
    """Batch sizes are padded to a power of two, so a few compilations serve every batch size."""
    return 1 << max(0, (n - 1).bit_length())


class TextEncoder:
    """A frozen T5 encoder and its tokenizer; weights load on first use (never, if the cache serves)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        module: T5Encoder,
        params_fn: Callable[[], dict],
        max_length: int,
        identity: str,
        mesh: jax.sharding.Mesh | None = None,
        rules: Rules | None = None,
    ):
        if tokenizer.vocab_size > module.config.vocab_size:
            raise UserError(
                f"The tokenizer has {tokenizer.vocab_size} pieces but the T5 embedding only "
                f"{module.config.vocab_size} rows; use the spiece.model that belongs to the checkpoint"
            )
        self.tokenizer = tokenizer
        self.module = module
        self.max_length = max_length
        self.identity = identity
        self.num_model_calls = 0  # T5 forward passes so far (the cache test counts them)
        self._params_fn = params_fn
        self._params: dict | None = None
        self._mesh = mesh
        self._embed = jit_embed(module, mesh, rules)

    @property
    def dim(self) -> int:
        return self.module.config.d_model

    @property
    def params(self) -> dict:
        """Variables {"params": ...}, loaded (or initialised) on first access."""
        if self._params is None:
            self._params = self._params_fn()
        return self._params

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 [B, L], mask bool [B, L]) with L = max_length."""
        return self.tokenizer.encode_batch(prompts, self.max_length)

    def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings float32 [B, L, D], zero at padding; mask bool [B, L]) with L = max_length."""
        ids, mask = self.tokenize(prompts)
        n = len(prompts)
        if n == 0:
            return np.zeros((0, self.max_length, self.dim), np.float32), mask
        rows = _batch_bucket(n)
        if self._mesh is not None:  # a multiple of the batch shards, so that the batch splits evenly
            shards = self._mesh.shape["data"] * self._mesh.shape["fsdp"]
            rows = -(-rows // shards) * shards
        ids_padded = np.pad(ids, ((0, rows - n), (0, 0)))
        mask_padded = np.pad(mask, ((0, rows - n), (0, 0)))
        self.num_model_calls += 1
        if self._mesh is not None:  # this process's own devices: its prompts, its rows back
            sharding = parallel.batch_sharding(self._mesh, 2)
            ids_padded, mask_padded = jax.device_put((ids_padded, mask_padded), sharding)
        return np.asarray(self._embed(self.params, ids_padded, mask_padded))[:n], mask


def encoder_config(text_config: ml_collections.ConfigDict) -> T5Config:
    """The configured encoder's T5Config without loading weights or a tokenizer: the checkpoint's config.json,
    or the built-in encoder's shape with text.vocab_size rows (the size of a tokenizer trained on captions)."""
    attention_implementation = _attention_implementation(text_config)
    if text_config.pretrained_dir:
        return hf_import.read_config(text_config.pretrained_dir, text_config.dtype, attention_implementation)
    return _builtin_config(text_config, text_config.vocab_size)


def _builtin_config(text_config: ml_collections.ConfigDict, vocab_size: int) -> T5Config:
    t5 = text_config.t5
    return T5Config(
        vocab_size=vocab_size,
        d_model=t5.d_model,
        d_kv=t5.d_kv,
        d_ff=t5.d_ff,
        num_heads=t5.num_heads,
        num_layers=t5.num_layers,
        feed_forward_proj=t5.feed_forward_proj,
        dtype=text_config.dtype,
        attention_implementation=_attention_implementation(text_config),
    )


def text_shape(text_config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(max_length, embedding width) of the configured text encoder, without building or loading it."""
    if text_config.pretrained_dir:
        return text_config.max_length, hf_import.read_config(text_config.pretrained_dir).d_model
    return text_config.max_length, text_config.t5.d_model


def text_cache_dir(text_config: ml_collections.ConfigDict, workdir: str) -> str:
    """text.cache_dir, or <workdir>/text/cache when it is empty."""
    return text_config.get("cache_dir", "") or os.path.join(workdir, "text", "cache")


def _hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _params_digest(params: dict) -> str:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return _hash(
        *(
            f"{jax.tree_util.keystr(p)}{v.shape}{v.dtype}".encode() + np.asarray(v).tobytes()
            for p, v in leaves
        )
    )


def _attention_implementation(text_config: ml_collections.ConfigDict) -> str:
    """text.attention_implementation; "xla" for configs written before it existed."""
    return text_config.get("attention_implementation", "xla")


def validate(text_config: ml_collections.ConfigDict) -> None:
    """A UserError naming the first impossible text.* setting (checked at the door and when building)."""
    if text_config.max_length < 2:
        raise UserError(f"text.max_length must be >= 2 (a token and EOS), got {text_config.max_length}")
    if text_config.dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"text.dtype must be float32, bfloat16 or float16, got {text_config.dtype!r}")
    if _attention_implementation(text_config) not in IMPLEMENTATIONS:
        raise UserError(
            f"text.attention_implementation must be one of {IMPLEMENTATIONS}, "
            f"got {_attention_implementation(text_config)!r}"
        )
    if text_config.pretrained_dir and not os.path.isdir(text_config.pretrained_dir):
        raise MissingFileError(f"text.pretrained_dir {text_config.pretrained_dir!r} is not a directory")


def _tokenizer(
    text_config: ml_collections.ConfigDict, workdir: str, corpus: Callable[[], Sequence[str]]
) -> Tokenizer:
    """text.spiece_model; else the pretrained checkpoint's spiece.model; else one trained on the corpus."""
    if text_config.spiece_model:
        return Tokenizer.load(text_config.spiece_model)
    if text_config.pretrained_dir:
        return Tokenizer.load(os.path.join(text_config.pretrained_dir, "spiece.model"))
    path = os.path.join(workdir, "text", "spiece.model")
    if os.path.isfile(path):  # a resumed run reuses it, so ids do not change
        return Tokenizer.load(path)
    log.info(
        "Training a %d-piece SentencePiece tokenizer on the captions into %s", text_config.vocab_size, path
    )
    return train_tokenizer(list(corpus()), path, text_config.vocab_size)


def build_text_encoder(
    text_config: ml_collections.ConfigDict,
    workdir: str,
    corpus: Callable[[], Sequence[str]],
    mesh: jax.sharding.Mesh | None = None,
    rules: Rules | None = None,
) -> TextEncoder:
    """The configured frozen encoder: a local Hugging Face T5 checkpoint, or the built-in random-init one.

    corpus() is called only when a tokenizer has to be trained. With a mesh over one process's devices
    (parallel.host_mesh) and logical axis rules (default parallel.LOGICAL_AXIS_RULES) the weights are placed
    sharded, read one tensor at a time from a checkpoint, and the encoder runs sharded (jit_embed): no device
    holds the whole of a T5-XXL, and each process encodes its own prompts with no collective across hosts (a
    process's prompts differ from another's, and a cache may serve them on one host and not on the other).
    """
    validate(text_config)
    tokenizer = _tokenizer(text_config, workdir, corpus)
    common = (f"format{CACHE_FORMAT}", tokenizer.identity, text_config.dtype, str(text_config.max_length))
    if text_config.pretrained_dir:
        path = text_config.pretrained_dir
        config = hf_import.read_config(path, text_config.dtype, _attention_implementation(text_config))
        identity = _hash(*common, "pretrained", hf_import.fingerprint(path))
        params_fn = lambda: hf_import.load_t5(path, text_config.dtype, mesh=mesh, rules=rules)[1]
        return TextEncoder(
            tokenizer, T5Encoder(config), params_fn, text_config.max_length, identity, mesh, rules
        )

    config = _builtin_config(text_config, tokenizer.vocab_size)
    params = init_params(config, text_config.init_seed)
    identity = _hash(*common, "builtin", repr(config), _params_digest(params))
    if mesh is not None:
        params = jax.device_put(params, param_shardings(config, mesh, rules))
    return TextEncoder(
        tokenizer, T5Encoder(config), lambda: params, text_config.max_length, identity, mesh, rules
    )


# ---------------------------------------------------------------------------------------------------------
# Embedding cache: <cache_dir>/<identity>/manifest.json + shards of (captions, token lengths, token rows).
# Only the unpadded token rows are stored ([sum of lengths, D]), padding is rebuilt as zeros on read.


class EmbeddingCache:
    """Read side of the cache for one encoder identity: caption -> (embeddings [L, D], mask [L])."""

    def __init__(self, directory: str, manifest: dict):
        self.directory = directory
        self.identity = manifest["identity"]
        self.dim = manifest["dim"]
        self.max_length = manifest["max_length"]
        self._rows: dict[str, tuple[int, int, int]] = {}  # caption -> (shard, first row, length)
        self._tokens: list[np.ndarray] = []
        for shard_index, shard in enumerate(manifest["shards"]):
            base = os.path.join(directory, shard)
            with open(f"{base}.captions.json", encoding="utf-8") as f:
                captions = json.load(f)
            lengths = np.load(f"{base}.lengths.npy")
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            self._tokens.append(np.load(f"{base}.tokens.npy", mmap_mode="r" if lengths.sum() else None))
            for caption, start, length in zip(captions, starts, lengths, strict=True):
                self._rows[caption] = (shard_index, int(start), int(length))

    @classmethod
    def open(cls, cache_dir: str, identity: str) -> EmbeddingCache | None:
        """The cache written for this encoder identity, or None when there is none."""
        directory = os.path.join(cache_dir, identity)
        manifest_path = os.path.join(directory, "manifest.json")
        if not os.path.isfile(manifest_path):
            return None
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("format") != CACHE_FORMAT or manifest.get("identity") != identity:
            log.warning("Ignoring embedding cache %s: written by another format or encoder", directory)
            return None
        return cls(directory, manifest)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, caption: str) -> bool:
        return caption in self._rows

    def lookup(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings float32 [B, L, D], mask bool [B, L]); KeyError naming a caption not in the cache."""
        embeddings = np.zeros((len(captions), self.max_length, self.dim), np.float32)
        mask = np.zeros((len(captions), self.max_length), bool)
        for i, caption in enumerate(captions):
            if caption not in self._rows:
                raise KeyError(f"Caption not in the embedding cache {self.directory}: {caption!r}")
            shard, start, length = self._rows[caption]
            embeddings[i, :length] = self._tokens[shard][start : start + length]
            mask[i, :length] = True
        return embeddings, mask


def _write_npy_atomic(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def _write_json_atomic(path: str, value) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False)
    os.replace(tmp, path)


def encode_captions_to_cache(
    encoder: TextEncoder,
    captions: Sequence[str],
    cache_dir: str,
    batch_size: int = 64,
    shard_size: int = 4096,
) -> str:
    """Encodes the distinct captions not cached yet into <cache_dir>/<identity>/; returns that directory.

    Writes a shard of up to shard_size captions at a time and the manifest after each, so memory stays
    bounded and an interrupted run keeps its finished shards (a rerun encodes only the rest). Run it on
    one process only.
    """
    directory = os.path.join(cache_dir, encoder.identity)
    existing = EmbeddingCache.open(cache_dir, encoder.identity)
    new = [c for c in dict.fromkeys(captions) if existing is None or c not in existing]
    shards = [] if existing is None else list(_read_manifest(directory)["shards"])
    os.makedirs(directory, exist_ok=True)
    for first in range(0, len(new), shard_size):
        chunk = new[first : first + shard_size]
        shard = f"shard_{len(shards):05d}"
        _write_shard(os.path.join(directory, shard), encoder, chunk, batch_size)
        shards.append(shard)
        manifest = {
            "format": CACHE_FORMAT,
            "identity": encoder.identity,
            "dim": encoder.dim,
            "max_length": encoder.max_length,
            "shards": shards,
        }
        _write_json_atomic(os.path.join(directory, "manifest.json"), manifest)
    log.info("Embedding cache %s: %d captions encoded, %d shards", directory, len(new), len(shards))
    return directory


def _write_shard(base: str, encoder: TextEncoder, captions: list[str], batch_size: int) -> None:
    """<base>.tokens.npy float32 [sum of lengths, D], .lengths.npy int32 [N], .captions.json."""
    rows, lengths = [np.zeros((0, encoder.dim), np.float32)], []
    for first in range(0, len(captions), batch_size):
        embeddings, mask = encoder.encode(captions[first : first + batch_size])
        for emb, m in zip(embeddings, mask, strict=True):
            rows.append(emb[: int(m.sum())])
            lengths.append(int(m.sum()))
    _write_npy_atomic(f"{base}.tokens.npy", np.concatenate(rows).astype(np.float32))
    _write_npy_atomic(f"{base}.lengths.npy", np.asarray(lengths, np.int32))
    _write_json_atomic(f"{base}.captions.json", captions)


def _read_manifest(directory: str) -> dict:
    with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


class CachedTextEncoder:
    """encode() from the cache where it holds the prompt, from the encoder (loaded only if needed) elsewhere."""

    def __init__(self, encoder: TextEncoder, cache: EmbeddingCache):
        self.encoder = encoder
        self.cache = cache
        self.max_length = encoder.max_length
        self.identity = encoder.identity

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings float32 [B, L, D], mask bool [B, L]), the same values the encoder gives."""
        cached = np.array([p in self.cache for p in prompts], bool)
        if cached.all():
            return self.cache.lookup(prompts)
        if not cached.any():
            return self.encoder.encode(prompts)
        embeddings = np.zeros((len(prompts), self.max_length, self.dim), np.float32)
        mask = np.zeros((len(prompts), self.max_length), bool)
        hits, misses = np.flatnonzero(cached), np.flatnonzero(~cached)
        embeddings[hits], mask[hits] = self.cache.lookup([prompts[i] for i in hits])
        embeddings[misses], mask[misses] = self.encoder.encode([prompts[i] for i in misses])  # only these
        return embeddings, mask


def with_cache(encoder: TextEncoder, cache_dir: str) -> TextEncoder | CachedTextEncoder:
    """The encoder backed by its cache in cache_dir when one was written for its identity, else itself."""
    cache = EmbeddingCache.open(cache_dir, encoder.identity)
    if cache is None:
        return encoder
    log.info("Reading text embeddings from %s (%d captions)", cache.directory, len(cache))
    return CachedTextEncoder(encoder, cache)
