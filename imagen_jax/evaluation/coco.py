"""Zero-shot FID-N on a captioned TFDS dataset, as the Imagen paper measures COCO FID-30K (eval.protocol =
"coco_fid30k"; modes/evaluate.py runs it for a TFDS-trained workdir).

The paper's protocol (Saharia et al. 2022, Sec. 4.1 and Table 1, following DALL-E 2 and GLIDE): 30,000 prompts drawn
at random from the COCO 2014 validation captions, images generated from them, FID against the validation images.
Here:
  - the validation images are COCO val2014, which TFDS's coco_captions holds as its Karpathy splits
    val + test + restval (5,000 + 5,000 + 30,504 = 40,504 images); other datasets use their evaluation split;
  - prompts: eval.num_samples records drawn with eval.seed (with replacement once the split runs out), one of each
    record's captions chosen with the same seed, so every model and run meets the same prompts;
  - reference statistics: every image of that split (eval.num_reference > 0: the first that many in a seeded
    order), centre-cropped to a square and resized (antialiased bicubic, the training pipeline's resize) to the
    generated resolution, so real and generated images reach the feature network alike; the FID Inception then
    resizes both bilinearly to 299 (pytorch-fid);
  - metrics: FID (streaming float64 statistics), and the CLIP score of the generated images against their prompts
    when eval.clip_weights names a CLIP. KID and precision/recall (quadratic in N) and the shapes judge are left out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from imagen_jax.data import pipeline
from imagen_jax.errors import UserError
from imagen_jax.evaluation import clip_score, metrics

PROTOCOLS = ("shapes", "coco_fid30k")
COCO_VAL2014 = "val+test+restval"  # the Karpathy splits that together are COCO's 2014 validation set
PROMPT_SET = "val"  # the report's name for the prompts drawn from the validation split


def validation_split(source: Any) -> str:
    """The split whose images and captions the protocol uses: COCO's val2014, else the dataset's eval split."""
    if source.name.split("/")[0].split(":")[0] == "coco_captions":
        return COCO_VAL2014
    return source.eval_split


class _Records:
    """The records of several splits end to end (TFDS data sources, opened one split each)."""

    def __init__(self, parts: list[Any]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Any:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]


def open_split(source: Any, split: str) -> _Records:
    """The records of `split` ("a+b+c": those splits end to end) of the source's dataset."""
    from imagen_jax.data import tfds as tfds_lib

    return _Records([tfds_lib.open_source(source.name, s, source.data_dir).records for s in split.split("+")])


def draw_prompts(source: Any, records: Any, n: int, seed: int) -> list[str]:
    """n prompts: records drawn with `seed` (a permutation, repeated when n exceeds the split), one caption each."""
    rng = np.random.default_rng([int(seed), 0xC0C0])
    count = len(records)
    order = np.concatenate([rng.permutation(count) for _ in range(-(-n // count))])[:n]
    prompts = []
    for index in order:
        captions = source.parser.captions(records[int(index)])
        prompts.append(captions[int(rng.integers(len(captions)))])
    return prompts


def reference_stats(
    source: Any,
    records: Any,
    image_size: int,
    features: Callable[[np.ndarray], np.ndarray],
    num_reference: int,
    seed: int,
    batch_size: int = 64,
) -> metrics.FeatureStats:
    """Streaming feature statistics of the split's images (all, or num_reference in a seeded order), each
    centre-cropped and resized to image_size, in [-1, 1]."""
    count = len(records)
    order = np.arange(count)
    if 0 < num_reference < count:
        order = np.random.default_rng([int(seed), 0x5EED]).permutation(count)[:num_reference]
    stats = None
    rng = np.random.default_rng(0)  # unused by a centre crop
    for start in range(0, len(order), batch_size):
        batch = []
        for index in order[start : start + batch_size]:
            image = source.parser(records[int(index)])["image"]
            square = pipeline.square_crop(image, "center", rng)
            batch.append(pipeline.resize(square, image_size).astype(np.float32) / 127.5 - 1.0)
        feats = features(np.stack(batch))
        stats = metrics.FeatureStats.of(feats) if stats is None else stats.update(feats)
    return stats


def evaluate(
    subject: Any,
    source: Any,
    image_size: int,
    workdir: str,
    step: int,
    e: ml_collections.ConfigDict,
    features: Any,
    clip: clip_score.Scorer | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """FID (and CLIP score) of subject's images for eval.num_samples validation prompts against the validation
    images' statistics, per sweep value too; the report dict that evaluation/run.py writes."""
    from imagen_jax.evaluation.grid import write_grid

    if not hasattr(source, "parser"):
        raise UserError(
            "eval.protocol=coco_fid30k needs a TFDS dataset (data.source=tfds), e.g. coco_captions."
        )
    start = time.time()
    split = validation_split(source)
    records = open_split(source, split)
    n = int(e.num_samples)
    prompts = draw_prompts(source, records, n, int(e.seed))
    log(f"reference statistics: {split} of {source.name}, {int(e.num_reference) or len(records)} images ...")
    real = reference_stats(source, records, image_size, features.features, int(e.num_reference), int(e.seed))
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    rng = jax.random.key(int(e.seed))

    def run(options: dict[str, Any], tag: int) -> dict[str, Any]:
        images = subject.generate(prompts, jax.random.fold_in(rng, tag), chunk=int(e.batch_size), **options)
        fake = metrics.FeatureStats.empty(real.mean.shape[0])
        for i in range(0, n, 256):
            fake = fake.update(features.features(images[i : i + 256]))
        result: dict[str, Any] = {"fid": metrics.fid_from_stats(real, fake)}
        if clip is not None:
            result["clip_score"] = clip_score.clip_score(clip, images, prompts)
        if tag == 0 and int(e.grid_images):
            shown = min(int(e.grid_images), n)
            result["grid"] = os.path.join(out_dir, f"{step}_{PROMPT_SET}.png")
            write_grid(images[:shown], prompts[:shown], result["grid"], columns=min(shown, 8))
        return result

    report: dict[str, Any] = {
        "step": int(step),
        "family": subject.family,
        "sampling": subject.sampling,
        "protocol": e.protocol,
        "feature_space": features.name,
        "feature_space_info": features.info,
        "num_samples": n,
        "reference": (
            f"{real.count} images of {source.name} split {split!r}, centre-cropped and resized to {image_size}"
        ),
        "settings": e.to_dict(),
        "prompt_sets": {PROMPT_SET: run({}, 0)},
    }
    if e.sweep_option:
        default = subject.sample_defaults.get(e.sweep_option)
        points = []
        for i, value in enumerate(e.sweep_values):
            same = default is not None and value == default
            result = report["prompt_sets"][PROMPT_SET] if same else run({e.sweep_option: value}, i + 1)
            points.append(
                {"value": value, "prompt_set": PROMPT_SET, **{k: v for k, v in result.items() if k != "grid"}}
            )
        report["sweep"] = {"option": e.sweep_option, "points": points}
        if clip is not None:
            report["sweep"]["clip_plot"] = clip_score.plot_fid_vs_clip(
                points, e.sweep_option, features.name, os.path.join(out_dir, f"{step}_sweep_clip.png")
            )
    report["seconds"] = time.time() - start
    return report


def format_report(report: dict[str, Any]) -> list[str]:
    """Console lines: FID (and CLIP score) per sweep value."""
    r = report["prompt_sets"][PROMPT_SET]
    clip = f"  CLIP score {r['clip_score']['mean']:.2f}" if "clip_score" in r else ""
    lines = [
        f"eval at step {report['step']} ({report['sampling']}); {report['protocol']}: FID-{report['num_samples']} "
        f"{r['fid']:.4g}{clip}; features: {report['feature_space']}; reference: {report['reference']}"
    ]
    for p in report.get("sweep", {}).get("points", []):
        clip = f", CLIP score {p['clip_score']['mean']:.2f}" if "clip_score" in p else ""
        lines.append(f"  {report['sweep']['option']}={p['value']}: FID {p['fid']:.4g}{clip}")
    return lines
