"""Sampling from a trained family: images for prompts, a captioned PNG grid, and the judge's verdict on them."""

import functools
import json
import os
import textwrap
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw

from imagen_jax.evaluation.alignment import judge_accuracy
from imagen_jax.experiment import Experiment

PyTree = Any


class SamplingError(ValueError):
    """The sampling request cannot be served (e.g. no prompts)."""


def generate_for_prompts(
    exp: Experiment,
    params: PyTree,
    prompts: Sequence[str],
    rng: jax.Array,
    *,
    chunk: int = 64,
    **options: Any,
) -> np.ndarray:
    """Images float32 [N,H,W,3] in [-1,1], one per prompt, generated `chunk` prompts at a time (jit once)."""
    prompts = list(prompts)
    if not prompts:
        raise SamplingError("No prompts to sample: give at least one (sample.prompts or --prompt).")
    embeddings, mask = exp.text_encoder.encode(prompts)
    embeddings, mask = np.asarray(embeddings), np.asarray(mask)
    chunk = min(chunk, len(prompts))
    generate = jax.jit(functools.partial(exp.family.generate, **options))
    images = []
    for index, start in enumerate(range(0, len(prompts), chunk)):
        pad = max(0, start + chunk - len(prompts))  # pad the last chunk so every call has the same shape
        emb = np.concatenate([embeddings[start : start + chunk], np.repeat(embeddings[-1:], pad, 0)])
        msk = np.concatenate([mask[start : start + chunk], np.repeat(mask[-1:], pad, 0)])
        out = generate(params, emb, msk, jax.random.fold_in(rng, index))
        images.append(np.asarray(out)[: chunk - pad])
    return np.concatenate(images)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1,1] floats -> uint8 [0,255]."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_grid(images: np.ndarray, captions: Sequence[str], path: str, columns: int) -> None:
    """A PNG grid with each image's caption under it, and the captions again in <path>.txt, row by row."""
    pixels = to_uint8(images)
    n, h, w, _ = pixels.shape
    scale = max(1, 96 // w)
    cell_w, text_h = w * scale, 36
    rows = -(-n // columns)
    grid = Image.new("RGB", (columns * (cell_w + 4), rows * (h * scale + text_h + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (img, caption) in enumerate(zip(pixels, captions, strict=True)):
        x, y = (i % columns) * (cell_w + 4), (i // columns) * (h * scale + text_h + 4)
        grid.paste(Image.fromarray(img).resize((cell_w, h * scale), Image.NEAREST), (x, y))
        lines = textwrap.wrap(caption, width=max(8, cell_w // 6))[:3]
        draw.multiline_text((x + 1, y + h * scale + 1), "\n".join(lines), fill=(0, 0, 0), spacing=0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)
    with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
        for r in range(rows):
            f.write(" | ".join(captions[r * columns : (r + 1) * columns]) + "\n")


def sample_and_judge(
    exp: Experiment, params: PyTree, step: int, prompts: Sequence[str] | None = None, **options: Any
) -> dict[str, Any]:
    """Samples for the grid prompts (written to <workdir>/samples/step_<step>.png) and for
    sample.judge_prompts held-out-combination prompts; returns the judge's accuracies for both."""
    sample = exp.config.sample
    prompts = list(sample.prompts if prompts is None else prompts)
    if not prompts or any(not p.strip() for p in prompts):
        raise SamplingError(
            "sample.prompts is empty or holds an empty prompt: give at least one non-empty "
            "prompt, e.g. --config.sample.prompts='(\"a large red circle at the top\",)'."
        )
    rng = jax.random.key(sample.seed)
    grid_prompts = [p for p in prompts for _ in range(sample.num_per_prompt)]
    grid_images = generate_for_prompts(exp, params, grid_prompts, jax.random.fold_in(rng, 0), **options)
    samples_dir = os.path.join(exp.workdir, "samples")
    grid_path = os.path.join(samples_dir, f"step_{step}.png")
    write_grid(grid_images, grid_prompts, grid_path, columns=sample.num_per_prompt)
    result: dict[str, Any] = {"step": step, "grid": grid_path, "options": {k: v for k, v in options.items()}}
    result["grid_judge"] = _judge_or_none(grid_images, grid_prompts)
    if sample.judge_prompts:
        heldout = exp.dataset.prompts(sample.judge_prompts, split="holdout", seed=sample.seed)
        heldout_images = generate_for_prompts(exp, params, heldout, jax.random.fold_in(rng, 1), **options)
        result["heldout_judge"] = judge_accuracy(heldout_images, heldout)
    with open(os.path.join(samples_dir, f"step_{step}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return result


def _judge_or_none(images: np.ndarray, prompts: Sequence[str]) -> dict[str, float] | None:
    """Judge accuracy, or None when a prompt is outside the shapes grammar (a user's free-form prompt)."""
    try:
        return judge_accuracy(images, prompts)
    except ValueError:
        return None


def format_judge(name: str, scores: dict[str, float] | None) -> str:
    """One line: '<name>: 0.812 (all attributes; shape 0.95, colour 0.99, ...; 32 samples)'."""
    if scores is None:
        return f"{name}: n/a (prompts outside the shapes grammar)"
    parts = ", ".join(f"{k} {scores[k]:.3f}" for k in ("shape", "colour", "size", "position") if k in scores)
    return f"{name}: {scores['all']:.3f} (all attributes right; {parts}; {int(scores['count'])} samples)"
