"""CLIP import checked against transformers' PyTorch CLIPModel and CLIPTokenizer on random-init checkpoints of odd
sizes, built and saved here (nothing downloaded)."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file
from tokenizers.pre_tokenizers import ByteLevel

from imagen_jax.evaluation.clip_import import ClipCheckpointError, ClipTokenizer, load_clip

AWKWARD = [
    "a large red circle at the top",
    "A  LARGE   Red\tcircle,   at the top!!",
    "Crème brûlée — naïve café's déjà vu; 東京 🚀🚀 ok?",
    "don't won't we've I'm they'll she'd it's",
    "1234567 + 89 = ?!?! ... (((brackets))) [x] {y} <z>",
    "",
    " ".join(["word"] * 120),  # longer than the 77 tokens: cut, end token kept
    "<|startoftext|> literal special tokens <|endoftext|> inside",
]
WORDS = ("a", "large", "red", "circle", "at", "the", "top", "small", "blue", "square", "word", "on", "left")


def write_vocab(path):
    """A byte-level BPE vocabulary (every byte, alone and word-final, plus a few merged words): vocab.json and
    merges.txt as CLIP ships them. Returns the vocabulary size."""
    chars = sorted(ByteLevel.alphabet())
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            if pieces[0] not in vocab:
                vocab.append(pieces[0])
    merges = list(dict.fromkeys(merges))
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def save_hf_clip(path, hidden_act="quick_gelu", seed=0, **save_kwargs):
    """A random-init transformers CLIPModel of odd sizes with its tokenizer, saved with save_pretrained."""
    path.mkdir(parents=True, exist_ok=True)
    vocab_size = write_vocab(path)
    tokenizer = transformers.CLIPTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=40,
            intermediate_size=72,
            num_attention_heads=5,
            num_hidden_layers=3,
            max_position_embeddings=77,
            hidden_act=hidden_act,
            eos_token_id=eos,
            bos_token_id=eos - 1,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=36,
            intermediate_size=60,
            num_attention_heads=3,
            num_hidden_layers=2,
            image_size=30,
            patch_size=6,
            hidden_act=hidden_act,
        ),
        projection_dim=24,
    )
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # a non-trivial temperature and biases, so that every tensor's conversion shows
        model.logit_scale.fill_(3.1)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(str(path), **save_kwargs)
    tokenizer.save_pretrained(str(path))
    return model, tokenizer


@pytest.fixture(scope="module")
def openai_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip_openai")
    return (path, *save_hf_clip(path))


def reference(model, pixels, ids, mask):
    with torch.inference_mode():
        out = model(
            pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()),
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        )
    return {k: getattr(out, k).numpy() for k in ("image_embeds", "text_embeds", "logits_per_image")}


def inputs(tokenizer, size=30, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.normal(size=(3, size, size, 3)).astype(np.float32)
    ref = tokenizer(AWKWARD[:5] + AWKWARD[6:], padding="max_length", truncation=True, max_length=77)
    return pixels, np.asarray(ref["input_ids"], np.int32), np.asarray(ref["attention_mask"], np.int32)


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])  # the OpenAI and the LAION layouts
def test_parity_with_transformers(tmp_path, hidden_act, openai_checkpoint):
    if hidden_act == "quick_gelu":
        path, model, tokenizer = openai_checkpoint
    else:
        model, tokenizer = save_hf_clip(tmp_path, hidden_act, seed=1)
        path = tmp_path
    module, variables = load_clip(str(path))
    assert module.config.text.activation == hidden_act
    pixels, ids, mask = inputs(tokenizer)
    ours = jax.jit(module.apply)(variables, pixels, ids, mask)
    ref = reference(model, pixels, ids, mask)
    assert ours["logits_per_image"].shape == (3, 7)
    for key, value in ref.items():
        error = np.abs(np.asarray(ours[key]) - value).max()
        assert error < 1e-4, (key, error)
    np.testing.assert_allclose(np.linalg.norm(ours["text_embeds"], axis=-1), 1.0, atol=1e-5)


def test_tokenizer_ids_identical(openai_checkpoint, tmp_path):
    path, _, reference_tokenizer = openai_checkpoint
    expected = reference_tokenizer(AWKWARD, padding="max_length", truncation=True, max_length=77)
    for files in ("tokenizer.json", "vocab.json + merges.txt"):
        if files != "tokenizer.json":  # only the BPE files: the pipeline is assembled from them
            for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
                (tmp_path / name).write_bytes((path / name).read_bytes())
            path = tmp_path
        ids, mask = ClipTokenizer(str(path), 77)(AWKWARD)
        np.testing.assert_array_equal(ids, np.asarray(expected["input_ids"]), err_msg=files)
        np.testing.assert_array_equal(mask, np.asarray(expected["attention_mask"]), err_msg=files)
    assert mask[6].sum() == 77 and mask[5].sum() == 2  # the long prompt is cut; the empty one is BOS, EOS


def test_sharded_checkpoint_and_bfloat16(tmp_path):
    model, tokenizer = save_hf_clip(tmp_path, seed=2, max_shard_size="40KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    module, variables = load_clip(str(tmp_path), dtype="bfloat16")
    pixels, ids, mask = inputs(tokenizer)
    ours = jax.jit(module.apply)(variables, pixels, ids, mask)
    ref = reference(model, pixels, ids, mask)
    assert np.abs(np.asarray(ours["image_embeds"]) - ref["image_embeds"]).max() < 0.05


def test_bad_checkpoints_are_named(tmp_path, openai_checkpoint):
    path, _, _ = openai_checkpoint
    with pytest.raises(ClipCheckpointError, match="No config.json"):
        load_clip(str(tmp_path / "nowhere"))
    for name in ("config.json", "vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((path / name).read_bytes())
    with pytest.raises(ClipCheckpointError, match="No model.safetensors"):
        load_clip(str(tmp_path))
    tensors = load_file(str(path / "model.safetensors"))
    key = "vision_model.encoder.layers.1.mlp.fc2.bias"
    save_file({k: v for k, v in tensors.items() if k != key}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ClipCheckpointError, match=f"missing key '{key}'"):
        load_clip(str(tmp_path))
    save_file({**tensors, "extra.weight": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ClipCheckpointError, match="unexpected key 'extra.weight'"):
        load_clip(str(tmp_path))
    config = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(ClipCheckpointError, match="not a CLIP checkpoint"):
        load_clip(str(tmp_path))
    os.remove(tmp_path / "vocab.json")
    with pytest.raises(ClipCheckpointError, match="no CLIP tokenizer"):
        ClipTokenizer(str(tmp_path), 77)
