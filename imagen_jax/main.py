"""The one entry point: python -m imagen_jax.main --config configs/<experiment>.py --workdir <dir> [--config.k=v]

Modes (config.mode), each in its own module under modes/: train (resumes from the workdir's last checkpoint, then
samples and judges), sample (reads a trained workdir back; its saved config is used when --config is omitted),
encode_text (precomputes the text embeddings of the dataset's captions into the cache that train and sample
read), eval (FID, KID, precision/recall and text alignment of a trained workdir into <workdir>/eval/), describe
(every stage's size and cost, nothing trained or allocated), compile (every stage's train step, a guided sampling
step and the text encoder compiled ahead of time for a TPU topology: memory and FLOPs per chip, and whether it fits).

Everything the user typed is checked before anything is created on disk (checks.py); a mode that writes the
workdir holds its lock (workdir_lock.py) for the whole run. Errors the user caused end the run with one line,
`error: ...`, and exit status 2; any other error is a bug and keeps its traceback.
"""

import contextlib
import importlib
import os
import sys

from imagen_jax import checks, errors, workdir_lock
from imagen_jax import workdir as workdir_lib

# mode -> the module whose run(config, workdir, prompts) it is, imported only when that mode runs.
MODES = {
    "train": "imagen_jax.modes.train",
    "sample": "imagen_jax.modes.sample",
    "encode_text": "imagen_jax.modes.encode_text",
    "eval": "imagen_jax.modes.evaluate",
    "describe": "imagen_jax.modes.describe",
    "compile": "imagen_jax.modes.compile",
}
# Modes that write the workdir's own files (config.json, checkpoints, metrics, text/): they hold its lock.
WRITERS = ("train", "encode_text")
# Modes that write only into a folder of their own (sample/, eval/): they need the workdir writable, no lock.
READERS = ("sample", "eval")


def _run(config, workdir: str, prompts: list[str], origin: str) -> None:
    from imagen_jax import parallel

    checks.check_structure(config, origin)  # before anything reads the config's numbers
    if config.mode not in MODES:
        raise workdir_lib.UserError(
            f"config.mode={config.mode!r} is not a mode; choose one of {tuple(MODES)}."
        )
    parallel.skip_absent_tpu_runtime()  # libtpu installed for mode=compile on a machine without a TPU: stay on CPU
    mesh, train = config.get("mesh", {}), config.train
    parallel.split_host_cpu(  # one JAX device per CPU core, where the config asks; before JAX starts
        int(mesh.get("cpu_devices", 0)), int(train.batch_size), int(train.get("grad_accum_steps", 1))
    )
    parallel.initialize_distributed(config.get("distributed"))  # multi-host runs; before any other JAX use
    workdir_lib.check_config(config, prompts, origin=origin)
    checks.check_workdir(workdir, writes=config.mode in WRITERS + READERS)
    if config.mode == "train":
        checks.check_batch_split(config)
    lock = workdir_lock.hold(workdir, config.mode) if config.mode in WRITERS else contextlib.nullcontext()
    with lock:
        importlib.import_module(MODES[config.mode]).run(config, workdir, prompts)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        config, workdir, prompts = workdir_lib.parse_command_line(argv)
        _run(config, workdir, prompts, workdir_lib.config_origin(argv, workdir))
    except workdir_lib.USER_ERRORS as err:
        if os.environ.get("IMAGEN_JAX_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only or unwritable folder: the user's machine, not a bug
        if os.environ.get("IMAGEN_JAX_DEBUG") or not errors.is_user_os_error(err):
            raise
        print(f"error: {errors.os_error_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
