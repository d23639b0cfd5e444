"""Reconstructions of held-out images by a family with an encoder (the VAE family's after_training hook): a PNG grid
of originals next to their reconstructions, and the negative ELBO in bits/dim on held-out images."""

import json
import os
from typing import Any

import jax
import numpy as np

PyTree = Any


def heldout_images(dataset: Any, count: int, seed: int) -> tuple[np.ndarray, list[str]] | None:
    """(images [count,H,W,3] in [-1,1], captions) of the dataset's "holdout" split (the shapes data: scenes
    with held-out (colour, shape) pairs, from a stream training never reads), or None for data without one."""
    if not hasattr(dataset, "batch"):
        return None
    batch = dataset.batch(seed, count, split="holdout")
    return np.asarray(batch["images"], np.float32), list(batch["captions"])


def reconstruction_report(
    exp: Any, params: PyTree, step: int, *, grid_images: int = 8, bpd_images: int = 256, chunk: int = 64
) -> dict[str, Any]:
    """Writes <workdir>/samples/reconstructions_<step>.png (+ .json) and returns {"reconstructions": path,
    "heldout_bits_per_dim": mean negative ELBO (bits/dim) over `bpd_images` held-out images}; for data without a
    held-out split, only a note under "reconstructions"."""
    heldout = heldout_images(exp.dataset, bpd_images, seed=exp.config.sample.seed + 1)
    if heldout is None:
        return {"reconstructions": "skipped: this data source has no held-out image split (shapes data only)"}
    images, captions = heldout
    embeddings, mask = (np.asarray(a) for a in exp.text_encoder.encode(captions))
    reconstruct = jax.jit(exp.family.reconstruct)
    rng = jax.random.key(exp.config.sample.seed)
    chunk = min(chunk, len(images))
    recons, bpds = [], []
    whole = len(images) - len(images) % chunk  # whole chunks only: one shape, one compile
    for index, start in enumerate(range(0, whole, chunk)):
        batch = {
            "images": images[start : start + chunk],
            "text_embeddings": embeddings[start : start + chunk],
            "text_mask": mask[start : start + chunk],
        }
        recon, bpd = reconstruct(params, batch, jax.random.fold_in(rng, index))
        recons.append(np.asarray(recon))
        bpds.append(np.asarray(bpd))
    recons, bpds = np.concatenate(recons), np.concatenate(bpds)
    from imagen_jax.sample import write_grid

    shown = min(grid_images, len(recons))
    pairs = np.stack([images[:shown], recons[:shown]], axis=1).reshape(-1, *images.shape[1:])
    labels = [text for caption in captions[:shown] for text in (caption, "reconstruction")]
    path = os.path.join(exp.workdir, "samples", f"reconstructions_{step}.png")
    write_grid(pairs, labels, path, columns=2)
    result = {"reconstructions": path, "heldout_bits_per_dim": float(bpds.mean())}
    with open(os.path.splitext(path)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump({**result, "step": step, "images": int(len(bpds))}, f, indent=2)
    return result
