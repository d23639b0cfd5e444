"""Sample quality and text alignment of a generator, written to <workdir>/eval/ (mode=eval: modes/evaluate.py).

For each prompt set (eval.prompt_sets: "train" = captions of the training split, "holdout" = captions with a
held-out colour-shape pair) the reference is eval.num_samples real images of that split from an evaluation
stream the training never reads, and the prompts are their own captions, so generated and real images share
one caption distribution. Generated images come from the family's generate (the EMA parameters, the config's
sampling settings); FID, KID and precision/recall compare their features with the reference's, in the
feature space eval.feature_space ("shapes": the cached shapes CNN; "inception": pytorch-fid's InceptionV3 from
eval.inception_weights), and the shapes judge scores their alignment with the prompts per attribute.

eval.sweep_option / eval.sweep_values repeat this for each value of one sampling option (guidance_scale for
Imagen, truncation for the GAN): FID against alignment, one point per value, plotted to eval/<step>_sweep.png.

Writes eval/<step>.json (every number, with its feature space), eval/<step>_<set>.png (a captioned sample grid)
and TensorBoard scalars under tensorboard/eval/.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from imagen_jax.data import shapes
from imagen_jax.errors import UserError
from imagen_jax.evaluation import alignment, clip_score, coco, feature_net, metrics

PROMPT_SETS = ("train", "holdout")
FEATURE_SPACES = ("shapes", "inception")
EVAL_STREAM = 7919  # the process index of the reference stream: training reads 0 .. process_count - 1


def default_settings() -> ml_collections.ConfigDict:
    """The eval section's keys and defaults: the one place they are written. The config files start their eval
    section from it; settings_of() fills in what a (saved) config's own section leaves out."""
    e = ml_collections.ConfigDict()
    e.num_samples = 1000  # generated images per prompt set (and as many real reference images)
    e.prompt_sets = PROMPT_SETS  # captions of the training split / captions with held-out colour-shape pairs
    e.feature_space = "shapes"  # shapes (a small CNN trained once on the shapes data) | inception
    e.inception_weights = ""  # for inception: pytorch-fid pt_inception-2015-12-05-6726825d.pth (or .npz)
    e.cache_dir = ""  # the shapes feature network's cache; "": $IMAGEN_JAX_CACHE or ~/.cache/imagen_jax
    e.feature_net = ml_collections.ConfigDict()  # the shapes feature network (its spec keys the cache)
    e.feature_net.widths = (16, 32, 64)
    e.feature_net.feature_dim = 128
    e.feature_net.steps = 500
    e.feature_net.batch_size = 64
    e.kid_subsets = 100
    e.kid_subset_size = 500  # of num_samples: subsets smaller than the set, so their spread means something
    e.pr_k = 3  # neighbours for the precision/recall manifolds
    e.seed = 0  # the reference stream and the sampling noise
    e.batch_size = 64  # prompts per generate call
    e.grid_images = 16  # generated images shown per prompt set in eval/<step>_<set>.png
    e.sweep_option = ""  # a sampling option of the family (e.g. guidance_scale, truncation); "": no sweep
    e.sweep_values = ()  # FID vs alignment for each value (eval/<step>_sweep.png)
    # a CLIP (a Hugging Face CLIP directory or a family=clip workdir): adds the CLIP score (100 x cosine, clipped
    # at 0) per prompt set, and a sweep's FID against it (eval/<step>_sweep_clip.png); "": none
    e.clip_weights = ""
    # shapes: the per-prompt-set evaluation above | coco_fid30k: zero-shot FID-N of prompts drawn from a TFDS
    # dataset's validation captions against its validation images (evaluation/coco.py; N = num_samples, 30000)
    e.protocol = "shapes"
    e.num_reference = 0  # coco_fid30k: validation images in the reference statistics; 0: all of them
    return e


def settings_of(config: ml_collections.ConfigDict, sweep: bool = True) -> ml_collections.ConfigDict:
    """default_settings() overridden by config.eval (absent keys keep their defaults), checked (the sweep too,
    unless sweep=False: a caller that picks the sweep itself)."""
    settings = default_settings()
    own = config.get("eval")
    if own is not None:
        for key, value in own.items():
            if key not in settings:
                raise UserError(f"eval.{key} is not an eval setting; known: {', '.join(sorted(settings))}.")
            settings[key] = value
    check_settings(settings)
    if sweep:
        check_sweep(settings, config)
    return settings


def check_sweep(e: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
    """The swept option must be one of the family's sampling settings (a key of config.sample)."""
    sample = config.get("sample") or {}
    if e.sweep_option and e.sweep_option not in sample:
        raise UserError(
            f"eval.sweep_option={e.sweep_option!r} is not a sampling setting of this {config.family} config "
            f"(config.sample has {', '.join(sorted(sample))}); choose one of them, or '' for no sweep."
        )


def check_settings(e: ml_collections.ConfigDict) -> None:
    """One clear message per impossible eval setting."""
    if int(e.num_samples) < 4:
        raise UserError(f"eval.num_samples={e.num_samples} must be >= 4 (k-NN radii need k + 1 samples).")
    if not e.prompt_sets or any(s not in PROMPT_SETS for s in e.prompt_sets):
        raise UserError(f"eval.prompt_sets={tuple(e.prompt_sets)} must name some of {PROMPT_SETS}.")
    if e.feature_space not in FEATURE_SPACES:
        raise UserError(f"eval.feature_space={e.feature_space!r}; choose one of {FEATURE_SPACES}.")
    if e.feature_space == "inception" and not os.path.isfile(e.inception_weights):
        raise UserError(
            f"eval.feature_space=inception needs eval.inception_weights, the local path of pytorch-fid's FID "
            f"Inception weights (pt_inception-2015-12-05-6726825d.pth or a converted .npz); got "
            f"{e.inception_weights!r}, which is not a file. Nothing is downloaded."
        )
    if not 1 <= int(e.pr_k) < int(e.num_samples):
        raise UserError(f"eval.pr_k={e.pr_k} must be in [1, eval.num_samples).")
    if e.sweep_option and not e.sweep_values:
        raise UserError(f"eval.sweep_option={e.sweep_option!r} needs eval.sweep_values (a tuple of values).")
    if e.protocol not in coco.PROTOCOLS:
        raise UserError(f"eval.protocol={e.protocol!r}; choose one of {coco.PROTOCOLS}.")
    if int(e.num_reference) < 0:
        raise UserError(f"eval.num_reference={e.num_reference} must be >= 0 (0: every validation image).")
    if e.clip_weights:
        clip_score.clip_kind(os.path.abspath(os.path.expanduser(e.clip_weights)), "eval.clip_weights")


class _Features:
    """The configured feature space: `name`, `info` and `features(images [N,H,W,3] in [-1,1]) -> [N, D]`."""

    def __init__(self, e: ml_collections.ConfigDict, image_size: int, log: Callable[[str], None]):
        if e.feature_space == "shapes":
            net = feature_net.load_or_train(feature_net_spec(e, image_size), e.cache_dir, log=log)
            self.name, self.info, self._fn = net.name, net.info, net.features
        else:
            from imagen_jax.evaluation import inception

            apply = inception.make_feature_fn(inception.load_variables(e.inception_weights))
            self.name = "inception-v3-fid-pool3-2048"
            self.info = {"weights": os.path.abspath(e.inception_weights), "resize": inception.INPUT_SIZE}
            self._fn = lambda images: np.concatenate(
                [np.asarray(apply(images[i : i + 32])) for i in range(0, len(images), 32)]
            )

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._fn(np.asarray(images, np.float32))


def feature_net_spec(e: ml_collections.ConfigDict, image_size: int) -> feature_net.FeatureNetSpec:
    """The shapes feature network the eval settings ask for, at the data's image size."""
    net = e.feature_net
    return feature_net.FeatureNetSpec(
        image_size=int(image_size),
        widths=tuple(int(w) for w in net.widths),
        feature_dim=int(net.feature_dim),
        steps=int(net.steps),
        batch_size=int(net.batch_size),
    )


def reference_batch(dataset: Any, split: str, n: int, seed: int) -> dict[str, Any]:
    """n real images [n,H,W,3] in [-1,1] and their captions from `split` of the experiment's data, drawn with
    the eval seed (not the run's, so every run and model is judged against the same images) from a stream
    training never reads."""
    if not isinstance(dataset, shapes.ShapesDataset):
        raise UserError(
            "mode=eval needs the built-in shapes data (data.source=shapes) for its reference images and judge."
        )
    same_data = copy.copy(dataset)  # every setting of the experiment's data (its held-out pairs too) ...
    same_data.seed = int(seed)  # ... but the eval seed
    return same_data.batch(0, int(n), process_index=EVAL_STREAM, split=split)


def kid_subset_size(e: ml_collections.ConfigDict, num_real: int, num_fake: int) -> int:
    """eval.kid_subset_size, at most half the smaller set: subsets as large as the set would all hold the same
    samples, and their spread (kid_std) would say nothing."""
    return max(2, min(int(e.kid_subset_size), min(num_real, num_fake) // 2))


def evaluate_images(
    generated: np.ndarray,
    captions: Sequence[str],
    real_features: np.ndarray,
    features: _Features,
    e: ml_collections.ConfigDict,
    clip: clip_score.Scorer | None = None,
) -> dict[str, Any]:
    """Every metric of generated images against the reference features, plus the judge's alignment (and the
    CLIP score with a CLIP)."""
    fake = features.features(generated)
    result: dict[str, Any] = metrics.all_metrics(
        real_features,
        fake,
        kid_subsets=int(e.kid_subsets),
        kid_subset_size=kid_subset_size(e, len(real_features), len(fake)),
        k=int(e.pr_k),
        seed=int(e.seed),
    )
    result["alignment"] = alignment.judge_accuracy(generated, list(captions))
    if clip is not None:
        result["clip_score"] = clip_score.clip_score(clip, generated, captions)
    return result


@dataclasses.dataclass(frozen=True)
class Subject:
    """What is evaluated: generate(prompts, rng, options) -> images [N,H,W,3] in [-1,1] (`chunk` prompts per
    call), the family's name, its sampling settings in words, and its default sampling options."""

    generate: Callable[..., np.ndarray]
    family: str
    sampling: str
    sample_defaults: Mapping[str, Any]


def evaluate(
    subject: Subject,
    dataset: Any,
    image_size: int,
    workdir: str,
    step: int,
    e: ml_collections.ConfigDict,
    log=print,
    clip: clip_score.Scorer | None = None,
) -> dict[str, Any]:
    """Evaluates `subject`'s images at `step` with the eval settings `e` against `dataset`'s real images; writes
    eval/<step>.json, eval/<step>_<set>.png (and eval/<step>_sweep.png with a sweep) under `workdir`; returns the
    JSON dict. With a CLIP (eval.clip_weights, opened by the caller), every prompt set also gets its CLIP score.
    """
    from imagen_jax.evaluation.grid import write_grid

    start = time.time()
    check_settings(e)
    features = _Features(e, image_size, log)
    if e.protocol != "shapes":  # zero-shot FID on a captioned dataset's validation split
        report = coco.evaluate(subject, dataset, image_size, workdir, step, e, features, clip, log)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "eval", f"{step}.json"), "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
        return report
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    rng = jax.random.key(int(e.seed))
    n = int(e.num_samples)
    references = {}
    for split in e.prompt_sets:
        real = reference_batch(dataset, split, n, e.seed)
        references[split] = (real["captions"], features.features(real["images"]))

    def run(options: dict[str, Any], tag: int) -> dict[str, Any]:
        # every prompt set in one generate call: one compile per option value
        prompts = [c for split in e.prompt_sets for c in references[split][0]]
        key = jax.random.fold_in(rng, tag)
        images = subject.generate(prompts, key, chunk=int(e.batch_size), **options)
        results = {}
        for index, split in enumerate(e.prompt_sets):
            captions, real_features = references[split]
            mine = images[index * n : (index + 1) * n]
            results[split] = evaluate_images(mine, captions, real_features, features, e, clip)
            if tag == 0 and int(e.grid_images):
                shown = min(int(e.grid_images), n)
                path = os.path.join(out_dir, f"{step}_{split}.png")
                write_grid(mine[:shown], captions[:shown], path, columns=min(shown, 8))
                results[split]["grid"] = path
        return results

    report: dict[str, Any] = {
        "step": int(step),
        "family": subject.family,
        "sampling": subject.sampling,
        "feature_space": features.name,
        "feature_space_info": features.info,
        "num_samples": n,
        "kid_subset_size": kid_subset_size(e, n, n),
        "reference": f"{n} real images per prompt set (split = prompt set, stream {EVAL_STREAM}, seed {e.seed})",
        "settings": e.to_dict(),
        "prompt_sets": run({}, 0),
    }
    if e.sweep_option:
        default = subject.sample_defaults.get(e.sweep_option)
        points = []
        for i, value in enumerate(e.sweep_values):
            same = default is not None and value == default  # the main evaluation already holds it
            results = report["prompt_sets"] if same else run({e.sweep_option: value}, i + 1)
            for split, r in results.items():
                points.append(
                    {"value": value, "prompt_set": split, **{k: v for k, v in r.items() if k != "grid"}}
                )
        report["sweep"] = {"option": e.sweep_option, "points": points}
        report["sweep"]["plot"] = plot_sweep(
            points, e.sweep_option, features.name, os.path.join(out_dir, f"{step}_sweep.png")
        )
        if clip is not None:  # the paper's Pareto curve: FID against CLIP score, one point per value
            report["sweep"]["clip_plot"] = clip_score.plot_fid_vs_clip(
                points, e.sweep_option, features.name, os.path.join(out_dir, f"{step}_sweep_clip.png")
            )
    report["seconds"] = time.time() - start
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, f"{step}.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        _log_tensorboard(workdir, step, report)
    return report


def _log_tensorboard(workdir: str, step: int, report: dict[str, Any]) -> None:
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(os.path.join(workdir, "tensorboard", "eval"))
    for split, r in report["prompt_sets"].items():
        for key in ("fid", "kid", "precision", "recall"):
            writer.add_scalar(f"eval/{split}/{key}", r[key], step)
        for key in alignment.ATTRIBUTES:
            writer.add_scalar(f"eval/{split}/alignment_{key}", r["alignment"][key], step)
        if "clip_score" in r:
            writer.add_scalar(f"eval/{split}/clip_score", r["clip_score"]["mean"], step)
    writer.close()


def plot_sweep(points: Sequence[dict[str, Any]], option: str, feature_space: str, path: str) -> str:
    """FID (y) against alignment (x, all attributes right, with its 95% binomial interval), one line per prompt
    set, each point labelled with its option value; a matplotlib PNG (evaluation/plots.py). Returns the path."""
    from imagen_jax.evaluation import plots

    return plots.sweep_figure(points, option, feature_space, path)


def format_report(report: dict[str, Any]) -> list[str]:
    """Console lines: one per prompt set with every metric, naming the feature space."""
    if report.get("protocol", "shapes") != "shapes":
        return coco.format_report(report)
    lines = [f"eval at step {report['step']} ({report['sampling']}); features: {report['feature_space']}"]
    for split, r in report["prompt_sets"].items():
        lines.append(
            f"  {split} prompts: FID {r['fid']:.4g}  KID {r['kid']:.4g} +- {r['kid_std']:.2g}  "
            f"precision {r['precision']:.3f}  recall {r['recall']:.3f}  alignment {r['alignment']['all']:.3f}"
            + (f"  CLIP score {r['clip_score']['mean']:.2f}" if "clip_score" in r else "")
        )
    return lines
