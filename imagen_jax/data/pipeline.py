"""Training batches for every family. The built-in shapes data (data.source = "shapes", the default) is a pure
function of (seed, step, process), so a resumed run sees the same data. TFDS data (data.source = "tfds") runs
through a Grain pipeline with the same guarantees, whose iterator state is saved with each checkpoint:

    records (TFDS, random access) -> global shuffle (new order each epoch, data.shuffle_seed)
    -> parse (image, candidate captions) -> augment (one caption; centre/random crop or resize; flip)
    -> shard: process p of P takes stream positions p, p + P, ...  -> batch to the per-process batch
    -> [worker processes] -> [join cached text embeddings] -> {"images", "captions"[, "text_embeddings",
       "text_mask"]}

The augmentation's random numbers come from (seed, global stream position), so batch s of process p is the same
whatever the worker count and however often the run was resumed; processes see disjoint examples, and in one
epoch every example once.

Flips: data.random_flip mirrors an image with probability 1/2 and then swaps the words "left" and "right" (and
"leftmost"/"rightmost") in its caption, so that the caption stays true of the mirrored image.
"""

import dataclasses
import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags
from PIL import Image

from imagen_jax.data.shapes import ShapesDataset
from imagen_jax.errors import UserError

SOURCES = ("shapes", "tfds")
CROPS = ("center", "random", "none")  # square crop before resizing; "none" resizes the whole image (squashes)
# Defaults of the data.* keys other than the four each config names (source, image_size, max_objects,
# holdout_combinations): the one place they are written. The config files start their data section from
# data_defaults(); data_option() serves them to a saved config that predates a key.
DATA_DEFAULTS: dict[str, Any] = {
    # data.source = "tfds": a prepared TFDS dataset through the Grain pipeline
    "tfds_name": "imagen_jax_shapes/32px",  # e.g. coco_captions, cifar10, mnist, imagen_jax_shapes/64px
    "tfds_data_dir": "",  # "": $TFDS_DATA_DIR or ~/tensorflow_datasets
    "tfds_split": "train",
    "caption_template": "",  # class-labelled datasets; "": the dataset's own ("a photo of a {label}")
    "shuffle_seed": -1,  # -1: config.seed
    "crop": "center",  # center | random | none: the square cut before resizing to image_size
    "random_flip": False,  # mirror half the images, swapping "left" and "right" in their captions
    "worker_count": 0,  # 0: read in this process (read_threads threads); > 0: that many Grain worker processes
    "read_threads": 2,
    "prefetch_batches": 4,
    "text_join": False,  # look up text embeddings in the pipeline (the cache of mode=encode_text serves them)
    "sr_crop": 0,  # > 0: random crops of this side plus "lowres_images" (their sr_lowres_size versions)
    "sr_lowres_size": 0,
    # shapes with holdout_combinations: how many (colour, shape) pairs the holdout split reserves, the first n of
    # shapes.HOLDOUT_ORDER (6, the default, is shapes.HOLDOUT_PAIRS; at most 16)
    "num_holdout_pairs": 6,
}
# Keys of DATA_DEFAULTS that data_defaults() leaves out, so that a config shows them only when it sets them:
# the prefetch depth (a tuning knob) and the pipeline's SR crops (set by hand where used; cascades crop in
# the model instead).
UNLISTED_DATA_KEYS = ("prefetch_batches", "sr_crop", "sr_lowres_size")


def data_defaults() -> ml_collections.ConfigDict:
    """A config file's data section before the experiment's own settings: DATA_DEFAULTS less UNLISTED_DATA_KEYS
    (a new ConfigDict on each call, for the caller to change)."""
    return ml_collections.ConfigDict({k: v for k, v in DATA_DEFAULTS.items() if k not in UNLISTED_DATA_KEYS})


def data_option(data: ml_collections.ConfigDict, key: str) -> Any:
    """config.data.<key>, or its default when the config leaves it out."""
    return data.get(key, DATA_DEFAULTS[key])


def build_dataset(config: ml_collections.ConfigDict):
    """The dataset named by config.data.source: a ShapesDataset, or a TfdsSource (imagen_jax.data.tfds)."""
    data = config.data
    if data.source not in SOURCES:
        raise UserError(f"data.source={data.source!r} is not available; choose one of {SOURCES}.")
    if data.source == "tfds":
        if data_option(data, "num_holdout_pairs") != DATA_DEFAULTS["num_holdout_pairs"]:
            raise UserError(
                f"data.num_holdout_pairs={data.num_holdout_pairs} applies to data.source=shapes (rendered on the "
                f"fly); a TFDS dataset's splits are fixed when it is prepared. Drop the override, or train on "
                f"data.source=shapes."
            )
        from imagen_jax.data import tfds as tfds_lib  # TFDS is imported only when asked for

        _check_grain_options(data)
        source = tfds_lib.open_source(
            data_option(data, "tfds_name"),
            data_option(data, "tfds_split"),
            data_option(data, "tfds_data_dir"),
            data_option(data, "caption_template"),
        )
        if data_option(data, "random_flip"):  # the tokenizer and the embedding cache see flipped captions too
            source.caption_variant = swap_left_right
        return source
    return ShapesDataset(
        image_size=data.image_size,
        max_objects=data.max_objects,
        holdout_combinations=data.holdout_combinations,
        seed=config.seed,
        num_holdout_pairs=data_option(data, "num_holdout_pairs"),
    )


def local_batch_size(global_batch_size: int) -> int:
    """This process's share of the global batch."""
    if global_batch_size % jax.process_count():
        raise UserError(
            f"train.batch_size={global_batch_size} must be divisible by the process count "
            f"{jax.process_count()}."
        )
    return global_batch_size // jax.process_count()


def train_batches(
    dataset,
    global_batch_size: int,
    start_step: int,
    config: ml_collections.ConfigDict | None = None,
    encode_text: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]] | None = None,
    state: dict | None = None,
) -> Iterator[dict]:
    """Endless process-local batches from `start_step` on: dict(images float32 [b,H,W,3], captions list[str]).

    A TfdsSource needs the config (its data.* options); encode_text serves data.text_join; `state` is the
    iterator state a checkpoint saved (iterator_state), which continues exactly where that run stopped."""
    if isinstance(dataset, ShapesDataset):
        return _shapes_batches(dataset, global_batch_size, start_step)
    if config is None:
        raise ValueError("train_batches needs the config for a TFDS source")
    spec = PipelineSpec.from_config(config, local_batch_size(global_batch_size))
    join = encode_text if data_option(config.data, "text_join") else None
    return GrainBatches(dataset.records, dataset.parser, spec, start_step, join=join, state=state)


def _shapes_batches(dataset: ShapesDataset, global_batch_size: int, start_step: int) -> Iterator[dict]:
    size = local_batch_size(global_batch_size)
    step = start_step
    while True:
        batch = dataset.batch(step, size, process_index=jax.process_index(), split="train")
        yield {"images": np.asarray(batch["images"], np.float32), "captions": list(batch["captions"])}
        step += 1


def iterator_state(batches: Iterator[dict]) -> dict | None:
    """The JSON-able state to checkpoint for `batches` (GrainBatches), or None when the step alone places it
    (the shapes stream)."""
    return batches.get_state() if isinstance(batches, GrainBatches) else None


# -------------------------------------------------------------------------------------------- transforms

_FLIP_WORDS = re.compile(r"\b(left|right)(most)?\b", re.IGNORECASE)


def swap_left_right(caption: str) -> str:
    """The caption of the mirrored image: whole words left <-> right (also ...most), case kept."""

    def swap(m: re.Match) -> str:
        word = "right" if m.group(1).lower() == "left" else "left"
        if m.group(1).isupper():
            word = word.upper()
        elif m.group(1)[0].isupper():
            word = word.capitalize()
        return word + (m.group(2) or "")

    return _FLIP_WORDS.sub(swap, caption)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3], antialiased bicubic (Pillow); unchanged when already that size."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def square_crop(image: np.ndarray, crop: str, rng: np.random.Generator) -> np.ndarray:
    """The largest square of the image: centred ("center"), at a random offset ("random"), or the whole
    image ("none")."""
    h, w = image.shape[:2]
    side = min(h, w)
    if crop == "none" or h == w:
        return image
    if crop == "center":
        top, left = (h - side) // 2, (w - side) // 2
    else:
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    return image[top : top + side, left : left + side]


def paired_crops(
    image: np.ndarray, crop: int, lowres_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A super-resolution training pair from uint8 [S, S, 3]: a random crop [crop, crop, 3] and its low-res
    version [c', c', 3], c' = crop * lowres_size / S (the crop of the lowres_size image at the same place)."""
    size = image.shape[0]
    if not 0 < crop <= size or (crop * lowres_size) % size:
        raise UserError(
            f"data.sr_crop={crop} must be in 1..{size} and give a whole low-res crop "
            f"(sr_crop * sr_lowres_size / image_size)."
        )
    top, left = (int(v) for v in rng.integers(size - crop + 1, size=2))
    high = image[top : top + crop, left : left + crop]
    return high, resize(high, crop * lowres_size // size)


def _to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


@dataclasses.dataclass(frozen=True)
class Augment:
    """(image uint8 [H, W, 3], candidate captions) -> images float32 [S, S, 3] in [-1, 1] and one caption,
    using the element's own random stream (Grain seeds it from the pipeline seed and the stream position)."""

    image_size: int
    crop: str = "center"
    random_flip: bool = False
    sr_crop: int = 0
    sr_lowres_size: int = 0

    def __call__(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        captions = element["captions"]
        caption = captions[int(rng.integers(len(captions)))]  # a new choice every epoch
        image = resize(square_crop(element["image"], self.crop, rng), self.image_size)
        if self.random_flip and rng.random() < 0.5:
            image, caption = image[:, ::-1], swap_left_right(caption)
        out = {"captions": caption}
        if self.sr_crop:
            high, low = paired_crops(image, self.sr_crop, self.sr_lowres_size, rng)
            out["images"], out["lowres_images"] = _to_float(high), _to_float(low)
        else:
            out["images"] = _to_float(image)
        return out


# -------------------------------------------------------------------------------------------- pipeline


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """Everything that fixes the stream of batches a process sees."""

    seed: int
    per_process_batch: int
    augment: Augment
    process_index: int = 0
    process_count: int = 1
    worker_count: int = 0
    read_threads: int = 2
    prefetch_batches: int = 4

    @classmethod
    def from_config(
        cls, config: ml_collections.ConfigDict, per_process_batch: int, **overrides
    ) -> "PipelineSpec":
        data = config.data
        _check_grain_options(data)
        seed = int(data_option(data, "shuffle_seed"))
        fields = dict(
            seed=config.seed if seed < 0 else seed,
            per_process_batch=per_process_batch,
            augment=Augment(
                int(data.image_size),
                data_option(data, "crop"),
                bool(data_option(data, "random_flip")),
                int(data_option(data, "sr_crop")),
                int(data_option(data, "sr_lowres_size")),
            ),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            worker_count=int(data_option(data, "worker_count")),
            read_threads=int(data_option(data, "read_threads")),
            prefetch_batches=int(data_option(data, "prefetch_batches")),
        )
        fields.update(overrides)
        return cls(**fields)

    def identity(self) -> dict[str, Any]:
        """What a saved iterator state must agree with to be continued."""
        a = self.augment
        return {
            "seed": self.seed,
            "per_process_batch": self.per_process_batch,
            "process_index": self.process_index,
            "process_count": self.process_count,
            "augment": [a.image_size, a.crop, a.random_flip, a.sr_crop, a.sr_lowres_size],
        }


def _check_grain_options(data: ml_collections.ConfigDict) -> None:
    crop = data_option(data, "crop")
    if crop not in CROPS:
        raise UserError(f"data.crop={crop!r}: choose one of {', '.join(CROPS)}.")
    for key in ("worker_count", "read_threads", "prefetch_batches", "sr_crop", "sr_lowres_size"):
        if int(data_option(data, key)) < 0:
            raise UserError(f"data.{key}={data_option(data, key)} must be >= 0.")
    if bool(data_option(data, "sr_crop")) != bool(data_option(data, "sr_lowres_size")):
        raise UserError("data.sr_crop and data.sr_lowres_size go together: set both (> 0) or neither.")


def batched_dataset(records: Sequence, parse: Callable[[Any], dict], spec: PipelineSpec) -> grain.MapDataset:
    """The endless random-access dataset of this process's batches: element s is its batch at step s."""
    if len(records) < spec.process_count * spec.per_process_batch:
        raise UserError(
            f"The dataset has {len(records)} examples, fewer than one global batch "
            f"({spec.process_count} x {spec.per_process_batch})."
        )
    ds = grain.MapDataset.source(records).seed(spec.seed)
    ds = ds.shuffle().repeat(None)  # shuffled before repeating: every epoch in its own order
    ds = ds.map(parse).random_map(spec.augment)  # random numbers by global stream position
    ds = ds[spec.process_index :: spec.process_count]
    return ds.batch(spec.per_process_batch, drop_remainder=True)


class GrainBatches:
    """Iterator of process-local batches (dict of numpy arrays, captions a list of str) from a step on, whose
    get_state()/set_state() continue exactly (also with worker processes)."""

    def __init__(
        self,
        records: Sequence,
        parse: Callable[[Any], dict],
        spec: PipelineSpec,
        start_step: int = 0,
        join: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]] | None = None,
        state: dict | None = None,
    ):
        self.spec, self._join = spec, join
        self._batched = batched_dataset(records, parse, spec)
        self._open(start_step)
        if state is not None:
            self.set_state(state)
            if self.next_step != start_step:
                raise UserError(
                    f"The saved data iterator is at step {self.next_step}, the checkpoint at step {start_step}."
                )

    def _open(self, slice_start: int) -> None:
        self.slice_start = self.next_step = slice_start
        ds = self._batched[slice_start:].to_iter_dataset(
            grain.ReadOptions(
                num_threads=self.spec.read_threads, prefetch_buffer_size=self.spec.prefetch_batches
            )
        )
        if self.spec.worker_count:
            if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags (defaults, if none given)
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.spec.worker_count))
        self._iterator = iter(ds)

    def __iter__(self) -> "GrainBatches":
        return self

    def __next__(self) -> dict[str, Any]:
        batch = dict(next(self._iterator))
        batch["captions"] = [str(c) for c in batch["captions"]]
        if self._join is not None:
            embeddings, mask = self._join(batch["captions"])
            batch["text_embeddings"], batch["text_mask"] = np.asarray(embeddings), np.asarray(mask)
        self.next_step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """JSON-able: where the next batch comes from, and the spec it belongs to."""
        return {
            "next_step": self.next_step,
            "slice_start": self.slice_start,
            "grain": self._iterator.get_state(),
            "spec": self.spec.identity(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a get_state() of an iterator over the same data and spec; ValueError naming what
        differs otherwise."""
        saved = json.loads(json.dumps(state["spec"]))
        now = json.loads(json.dumps(self.spec.identity()))
        if saved != now:
            changed = [f"{k} {saved.get(k)} -> {now[k]}" for k in now if saved.get(k) != now[k]]
            raise UserError(f"The saved data iterator belongs to another pipeline ({', '.join(changed)}).")
        self._open(int(state["slice_start"]))
        self._iterator.set_state(state["grain"])
        self.next_step = int(state["next_step"])
