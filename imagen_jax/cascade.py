"""A cascade (a staged family): each stage's experiment and run folder, per-stage restore, and sampling the
cascade stage after stage from prompts or from a user's low-res image.

A cascade's workdir holds stages/<name>/ for every trained stage (checkpoints, metrics) and samples/ (after
training) or sample/ (mode=sample) with cascade_<stage>.png for every sampled stage."""

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image

from imagen_jax import editing, experiment
from imagen_jax.evaluation.alignment import judge_accuracy
from imagen_jax.evaluation.grid import write_grid
from imagen_jax.experiment import Experiment
from imagen_jax.models.imagen import resize
from imagen_jax.sample import (
    SamplingError,
    background_or_none,
    check_prompts,
    compiled_generate,
    judge_or_none,
)

PyTree = Any


def stage_experiment(exp: Experiment, name: str) -> Experiment:
    """The experiment of stage `name` (its config, family, run folder and state layout), sharing the workdir,
    dataset, text encoder and mesh of `exp`, which is built for any stage of the same cascade."""
    config = ml_collections.ConfigDict(exp.config.to_dict())
    config.train_stage = name
    return experiment.assemble(config, exp.workdir, exp.dataset, exp.text_encoder, exp.mesh)


def restore_stage_params(exp: Experiment, name: str, *, train_command: str) -> tuple[PyTree, int]:
    """(EMA parameters, step) of stage `name`'s latest checkpoint; a SamplingError naming the stage when it
    was never trained (sampling it would give pure noise)."""
    stage_exp = stage_experiment(exp, name)
    try:
        return experiment.restore_latest(stage_exp, ema=True)
    except experiment.NoCheckpointError as err:
        raise SamplingError(
            f"Stage {name!r} of the cascade was never trained ({stage_exp.run_dir} has no checkpoint), so "
            f"its samples would be pure noise. Train it first: {train_command} --config.train_stage={name}"
        ) from err


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
    edit_options: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """{stage: images float32 [N,S,S,3] in [-1,1]} for the stages from `start` to `stop`, one image per prompt;
    lowres [N,r,r,3] is the starting image when `start` is an SR stage; edit_options (generate_stage's
    EDIT_OPTIONS, e.g. editing.Edit.options()) apply to the first stage, the later ones super-resolve its
    result. Each stage is compiled once per chunk shape and setting for the whole process (compiled_generate)."""
    family = exp.family
    embeddings, mask = (np.asarray(a) for a in exp.text_encoder.encode(list(prompts)))
    chunk = min(chunk, len(prompts))
    outputs: dict[str, np.ndarray] = {}
    previous = lowres
    for index, stage in enumerate(family.cascade_range(start, stop)):
        first_options = (edit_options or {}) if index == 0 else {}
        traced = family.capabilities.traced_sample_options
        stage_options = {k: stage.sample_option(k, {}) for k in traced} | first_options
        images = []
        for c, begin in enumerate(range(0, len(prompts), chunk)):
            pad = max(0, begin + chunk - len(prompts))  # the last chunk is padded: one shape, one compile
            take = functools.partial(_padded_chunk, begin=begin, size=chunk, pad=pad)
            key = jax.random.fold_in(jax.random.fold_in(rng, index), c)
            kwargs = {"lowres": take(previous)} if stage.is_super_resolution else {}
            out = compiled_generate(
                family.generate_stage,
                params_by_stage[stage.name],
                take(embeddings),
                take(mask),
                key,
                static_args=(stage.name,),
                traced=traced,
                placement=exp.placement,
                **stage_options,
                **kwargs,
            )
            images.append(np.asarray(out)[: chunk - pad])
        outputs[stage.name] = previous = np.concatenate(images)
    return outputs


@dataclasses.dataclass(frozen=True)
class CascadeSamples:
    """What sample_cascade wrote and measured."""

    steps: dict[str, int]  # the checkpoint step of every sampled stage
    grids: dict[str, str]  # stage -> samples/cascade_<stage>.png
    final_stage: str
    grid_judge: dict[str, float] | None
    heldout_judge: dict[str, float] | None
    edit_grid: str = ""  # samples/cascade_edit.png: input, mask and results, when the first stage was edited
    # evaluation.background.background_error of the last stage's held-out images (with heldout_judge)
    heldout_background: dict[str, float] | None = None


def sample_cascade(
    exp: Experiment,
    prompts: Sequence[str] | None = None,
    *,
    stop: str = "",
    train_command: str = "",
    out_dir: str | None = None,
) -> CascadeSamples:
    """Samples the cascade (sample.start_stage .. sample.stop_stage, or `stop`) for the grid prompts, writing
    every stage's images to <out_dir>/cascade_<stage>.png (+ .txt captions; out_dir defaults to
    <workdir>/samples, where training writes, while mode=sample writes to <workdir>/sample), then judges the last
    stage's images, and sample.judge_prompts held-out prompts when the cascade starts from text.
    Refuses (SamplingError) a stage that was never trained, naming it."""
    sample = exp.config.sample
    prompts = check_prompts(sample.prompts if not prompts else prompts)
    stages = exp.family.cascade_range(sample.start_stage, stop or sample.stop_stage)
    train_command = train_command or f"python -m imagen_jax.main --workdir {exp.workdir}"
    params, steps = {}, {}
    for stage in stages:
        params[stage.name], steps[stage.name] = restore_stage_params(
            exp, stage.name, train_command=train_command
        )
    grid_prompts = [p for p in prompts for _ in range(sample.num_per_prompt)]
    edit = None
    if editing.edit_requested(sample):  # the edit runs at the first stage sampled; the SR stages follow
        edit = editing.load_edit(sample, stages[0].image_size, stages[0].name)
        for note in edit.notes:
            print(note)
    lowres = None
    if stages[0].is_super_resolution and edit is not None and not sample.lowres_image:
        # editing an SR stage on its own: its low-res condition is the edited image at the low-res scale
        small = resize(edit.input_image[None], stages[0].lowres_size)[0]
        lowres = np.repeat(np.asarray(small)[None], len(grid_prompts), 0)
    elif stages[0].is_super_resolution:
        if not sample.lowres_image:
            raise SamplingError(
                f"Starting the cascade at the SR stage {stages[0].name!r} needs an image to super-resolve: "
                "--config.sample.lowres_image=PATH.png"
            )
        image = load_lowres_image(sample.lowres_image, stages[0].lowres_size)
        lowres = np.repeat(image[None], len(grid_prompts), 0)
    rng = jax.random.key(sample.seed)
    run = lambda p, key, low, edit_options=None: generate_cascade_for_prompts(
        exp, params, p, key, start=stages[0].name, stop=stages[-1].name, lowres=low, edit_options=edit_options
    )
    outputs = run(grid_prompts, jax.random.fold_in(rng, 0), lowres, edit.options() if edit else None)
    samples_dir = out_dir or os.path.join(exp.workdir, "samples")
    grids = {}
    for name, images in outputs.items():
        grids[name] = os.path.join(samples_dir, f"cascade_{name}.png")
        write_grid(images, grid_prompts, grids[name], columns=sample.num_per_prompt)
    last = stages[-1].name
    heldout_judge = heldout_background = None
    edit_grid = ""
    if edit is not None:
        edit_grid = os.path.join(samples_dir, "cascade_edit.png")
        editing.write_edit_grid(edit, outputs[last], grid_prompts, edit_grid, sample.num_per_prompt)
    if sample.judge_prompts and lowres is None and edit is None:
        heldout = exp.dataset.prompts(sample.judge_prompts, split="holdout", seed=sample.seed)
        heldout_images = run(heldout, jax.random.fold_in(rng, 1), None)[last]
        heldout_judge = judge_accuracy(heldout_images, heldout)
        heldout_background = background_or_none(heldout_images)
    result = CascadeSamples(
        steps,
        grids,
        last,
        judge_or_none(outputs[last], grid_prompts),
        heldout_judge,
        edit_grid,
        heldout_background,
    )
    record = dataclasses.asdict(result)
    if heldout_judge is None:  # as written before this was a dataclass: the key only when it was measured
        del record["heldout_judge"], record["heldout_background"]
    if not edit_grid:
        del record["edit_grid"]
    with open(os.path.join(samples_dir, "cascade.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    return result
