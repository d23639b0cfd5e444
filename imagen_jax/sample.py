"""Sampling from a trained single-stage family: images for prompts, a captioned PNG grid, and the judge's verdict
on them. A cascade is sampled stage after stage by cascade.py, with the same pieces."""

import ast
import contextlib
import functools
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from imagen_jax import activation_sharding, editing, rerank
from imagen_jax.errors import UserError
from imagen_jax.evaluation.alignment import judge_accuracy
from imagen_jax.evaluation.background import background_error
from imagen_jax.evaluation.grid import write_grid
from imagen_jax.experiment import Experiment

PyTree = Any


class SamplingError(UserError):
    """The sampling request cannot be served (e.g. no prompts)."""


def set_sampling_option(config: Any, item: str) -> None:
    """Sets one key of how a trained run samples, from KEY=VALUE (`sample.steps=50`, `stages.sr64.sample.steps=30`;
    the value read as a Python literal, else kept as a word: `sample.sampler=ancestral`). Only sample.* keys, so
    that a sampling ablation still judges the checkpoints as the experiment they were trained in."""
    key, sep, text = item.partition("=")
    if not sep or not re.fullmatch(r"(stages\.\w+\.)?sample\.\w+", key):
        raise SamplingError(f"{item!r}: give KEY=VALUE with a sample.* or stages.<name>.sample.* key.")
    *path, leaf = key.split(".")
    section = config
    for part in path:
        if part not in section:
            raise SamplingError(f"{item!r}: {key} is not a key of the config.")
        section = section[part]
    if leaf not in section:
        raise SamplingError(f"{item!r}: {key} is not a key of the config.")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a word: a sampler's name
    section[leaf] = value


@functools.partial(jax.jit, static_argnames=("generate", "static_args", "static_options", "placement"))
def _compiled_generate(
    params: PyTree,
    text_embeddings: jax.Array,
    text_mask: jax.Array,
    rng: jax.Array,
    traced_options: dict[str, Any],
    *,
    generate: Callable[..., jax.Array],
    static_args: tuple[Any, ...],
    static_options: tuple[tuple[str, Any], ...],
    placement: tuple[Any, Any] | None,
) -> jax.Array:
    # Activations are constrained by the run's mesh and logical-axis rules while this is traced, as in training.
    with activation_sharding.use(*placement) if placement else contextlib.nullcontext():
        return generate(
            *static_args, params, text_embeddings, text_mask, rng, **traced_options, **dict(static_options)
        )


def _arguments(
    generate: Callable[..., jax.Array],
    params: PyTree,
    text_embeddings: Any,
    text_mask: Any,
    rng: jax.Array,
    static_args: tuple[Any, ...],
    traced: Sequence[str],
    placement: tuple[Any, Any] | None,
    options: dict[str, Any],
) -> tuple[tuple, dict]:
    """_compiled_generate's (args, kwargs): array options traced, the named numeric ones as float32 scalars."""
    static, dynamic = {}, {}
    for key, value in options.items():
        if isinstance(value, np.ndarray | jax.Array | jax.ShapeDtypeStruct):
            dynamic[key] = value
        elif key in traced and isinstance(value, int | float) and float(value) != 1.0:
            dynamic[key] = np.float32(value)
        else:
            static[key] = value
    args = (params, text_embeddings, text_mask, rng, dynamic)
    kwargs = {
        "generate": generate,
        "static_args": tuple(static_args),
        "static_options": tuple(sorted(static.items())),
        "placement": None if placement is None else (placement[0], tuple(placement[1])),
    }
    return args, kwargs


def compiled_generate(
    generate: Callable[..., jax.Array],
    params: PyTree,
    text_embeddings: Any,
    text_mask: Any,
    rng: jax.Array,
    *,
    static_args: tuple[Any, ...] = (),
    traced: Sequence[str] = (),
    placement: tuple[Any, Any] | None = None,
    **options: Any,
) -> jax.Array:
    """generate(*static_args, params, text_embeddings, text_mask, rng, **options), compiled once per (generate,
    static_args, the options that shape the computation, placement, the arrays' shapes) and reused by every later
    call: across calls, prompt sets and the values of a sweep.

    `generate` must be a function or a bound method (a family's generate or generate_stage, equal from call to
    call; never a fresh functools.partial, which would compile again). Array options (editing images, a low-res
    condition) are traced; so are the numeric options named in `traced` (the family's
    capabilities.traced_sample_options, e.g. Imagen's guidance_scale), as float32 scalars, except the value 1.0,
    which stays a Python float for the family to specialise (Imagen's guidance 1 is one conditional pass);
    every other option (sampler, steps, thresholding, ...) is a compile-time constant. placement: the run's
    (mesh, logical-axis rules), Experiment.placement, under which activations are sharded as in training."""
    args, kwargs = _arguments(
        generate, params, text_embeddings, text_mask, rng, static_args, traced, placement, options
    )
    return _compiled_generate(*args, **kwargs)


def lower_generate(
    generate: Callable[..., jax.Array],
    params: PyTree,
    text_embeddings: Any,
    text_mask: Any,
    rng: jax.Array,
    *,
    static_args: tuple[Any, ...] = (),
    traced: Sequence[str] = (),
    placement: tuple[Any, Any] | None = None,
    **options: Any,
) -> Any:
    """compiled_generate's program lowered for these (possibly abstract, sharded) arguments, not run: what
    mode=compile compiles for a TPU topology."""
    args, kwargs = _arguments(
        generate, params, text_embeddings, text_mask, rng, static_args, traced, placement, options
    )
    return _compiled_generate.lower(*args, **kwargs)


def traced_option_defaults(family: Any, sample: Any, options: dict[str, Any]) -> dict[str, Any]:
    """`options` with the family's traced sampling options (capabilities.traced_sample_options) that it leaves
    out filled in from the config's sample section, so that a call with the default and one naming the same
    value share one compilation."""
    names = family.capabilities.traced_sample_options if sample is not None else ()
    return {**{k: sample[k] for k in names if k not in options and k in sample}, **options}


SAMPLE_CHUNK = 64  # prompts per compiled sampling call: the batch the sampler is compiled for, at most


def generate_for_prompts(
    exp: Experiment,
    params: PyTree,
    prompts: Sequence[str],
    rng: jax.Array,
    *,
    chunk: int = SAMPLE_CHUNK,
    **options: Any,
) -> np.ndarray:
    """Images float32 [N,H,W,3] in [-1,1], one per prompt, generated `chunk` prompts at a time; compiled once per
    chunk shape and sampling setting for the whole process (compiled_generate)."""
    prompts = list(prompts)
    if not prompts:
        raise SamplingError("No prompts to sample: give at least one (sample.prompts or --prompt).")
    embeddings, mask = exp.text_encoder.encode(prompts)
    embeddings, mask = np.asarray(embeddings), np.asarray(mask)
    chunk = min(chunk, len(prompts))
    options = traced_option_defaults(exp.family, exp.config.get("sample"), options)
    traced = exp.family.capabilities.traced_sample_options
    images = []
    for index, start in enumerate(range(0, len(prompts), chunk)):
        pad = max(0, start + chunk - len(prompts))  # pad the last chunk so every call has the same shape
        emb = np.concatenate([embeddings[start : start + chunk], np.repeat(embeddings[-1:], pad, 0)])
        msk = np.concatenate([mask[start : start + chunk], np.repeat(mask[-1:], pad, 0)])
        key = jax.random.fold_in(rng, index)
        out = compiled_generate(
            exp.family.generate, params, emb, msk, key, traced=traced, placement=exp.placement, **options
        )
        images.append(np.asarray(out)[: chunk - pad])
    return np.concatenate(images)


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompts, or a SamplingError when there are none or one is empty."""
    prompts = list(prompts)
    if not prompts or any(not p.strip() for p in prompts):
        raise SamplingError(
            "sample.prompts is empty or holds an empty prompt: give at least one non-empty "
            "prompt, e.g. --config.sample.prompts='(\"a large red circle at the top\",)'."
        )
    return prompts


def report_chunk(grid_prompts: int, judged_prompts: int) -> int:
    """Prompts per sampling call in the report after training: one chunk size for the grid and the held-out prompts
    (0: none judged), so the sampler compiles once per report, not twice. The noise is drawn per chunk, so a re-judge
    of the report's held-out samples must use the same chunk."""
    return min(SAMPLE_CHUNK, grid_prompts, *([judged_prompts] if judged_prompts else []))


def sample_and_judge(
    exp: Experiment,
    params: PyTree,
    step: int,
    prompts: Sequence[str] | None = None,
    out_dir: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Samples for the grid prompts (written to <out_dir>/step_<step>.png; default <workdir>/samples, where
    training writes, while mode=sample writes to <workdir>/sample) and for sample.judge_prompts
    held-out-combination prompts; returns the judge's accuracies for both."""
    sample = exp.config.sample
    prompts = check_prompts(sample.prompts if prompts is None else prompts)
    rng = jax.random.key(sample.seed)
    grid_prompts = [p for p in prompts for _ in range(sample.num_per_prompt)]
    edit = None
    if editing.edit_requested(sample):  # only a diffusion family gets here (checks.py refuses the others)
        stage = exp.family.train_stage
        edit = editing.load_edit(sample, stage.image_size, stage.name)
    for note in edit.notes if edit else ():
        print(note)
    edit_options = edit.options() if edit else {}
    generate = rerank.reranking(generate_for_prompts, sample)  # sample.rerank > 1: best of N by CLIP score
    judged = edit is None and bool(sample.judge_prompts)
    chunk = report_chunk(len(grid_prompts), int(sample.judge_prompts) if judged else 0)
    grid_images = generate(
        exp, params, grid_prompts, jax.random.fold_in(rng, 0), chunk=chunk, **options, **edit_options
    )
    samples_dir = out_dir or os.path.join(exp.workdir, "samples")
    grid_path = os.path.join(samples_dir, f"step_{step}.png")
    write_grid(grid_images, grid_prompts, grid_path, columns=sample.num_per_prompt)
    result: dict[str, Any] = {"step": step, "grid": grid_path, "options": {k: v for k, v in options.items()}}
    result["grid_judge"] = judge_or_none(grid_images, grid_prompts)
    if edit is not None:  # the held-out judge measures generation from text alone: not an edit's business
        result["edit_grid"] = os.path.join(samples_dir, f"step_{step}_edit.png")
        result["edit"] = {k: sample[k] for k in editing.EDIT_KEYS}
        editing.write_edit_grid(edit, grid_images, grid_prompts, result["edit_grid"], sample.num_per_prompt)
    elif judged:
        heldout = exp.dataset.prompts(sample.judge_prompts, split="holdout", seed=sample.seed)
        heldout_images = generate(exp, params, heldout, jax.random.fold_in(rng, 1), chunk=chunk, **options)
        result["heldout_judge"] = judge_accuracy(heldout_images, heldout)
        result["heldout_background"] = background_or_none(heldout_images)
    with open(os.path.join(samples_dir, f"step_{step}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return result


def judge_or_none(images: np.ndarray, prompts: Sequence[str]) -> dict[str, float] | None:
    """Judge accuracy, or None when a prompt is outside the shapes grammar (a user's free-form prompt)."""
    try:
        return judge_accuracy(images, prompts)
    except ValueError:
        return None


def background_or_none(images: np.ndarray) -> dict[str, float] | None:
    """evaluation.background.background_error of shapes samples, or None when no image has a background left."""
    try:
        return background_error(images)
    except ValueError:
        return None


def format_background(name: str, errors: dict[str, float] | None) -> str:
    """One line: '<name>: tint 12.2, RMS 13.6 (0..255 from the data's flat background, which scores 0; 256 samples)'."""
    if errors is None:
        return f"{name}: n/a (no sample has a background pixel left)"
    return (
        f"{name}: tint {errors['tint']:.1f}, RMS {errors['rms']:.1f} (0..255 from the data's flat background, "
        f"which scores 0; {int(errors['count'])} samples)"
    )


def format_judge(name: str, scores: dict[str, float] | None) -> str:
    """One line: '<name>: 0.812 (all attributes; shape 0.95, colour 0.99, ...; 32 samples)'."""
    if scores is None:
        return f"{name}: n/a (prompts outside the shapes grammar)"
    parts = ", ".join(f"{k} {scores[k]:.3f}" for k in ("shape", "colour", "size", "position") if k in scores)
    return f"{name}: {scores['all']:.3f} (all attributes right; {parts}; {int(scores['count'])} samples)"
