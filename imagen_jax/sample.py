"""Sampling from a trained family: images for prompts, a captioned PNG grid, and the judge's verdict on them."""

import dataclasses
import functools
import json
import os
import textwrap
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
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


# The cascade ---------------------------------------------------------------------------------------------------


def stage_experiment(exp: Experiment, name: str) -> Experiment:
    """The experiment of cascade stage `name` (its config, family, run folder and state layout), sharing the
    dataset, text encoder and mesh of `exp`, which is built for any stage of the same cascade."""
    import flax.linen as nn

    from imagen_jax import parallel
    from imagen_jax.models.family import get_family

    config = ml_collections.ConfigDict(exp.config.to_dict())
    config.train_stage = name
    family = get_family(config)
    stage_exp = dataclasses.replace(
        exp, config=config, family=family, workdir=os.path.join(_top_workdir(exp), family.stage_dir)
    )
    boxed = jax.eval_shape(stage_exp._boxed_state, jax.random.key(0))
    stage_exp.state_shardings = parallel.logical_shardings(boxed, exp.mesh)
    stage_exp.state_shapes = nn.meta.unbox(boxed)
    return stage_exp


def restore_stage_params(exp: Experiment, name: str, *, train_command: str) -> tuple[PyTree, int]:
    """(EMA parameters, step) of stage `name`'s latest checkpoint; a SamplingError naming the stage when it
    was never trained (sampling it would give pure noise)."""
    stage_exp = stage_experiment(exp, name)
    checkpointer = stage_exp.checkpointer()
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise SamplingError(
                f"Stage {name!r} of the cascade was never trained ({stage_exp.workdir} has no checkpoint), so "
                f"its samples would be pure noise. Train it first: {train_command} --config.train_stage={name}"
            )
        state, _ = stage_exp.restore(checkpointer, step)
    finally:
        checkpointer.close()
    return state.ema_params, step


def load_lowres_image(path: str, size: int) -> np.ndarray:
    """A user's image file as float32 [size,size,3] in [-1,1] (RGB, resized with a bicubic filter)."""
    if not os.path.isfile(path):
        raise SamplingError(
            f"sample.lowres_image={path!r} is not a file; give a PNG or JPEG to super-resolve."
        )
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), np.float32)
    except OSError as err:
        raise SamplingError(f"sample.lowres_image={path!r} cannot be read as an image ({err}).") from err
    return pixels / 127.5 - 1.0


def _padded_chunk(array: np.ndarray, begin: int, size: int, pad: int) -> np.ndarray:
    return np.concatenate([array[begin : begin + size], np.repeat(array[-1:], pad, 0)])


def _top_workdir(exp: Experiment) -> str:
    """The cascade's workdir (a stage's experiment runs in <workdir>/stages/<name>)."""
    return os.path.dirname(os.path.dirname(exp.workdir)) if exp.family.stage_dir else exp.workdir


def generate_cascade_for_prompts(
    exp: Experiment,
    params_by_stage: dict[str, PyTree],
    prompts: Sequence[str],
    rng: jax.Array,
    *,
    start: str = "",
    stop: str = "",
    lowres: np.ndarray | None = None,
    chunk: int = 64,
) -> dict[str, np.ndarray]:
    """{stage: images float32 [N,S,S,3] in [-1,1]} for the stages from `start` to `stop`, one image per prompt;
    lowres [N,r,r,3] is the starting image when `start` is an SR stage. Each stage is jitted once."""
    family = exp.family
    embeddings, mask = (np.asarray(a) for a in exp.text_encoder.encode(list(prompts)))
    chunk = min(chunk, len(prompts))
    outputs: dict[str, np.ndarray] = {}
    previous = lowres
    for index, stage in enumerate(family.cascade_range(start, stop)):
        generate = jax.jit(functools.partial(family.generate_stage, stage.name))
        images = []
        for c, begin in enumerate(range(0, len(prompts), chunk)):
            pad = max(0, begin + chunk - len(prompts))  # the last chunk is padded: one shape, one compile
            take = functools.partial(_padded_chunk, begin=begin, size=chunk, pad=pad)
            key = jax.random.fold_in(jax.random.fold_in(rng, index), c)
            kwargs = {"lowres": take(previous)} if stage.is_super_resolution else {}
            out = generate(params_by_stage[stage.name], take(embeddings), take(mask), key, **kwargs)
            images.append(np.asarray(out)[: chunk - pad])
        outputs[stage.name] = previous = np.concatenate(images)
    return outputs


def sample_cascade(
    exp: Experiment, prompts: Sequence[str] | None = None, *, stop: str = "", train_command: str = ""
) -> dict[str, Any]:
    """Samples the cascade (sample.start_stage .. sample.stop_stage, or `stop`) for the grid prompts, writing
    every stage's images to <workdir>/samples/cascade_<stage>.png (+ .txt captions), then judges the last
    stage's images, and sample.judge_prompts held-out prompts when the cascade starts from text.
    Refuses (SamplingError) a stage that was never trained, naming it."""
    sample = exp.config.sample
    prompts = list(sample.prompts if not prompts else prompts)
    if not prompts or any(not p.strip() for p in prompts):
        raise SamplingError(
            "sample.prompts is empty or holds an empty prompt: give at least one non-empty prompt."
        )
    stages = exp.family.cascade_range(sample.start_stage, stop or sample.stop_stage)
    workdir = (
        exp.workdir[: -len(exp.family.stage_dir)].rstrip(os.sep) if exp.family.stage_dir else exp.workdir
    )
    train_command = train_command or f"python -m imagen_jax.main --workdir {workdir}"
    params, steps = {}, {}
    for stage in stages:
        params[stage.name], steps[stage.name] = restore_stage_params(
            exp, stage.name, train_command=train_command
        )
    grid_prompts = [p for p in prompts for _ in range(sample.num_per_prompt)]
    lowres = None
    if stages[0].is_super_resolution:
        if not sample.lowres_image:
            raise SamplingError(
                f"Starting the cascade at the SR stage {stages[0].name!r} needs an image to super-resolve: "
                "--config.sample.lowres_image=PATH.png"
            )
        image = load_lowres_image(sample.lowres_image, stages[0].lowres_size)
        lowres = np.repeat(image[None], len(grid_prompts), 0)
    rng = jax.random.key(sample.seed)
    run = lambda p, key, low: generate_cascade_for_prompts(
        exp, params, p, key, start=stages[0].name, stop=stages[-1].name, lowres=low
    )
    outputs = run(grid_prompts, jax.random.fold_in(rng, 0), lowres)
    samples_dir = os.path.join(workdir, "samples")
    result: dict[str, Any] = {"steps": steps, "grids": {}}
    for name, images in outputs.items():
        path = os.path.join(samples_dir, f"cascade_{name}.png")
        write_grid(images, grid_prompts, path, columns=sample.num_per_prompt)
        result["grids"][name] = path
    last = stages[-1].name
    result["final_stage"] = last
    result["grid_judge"] = _judge_or_none(outputs[last], grid_prompts)
    if sample.judge_prompts and lowres is None:
        heldout = exp.dataset.prompts(sample.judge_prompts, split="holdout", seed=sample.seed)
        result["heldout_judge"] = judge_accuracy(
            run(heldout, jax.random.fold_in(rng, 1), None)[last], heldout
        )
    with open(os.path.join(samples_dir, "cascade.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return result
