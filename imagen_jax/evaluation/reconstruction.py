"""Reconstructions of held-out images by a family with an encoder (capabilities.reconstructs: the VAE family), reported
after training: a PNG grid of originals next to their reconstructions, and the negative ELBO in bits/dim on held-out
images."""

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from imagen_jax.evaluation.grid import write_grid

PyTree = Any


def heldout_images(dataset: Any, count: int, seed: int) -> tuple[np.ndarray, list[str]] | None:
    """(images [count,H,W,3] in [-1,1], captions) of the dataset's "holdout" split (the shapes data: scenes
    with held-out (colour, shape) pairs, from a stream training never reads), or None for data without one."""
    if not hasattr(dataset, "batch"):
        return None
    batch = dataset.batch(seed, count, split="holdout")
    return np.asarray(batch["images"], np.float32), list(batch["captions"])


def reconstruction_report(
    reconstruct: Callable[[PyTree, dict[str, Any], jax.Array], tuple[jax.Array, jax.Array]],
    params: PyTree,
    dataset: Any,
    encode: Callable[[list[str]], tuple[Any, Any]],
    samples_dir: str,
    step: int,
    seed: int,
    *,
    grid_images: int = 8,
    bpd_images: int = 256,
    chunk: int = 64,
) -> dict[str, Any]:
    """Writes <samples_dir>/reconstructions_<step>.png (+ .json) and returns {"reconstructions": path,
    "heldout_bits_per_dim": mean negative ELBO (bits/dim) over `bpd_images` held-out images}; for data without a
    held-out split, only a note under "reconstructions". reconstruct(params, batch, rng) -> (images [B,H,W,3],
    bits/dim [B]) is the family's; encode(captions) -> (embeddings, mask) the text encoder's; the held-out
    images are drawn with seed + 1, the posterior noise with `seed`."""
    heldout = heldout_images(dataset, bpd_images, seed=seed + 1)
    if heldout is None:
        return {"reconstructions": "skipped: this data source has no held-out image split (shapes data only)"}
    images, captions = heldout
    embeddings, mask = (np.asarray(a) for a in encode(captions))
    reconstruct = jax.jit(reconstruct)
    rng = jax.random.key(seed)
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
    shown = min(grid_images, len(recons))
    pairs = np.stack([images[:shown], recons[:shown]], axis=1).reshape(-1, *images.shape[1:])
    labels = [text for caption in captions[:shown] for text in (caption, "reconstruction")]
    path = os.path.join(samples_dir, f"reconstructions_{step}.png")
    write_grid(pairs, labels, path, columns=2)
    result = {"reconstructions": path, "heldout_bits_per_dim": float(bpds.mean())}
    with open(os.path.splitext(path)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump({**result, "step": step, "images": int(len(bpds))}, f, indent=2)
    return result
