"""The one validation pass at the door: everything a user can type is checked before anything is created on disk,
and each problem stops the run with one UserError naming the key (or path) and the remedy.

    check_structure   the sections and keys every mode reads, each number's type, range and finiteness
    check_settings    what building from the config would refuse later: the family (model, diffusion, sampling),
                      the text encoder, the data, the eval settings, the cascade range to sample
    check_sizes       the sample grid and the batches against memory (and a grid a viewer can open)
    check_workdir     the workdir path: creatable or a folder, writable, every name within the file system's limit
    check_batch_split the mesh and the global batch's split over it (needs JAX's devices)
"""

import math
import os
import re
import traceback
from typing import Any

import jax
import ml_collections
from PIL import Image

from imagen_jax import parallel, topology
from imagen_jax.attention import check_implementation
from imagen_jax.errors import MissingFileError, UserError
from imagen_jax.evaluation.grid import grid_shape

# Sections and keys every mode reads (a family reads more: building it at the door names what it misses).
REQUIRED_SECTIONS = ("data", "text", "train", "sample")
REQUIRED_KEYS = (
    "mode",
    "seed",
    "family",
    "data.image_size",
    "train.steps",
    "train.batch_size",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "sample.prompts",
    "sample.num_per_prompt",
)

# (dotted key pattern, type, minimum, maximum): every number a user may type, checked wherever the config has it.
_INT, _NUMBER = "an integer", "a number"
RANGES: tuple[tuple[str, str, float | None, float | None], ...] = (
    (r"seed|sample\.seed|eval\.seed|text\.init_seed|data\.shuffle_seed", _INT, None, None),
    (r"train\.(steps|warmup_steps|keep_every|max_nonfinite_steps)", _INT, 0, None),
    (r"train\.(batch_size|log_every|checkpoint_every|keep_checkpoints|grad_accum_steps)", _INT, 1, None),
    (
        r"train\.(learning_rate|g_learning_rate|d_learning_rate|grad_clip|peak_flops_per_device)",
        _NUMBER,
        0,
        None,
    ),
    (r"train\.(ema_decay|adam_b1|adam_b2)", _NUMBER, 0, 1),
    (r"sample\.num_per_prompt", _INT, 1, None),
    (r"sample\.judge_prompts", _INT, 0, None),
    (r"(stages\.[^.]+\.)?sample\.steps", _INT, 1, None),
    (r"(stages\.[^.]+\.)?sample\.guidance_scale", _NUMBER, 0, None),
    (r"(stages\.[^.]+\.)?sample\.aug_level", _NUMBER, 0, 1),
    (r"(stages\.[^.]+\.)?sample\.eta", _NUMBER, 0, 1),
    (r"sample\.strength", _NUMBER, 0, 1),
    (r"sample\.inpaint_resample", _INT, 1, None),
    (r"sample\.outpaint\[\d+\]", _INT, 0, None),
    (r"sample\.temperature", _NUMBER, 0, None),
    (r"sample\.rerank", _INT, 1, None),
    (r"data\.image_size", _INT, 1, None),
    (r"text\.max_length", _INT, 2, None),
    (r"text\.(vocab_size|encode_batch_size)", _INT, 1, None),
    (r"(stages\.[^.]+\.)?diffusion\.(cond_drop_prob)", _NUMBER, 0, 1),
    (r"(stages\.[^.]+\.)?diffusion\.offset_noise", _NUMBER, 0, None),
    (r"(stages\.[^.]+\.)?model\.dropout", _NUMBER, 0, 1),
    (r"(stages\.[^.]+\.)?model\.norm_groups", _INT, 1, None),
    (r"eval\.(num_samples|kid_subsets|kid_subset_size|grid_images|pr_k)", _INT, 0, None),
    (r"compile\.(batch_size|sample_batch_size)", _INT, 0, None),
)

# Switches a user may type: each must be a bool (true/false on the command line), never a number or a string.
BOOLEANS = (r"train\.ema_warmup",)

# The largest grid PNG written: PIL's own limit for an image it opens without a decompression-bomb warning.
MAX_GRID_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
MEMORY_SHARE = 0.5  # of the available memory that the arrays the door can foresee may take


def _leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a config (tuple items as key[i])."""
    if isinstance(tree, dict | ml_collections.ConfigDict):
        return [leaf for key, value in tree.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    if isinstance(tree, tuple | list):
        return [leaf for i, value in enumerate(tree) for leaf in _leaves(value, f"{prefix[:-1]}[{i}].")]
    return [(prefix[:-1], tree)]


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict | ml_collections.ConfigDict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def check_structure(config: ml_collections.ConfigDict, origin: str = "the config") -> None:
    """Every section and key that the modes read is there, and every number has its type, its range and a finite
    value. `origin` names where the config came from (a config file, or a workdir's config.json) in messages."""
    for section in REQUIRED_SECTIONS:
        if not isinstance(config.get(section), ml_collections.ConfigDict):
            raise UserError(f"{origin} has no {section} section (config.{section}); every config needs one.")
    for key in REQUIRED_KEYS:
        try:
            _get(config, key)
        except KeyError:
            raise UserError(f"{origin} has no key {key}; every config needs it.") from None
    for key, value in _leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{key}={value} is not a finite number: every numeric option must be finite.")
        for pattern, kind, low, high in RANGES:
            if re.fullmatch(pattern, key) and value is not None:
                _check_number(key, value, kind, low, high, origin)
        if any(re.fullmatch(pattern, key) for pattern in BOOLEANS) and not isinstance(value, bool):
            raise UserError(f"{key}={value!r} in {origin} must be true or false, not {type(value).__name__}.")


def _check_number(
    key: str, value: Any, kind: str, low: float | None, high: float | None, origin: str
) -> None:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if not numeric or (kind == _INT and not isinstance(value, int)):
        raise UserError(f"{key}={value!r} in {origin} must be {kind}, not {type(value).__name__}.")
    if low is not None and high is not None and not low <= value <= high:
        raise UserError(f"{key}={value} must be in [{low}, {high}].")
    if low is not None and value < low:
        raise UserError(f"{key}={value} must be >= {low}.")


def _config_key_missing(err: BaseException) -> str | None:
    """The key whose absence from a ConfigDict raised `err` (a KeyError or AttributeError from ml_collections),
    else None: an error raised elsewhere is a bug, not the config's."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames or "ml_collections" not in frames[-1].filename.replace(os.sep, "/"):
        return None
    message = err.args[0] if err.args else ""
    while isinstance(message, BaseException):
        message = message.args[0] if message.args else ""
    return str(message).splitlines()[0].strip("'\"") if message else "?"


def check_settings(config: ml_collections.ConfigDict, prompts: list[str], mode: str) -> Any:
    """Builds what the run will build from the config where that is cheap (the family, the text encoder's and the
    data's settings) and turns its refusals into UserErrors; returns the family."""
    from imagen_jax.models.registry import get_family

    sample = config.sample
    sample_prompts = list(prompts) or list(sample.prompts)
    if not sample_prompts:
        raise UserError(
            "sample.prompts is empty: give at least one prompt, e.g. "
            "--config.sample.prompts='(\"a large red circle at the top\",)' or --prompt '...'."
        )
    blank = [i for i, p in enumerate(sample_prompts) if not str(p).strip()]
    if blank:
        raise UserError(f"Prompt number {blank[0] + 1} is empty; every prompt to sample needs some text.")
    for key, value in _leaves(config):
        if key.endswith("attention_implementation"):
            _refusal(lambda v=value: check_implementation(v), key)
    _refusal(lambda: _check_text(config.text), "text")
    _check_data(config.data)
    from imagen_jax.training.hparams import check_optimizer_name

    check_optimizer_name(str(config.train.get("optimizer", "adam")))  # the family says which ones it takes
    family = _refusal(lambda: get_family(config), f"the {config.family} family")
    if "stages" in config:  # a cascade says per stage how to sample
        for name in config.stages:
            _check_sampling(f"stages.{name}.sample", config.stages[name].sample)
        if mode == "sample":
            _refusal(lambda: family.cascade_range(sample.start_stage, sample.stop_stage), "sample")
    elif config.family == "imagen":
        _check_sampling("sample", sample)
    _check_editing(config, family, mode)
    _check_clip(config, family, mode)
    if mode == "eval":
        from imagen_jax.evaluation import run as eval_run

        eval_run.settings_of(config)  # UserErrors naming the eval.* key
    parallel.axis_rules(config.get("mesh"))  # mesh.logical_axis_rules: a MeshConfigError naming the entry
    if mode == "compile":
        _check_compile(config)
    return family


def _check_compile(config: ml_collections.ConfigDict) -> None:
    """mode=compile needs a TPU topology name it has chip figures for, and libtpu to compile for it."""
    name = str(config.get("compile", {}).get("topology", ""))
    if not name:
        raise UserError(
            "mode=compile needs a TPU topology to compile for: --config.compile.topology=v5p:8x8x4 (or v4:8x8x4, "
            "v5e:16x16, v6e:16x16, ...)."
        )
    topology.chip_of(name)
    topology.check_programs(config.compile.programs)
    topology.require_libtpu()


def _refusal(build: Any, what: str) -> Any:
    """build(), with the ValueError it raises for a bad setting as a UserError (one line), and a key the config
    lacks named; any other exception (a bug) keeps its traceback."""
    try:
        return build()
    except UserError:
        raise
    except ValueError as err:
        raise UserError(str(err)) from err
    except (KeyError, AttributeError) as err:
        key = _config_key_missing(err)
        if key is None:
            raise
        raise UserError(
            f"The config has no key {key!r}, which {what} needs; add it to the config file."
        ) from err


def _check_text(text: ml_collections.ConfigDict) -> None:
    from imagen_jax.text import encoder

    encoder.validate(text)
    if text.get("spiece_model") and not os.path.isfile(text.spiece_model):
        raise MissingFileError(f"text.spiece_model={text.spiece_model!r} is not a file.")


def _check_data(data: ml_collections.ConfigDict) -> None:
    from imagen_jax.data import pipeline

    if data.get("source", "shapes") not in pipeline.SOURCES:
        raise UserError(f"data.source={data.source!r} is not available; choose one of {pipeline.SOURCES}.")


def _check_sampling(where: str, how: ml_collections.ConfigDict) -> None:
    """Checks one section of diffusion sampling settings (sampler, thresholding, spacing, eta); diffusion/ owns the
    names. Its numbers' ranges (steps >= 1, ...) were checked with every other number in check_structure."""
    from imagen_jax.diffusion.guidance import THRESHOLDINGS, check_percentile
    from imagen_jax.diffusion.samplers import SAMPLERS, SPACINGS

    if how.sampler not in SAMPLERS:
        raise UserError(f"{where}.sampler={how.sampler!r} is not a sampler; choose one of {SAMPLERS}.")
    if how.thresholding not in THRESHOLDINGS:
        raise UserError(f"{where}.thresholding={how.thresholding!r}; choose one of {THRESHOLDINGS}.")
    try:
        check_percentile(how.dynamic_threshold_percentile)
    except (ValueError, TypeError) as err:
        raise UserError(f"{where}.dynamic_threshold_percentile: {err}") from err
    spacing, eta = how.get("spacing", "karras"), how.get("eta", 0.0)
    if spacing not in SPACINGS:
        raise UserError(f"{where}.spacing={spacing!r} is not a grid spacing; choose one of {SPACINGS}.")
    if eta and how.sampler != "ddim":
        raise UserError(
            f"{where}.eta={eta} applies to the ddim sampler only (0: deterministic, 1: ancestral); "
            f"{where}.sampler is {how.sampler!r}."
        )


def _check_clip(config: ml_collections.ConfigDict, family: Any, mode: str) -> None:
    """A CLIP (a family that generates nothing) is trained, never sampled or evaluated; sample.rerank > 1 needs
    sample.clip_weights naming a CLIP (eval.clip_weights is checked with the eval settings)."""
    from imagen_jax.evaluation import clip_score

    if not family.capabilities.generates and mode in ("sample", "eval"):
        raise UserError(
            f"mode={mode}: the {config.family} family generates no images; train it, then point "
            "eval.clip_weights or sample.clip_weights at its workdir to score another model's samples."
        )
    rerank, weights = (clip_score.sample_option(config.sample, k) for k in ("rerank", "clip_weights"))
    if int(rerank) > 1:
        if family.capabilities.staged:
            raise UserError(
                f"sample.rerank={rerank}: reranking serves single-stage families; a cascade is sampled without it "
                "(set sample.rerank=1)."
            )
        if not weights:
            raise UserError(
                f"sample.rerank={rerank} keeps the best of {rerank} candidates by CLIP score: give the CLIP with "
                "--config.sample.clip_weights=<a Hugging Face CLIP directory or a family=clip workdir>."
            )
        clip_score.clip_kind(os.path.abspath(os.path.expanduser(str(weights))), "sample.clip_weights")


def _check_editing(config: ml_collections.ConfigDict, family: Any, mode: str) -> None:
    """The editing keys (editing.py): only when sampling a diffusion family, with files that exist, masks that
    are binary and match their image, fitted to the stage the edit runs at (the first one sampled)."""
    from imagen_jax import editing

    sample = config.sample
    asked = [k for k in editing.EDIT_KEYS if k in sample and sample[k] != editing.EDIT_DEFAULTS[k]]
    asked = [k for k in asked if k != "strength"]  # a strength alone edits nothing
    if not asked:
        return
    if config.family != "imagen":
        raise UserError(f"sample.{asked[0]}: editing needs a diffusion family (imagen), not {config.family}.")
    if mode != "sample":
        raise UserError(
            f"sample.{asked[0]} edits an image when sampling: add --config.mode=sample (mode is {mode})."
        )
    if "stages" in config:
        stage = family.cascade_range(sample.start_stage, sample.stop_stage)[0]
    else:
        stage = family.train_stage
    editing.load_edit(sample, stage.image_size, stage.name)  # EditError (a UserError) for a bad input


# Sizes ----------------------------------------------------------------------------------------------------------


def available_memory() -> int | None:
    """Bytes of memory available to this process now (Linux: MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def check_sizes(config: ml_collections.ConfigDict, prompts: list[str], mode: str, family: Any) -> None:
    """The sample grid fits in one viewable PNG and, with the images and text embeddings behind it, in memory;
    so do the training batch (train) and the evaluation's images (eval). Estimates of host arrays only: a model's
    own memory is `mode=describe`'s business."""
    from imagen_jax.text.encoder import text_shape

    length, width = _refusal(lambda: text_shape(config.text), "text")
    text_bytes = length * width * 4 + length
    sizes = [int(config.data.image_size)]
    if family.capabilities.staged:
        stop = config.train_stage if mode == "train" else config.sample.get("stop_stage", "")
        start = "" if mode == "train" else config.sample.get("start_stage", "")
        sizes = [stage.image_size for stage in family.cascade_range(start, stop)]
    image_bytes = sum(4 * 3 * s * s for s in sizes)
    budget = available_memory()
    limit = budget * MEMORY_SHARE if budget else None
    if mode in ("train", "sample"):
        sample = config.sample
        per_prompt, num_prompts = int(sample.num_per_prompt), len(list(prompts) or list(sample.prompts))
        images = per_prompt * num_prompts
        grid_w, grid_h = grid_shape(images, per_prompt, max(sizes))
        if grid_w * grid_h > MAX_GRID_PIXELS:
            cell_w, cell_h = grid_shape(1, 1, max(sizes))
            fits = max(1, MAX_GRID_PIXELS // (cell_w * cell_h * num_prompts))
            raise UserError(
                f"sample.num_per_prompt={per_prompt} x {num_prompts} prompts = {images} images: their grid would "
                f"be {grid_w} x {grid_h} pixels, over the {MAX_GRID_PIXELS} a PNG viewer opens safely. Use "
                f"sample.num_per_prompt <= {fits} with these prompts (or fewer prompts per run)."
            )
        needed = images * (image_bytes + text_bytes + 3 * max(sizes) ** 2) + 3 * grid_w * grid_h
        needed += int(sample.get("judge_prompts", 0)) * (image_bytes + text_bytes)
        if limit is not None and needed > limit:
            raise UserError(
                f"Sampling {images} grid images (sample.num_per_prompt={per_prompt} x {num_prompts} prompts) and "
                f"sample.judge_prompts={sample.get('judge_prompts', 0)} needs about {_gb(needed)} of memory for "
                f"the images, their text embeddings and the grid; {_gb(budget)} is available. Lower them."
            )
    if mode == "train":
        batch = int(config.train.batch_size)
        needed = batch // jax.process_count() * (4 * 3 * int(config.data.image_size) ** 2 + text_bytes)
        if limit is not None and needed > limit:
            raise UserError(
                f"train.batch_size={batch}: one batch of images and text embeddings alone needs about "
                f"{_gb(needed)} of host memory per process; {_gb(budget)} is available. Lower train.batch_size "
                "(train.grad_accum_steps keeps the effective batch)."
            )
    if mode == "eval" and "eval" in config:
        e = config.eval
        sets = len(tuple(e.get("prompt_sets", ("train", "holdout"))))
        needed = int(e.get("num_samples", 0)) * (sets + 1) * (image_bytes + text_bytes)
        if limit is not None and needed > limit:
            raise UserError(
                f"eval.num_samples={e.num_samples} for {sets} prompt set(s) needs about {_gb(needed)} of memory "
                f"for the generated and reference images; {_gb(budget)} is available. Lower eval.num_samples."
            )


# The workdir ----------------------------------------------------------------------------------------------------


def _name_max(folder: str) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def check_workdir(workdir: str, writes: bool) -> None:
    """The workdir is a folder, or can be created as one; a run that writes (`writes`) can write there. Nothing is
    created: the first missing ancestor's parent is checked instead (a folder, writable, each new name within the
    file system's length limit)."""
    if os.path.exists(workdir):
        if not os.path.isdir(workdir):
            raise UserError(f"--workdir {workdir} is a file, not a directory; choose another path.")
        if writes and not os.access(workdir, os.W_OK | os.X_OK):
            raise UserError(f"cannot write {workdir}: {os.strerror(13)}")
        return
    missing, ancestor = [], workdir
    while not os.path.exists(ancestor):
        missing.append(os.path.basename(ancestor))
        parent = os.path.dirname(ancestor)
        if parent == ancestor:
            break
        ancestor = parent
    if not os.path.isdir(ancestor):
        raise UserError(f"cannot create {workdir}: {ancestor} is a file, not a directory.")
    limit = _name_max(ancestor)
    for name in missing:
        if len(os.fsencode(name)) > limit:
            raise UserError(
                f"cannot create {workdir}: the name {name[:24]}... is {len(os.fsencode(name))} bytes long, over "
                f"the {limit} this file system allows."
            )
    if writes and not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {workdir}: {os.strerror(13)} in {ancestor}")


def check_batch_split(config: ml_collections.ConfigDict) -> None:
    """train.batch_size splits over the mesh's batch shards, micro-steps and processes (MeshConfigError, a
    UserError, otherwise); needs JAX's devices, so it runs after the distributed start-up."""
    from imagen_jax import parallel

    mesh_config = config.get("mesh") or ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    mesh = parallel.make_mesh(mesh_config)
    parallel.per_device_batch(
        int(config.train.batch_size), mesh, int(config.train.get("grad_accum_steps", 1))
    )
