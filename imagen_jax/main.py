"""The one entry point: python -m imagen_jax.main --config configs/<experiment>.py --workdir <dir> [--config.k=v]

Modes (config.mode): train (resumes from the workdir's last checkpoint, then samples and judges), sample
(reads a trained workdir back; its saved config is used when --config is omitted).
"""

import os
import sys

from imagen_jax import workdir as workdir_lib


def _run(config, workdir: str, prompts: list[str]) -> None:
    from imagen_jax import experiment, parallel, sample

    parallel.initialize_distributed(config.get("distributed"))  # multi-host runs; before any other JAX use

    workdir_lib.check_config(config, prompts)
    if config.mode in ("eval", "describe"):
        raise workdir_lib.UserError(
            f"mode={config.mode!r} is not available in this version; use train or sample."
        )
    if config.mode == "train":
        workdir_lib.prepare_for_training(workdir, config)
        exp = experiment.build(config, workdir)
        from imagen_jax.training import trainer

        state, step, preempted = trainer.train(exp)
        if preempted:
            return
        params = state.ema_params
    else:
        step = workdir_lib.require_checkpoint(workdir)  # before building anything in the workdir
        exp = experiment.build(config, workdir)
        checkpointer = exp.checkpointer()
        state, _ = exp.restore(checkpointer, step)
        checkpointer.close()
        params = state.ema_params
    print(
        f"Sampling with the EMA parameters at step {step} ({config.sample.sampler}, {config.sample.steps} steps, "
        f"guidance {config.sample.guidance_scale}) ..."
    )
    result = sample.sample_and_judge(exp, params, step, prompts=prompts or None)
    print(f"samples: {result['grid']} (captions in {os.path.splitext(result['grid'])[0]}.txt)")
    print(sample.format_judge("judge accuracy", result["grid_judge"]))
    if "heldout_judge" in result:
        print(sample.format_judge("held-out judge accuracy", result["heldout_judge"]))


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
