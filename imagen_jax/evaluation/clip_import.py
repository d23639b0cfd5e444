"""Local Hugging Face CLIP checkpoint directory -> (models.clip.Clip, variables) and its tokenizer, without torch.

A directory as `CLIPModel.save_pretrained` writes it: config.json (model_type "clip"; OpenAI's quick-GELU or
LAION's GELU towers), model.safetensors or a sharded model.safetensors.index.json, and the tokenizer:
tokenizer.json, or vocab.json + merges.txt (byte-level BPE, assembled here exactly as transformers'
CLIPTokenizer assembles it), read with the `tokenizers` library. preprocessor_config.json, when present, gives
the pixel mean and std. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.models.clip import DTYPES, Clip, ClipConfig, TowerConfig
from imagen_jax.text.hf_import import CheckpointError, _read_tensors, _set, _Spec, weight_files

# OpenAI CLIP's pixel statistics (transformers' OPENAI_CLIP_MEAN / STD): the default without a preprocessor config.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IGNORED_SUFFIXES = ("position_ids",)  # buffers some older checkpoints saved
# transformers' CLIPTextConfig / CLIPVisionConfig defaults, for keys a saved config leaves out.
_TEXT_DEFAULTS = dict(
    hidden_size=512,
    intermediate_size=2048,
    num_attention_heads=8,
    num_hidden_layers=12,
    max_position_embeddings=77,
    vocab_size=49408,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    eos_token_id=2,
)
_VISION_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    num_channels=3,
)


class ClipCheckpointError(CheckpointError):
    """A directory that cannot be read as a CLIP checkpoint; the message names the file or key."""


def _tower(raw: dict, defaults: dict) -> TowerConfig:
    get = lambda key: raw.get(key, defaults[key])
    return TowerConfig(
        width=int(get("hidden_size")),
        layers=int(get("num_hidden_layers")),
        heads=int(get("num_attention_heads")),
        mlp_dim=int(get("intermediate_size")),
        activation=str(get("hidden_act")),
        layer_norm_eps=float(get("layer_norm_eps")),
    )


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_config(path: str, dtype: str = "float32") -> ClipConfig:
    """ClipConfig from <path>/config.json; one clear error for a missing or non-CLIP configuration."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    config_path = os.path.join(path, "config.json")
    raw = _read_json(config_path)
    if raw is None:
        raise ClipCheckpointError(
            f"No config.json in {path!r}: expected a Hugging Face CLIP checkpoint directory"
        )
    if raw.get("model_type") != "clip":
        raise ClipCheckpointError(
            f"{config_path}: model_type is {raw.get('model_type')!r}, not a CLIP checkpoint (expected 'clip')"
        )
    text, vision = raw.get("text_config") or {}, raw.get("vision_config") or {}
    if vision.get("num_channels", 3) != 3:
        raise ClipCheckpointError(f"{config_path}: vision_config.num_channels must be 3")
    try:
        return ClipConfig(
            vision=_tower(vision, _VISION_DEFAULTS),
            text=_tower(text, _TEXT_DEFAULTS),
            image_size=int(vision.get("image_size", _VISION_DEFAULTS["image_size"])),
            patch_size=int(vision.get("patch_size", _VISION_DEFAULTS["patch_size"])),
            vocab_size=int(text.get("vocab_size", _TEXT_DEFAULTS["vocab_size"])),
            max_length=int(text.get("max_position_embeddings", _TEXT_DEFAULTS["max_position_embeddings"])),
            projection_dim=int(raw.get("projection_dim", 512)),
            eos_token_id=int(text.get("eos_token_id", _TEXT_DEFAULTS["eos_token_id"])),
            logit_scale_init=float(raw.get("logit_scale_init_value", 2.6592)),
            dtype=dtype,
        )
    except ValueError as e:
        raise ClipCheckpointError(f"{config_path}: {e}") from None


def _tower_specs(prefix: str, ours: tuple[str, ...], c: TowerConfig) -> dict[str, _Spec]:
    d, f = c.width, c.mlp_dim
    same, t = (lambda w: w), np.transpose
    specs = {}
    for i in range(c.layers):
        hf, layer = f"{prefix}.encoder.layers.{i}", (*ours, "encoder", f"layers_{i}")
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            specs[f"{hf}.self_attn.{name}.weight"] = _Spec((*layer, "self_attn", name, "kernel"), (d, d), t)
            specs[f"{hf}.self_attn.{name}.bias"] = _Spec((*layer, "self_attn", name, "bias"), (d,), same)
        for norm in ("layer_norm1", "layer_norm2"):
            specs[f"{hf}.{norm}.weight"] = _Spec((*layer, norm, "scale"), (d,), same)
            specs[f"{hf}.{norm}.bias"] = _Spec((*layer, norm, "bias"), (d,), same)
        for name, shape in (("fc1", (f, d)), ("fc2", (d, f))):
            specs[f"{hf}.mlp.{name}.weight"] = _Spec((*layer, name, "kernel"), shape, t)
            specs[f"{hf}.mlp.{name}.bias"] = _Spec((*layer, name, "bias"), (shape[0],), same)
    return specs


def _norm_specs(hf: str, ours: tuple[str, ...], width: int) -> dict[str, _Spec]:
    return {
        f"{hf}.weight": _Spec((*ours, "scale"), (width,), lambda w: w),
        f"{hf}.bias": _Spec((*ours, "bias"), (width,), lambda w: w),
    }


def checkpoint_specs(config: ClipConfig) -> dict[str, _Spec]:
    """Hugging Face CLIPModel key -> where the tensor goes in our tree, its checkpoint shape, its conversion."""
    v, t, p = config.vision, config.text, config.patch_size
    same = lambda w: w
    patches = (config.image_size // p) ** 2
    specs = {
        "vision_model.embeddings.class_embedding": _Spec(
            ("vision_model", "class_embedding"), (v.width,), same
        ),
        "vision_model.embeddings.patch_embedding.weight": _Spec(  # [out, in, kh, kw] -> [kh, kw, in, out]
            ("vision_model", "patch_embedding", "kernel"),
            (v.width, 3, p, p),
            lambda w: w.transpose(2, 3, 1, 0),
        ),
        "vision_model.embeddings.position_embedding.weight": _Spec(
            ("vision_model", "position_embedding"), (patches + 1, v.width), same
        ),
        "text_model.embeddings.token_embedding.weight": _Spec(
            ("text_model", "token_embedding", "embedding"), (config.vocab_size, t.width), same
        ),
        "text_model.embeddings.position_embedding.weight": _Spec(
            ("text_model", "position_embedding"), (config.max_length, t.width), same
        ),
        "visual_projection.weight": _Spec(
            ("visual_projection", "kernel"), (config.projection_dim, v.width), np.transpose
        ),
        "text_projection.weight": _Spec(
            ("text_projection", "kernel"), (config.projection_dim, t.width), np.transpose
        ),
        "logit_scale": _Spec(("logit_scale",), (), same),
    }
    specs.update(_norm_specs("vision_model.pre_layrnorm", ("vision_model", "pre_layrnorm"), v.width))
    specs.update(_norm_specs("vision_model.post_layernorm", ("vision_model", "post_layernorm"), v.width))
    specs.update(_norm_specs("text_model.final_layer_norm", ("text_model", "final_layer_norm"), t.width))
    specs.update(_tower_specs("vision_model", ("vision_model",), v))
    specs.update(_tower_specs("text_model", ("text_model",), t))
    return specs


def _match_keys(files: dict[str, str], specs: dict[str, _Spec], path: str) -> dict[str, str]:
    keys = {k for k in files if not k.endswith(IGNORED_SUFFIXES)}
    missing = sorted(set(specs) - keys)
    if missing:
        raise ClipCheckpointError(
            f"{path!r}: missing key {missing[0]!r} ({len(missing)} missing in all; expected by config.json)"
        )
    unexpected = sorted(keys - set(specs))
    if unexpected:
        raise ClipCheckpointError(
            f"{path!r}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all); "
            "config.json does not describe these weights (a CLIPModel checkpoint is needed)"
        )
    return {key: key for key in specs}


def load_clip(path: str, dtype: str = "float32") -> tuple[Clip, dict]:
    """Loads a local Hugging Face CLIP checkpoint directory.

    Returns (module, variables): module.apply(variables, pixel_values [B, H, W, 3] normalised with the CLIP
    mean/std, input_ids int32 [B, L], attention_mask [B, L]) -> {image_embeds, text_embeds (projected,
    L2-normalised), logits_per_image [B_images, B_texts], logits_per_text}, as transformers' CLIPModel."""
    config = read_config(path, dtype)
    specs = checkpoint_specs(config)
    try:
        files = weight_files(path)
    except CheckpointError as e:
        raise ClipCheckpointError(str(e).replace("T5EncoderModel", "CLIPModel")) from None
    chosen = _match_keys(files, specs, path)
    target = jnp.dtype(dtype)
    params: dict = {}
    try:
        for key, tensor in _read_tensors(files, chosen, specs):
            spec = specs[key]
            array = np.ascontiguousarray(spec.convert(tensor).astype(target, copy=False))
            array = array.reshape(np.shape(spec.convert(tensor)))  # ascontiguousarray makes a scalar 1-d
            _set(params, spec.path, jax.device_put(array))
    except CheckpointError as e:
        raise ClipCheckpointError(str(e)) from None
    return Clip(config), {"params": params}


def pixel_statistics(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel for pixels in [0, 1]: preprocessor_config.json's, else OpenAI CLIP's."""
    raw = _read_json(os.path.join(path, "preprocessor_config.json")) or {}
    mean, std = raw.get("image_mean", CLIP_MEAN), raw.get("image_std", CLIP_STD)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _token_name(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class ClipTokenizer:
    """CLIP's byte-level BPE through the `tokenizers` library: texts -> (input_ids int32 [B, max_length],
    attention_mask int32 [B, max_length]), with <|startoftext|> and <|endoftext|> added, cut to max_length
    (the end token kept) and padded with the checkpoint's pad token, as transformers' CLIPTokenizer does with
    padding="max_length", truncation=True."""

    def __init__(self, path: str, max_length: int):
        import tokenizers

        json_path = os.path.join(path, "tokenizer.json")
        vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        special = {
            **(_read_json(os.path.join(path, "special_tokens_map.json")) or {}),
            **(_read_json(os.path.join(path, "tokenizer_config.json")) or {}),
        }
        bos = _token_name(special.get("bos_token")) or "<|startoftext|>"
        eos = _token_name(special.get("eos_token")) or "<|endoftext|>"
        pad = _token_name(special.get("pad_token")) or eos
        if os.path.isfile(json_path):
            tok = tokenizers.Tokenizer.from_file(json_path)
        elif os.path.isfile(vocab) and os.path.isfile(merges):
            tok = _bpe_from_files(vocab, merges, bos, eos, _token_name(special.get("unk_token")) or eos)
        else:
            raise ClipCheckpointError(
                f"{path!r} has no CLIP tokenizer: expected tokenizer.json, or vocab.json and merges.txt"
            )
        pad_id = tok.token_to_id(pad)
        if pad_id is None:
            raise ClipCheckpointError(f"{path!r}: the pad token {pad!r} is not in the tokenizer's vocabulary")
        tok.no_padding()
        tok.enable_truncation(max_length)
        tok.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad)
        self._tokenizer, self.max_length, self.pad_id = tok, int(max_length), pad_id

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encodings], np.int32).reshape(len(encodings), self.max_length)
        mask = np.asarray([e.attention_mask for e in encodings], np.int32).reshape(ids.shape)
        return ids, mask


def _bpe_from_files(vocab: str, merges: str, bos: str, eos: str, unk: str):
    """transformers' CLIPTokenizer pipeline over vocab.json + merges.txt (NFC, whitespace runs to one space,
    lowercase; CLIP's split pattern, byte-level; words end in </w>; <|startoftext|> ... <|endoftext|>)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    with open(vocab, encoding="utf-8") as f:
        table = json.load(f)
    with open(merges, encoding="utf-8") as f:
        pairs = [
            tuple(line.split()) for line in f.read().split("\n") if line and not line.startswith("#version")
        ]
    tok = Tokenizer(
        BPE(
            vocab=table,
            merges=pairs,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=unk,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([bos, eos])
    tok.post_processor = processors.RobertaProcessing(
        (eos, tok.token_to_id(eos)), (bos, tok.token_to_id(bos)), trim_offsets=False, add_prefix_space=False
    )
    return tok
