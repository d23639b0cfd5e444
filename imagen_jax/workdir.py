"""The command line and the workdir: config flags, checks at the door, and what a workdir remembers.

A workdir holds config.json (the experiment as first launched), checkpoints/, metrics.jsonl, tensorboard/,
text/ (a tokenizer trained on the captions) and samples/. Relaunching with a config whose model, text,
diffusion or data differ from the saved one is refused instead of silently mixing two experiments.
"""

import json
import os
import re
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from imagen_jax.training.checkpoint import CheckpointError

# Sections that define what is being trained; changing them mid-run would corrupt the experiment.
FROZEN_SECTIONS = ("family", "data", "text", "model", "diffusion", "gan", "cascade", "stages")
# ... except how a cascade stage samples (stages.<name>.sample.*), which may change between runs, how the data
# is read (worker processes, threads, prefetching, where the embeddings are joined, where TFDS data lives), and
# data.* keys added to the config since the saved run (which then used their defaults).
_UNFROZEN = re.compile(
    r"stages\.[^.]+\.sample\.|data\.(worker_count|read_threads|prefetch_batches|text_join|tfds_data_dir):|"
    r"data\.\w+: None -> "
)


class UserError(ValueError):
    """Bad input from the user: printed as one line, no traceback."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    CheckpointError,
    ValueError,
    TypeError,
    FileNotFoundError,
    flags.Error,
)


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of --name=v or --name v in argv, without parsing anything else."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the config files use (so overrides type-check the same way)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def saved_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The config a workdir was first launched with, or None."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return ml_collections.ConfigDict(_tuples(json.load(f)))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is unreadable ({err}); restore it or use a new --workdir.") from err


def parse_command_line(argv: list[str]) -> tuple[ml_collections.ConfigDict, str, list[str]]:
    """(config with overrides applied, workdir, extra --prompt values) from the command line."""
    values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples).", flag_values=values)
    flags.DEFINE_multi_string(
        "prompt", [], "Prompt to sample (mode=sample); repeat for several.", flag_values=values
    )
    workdir = _flag_value(argv, "workdir")
    if not workdir:
        raise UserError("--workdir is required, e.g. --workdir /tmp/qs.")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file, not a directory; choose another path.")
    config_path = _flag_value(argv, "config")
    if config_path is not None:
        file_path = config_path.split(":", 1)[0]
        if not os.path.isfile(file_path):
            raise UserError(
                f"Config file {file_path} does not exist; pass e.g. --config configs/quickstart.py."
            )
        config_flags.DEFINE_config_file(
            "config", None, "Experiment config file.", flag_values=values, lock_config=True, sys_argv=argv
        )
    else:
        saved = saved_config(workdir)
        if saved is None:
            raise UserError(
                f"--config is required (e.g. --config configs/quickstart.py): {workdir} holds no "
                "run whose saved config could be used."
            )
        config_flags.DEFINE_config_dict(
            "config",
            saved,
            "The workdir's saved config.",
            flag_values=values,
            lock_config=True,
            sys_argv=argv,
        )
    try:
        values(argv)
    except flags.Error as err:
        raise UserError(_flag_error_message(err)) from err
    except Exception as err:  # a config file that fails to import or whose get_config raises
        raise UserError(f"Config {config_path} could not be loaded: {type(err).__name__}: {err}") from err
    config = values.config
    if config is None:
        raise UserError(f"Config {config_path} could not be loaded.")
    return config, workdir, list(values.prompt)


def _flag_error_message(err: Exception) -> str:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"Bad command-line flag: {message}"


def _diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = sorted(set(saved) | set(current))
        return [d for k in keys for d in _diff(saved.get(k), current.get(k), f"{prefix}{k}.")]
    return [] if saved == current else [f"{prefix[:-1]}: {saved!r} -> {current!r}"]


def prepare_for_training(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Creates the workdir and saves config.json, or checks a resumed run trains the same experiment."""
    os.makedirs(workdir, exist_ok=True)
    saved = saved_config(workdir)
    current = _tuples(json.loads(config.to_json()))
    if saved is not None:
        saved_dict = saved.to_dict()
        changed = [
            d
            for section in FROZEN_SECTIONS
            for d in _diff(saved_dict.get(section), current.get(section), f"{section}.")
            if not _UNFROZEN.match(d)
        ]
        if changed:
            raise UserError(
                f"{workdir} holds a run of a different experiment ({'; '.join(changed[:4])}). "
                "Use a new --workdir, or restore the original settings to resume it."
            )
    # Per-process name: the processes of a multi-host run all write it at once.
    tmp = os.path.join(workdir, f"config.json.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(config.to_json(indent=2))
    os.replace(tmp, os.path.join(workdir, "config.json"))


def require_checkpoint(workdir: str) -> int:
    """The latest complete checkpoint step in the workdir, or a clear error when it was never trained.

    Orbax names a checkpoint still being written '<step>.orbax-checkpoint-tmp-*', so only finished ones count.
    """
    directory = os.path.join(workdir, "checkpoints")
    steps = [
        int(name) for name in (os.listdir(directory) if os.path.isdir(directory) else []) if name.isdigit()
    ]
    if not steps:
        raise UserError(
            f"{workdir} has no checkpoint to sample from: train it first "
            f"(python -m imagen_jax.main --config <config> --workdir {workdir})."
        )
    return max(steps)


def stage_dir(family: Any) -> str:
    """Where a family's run keeps its checkpoints and metrics, relative to the workdir: "" (the workdir itself),
    or stages/<name> for the trained stage of a cascade (a staged family)."""
    return f"stages/{family.train_stage.name}" if family.capabilities.staged else ""


def check_config(config: ml_collections.ConfigDict, prompts: list[str]) -> None:
    """Checks at the door what would otherwise fail only after training: one clear message per problem."""
    train, sample = config.train, config.sample
    for key in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        minimum = 0 if key == "steps" else 1
        if int(train[key]) < minimum:
            raise UserError(f"train.{key}={train[key]} must be >= {minimum}.")
    from imagen_jax.training.hparams import check_optimizer_name

    check_optimizer_name(str(train.get("optimizer", "adam")))  # the family says which ones it takes (below)
    sample_prompts = list(prompts) or list(sample.prompts)
    if not sample_prompts:
        raise UserError(
            "sample.prompts is empty: give at least one prompt, e.g. "
            "--config.sample.prompts='(\"a large red circle at the top\",)' or --prompt '...'."
        )
    blank = [i for i, p in enumerate(sample_prompts) if not str(p).strip()]
    if blank:
        raise UserError(f"Prompt number {blank[0] + 1} is empty; every prompt to sample needs some text.")
    if int(sample.num_per_prompt) < 1:
        raise UserError("sample.num_per_prompt must be >= 1.")
    if config.family != "imagen":  # building the family checks its model, optimizer and sampling settings
        from imagen_jax.models.registry import get_family

        try:
            get_family(config)
        except ValueError as err:
            raise UserError(str(err)) from err
        return
    # A cascade (config.stages) says per stage how to sample; a single-stage config says it in config.sample.
    sections = (
        [(f"stages.{name}.sample", config.stages[name].sample) for name in config.stages]
        if "stages" in config
        else [("sample", sample)]
    )
    for where, how in sections:
        _check_sampling(where, how)


def _check_sampling(where: str, how: ml_collections.ConfigDict) -> None:
    """Checks one section of sampling settings (sampler, thresholding, steps); diffusion/ owns the names."""
    from imagen_jax.diffusion.guidance import THRESHOLDINGS, check_percentile
    from imagen_jax.diffusion.samplers import SAMPLERS

    if how.sampler not in SAMPLERS:
        raise UserError(f"{where}.sampler={how.sampler!r} is not a sampler; choose one of {SAMPLERS}.")
    if how.thresholding not in THRESHOLDINGS:
        raise UserError(f"{where}.thresholding={how.thresholding!r}; choose one of {THRESHOLDINGS}.")

    try:
        check_percentile(how.dynamic_threshold_percentile)
    except ValueError as err:
        raise UserError(f"{where}.dynamic_threshold_percentile: {err}") from err
    if int(how.steps) < 1:
        raise UserError(f"{where}.steps must be >= 1.")
