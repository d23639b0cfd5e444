"""CLIP score: how well images match their captions by a CLIP's cosine similarity, from either CLIP the project
knows: a local Hugging Face checkpoint (evaluation/clip_import.py) or a CLIP trained here (family "clip",
models/contrastive.py). rerank.py opens either from a path; this module holds the math.

Convention (as in the CLIP-score literature, Hessel et al. 2021 with w = 100, and the Imagen / Parti tables):
CLIP score = 100 x max(cos(image embedding, text embedding), 0), per image, averaged over a set.

Also: the held-out check of a CLIP against the analytic judge (`heldout_auc`: does its score separate the
captions of held-out colour-shape images from captions with one attribute changed), ROC AUC, Pearson
correlation, and the FID-against-CLIP-score plot of a guidance sweep (the paper's Pareto curves).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_jax.data import shapes
from imagen_jax.errors import UserError
from imagen_jax.evaluation import alignment

# sample.* keys of reranking: the one table of their defaults (add_sample_keys puts them into every generating
# family's config, also those written before they existed, so --config.sample.<key> works on old workdirs).
RERANK_DEFAULTS: dict[str, Any] = dict(
    rerank=1,  # candidates drawn per prompt; the one with the highest CLIP score is kept (1: no reranking)
    clip_weights="",  # the CLIP that reranks: a Hugging Face CLIP directory or a trained family=clip workdir
)
ATTRIBUTES = ("colour", "shape", "size", "position")
HELDOUT_STREAM = 7927  # process index of the held-out images the AUC scores (training reads 0 .. P - 1)


def add_sample_keys(config: ml_collections.ConfigDict) -> None:
    """Adds RERANK_DEFAULTS' keys to the sample section of a generating family's config where missing; in place."""
    if config.get("family") == "clip" or not isinstance(config.get("sample"), ml_collections.ConfigDict):
        return
    for key, value in RERANK_DEFAULTS.items():
        if key not in config.sample:
            config.sample[key] = value


def sample_option(sample: Any, key: str) -> Any:
    """sample.<key> of the reranking keys, or its default when the section predates it."""
    return sample[key] if key in sample else RERANK_DEFAULTS[key]


def clip_kind(path: str, key: str) -> str:
    """ "hf" for a Hugging Face CLIP directory, "workdir" for a family=clip workdir; a UserError naming `key`
    for anything else."""
    config_path = os.path.join(path, "config.json")
    if not path or not os.path.isfile(config_path):
        raise UserError(
            f"{key}={path!r} has no config.json: give a local Hugging Face CLIP checkpoint directory or a workdir "
            "trained with family=clip (e.g. configs/clip_shapes.py). Nothing is downloaded."
        )
    try:
        with open(config_path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{key}: {config_path} is unreadable ({err}).") from err
    if raw.get("model_type") == "clip":
        return "hf"
    if raw.get("family") == "clip":
        return "workdir"
    what = raw.get("model_type") or raw.get("family")
    raise UserError(
        f"{key}={path!r} is neither a Hugging Face CLIP checkpoint (model_type 'clip') nor a family=clip workdir "
        f"(its config.json says {what!r})."
    )


class Scorer(Protocol):
    """A CLIP as a scorer: a name, and L2-normalised embeddings of images [N, H, W, 3] in [-1, 1] and of texts."""

    name: str

    def embed_images(self, images: np.ndarray) -> np.ndarray: ...

    def embed_texts(self, prompts: Sequence[str]) -> np.ndarray: ...


def _batched(fn: Callable[[Any], Any], items: Any, batch_size: int) -> np.ndarray:
    """fn over `items` in batches of batch_size, the last one padded (one compile), concatenated as float32."""
    n = len(items)
    out = []
    for start in range(0, n, batch_size):
        chunk = items[start : start + batch_size]
        pad = batch_size - len(chunk)
        if pad and isinstance(chunk, np.ndarray):
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
        elif pad:
            chunk = list(chunk) + [chunk[-1]] * pad
        out.append(np.asarray(fn(chunk), np.float32)[: batch_size - pad])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def resize_images(images: jax.Array, size: int, method: str) -> jax.Array:
    """[N, H, W, 3] -> [N, size, size, 3] (antialiased when shrinking); unchanged when already that size."""
    if images.shape[1:3] == (size, size):
        return images
    return jax.image.resize(images, (images.shape[0], size, size, 3), method=method, antialias=True)


class HfClipScorer:
    """A Hugging Face CLIP checkpoint directory as a scorer. Images in [-1, 1] go to [0, 1], are resized bicubically
    (antialiased) to the checkpoint's resolution (square images: CLIP's resize-and-centre-crop is a resize) and
    normalised with its pixel mean and std; texts go through its tokenizer."""

    def __init__(self, path: str, dtype: str = "float32", batch_size: int = 64):
        from imagen_jax.evaluation import clip_import

        self.module, self.variables = clip_import.load_clip(path, dtype)
        self.tokenizer = clip_import.ClipTokenizer(path, self.module.config.max_length)
        mean, std = clip_import.pixel_statistics(path)
        size = self.module.config.image_size
        self.name = f"clip:{os.path.basename(os.path.normpath(path))}"
        self.batch_size = int(batch_size)
        module = self.module

        def images_fn(variables, images):
            pixels = resize_images((images.astype(jnp.float32) + 1.0) / 2.0, size, "bicubic")
            pixels = (jnp.clip(pixels, 0.0, 1.0) - jnp.asarray(mean)) / jnp.asarray(std)
            return module.apply(variables, pixels, method=type(module).embed_images)

        self._images = jax.jit(images_fn)
        self._texts = jax.jit(
            lambda v, ids, mask: module.apply(v, ids, mask, method=type(module).embed_texts)
        )

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        return _batched(
            lambda x: self._images(self.variables, x), np.asarray(images, np.float32), self.batch_size
        )

    def embed_texts(self, prompts: Sequence[str]) -> np.ndarray:
        return _batched(
            lambda p: self._texts(self.variables, *self.tokenizer(p)), list(prompts), self.batch_size
        )


class FamilyClipScorer:
    """A CLIP trained here (family "clip") as a scorer: its EMA parameters, and encode(prompts) -> (embeddings,
    mask) of the frozen text encoder it was trained with. Images of another size are resized (bilinear,
    antialiased) to its own."""

    def __init__(self, family: Any, params: Any, encode: Callable, name: str, batch_size: int = 128):
        self.family, self.params, self.encode, self.name = family, params, encode, name
        self.batch_size = int(batch_size)
        size = family.image_size
        self._images = jax.jit(
            lambda p, x: family.embed_images(p, resize_images(x.astype(jnp.float32), size, "bilinear"))
        )
        self._texts = jax.jit(family.embed_texts)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        return _batched(
            lambda x: self._images(self.params, x), np.asarray(images, np.float32), self.batch_size
        )

    def embed_texts(self, prompts: Sequence[str]) -> np.ndarray:
        def texts(chunk):
            emb, mask = self.encode(list(chunk))
            return self._texts(self.params, np.asarray(emb), np.asarray(mask))

        return _batched(texts, list(prompts), self.batch_size)


def cosines(scorer: Scorer, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """cos(image i, prompt i) [N]; each distinct prompt is embedded once."""
    prompts = list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    distinct = list(dict.fromkeys(prompts))
    text = scorer.embed_texts(distinct)
    index = {p: i for i, p in enumerate(distinct)}
    image = scorer.embed_images(images)
    return np.sum(image * text[[index[p] for p in prompts]], axis=-1)


def clip_scores(scorer: Scorer, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """Per image, 100 x max(cos(image, its prompt), 0) [N]."""
    return 100.0 * np.maximum(cosines(scorer, images, prompts), 0.0)


def clip_score(scorer: Scorer, images: np.ndarray, prompts: Sequence[str]) -> dict[str, Any]:
    """{"mean": the set's CLIP score, "std": its spread over images, "clip": the scorer's name}."""
    scores = clip_scores(scorer, images, prompts)
    return {"mean": float(scores.mean()), "std": float(scores.std()), "clip": scorer.name}


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative) + P(tie) / 2: the area under the ROC curve (Mann-Whitney U)."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not len(positive) or not len(negative):
        raise ValueError("roc_auc needs at least one positive and one negative score")
    order = np.concatenate([positive, negative])
    ranks = np.empty(len(order))
    sort = np.argsort(order, kind="mergesort")
    ranks[sort] = np.arange(1, len(order) + 1)
    for value in np.unique(order):  # ties share their mean rank
        tied = order == value
        ranks[tied] = ranks[tied].mean()
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation of two equally long sequences (nan when either is constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def pearson_interval(r: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% (by default) confidence interval of a Pearson r over n pairs by Fisher's z-transform:
    tanh(atanh(r) -/+ z / sqrt(n - 3)); nan for n <= 3 or |r| = 1, where it is undefined."""
    if n <= 3 or not abs(r) < 1:
        return float("nan"), float("nan")
    centre, half = np.arctanh(r), z / np.sqrt(n - 3)
    return float(np.tanh(centre - half)), float(np.tanh(centre + half))


def wrong_caption(text: str, attribute: str, rng: np.random.Generator) -> str:
    """The caption with one attribute of its first object changed to another value (position: another position,
    or for two objects another relation), so that it is false of the image the caption is true of."""
    scene = shapes.parse_caption(text)
    first = scene.objects[0]
    other = lambda values, now: [v for v in values if v != now][rng.integers(len(values) - 1)]
    if attribute == "position" and scene.relation is not None:
        return shapes.caption(dataclasses.replace(scene, relation=other(shapes.RELATIONS, scene.relation)))
    values = shapes.ATTRIBUTE_VALUES[attribute]
    if attribute == "colour" and len(scene.objects) == 2:  # two objects keep two colours
        values = tuple(c for c in values if c != scene.objects[1].colour)
    changed = dataclasses.replace(first, **{attribute: other(values, getattr(first, attribute))})
    return shapes.caption(dataclasses.replace(scene, objects=(changed, *scene.objects[1:])))


def heldout_auc(scorer: Scorer, dataset: shapes.ShapesDataset, n: int, seed: int = 0) -> dict[str, Any]:
    """How well the CLIP's score tells the true caption of n held-out colour-shape images from captions with one
    attribute changed (one per attribute and image): ROC AUC overall and per attribute, beside the analytic
    judge's on the same pairs (its verdict "every attribute right" as the score)."""
    real = dataset.batch(0, int(n), process_index=HELDOUT_STREAM, split="holdout")
    images, captions = real["images"], real["captions"]
    rng = np.random.default_rng([int(seed), HELDOUT_STREAM])
    wrong = {a: [wrong_caption(c, a, rng) for c in captions] for a in ATTRIBUTES}
    right_clip = cosines(scorer, images, captions)
    wrong_clip = {a: cosines(scorer, images, w) for a, w in wrong.items()}
    judge = lambda texts: np.asarray([s["all"] for s in alignment.judge_scores(images, texts)], np.float64)
    right_judge = judge(captions)
    wrong_judge = {a: judge(w) for a, w in wrong.items()}
    negatives = lambda d: np.concatenate(list(d.values()))
    return {
        "count": int(n),
        "auc": roc_auc(right_clip, negatives(wrong_clip)),
        "auc_per_attribute": {a: roc_auc(right_clip, wrong_clip[a]) for a in ATTRIBUTES},
        "judge_auc": roc_auc(right_judge, negatives(wrong_judge)),
        "judge_auc_per_attribute": {a: roc_auc(right_judge, wrong_judge[a]) for a in ATTRIBUTES},
        "clip_score_right": float(100 * np.maximum(right_clip, 0).mean()),
        "clip_score_wrong": float(100 * np.maximum(negatives(wrong_clip), 0).mean()),
    }


def format_auc(report: dict[str, Any]) -> str:
    """One line: the AUC overall and per attribute, and the judge's."""
    per = ", ".join(f"{a} {report['auc_per_attribute'][a]:.3f}" for a in ATTRIBUTES)
    return (
        f"held-out ROC AUC, right vs one-attribute-wrong captions: {report['auc']:.3f} ({per}; "
        f"{report['count']} images); the analytic judge's: {report['judge_auc']:.3f}"
    )


def plot_fid_vs_clip(points: Sequence[dict[str, Any]], option: str, feature_space: str, path: str) -> str:
    """FID (y) against CLIP score (x), one line per prompt set, each point labelled with its option value (one
    point per guidance weight, as the paper's Pareto curves); a PNG drawn with PIL. Returns the path."""
    from PIL import Image, ImageDraw

    width, height, margin = 640, 440, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    xs = [p["clip_score"]["mean"] for p in points]
    ys = [p["fid"] for p in points]
    pad = max(max(xs) - min(xs), 1.0) * 0.1
    x_lo, x_hi = min(xs) - pad, max(xs) + pad
    y_lo, y_hi = 0.0, max(ys) * 1.1 if max(ys) > 0 else 1.0
    to_px = lambda x, y: (
        margin + (x - x_lo) / (x_hi - x_lo) * (width - 2 * margin),
        height - margin - (y - y_lo) / (y_hi - y_lo) * (height - 2 * margin),
    )
    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    for t in range(6):
        px, _ = to_px(x_lo + (x_hi - x_lo) * t / 5, y_lo)
        _, py = to_px(x_lo, y_lo + (y_hi - y_lo) * t / 5)
        draw.text((px - 10, height - margin + 5), f"{x_lo + (x_hi - x_lo) * t / 5:.1f}", fill="black")
        draw.text((5, py - 5), f"{y_lo + (y_hi - y_lo) * t / 5:.3g}", fill="black")
    clip_name = points[0]["clip_score"]["clip"] if points else ""
    draw.text((width // 2 - 150, height - 25), f"CLIP score (100 x cosine, {clip_name})", fill="black")
    draw.text((margin, 10), f"FID ({feature_space}) vs CLIP score, sweeping {option}", fill="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for c, split in enumerate(dict.fromkeys(p["prompt_set"] for p in points)):
        mine = [p for p in points if p["prompt_set"] == split]
        pixels = [to_px(p["clip_score"]["mean"], p["fid"]) for p in mine]
        colour = colours[c % len(colours)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for (px, py), p in zip(pixels, mine, strict=True):
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
            draw.text((px + 6, py - 12), f"{p['value']}", fill=colour)
        draw.text((width - margin - 110, margin + 8 + 14 * c), f"- {split} prompts", fill=colour)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
    return path
