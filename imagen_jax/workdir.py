"""The command line and the workdir: config flags, checks at the door, and what a workdir remembers.

A workdir holds config.json (the experiment as first launched), checkpoints/, metrics.jsonl, tensorboard/,
text/ (a tokenizer trained on the captions), samples/ (written by training), sample/ and eval/ (written by the
sample and eval modes, which may run while it trains). Relaunching, sampling or evaluating with a config whose
model, text, diffusion or data differ from the saved one is refused, naming the keys, instead of silently mixing
two experiments or blaming an intact checkpoint.
"""

import importlib.util
import json
import os
import re
import traceback
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from imagen_jax import checks, editing, parallel, topology
from imagen_jax.errors import UserError
from imagen_jax.evaluation import clip_score
from imagen_jax.training.checkpoint import CheckpointError

# Sections that define what is being trained; changing them mid-run would corrupt the experiment.
FROZEN_SECTIONS = ("family", "data", "text", "model", "diffusion", "gan", "cascade", "stages")
# ... except how a cascade stage samples (stages.<name>.sample.*), which may change between runs, how the data
# is read (worker processes, threads, prefetching, where the embeddings are joined, where TFDS data lives), and
# which kernel runs attention (*.attention_implementation: the same numbers up to rounding).
_UNFROZEN = re.compile(
    r"stages\.[^.]+\.sample\.|data\.(worker_count|read_threads|prefetch_batches|text_join|tfds_data_dir):|"
    r"[\w.]*attention_implementation: "  # how attention runs (xla | cudnn), not what it computes
)
# ... and data.* keys added to the config since the saved run (which then used their defaults), unless
# ADDED_WITH_DEFAULT names the key: then only its old value is the same experiment.
_NEW_DATA_KEY = re.compile(r"data\.\w+: None -> ")

# Keys of the frozen sections added since runs were first saved, with the value such a run used before the key
# existed (a fact of history: it stays when a default changes): a saved config without the key and a current one
# holding this value describe the same experiment (another value is a change). Keys are given without a cascade's
# "stages.<name>." prefix.
ADDED_WITH_DEFAULT = {"model.norm_groups": 32, "diffusion.offset_noise": 0.0, "data.num_holdout_pairs": 6}


def _without_stage(key: str) -> str:
    return re.sub(r"^stages\.[^.]+\.", "", key)


def _added_with_its_default(key: str, saved: Any, current: Any) -> bool:
    key = _without_stage(key)
    return saved is None and key in ADDED_WITH_DEFAULT and current == ADDED_WITH_DEFAULT[key]


# Keys outside the frozen sections that a checkpoint's train state depends on (its optimizer state's layout).
STATE_KEYS = ("train.optimizer",)

# What main prints as one `error:` line: errors raised deliberately for the user (errors.UserError and its
# subclasses, a checkpoint that cannot be read, a bad flag). Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, CheckpointError, flags.Error)


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
    config_arg = _flag_value(argv, "config")
    if config_arg is not None:
        loaded, description = load_config_file(config_arg), "Experiment config file."
        argv = _without_flag(argv, "config")  # its value is the file; the --config.<key> overrides stay
    else:
        loaded, description = saved_config(workdir), "The workdir's saved config."
        if loaded is None:
            raise UserError(
                f"--config is required (e.g. --config configs/quickstart.py): {workdir} holds no "
                "run whose saved config could be used."
            )
    editing.add_sample_keys(loaded)  # the editing keys and eta / spacing, also in configs that predate them
    clip_score.add_sample_keys(loaded)  # sample.rerank and sample.clip_weights, likewise
    parallel.add_mesh_keys(loaded)  # mesh.logical_axis_rules (the default table), to be seen and overridden
    topology.add_compile_keys(loaded)  # mode=compile's settings
    try:  # the --config.<key> overrides are applied here (some already when the flag is defined)
        config_flags.DEFINE_config_dict(
            "config", loaded, description, flag_values=values, lock_config=True, sys_argv=argv
        )
        values(argv)
    except flags.Error as err:
        raise UserError(_flag_error_message(err)) from err
    except (AttributeError, KeyError) as err:  # --config.<key> names no key of the config
        raise UserError(_unknown_key_message(err, argv)) from err
    except (ValueError, TypeError) as err:  # an override that cannot be applied
        raise UserError(f"Bad command-line flag: {type(err).__name__}: {_first_line(err)}") from err
    return values.config, workdir, list(values.prompt)


def config_origin(argv: list[str], workdir: str) -> str:
    """Where the run's config comes from, for messages: the --config file, or the workdir's config.json."""
    config_arg = _flag_value(argv, "config")
    if config_arg is not None:
        return f"--config {config_arg}"
    return os.path.join(
        os.path.abspath(os.path.expanduser(_flag_value(argv, "workdir") or workdir)), "config.json"
    )


def load_config_file(config_arg: str) -> ml_collections.ConfigDict:
    """get_config(<variant>) of `--config <file>[:<variant>]` (as ml_collections' config_flags calls it), or a
    UserError that keeps the reason: the variant parser's message, or the error and the line of the config file
    that raised it. An error raised inside imagen_jax (a bug) keeps its traceback."""
    path, colon, variant = config_arg.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"Config file {path} does not exist; pass e.g. --config configs/quickstart.py.")
    name = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    try:
        spec = importlib.util.spec_from_file_location(f"imagen_jax_config_file_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise UserError(f"Config file {path} has no get_config(arg) function.")
        config = module.get_config(*([variant] if colon else []))
    except UserError:
        raise
    except Exception as err:
        frames = traceback.extract_tb(err.__traceback__)
        innermost = os.path.abspath(frames[-1].filename) if frames else ""
        in_config_file = [f for f in frames if os.path.abspath(f.filename) == os.path.abspath(path)]
        from_parser = innermost.endswith(os.path.join("imagen_jax", "config_files.py"))
        if from_parser:  # the variant: "Unknown config variant 'nope'; known variants: tiny"
            raise UserError(f"--config {config_arg}: {_first_line(err)}") from err
        if innermost == os.path.abspath(path) or "ml_collections" in innermost:
            where = f" (line {in_config_file[-1].lineno})" if in_config_file else ""
            raise UserError(
                f"Config {config_arg} could not be loaded{where}: {type(err).__name__}: {_first_line(err)}"
            ) from err
        raise
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(
            f"Config {config_arg}: get_config returned {type(config).__name__}, not an ml_collections.ConfigDict."
        )
    return config


def _without_flag(argv: list[str], name: str) -> list[str]:
    """argv less --name=v and --name v (not --name.<key>=v)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg.startswith(f"--{name}="):
            continue
        elif arg == f"--{name}" and i + 1 < len(argv):
            skip = True
        else:
            out.append(arg)
    return out


def _first_line(err: BaseException) -> str:
    message = err.args[0] if len(err.args) == 1 else str(err)
    while isinstance(message, BaseException):  # AttributeError(KeyError(...)) as ml_collections raises them
        message = message.args[0] if message.args else ""
    text = str(message).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _flag_error_message(err: Exception) -> str:
    return f"Bad command-line flag: {_first_line(err)}"


def _unknown_key_message(err: BaseException, argv: list[str]) -> str:
    """'--config.train.stepz: no such key in the config (Did you mean "steps" instead of "stepz"?)'."""
    message = err.args[0] if err.args else ""
    while isinstance(message, BaseException):
        message = message.args[0] if message.args else ""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    key = lines[0].strip("'\"") if lines else "?"
    hint = f" ({' '.join(lines[1:])})" if len(lines) > 1 else ""
    flag = next(
        (
            arg.split("=", 1)[0]
            for arg in argv
            if arg.startswith("--config.") and key in arg.split("=", 1)[0].split(".")
        ),
        f"--config...{key}",
    )
    return f"{flag}: no such key in the config{hint}."


def _diff(saved: Any, current: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) of every leaf that differs."""
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = sorted(set(saved) | set(current))
        return [d for k in keys for d in _diff(saved.get(k), current.get(k), f"{prefix}{k}.")]
    return [] if saved == current else [(prefix[:-1], saved, current)]


def experiment_changes(
    saved: dict, current: dict, *, lenient: bool = False, stage: str | None = None
) -> list[str]:
    """'key: saved -> current' for every key of the frozen sections that differs between two configs (as dicts),
    less what may change between runs (_UNFROZEN). lenient (a checkpoint's own record): a key only one side has
    is no difference (records from before a key existed), and STATE_KEYS are compared too. stage (a cascade
    stage's checkpoint): of the cascade only that stage's section (stages.<stage>) is compared, with the
    sections the stages share, since the other stages and their order do not shape its weights."""
    sections = list(FROZEN_SECTIONS) + (list(STATE_KEYS) if lenient else [])
    if stage is not None:
        sections = [s for s in sections if s not in ("cascade", "stages")] + [f"stages.{stage}"]
    changed = []
    for section in sections:
        first, *rest = section.split(".")
        old, new = saved.get(first), current.get(first)
        for part in rest:
            old = old.get(part) if isinstance(old, dict) else None
            new = new.get(part) if isinstance(new, dict) else None
        for key, a, b in _diff(old, new, f"{section}."):
            text = f"{key}: {a!r} -> {b!r}"
            if (
                _UNFROZEN.match(text)
                or (_NEW_DATA_KEY.match(text) and _without_stage(key) not in ADDED_WITH_DEFAULT)
                or _added_with_its_default(key, a, b)
                or (lenient and (a is None or b is None))
            ):
                continue
            changed.append(text)
    return changed


def _as_dict(config: ml_collections.ConfigDict) -> dict:
    return _tuples(json.loads(config.to_json()))


def check_same_experiment(workdir: str, config: ml_collections.ConfigDict, mode: str) -> None:
    """Sample and eval read a workdir with the experiment it holds: a UserError naming the keys of its saved
    config.json that `config` (a --config file, or overrides) changes."""
    saved = saved_config(workdir)
    if saved is None:
        return
    changed = experiment_changes(saved.to_dict(), _as_dict(config))
    if changed:
        raise UserError(
            f"{workdir} holds a run of another experiment than the config given ({'; '.join(changed[:4])}). "
            f"Omit --config to {mode} it with its own config.json (overrides of how to sample still apply)."
        )


def check_checkpoint_config(
    record: dict,
    config: ml_collections.ConfigDict,
    step: int,
    directory: str,
    stage: str | None = None,
) -> None:
    """The checkpoint at `step` (its JSON record holds the config it was trained with) suits `config`: a UserError
    naming the keys otherwise, before a restore would fail on an intact checkpoint (a hand edit of config.json,
    another train.optimizer). stage: the cascade stage the checkpoint belongs to, whose own section is compared
    instead of the whole cascade's, so that a trained stage can serve in a cascade whose other stages differ."""
    saved = record.get("config")
    if not isinstance(saved, dict):
        return
    changed = experiment_changes(_tuples(saved), _as_dict(config), lenient=True, stage=stage)
    if changed:
        raise UserError(
            f"The checkpoint at step {step} in {directory} was trained with other settings than this run's "
            f"({'; '.join(changed[:4])}); the checkpoint is intact. Run with the settings it was trained with "
            "(omit --config to use the workdir's config.json, and undo any edit of that file), or use another "
            "--workdir."
        )


def prepare_for_training(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Creates the workdir and saves config.json, or checks a resumed run trains the same experiment."""
    os.makedirs(workdir, exist_ok=True)
    saved = saved_config(workdir)
    if saved is not None:
        changed = experiment_changes(saved.to_dict(), _as_dict(config))
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


def trained_stage(family: Any) -> str | None:
    """The name of the cascade stage a staged family's run trains; None for a single-stage family."""
    return family.train_stage.name if family.capabilities.staged else None


def stage_dir(family: Any) -> str:
    """Where a family's run keeps its checkpoints and metrics, relative to the workdir: "" (the workdir itself),
    or stages/<name> for the trained stage of a cascade (a staged family)."""
    name = trained_stage(family)
    return f"stages/{name}" if name is not None else ""


def check_config(
    config: ml_collections.ConfigDict,
    prompts: list[str],
    *,
    mode: str | None = None,
    origin: str = "the config",
) -> None:
    """Checks at the door (checks.py) what would otherwise fail only after training, or after the workdir was
    created: one clear UserError per problem. `mode` defaults to config.mode."""
    checks.check_structure(config, origin)
    mode = mode or config.mode
    family = checks.check_settings(config, prompts, mode)
    checks.check_sizes(config, prompts, mode, family)
