"""Captioned images from prepared TensorFlow Datasets, read through TFDS's random-access data sources.

    source = open_source("coco_captions", "train", data_dir)   # a TfdsSource
    source.records[i]    # the raw TFDS record i (what the Grain pipeline reads, in worker processes too)
    source[i]            # source.parser(source.records[i]): {"image": uint8 [H, W, 3], "captions": (str, ...)}

Only prepared data is read: `open_source` loads the dataset's builder from its files in data_dir (no dataset
code runs, so TensorFlow is not needed to train) and reads its ArrayRecord shards. A dataset that is not
prepared there fails with `DatasetNotPreparedError`, whose one-line message is the command that prepares it;
nothing is downloaded. Records become (image, candidate captions): datasets with captions (coco_captions: a
Sequence of {"text"}; the built-in imagen_jax_shapes: one "caption") keep theirs, class-labelled datasets
(mnist, fashion_mnist, cifar10, ...) get one caption from a template such as "a photo of a {label}".
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import read_only_builder, registered

from imagen_jax.errors import UserError

# Caption templates of class-labelled datasets, by dataset name; others use DEFAULT_TEMPLATE.
CLASS_TEMPLATES: dict[str, str] = {
    "mnist": "a handwritten digit {label}",
    "emnist": "a handwritten character {label}",
    "kmnist": "a handwritten japanese character {label}",
    "fashion_mnist": "a photo of a {label}",
    "cifar10": "a photo of a {label}",
    "cifar100": "a photo of a {label}",
}
DEFAULT_TEMPLATE = "a photo of a {label}"
# Split that serves evaluation prompts, by dataset name (else the first of these that exists, else the train one).
EVAL_SPLITS: dict[str, str] = {"imagen_jax_shapes": "holdout", "coco_captions": "val"}
EVAL_SPLIT_FALLBACKS: tuple[str, ...] = ("validation", "val", "test", "holdout")
SHAPES_BUILDER = "imagen_jax_shapes"


class DatasetNotPreparedError(UserError):
    """A TFDS dataset is not prepared in the data_dir (the message says how to prepare it)."""


def default_data_dir(data_dir: str) -> str:
    """data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS's own default)."""
    return os.path.abspath(
        os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR", "") or "~/tensorflow_datasets")
    )


def prepare_command(name: str, data_dir: str) -> str:
    """The shell command that prepares dataset `name` (optionally 'name/config') in data_dir as ArrayRecord."""
    if name.split("/")[0].split(":")[0] == SHAPES_BUILDER:
        config = name.split("/")[1].split(":")[0] if "/" in name else ""
        flag = f" --config {config}" if config else ""
        return f"python -m imagen_jax.data.shapes_tfds --data_dir {data_dir}{flag}"
    return f"pip install tensorflow && tfds build {name} --data_dir={data_dir} --file_format=array_record"


def _not_prepared(name: str, data_dir: str, why: str) -> DatasetNotPreparedError:
    return DatasetNotPreparedError(
        f"The TFDS dataset {name!r} is not prepared in {data_dir} ({why}). Nothing is downloaded at run time: "
        f"prepare it once with `{prepare_command(name, data_dir)}` (or set data.tfds_data_dir to where it is)."
    )


def load_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The builder of a prepared dataset ('name', 'name/config' or 'name:version'), from its files in data_dir.

    Falls back to the dataset's code only to let a mocked TFDS (tfds.testing.mock_data) serve it; raises
    DatasetNotPreparedError when the data is not on disk."""
    data_dir = default_data_dir(data_dir)
    try:  # the prepared files alone: no dataset code, hence no TensorFlow
        return read_only_builder.builder_from_files(name, data_dir=data_dir)
    except registered.DatasetNotFoundError:
        pass
    # Not on disk: the code builder (TFDS keeps GCS disabled, so nothing is fetched), whose data source fails
    # below unless TFDS is mocked. Its failure to import TensorFlow (coco's code needs it) prints a banner.
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return tfds.builder(name, data_dir=data_dir)
    except registered.DatasetNotFoundError as err:
        raise _not_prepared(name, data_dir, "not found there, and TFDS has no builder of that name") from err
    except ImportError as err:
        raise _not_prepared(name, data_dir, "no prepared files found") from err


def _as_data_source(builder: tfds.core.DatasetBuilder, name: str, split: str, data_dir: str, decoders=None):
    splits = list(builder.info.splits) if builder.info.splits else []
    if splits and split.split("[")[0] not in splits:
        raise UserError(
            f"data.tfds_split={split!r}: the TFDS dataset {name!r} has the splits {', '.join(splits)}."
        )
    try:
        return builder.as_data_source(split=split, decoders=decoders)
    except NotImplementedError as err:  # prepared as TFRecord (no random access), or not prepared at all
        if not builder.is_prepared():
            raise _not_prepared(name, default_data_dir(data_dir), "no prepared files found") from err
        raise DatasetNotPreparedError(
            f"The TFDS dataset {name!r} in {default_data_dir(data_dir)} is prepared as "
            f"{builder.info.file_format}, which has no random access; prepare it again as ArrayRecord: "
            f"`{prepare_command(name, default_data_dir(data_dir))}`."
        ) from err
    except (ValueError, AssertionError, FileNotFoundError) as err:
        raise _not_prepared(name, default_data_dir(data_dir), "no ArrayRecord files") from err


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class RecordParser:
    """A raw TFDS record -> {"image": uint8 [H, W, 3], "captions": tuple[str, ...]} (picklable, for workers)."""

    kind: str  # "captions" (Sequence of {"text"}), "caption" (one Text), "label" (ClassLabel + template)
    template: str = DEFAULT_TEMPLATE
    label_names: tuple[str, ...] = ()

    def captions(self, record: dict) -> tuple[str, ...]:
        """The record's candidate captions (never empty)."""
        if self.kind == "captions":
            texts = record["captions"]["text"]
            found = tuple(_text(t).strip() for t in np.asarray(texts).reshape(-1))
            return tuple(t for t in found if t) or ("",)
        if self.kind == "caption":
            return (_text(record["caption"]).strip(),)
        label = int(record["label"])
        name = self.label_names[label] if label < len(self.label_names) else str(label)
        return (self.template.format(label=name.replace("_", " ")),)

    def __call__(self, record: dict) -> dict[str, Any]:
        image = np.asarray(record["image"])
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        elif image.shape[-1] == 4:
            image = image[..., :3]
        if image.dtype != np.uint8:
            raise ValueError(f"expected uint8 images, got {image.dtype}")
        return {"image": image, "captions": self.captions(record)}


class TfdsSource:
    """One split of a prepared TFDS dataset: raw records by index, plus what the experiment needs from a dataset
    (caption_corpus for the tokenizer and the embedding cache, prompts for evaluation)."""

    def __init__(self, name: str, split: str = "train", data_dir: str = "", caption_template: str = ""):
        self.name, self.split, self.data_dir = name, split, default_data_dir(data_dir)
        self.caption_variant: Callable[[str], str] | None = None  # e.g. the pipeline's flip of a caption
        self.builder = load_builder(name, self.data_dir)
        self.records = _as_data_source(self.builder, name, split, self.data_dir)
        features = self.builder.info.features
        base = name.split("/")[0].split(":")[0]
        if "image" not in features:
            raise UserError(f"The TFDS dataset {name!r} has no 'image' feature (features: {list(features)}).")
        if "captions" in features:
            self.parser = RecordParser("captions")
        elif "caption" in features:
            self.parser = RecordParser("caption")
        elif "label" in features and isinstance(features["label"], tfds.features.ClassLabel):
            template = caption_template or CLASS_TEMPLATES.get(base, DEFAULT_TEMPLATE)
            if "{label}" not in template:
                raise UserError(f"data.caption_template={template!r} must contain '{{label}}'.")
            self.parser = RecordParser("label", template, tuple(features["label"].names))
        else:
            raise UserError(
                f"The TFDS dataset {name!r} has neither captions nor a class label (features: {list(features)})."
            )
        self.eval_split = EVAL_SPLITS.get(base) or next(
            (s for s in EVAL_SPLIT_FALLBACKS if s in (self.builder.info.splits or {})), split
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The parsed record: {"image": uint8 [H, W, 3], "captions": tuple[str, ...]}."""
        return self.parser(self.records[index])

    def _text_records(self, split: str) -> Sequence[dict]:
        """The split's records with their images left encoded (cheap to read for the captions)."""
        records = _as_data_source(
            self.builder, self.name, split, self.data_dir, {"image": tfds.decode.SkipDecoding()}
        )
        try:
            len(records) and records[0]
        except (ImportError, ValueError):  # TFDS mocked without TensorFlow cannot encode its fake examples
            records = _as_data_source(self.builder, self.name, split, self.data_dir)
        return records

    def caption_corpus(self, n: int | None = None) -> list[str]:
        """Distinct captions of the training split in record order, each followed by its caption_variant (the
        flipped form, when the pipeline flips) if that differs; at most n, all when n is None."""
        if self.parser.kind == "label":
            texts = (self.parser.captions({"label": i})[0] for i in range(len(self.parser.label_names)))
        else:
            records = self._text_records(self.split)
            texts = (c for i in range(len(records)) for c in self.parser.captions(records[i]))
        unique: dict[str, None] = {}
        for c in texts:
            unique.setdefault(c, None)
            if self.caption_variant is not None:
                unique.setdefault(self.caption_variant(c), None)
            if n is not None and len(unique) >= n:
                break
        return list(unique)[:n]

    def prompts(self, n: int, split: str = "holdout", seed: int = 0) -> list[str]:
        """n captions of the evaluation split (`split` names the role; the dataset's eval_split serves it), in a
        seeded order, distinct while the split has enough."""
        del split
        records = self._text_records(self.eval_split)
        order = np.random.default_rng([seed, 0x9E37]).permutation(len(records))
        unique: dict[str, None] = {}
        for i in order[: max(4 * n, n + 16)]:
            unique.setdefault(self.parser.captions(records[int(i)])[0], None)
            if len(unique) >= n:
                break
        pool = list(unique) or [""]
        return [pool[i % len(pool)] for i in range(n)]


def open_source(
    name: str, split: str = "train", data_dir: str = "", caption_template: str = ""
) -> TfdsSource:
    """The split of a prepared TFDS dataset (see TfdsSource); DatasetNotPreparedError when it is not on disk."""
    return TfdsSource(name, split, data_dir, caption_template)
