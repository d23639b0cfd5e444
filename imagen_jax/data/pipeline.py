"""Training batches for every family: deterministic per (seed, step, process), so resumed runs see the same data."""

from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from imagen_jax.data.shapes import ShapesDataset

SOURCES = ("shapes",)


def build_dataset(config: ml_collections.ConfigDict) -> ShapesDataset:
    """The dataset named by config.data.source."""
    data = config.data
    if data.source not in SOURCES:
        raise ValueError(f"data.source={data.source!r} is not available; choose one of {SOURCES}.")
    return ShapesDataset(
        image_size=data.image_size,
        max_objects=data.max_objects,
        holdout_combinations=data.holdout_combinations,
        seed=config.seed,
    )


def local_batch_size(global_batch_size: int) -> int:
    """This process's share of the global batch."""
    if global_batch_size % jax.process_count():
        raise ValueError(
            f"train.batch_size={global_batch_size} must be divisible by the process count "
            f"{jax.process_count()}."
        )
    return global_batch_size // jax.process_count()


def train_batches(dataset: ShapesDataset, global_batch_size: int, start_step: int) -> Iterator[dict]:
    """Endless process-local batches from `start_step` on: dict(images float32 [b,H,W,3], captions list[str])."""
    size = local_batch_size(global_batch_size)
    step = start_step
    while True:
        batch = dataset.batch(step, size, process_index=jax.process_index(), split="train")
        yield {"images": np.asarray(batch["images"], np.float32), "captions": list(batch["captions"])}
        step += 1
