"""The built-in shapes data as a TFDS dataset (`imagen_jax_shapes`), so the TFDS path runs anywhere offline.

    python -m imagen_jax.data.shapes_tfds --data_dir /data/tfds                 # the 64px config (default)
    python -m imagen_jax.data.shapes_tfds --data_dir /data/tfds --config 32px

Splits "train" and "holdout" as in ShapesDataset (held-out (colour, shape) pairs only in "holdout"); each
example is a PNG image and its caption. Preparing needs no TensorFlow (images are PNG-encoded with Pillow) and
no download; reading needs only the prepared files.
"""

from __future__ import annotations

import argparse
import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from imagen_jax.data.shapes import ShapesDataset

EXAMPLES_PER_BATCH = 64  # images rendered per ShapesDataset.batch call


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    """Image side, example counts per split, scene complexity and the rendering seed."""

    image_size: int = 64
    train_examples: int = 20000
    holdout_examples: int = 1000
    max_objects: int = 1
    seed: int = 0


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class ImagenJaxShapes(tfds.core.GeneratorBasedBuilder):
    """Captioned shapes (imagen_jax.data.shapes), rendered deterministically from the config's seed."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # Nothing to download, so no URL checksums file; TFDS's lookup of one needs importlib_resources.
    url_infos = None
    BUILDER_CONFIGS = [
        ShapesConfig(name="64px", image_size=64, description="64x64, one object per image"),
        ShapesConfig(name="32px", image_size=32, description="32x32, one object per image"),
        ShapesConfig(name="16px", image_size=16, train_examples=4096, description="16x16, one object"),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description="Procedurally rendered shapes with exact captions (imagen_jax.data.shapes).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "caption": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "caption"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        c = self.builder_config
        return {
            "train": self._generate_examples("train", c.train_examples),
            "holdout": self._generate_examples("holdout", c.holdout_examples),
        }

    def _generate_examples(self, split: str, count: int):
        c = self.builder_config
        data = ShapesDataset(c.image_size, c.max_objects, holdout_combinations=True, seed=c.seed)
        for start in range(0, count, EXAMPLES_PER_BATCH):
            size = min(EXAMPLES_PER_BATCH, count - start)
            batch = data.batch(start // EXAMPLES_PER_BATCH, size, split=split)
            images = np.clip(np.rint((batch["images"] + 1.0) * 127.5), 0, 255).astype(np.uint8)
            for i in range(size):
                yield start + i, {"image": _png(images[i]), "caption": batch["captions"][i]}


def prepare(data_dir: str, config: str | ShapesConfig = "64px") -> tfds.core.DatasetBuilder:
    """Renders and writes the dataset as ArrayRecord under data_dir; returns the builder (no-op if prepared)."""
    builder = ImagenJaxShapes(config=config, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="TFDS data directory to write into")
    parser.add_argument("--config", default="64px", choices=[c.name for c in ImagenJaxShapes.BUILDER_CONFIGS])
    args = parser.parse_args(argv)
    builder = prepare(args.data_dir, args.config)
    print(f"prepared {builder.info.full_name} in {builder.data_dir}: {dict(builder.info.splits)}")


if __name__ == "__main__":
    main()
