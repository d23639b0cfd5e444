"""The one entry point: python -m imagen_jax.main --config configs/<experiment>.py --workdir <dir> [--config.k=v]

Modes (config.mode), each in its own module under modes/: train (resumes from the workdir's last checkpoint, then
samples and judges), sample (reads a trained workdir back; its saved config is used when --config is omitted),
encode_text (precomputes the text embeddings of the dataset's captions into the cache that train and sample
read), eval (FID, KID, precision/recall and text alignment of a trained workdir into <workdir>/eval/), describe
(every stage's size and cost, nothing trained or allocated).
"""

import importlib
import os
import sys

from imagen_jax import workdir as workdir_lib

# mode -> the module whose run(config, workdir, prompts) it is, imported only when that mode runs.
MODES = {
    "train": "imagen_jax.modes.train",
    "sample": "imagen_jax.modes.sample",
    "encode_text": "imagen_jax.modes.encode_text",
    "eval": "imagen_jax.modes.evaluate",
    "describe": "imagen_jax.modes.describe",
}


def _run(config, workdir: str, prompts: list[str]) -> None:
    from imagen_jax import parallel

    if config.mode not in MODES:
        raise workdir_lib.UserError(
            f"config.mode={config.mode!r} is not a mode; choose one of {tuple(MODES)}."
        )
    mesh, train = config.get("mesh", {}), config.train
    parallel.split_host_cpu(  # one JAX device per CPU core, where the config asks; before JAX starts
        int(mesh.get("cpu_devices", 0)), int(train.batch_size), int(train.get("grad_accum_steps", 1))
    )
    parallel.initialize_distributed(config.get("distributed"))  # multi-host runs; before any other JAX use
    workdir_lib.check_config(config, prompts)
    importlib.import_module(MODES[config.mode]).run(config, workdir, prompts)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        config, workdir, prompts = workdir_lib.parse_command_line(argv)
        _run(config, workdir, prompts)
    except workdir_lib.USER_ERRORS as err:
        if os.environ.get("IMAGEN_JAX_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
